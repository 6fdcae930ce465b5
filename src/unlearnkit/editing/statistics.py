"""Second-moment statistics ``C = E[k k^T]`` of an edit site's keys, computed once from general text and cached.

ROME (Meng et al., NeurIPS 2022, ``layer_stats``) estimates C from 100,000
Wikipedia samples. Offline, this module has two sources:

* ``model_samples`` (rome_delete's default): text the model itself samples,
  :func:`sampled_passages`. Passages start from one of ROME's own
  context-template seed words ("The", "Therefore", "Because", "I", "You") and
  continue at temperature 1 with no top-k or top-p cut (the model's own
  distribution, the best offline stand-in for its training text), up to
  ``length`` tokens or the end-of-text token, until ``tokens`` tokens are
  drawn; deterministic for a seed. A few tens of thousands of tokens make C
  well-conditioned for an MLP width of a few thousand (SmolLM2-135M: 1,536),
  where the shipped general text (a few hundred tokens) leaves it singular.
* ``general_text``: a text file's paragraphs (default: the shipped
  general-English text ``real_knowledge/general_text.txt``),
  :func:`general_text_passages`.

Every token of the text counts as one key: the input of the MLP output
projection at that token. The forward pass stops at the edited layer (later
layers cannot change its keys).

Both the sampled token ids and C are cached under ``$UNLEARNKIT_CACHE`` (or
``~/.cache/unlearnkit``): ``editing-text/`` one safetensors file per (model,
seed, token count, length), ``editing-stats/`` one per (model, layer, text).
Each name holds a digest of everything the content depends on: for sampled
text every weight of the model, the tokenizer and the sampling settings; for C
the weights that feed the keys (all but the layers after the edited one), the
tokenizer, the layer, the text (or token ids) and the chunk length. A file
records its digest and a checksum of its tensors; a file that does not open, or
whose digest, checksum or shape disagree, is recomputed and replaced, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from unlearnkit.editing.sites import EditSite
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import decoder_layers
from unlearnkit.runtime import default_cache_dir

logger = logging.getLogger("unlearnkit")

STATS_FOLDER = "editing-stats"
TEXT_FOLDER = "editing-text"
# 2: passages may be token ids (sampled text); 1 held text passages only.
FORMAT_VERSION = 2
# Where the statistics text comes from (see the module docs).
SOURCES = ("model_samples", "general_text")
# ROME's context templates are seeded with these words (rome/rome_main.py get_context_templates); sampled passages start from them.
SAMPLE_SEEDS = ("The", "Therefore", "Because", "I", "You")
# Sampled passages generated per batch: one seed word per batch, so no row needs padding.
SAMPLE_BATCH = 16

# A passage is a text (tokenised here) or token ids (sampled text, read as they are).
Passage = str | Sequence[int]


@dataclass
class SecondMoment:
    """``C`` (in, in) in float32, the number of keys it averages, and whether it came from the cache."""

    matrix: torch.Tensor
    tokens: int
    from_cache: bool


@dataclass
class SampledText:
    """Passages the model sampled, as token ids, and whether they came from the cache."""

    passages: list[list[int]]
    from_cache: bool

    @property
    def tokens(self) -> int:
        return sum(len(passage) for passage in self.passages)


def general_text_passages(path: str | Path | None = None) -> list[str]:
    """The passages C is estimated on: a text file's paragraphs (default: the shipped general-English text)."""
    from unlearnkit.data.real_knowledge import load_general_text

    return load_general_text(path)


def passage_ids(tokenizer: PreTrainedTokenizerBase, passage: Passage, max_length: int) -> list[int]:
    """A passage's token ids, cut to ``max_length``: a text is tokenised, token ids are taken as they are."""
    if isinstance(passage, str):
        return tokenizer(passage, truncation=True, max_length=max_length)["input_ids"]
    return [int(token) for token in passage][:max_length]


class _KeysRead(Exception):
    """Raised by the edit site once its keys are recorded: the layers after it cannot change them."""


