"""Second-moment statistics ``C = E[k k^T]`` of an edit site's keys, computed once from general text and cached.

ROME (Meng et al., NeurIPS 2022, ``layer_stats``) estimates C from Wikipedia text;
here it is the shipped general-English text (``real_knowledge/general_text.txt``)
unless another is given. Every token of the text counts as one key: the input of
the MLP output projection at that token.

The cache lives under ``<cache>/editing-stats/`` (``$UNLEARNKIT_CACHE`` or
``~/.cache/unlearnkit``), one safetensors file per (model, layer, text). Its name
holds a digest of everything C depends on: the weights that feed the keys (all
but the layers after the edited one), the tokenizer, the layer, the text and the
chunk length. The file records that digest and a checksum of the matrix; a file
that does not open, or whose digest, checksum or shape disagree, is recomputed
and replaced, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from unlearnkit.editing.sites import EditSite, recorded_keys
from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import decoder_layers
from unlearnkit.runtime import default_cache_dir

logger = logging.getLogger("unlearnkit")

STATS_FOLDER = "editing-stats"
FORMAT_VERSION = 1


@dataclass
class SecondMoment:
    """``C`` (in, in) in float32, the number of keys it averages, and whether it came from the cache."""

    matrix: torch.Tensor
    tokens: int
    from_cache: bool


def general_text_passages(path: str | Path | None = None) -> list[str]:
    """The passages C is estimated on: a text file's paragraphs (default: the shipped general-English text)."""
    from unlearnkit.data.real_knowledge import load_general_text

    return load_general_text(path)


@torch.no_grad()
def compute_second_moment(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, site: EditSite, passages: Sequence[str], max_length: int
) -> tuple[torch.Tensor, int]:
    """``(1/N) Σ_n k_n k_n^T`` over every token of ``passages`` (each cut to ``max_length`` tokens), and N."""
    device = next(model.parameters()).device
    total = torch.zeros(site.key_size, site.key_size, dtype=torch.float64, device=device)
    count = 0
    was_training = model.training
    model.eval()
    try:
        for passage in passages:
            ids = tokenizer(passage, truncation=True, max_length=max_length)["input_ids"]
            with recorded_keys(site.module) as keys:
                model(input_ids=torch.tensor([ids], device=device))
            flat = keys[0].reshape(-1, site.key_size).double()  # (T, in)
            total += flat.T @ flat
            count += flat.shape[0]
    finally:
        model.train(was_training)
    if count == 0:
        raise UnlearnkitError("The statistics text holds no tokens; give a text file with a few paragraphs of plain prose.")
    return (total / count).float().cpu(), count


def statistics_digest(model: nn.Module, tokenizer: PreTrainedTokenizerBase, site: EditSite, passages: Sequence[str],
                      max_length: int) -> str:
    """A digest of everything the keys of ``site`` on ``passages`` depend on (later layers do not change them)."""
    prefix, _ = decoder_layers(model)
    later = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    digest = hashlib.sha256()
    digest.update(json.dumps({"version": FORMAT_VERSION, "site": site.name, "max_length": max_length}).encode())
    for name, parameter in model.named_parameters():
        match = later.match(name)
        if match and int(match.group(1)) > site.layer:
            continue
        digest.update(f"{name}:{tuple(parameter.shape)}:{parameter.dtype}".encode())
        digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding settings change as the tokenizer is called: only what maps text to ids counts.
        content = {key: value for key, value in json.loads(backend.to_str()).items() if key not in ("truncation", "padding")}
        vocabulary = json.dumps(content, sort_keys=True)
    else:
        vocabulary = json.dumps(sorted(tokenizer.get_vocab().items()))
    digest.update(vocabulary.encode())
    for passage in passages:
        digest.update(passage.encode() + b"\0")
    return digest.hexdigest()


def _model_label(model: nn.Module) -> str:
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name.strip("/").split("/")[-1])[:48] or "model"


def statistics_path(cache: Path, model: nn.Module, site: EditSite, digest: str) -> Path:
    return cache / STATS_FOLDER / f"{_model_label(model)}-layer{site.layer}-{digest[:16]}.safetensors"


def _checksum(matrix: torch.Tensor) -> str:
    return hashlib.sha256(matrix.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def read_cached(path: Path, digest: str, size: int) -> SecondMoment | None:
    """The cached C when ``path`` holds an intact one for ``digest``; None when absent or damaged (with a warning)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            matrix = handle.get_tensor("second_moment")
        tokens = int(metadata.get("tokens", "0"))
        intact = (metadata.get("digest") == digest and metadata.get("checksum") == _checksum(matrix)
                  and tuple(matrix.shape) == (size, size) and matrix.dtype == torch.float32 and tokens > 0
                  and bool(torch.isfinite(matrix).all()))
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        logger.warning("The editing statistics %s are damaged (%s); computing them again.", path, error)
        return None
    if not intact:
        logger.warning("The editing statistics %s do not match their record (damaged or stale); computing them again.", path)
        return None
    return SecondMoment(matrix, tokens, from_cache=True)


def write_cached(path: Path, matrix: torch.Tensor, tokens: int, digest: str) -> None:
    """Write C atomically: a reader never sees a half-written file under the final name."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    matrix = matrix.contiguous()
    save_file({"second_moment": matrix}, str(partial),
              metadata={"digest": digest, "checksum": _checksum(matrix), "tokens": str(tokens), "format_version": str(FORMAT_VERSION)})
    os.replace(partial, path)


def layer_second_moment(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    site: EditSite,
    passages: Sequence[str],
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