@contextmanager
def _keys_then_stop(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, a forward pass records the module's input (B, T, in) and stops there (raising :class:`_KeysRead`)."""
    seen: list[torch.Tensor] = []

    def record(_: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach())
        raise _KeysRead

    handle = module.register_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


@torch.no_grad()
def compute_second_moment(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, site: EditSite, passages: Sequence[Passage], max_length: int
) -> tuple[torch.Tensor, int]:
    """``(1/N) Σ_n k_n k_n^T`` over every token of ``passages`` (each cut to ``max_length`` tokens), and N.

    The forward pass of each passage stops at the edit site, once its keys are read.
    """
    device = next(model.parameters()).device
    total = torch.zeros(site.key_size, site.key_size, dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for passage in passages:
            ids = passage_ids(tokenizer, passage, max_length)
            if not ids:
                continue
            with _keys_then_stop(site.module) as keys, suppress(_KeysRead):
                model(input_ids=torch.tensor([ids], device=device))
            flat = keys[0].reshape(-1, site.key_size).double()  # (T, in)
            total += flat.T @ flat
            count += flat.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise UnlearnkitError("The statistics text holds no tokens; give a text file with a few paragraphs of plain prose.")
    return (total / count).float().cpu(), count


def _hash_weights(digest: Any, model: nn.Module, through_layer: int | None = None) -> None:
    """Feed every parameter (with ``through_layer``: all but those of later decoder layers) into ``digest``."""
    prefix, _ = decoder_layers(model)
    later = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    for name, parameter in model.named_parameters():
        match = later.match(name)
        if through_layer is not None and match and int(match.group(1)) > through_layer:
            continue
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}".encode())
        digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


def _hash_tokenizer(digest: Any, tokenizer: PreTrainedTokenizerBase) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding settings change as the tokenizer is called: only what maps text to ids counts.
        content = {key: value for key, value in json.loads(backend.to_str()).items() if key not in ("truncation", "padding")}
        vocabulary = json.dumps(content, sort_keys=True)
    else:
        vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()))
    digest.update(vocabulary.encode())


def statistics_digest(model: nn.Module, tokenizer: PreTrainedTokenizerBase, site: EditSite, passages: Sequence[Passage],
                      max_length: int) -> str:
    """A digest of everything the keys of ``site`` on ``passages`` depend on (later layers do not change them)."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": FORMAT_VERSION, "site": site.name, "max_length": max_length}).encode())
    _hash_weights(digest, model, site.layer)
    _hash_tokenizer(digest, tokenizer)
    for passage in passages:
        if isinstance(passage, str):
            digest.update(b"text:" + passage.encode() + b"\0")
        else:
            digest.update(b"ids:" + torch.tensor([int(token) for token in passage], dtype=torch.int64).numpy().tobytes() + b"\0")
    return digest.hexdigest()


def _model_label(model: nn.Module) -> str:
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/").split("/")[-1])[:48] or "model"


def statistics_path(cache: Path, model: nn.Module, site: EditSite, digest: str) -> Path:
    return cache / STATS_FOLDER / f"{_model_label(model)}-layer{site.layer}-{digest[:16]}.safetensors"


def _checksum(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _read_safetensors(path: Path, names: Sequence[str], what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The named tensors and the metadata of ``path``; None when it is absent or does not open (with a warning)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        logger.warning("The %s %s are damaged (%s); computing them again.", what, path, error)
        return None
    return tensors, metadata


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write atomically: a reader never sees a half-written file under the final name."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    save_file({name: tensor.contiguous() for name, tensor in tensors.items()}, str(partial), metadata=metadata)
    os.replace(partial, path)


def read_cached(path: Path, digest: str, size: int) -> SecondMoment | None:
    """The cached C when ``path`` holds an intact one for ``digest``; None when absent or damaged (with a warning)."""
    read = _read_safetensors(path, ["second_moment"], "editing statistics")
    if read is None:
        return None
    tensors, metadata = read
    matrix = tensors["second_moment"]
    try:
        tokens = int(metadata.get("tokens", "0"))
    except ValueError:
        tokens = 0
    intact = (metadata.get("digest") == digest and metadata.get("checksum") == _checksum(matrix)
              and tuple(matrix.shape) == (size, size) and matrix.dtype == torch.float32 and tokens > 0
              and bool(torch.isfinite(matrix).all()))
    if not intact:
        logger.warning("The editing statistics %s do not match their record (damaged or stale); computing them again.", path)
        return None
    return SecondMoment(matrix, tokens, from_cache=True)


def write_cached(path: Path, matrix: torch.Tensor, tokens: int, digest: str) -> None:
    """Write C atomically, with its digest and checksum."""
    matrix = matrix.contiguous()
    _write_safetensors(path, {"second_moment": matrix},
                       {"digest": digest, "checksum": _checksum(matrix), "tokens": str(tokens), "format_version": str(FORMAT_VERSION)})


def layer_second_moment(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    site: EditSite,
    passages: Sequence[Passage],
    max_length: int = 256,
    cache: Path | None = None,
) -> SecondMoment:
    """C for ``site``, from the cache when an intact file exists, else computed (and cached)."""
    cache = Path(cache) if cache is not None else default_cache_dir()
    digest = statistics_digest(model, tokenizer, site, passages, max_length)
    path = statistics_path(cache, model, site, digest)
    cached = read_cached(path, digest, site.key_size)
    if cached is not None:
        return cached
    matrix, tokens = compute_second_moment(model, tokenizer, site, passages, max_length)
    try:
        write_cached(path, matrix, tokens, digest)
    except OSError as error:  # a read-only cache costs a recomputation next time, nothing else
        logger.warning("Could not cache the editing statistics in %s (%s); they will be computed again next time.", path, error)
    return SecondMoment(matrix, tokens, from_cache=False)


# --------------------------------------------------------------------------------------------- text the model samples


def sampling_digest(model: nn.Module, tokenizer: PreTrainedTokenizerBase, tokens: int, length: int, seed: int) -> str:
    """A digest of everything :func:`sample_passages` depends on: every weight, the tokenizer and the sampling settings."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": FORMAT_VERSION, "tokens": tokens, "length": length, "seed": seed,
                              "seeds": SAMPLE_SEEDS, "batch": SAMPLE_BATCH, "temperature": 1.0}).encode())
    _hash_weights(digest, model)
    _hash_tokenizer(digest, tokenizer)
    return digest.hexdigest()


@torch.no_grad()
def sample_passages(model: nn.Module, tokenizer: PreTrainedTokenizerBase, tokens: int, length: int, seed: int) -> list[list[int]]:
    """At least ``tokens`` tokens of text the model samples, as passages of at most ``length`` token ids.

    Each batch of :data:`SAMPLE_BATCH` passages starts from one of :data:`SAMPLE_SEEDS` (in turn) and
    is sampled at temperature 1 from the full distribution (no top-k, no top-p); a passage ends at
    ``length`` tokens or before the end-of-text token. Deterministic for ``seed`` (the global random
    state is left as it was).
    """
    if tokens < 1 or length < 2:
        raise UnlearnkitError(f"Sampling statistics text needs tokens >= 1 and a length >= 2, got {tokens} and {length}.")
    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    passages: list[list[int]] = []
    total, batch = 0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            while total < tokens:
                start = tokenizer(SAMPLE_SEEDS[batch % len(SAMPLE_SEEDS)], return_tensors="pt")["input_ids"].to(device)  # (1, s)
                batch += 1
                width = start.shape[1]
                if width >= length:
                    raise UnlearnkitError(f"The statistics passages' length ({length} tokens) leaves no room after the seed word; "
                                          "raise stats_max_length.")
                rows = min(SAMPLE_BATCH, -(-(tokens - total) // (length - width)))
                starts = start.repeat(rows, 1)
                out = model.generate(starts, attention_mask=torch.ones_like(starts), do_sample=True, temperature=1.0, top_k=0,
                                     top_p=1.0, max_new_tokens=length - width, eos_token_id=eos, pad_token_id=pad)
                for sequence in out.tolist():
                    new = sequence[width:]
                    if eos is not None and eos in new:
                        new = new[:new.index(eos)]
                    passage = sequence[:width] + new
                    passages.append(passage)
                    total += len(passage)
    finally:
        model.train(was_training)
    return passages


def text_path(cache: Path, model: nn.Module, digest: str) -> Path:
    return cache / TEXT_FOLDER / f"{_model_label(model)}-{digest[:16]}.safetensors"


def sampled_passages(model: nn.Module, tokenizer: PreTrainedTokenizerBase, tokens: int, length: int, seed: int,
                     cache: Path | None = None) -> SampledText:
    """:func:`sample_passages`, from the cache when an intact file exists for this model and these settings, else sampled (and cached)."""
    cache = Path(cache) if cache is not None else default_cache_dir()
    digest = sampling_digest(model, tokenizer, tokens, length, seed)
    path = text_path(cache, model, digest)
    read = _read_safetensors(path, ["ids", "lengths"], "sampled statistics text")
    if read is not None:
        (tensors, metadata) = read
        ids, lengths = tensors["ids"], tensors["lengths"]
        intact = (metadata.get("digest") == digest and metadata.get("checksum") == _checksum(ids, lengths)
                  and ids.dtype == torch.int64 and lengths.dtype == torch.int64 and ids.dim() == 1 and lengths.dim() == 1
                  and bool((lengths > 0).all()) and int(lengths.sum()) == ids.numel() and ids.numel() >= tokens)
        if intact:
            return SampledText([part.tolist() for part in torch.split(ids, lengths.tolist())], from_cache=True)
        logger.warning("The sampled statistics text %s does not match its record (damaged or stale); sampling it again.", path)
    passages = [passage for passage in sample_passages(model, tokenizer, tokens, length, seed) if passage]
    ids = torch.tensor([token for passage in passages for token in passage], dtype=torch.int64)
    lengths = torch.tensor([len(passage) for passage in passages], dtype=torch.int64)
    try:
        _write_safetensors(path, {"ids": ids, "lengths": lengths},
                           {"digest": digest, "checksum": _checksum(ids, lengths), "format_version": str(FORMAT_VERSION)})
    except OSError as error:
        logger.warning("Could not cache the sampled statistics text in %s (%s); it will be sampled again next time.", path, error)
    return SampledText(passages, from_cache=False)
