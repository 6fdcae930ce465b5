"""Inference-time unlearning: a model plus a wrapper, the weights untouched.

A wrapper (:class:`WrappedModel`) holds the target causal LM and changes what
it computes at inference time only: the prompt (in-context unlearning, a
memory of forget requests, ECO's embedding corruption) or the logits (offset
and logit-difference methods). It looks like a causal LM to every metric and
audit attack: ``model(input_ids, attention_mask, labels=..., logits_to_keep=...)``
returns logits (and a loss), ``model.generate(...)`` decodes greedily (or
samples, for the server), and the target's weights, output head and decoder
layers are reachable, so white-box attacks (logit lens, probes, relearning,
quantization) read or change the same weights they would without the wrapper.

A wrapper is one file: a config dataclass (typed, help text, checked), a
:class:`WrappedModel` subclass implementing :meth:`WrappedModel.wrapped_logits`
and the ``build`` / ``save_parts`` / ``load_parts`` of what it adds, registered
with :func:`register_wrapper`. A wrapped model is saved as a folder
(``wrapper.json``, the target's tokenizer files, the wrapper's own parts as
safetensors or JSON); the target model is referenced, never copied or changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutput

from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import WRAPPER_FILE
from unlearnkit.registry import Registry

__all__ = ["WRAPPER_FILE"]  # re-exported: the file name is the model loader's, which refuses such folders for training
WRAPPER_FORMAT = 1


@dataclass(frozen=True)
class WrapData:
    """What a wrapper is built from: the forget rows, retain rows (QA rows) and the prompt format of the model."""

    forget: Sequence[dict]
    retain: Sequence[dict] = ()
    fmt: PromptFormat = PromptFormat()


@dataclass(frozen=True)
class PromptLayout:
    """Where the question sits in a prompt of one format, as token ids: ``head`` + question + ``tail`` (+ answer).

    ``head`` is what every prompt of the format begins with (BOS, a system
    prompt, "Question:"), ``tail`` what it ends with before the answer
    ("\\nAnswer:", the chat template's assistant header). Found from two
    prompts of different questions: their common prefix and suffix.
    """

    head: tuple[int, ...]
    tail: tuple[int, ...]

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> PromptLayout:
        first = fmt.prompt_ids(tokenizer, "What is the first question here?")
        second = fmt.prompt_ids(tokenizer, "Name another thing, then")  # ends unlike the first: the tail is the format's alone
        head = _common_prefix(first, second)
        tail = _common_prefix(first[len(head):][::-1], second[len(head):][::-1])[::-1]
        if not tail:
            raise UnlearnkitError("The prompt format ends prompts with no common marker before the answer; "
                                  "inference-time wrappers need one (use the plain or chat format).")
        return cls(tuple(head), tuple(tail))

    def question_span(self, ids: Sequence[int]) -> tuple[int, int] | None:
        """(start, end) of the question in ``ids`` (one row, padding removed): after ``head``, up to the last ``tail`` that
        follows it; None when ``ids`` is not a prompt of this format (no head at the start, or no tail after it)."""
        head, tail = list(self.head), list(self.tail)
        if list(ids[:len(head)]) != head:
            return None
        for end in range(len(ids) - len(tail), len(head) - 1, -1):
            if list(ids[end:end + len(tail)]) == tail:
                return len(head), end
        return None

    def record(self) -> dict[str, list[int]]:
        return {"head": list(self.head), "tail": list(self.tail)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> PromptLayout:
        return cls(tuple(int(i) for i in record["head"]), tuple(int(i) for i in record["tail"]))


def _common_prefix(first: Sequence[int], second: Sequence[int]) -> list[int]:
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return list(first[:length])


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only (B, T): left padding does not shift a row's positions, as in ``generate``."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def causal_lm_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, V) of a plain causal LM on a (possibly left-padded) batch, positions as ``generate`` gives them."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_of(attention_mask)).logits


def strip_padding(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """Each row's real tokens (left or right padding removed), as lists."""
    return [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask, strict=True)]


def left_pad(rows: Sequence[Sequence[int]], pad_token_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ids left-padded into (B, T) ids and attention mask."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for index, row in enumerate(rows):
        if row:
            ids[index, width - len(row):] = torch.tensor(list(row), dtype=torch.long, device=device)
            mask[index, width - len(row):] = 1
    return ids, mask


class WrappedModel(nn.Module):
    """The target model (``self.model``) with an inference-time change; a causal LM to its callers.

    Subclasses set ``name`` (the registered name) and implement
    :meth:`wrapped_logits`; they may override :meth:`next_token_logits` (to
    decode faster) and :meth:`decisions` (what a guard decided, for the
    server's log). ``settings`` is the wrapper's config (a dataclass).
    """

    name: ClassVar[str] = ""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: Any) -> None:
        super().__init__()
        self.model = model  # registered first: the target's decoder layers are the ones layer-based attacks find
        self.tokenizer = tokenizer
        self.settings = settings
        self.config = model.config
        self.generation_config = getattr(model, "generation_config", None)
        # What building the wrapper measured (a classifier's held-out accuracy, a tuned strength, a training loss).
        self.build_record: dict[str, Any] = {}

    # What the wrapper changes -------------------------------------------------------------------------------------
    def wrapped_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) of the wrapped model for a batch (B, T), left- or right-padded, aligned with ``input_ids``."""
        raise NotImplementedError

    def next_token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) of the next token after each (left-padded) row."""
        return self.wrapped_logits(input_ids, attention_mask)[:, -1]

    def decisions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[dict[str, Any]]:
        """What the wrapper decided for each row (e.g. a guard's flag and score), for logs; by default nothing."""
        return [{} for _ in range(input_ids.shape[0])]

    # A causal LM to its callers -----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def latent_model(self) -> nn.Module:
        """What the audit's latent attacks (logit lens, linear probe) read the hidden states of: the wrapper itself, whose
        forward runs the target on the positions given; a wrapper that changes only the prompt names the target."""
        return self

    def can_generate(self) -> bool:
        """Whether :meth:`generate` works, as transformers' models answer it: always, through the target."""
        return True

    def get_output_embeddings(self) -> nn.Module | None:
        return self.model.get_output_embeddings()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int = 0,
        **_: Any,
    ) -> CausalLMOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.wrapped_logits(input_ids, attention_mask)
        loss = None
        if labels is not None:
            shifted = logits[:, :-1].float()
            loss = nn.functional.cross_entropy(shifted.reshape(-1, shifted.shape[-1]), labels[:, 1:].reshape(-1),
                                               ignore_index=IGNORE_INDEX)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return CausalLMOutput(loss=loss, logits=logits)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        pad_token_id: int | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        generator: torch.Generator | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Decode up to ``max_new_tokens`` after each left-padded row: greedy, or sampled (temperature, nucleus ``top_p``).

        Returns (B, T + new) ids, as ``generate`` does: a row that has produced
        EOS continues with padding; decoding stops once every row has.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self.decodes_on_target and generator is None:
            return self._generate_on_target(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_p, pad_token_id,
                                            eos_token_id)
        return self.generate_stepwise(input_ids, attention_mask, max_new_tokens, do_sample, temperature, top_p, pad_token_id,
                                      eos_token_id, generator)

    @torch.no_grad()
    def generate_stepwise(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int = 32, do_sample: bool = False,
        temperature: float = 1.0, top_p: float = 1.0, pad_token_id: int | None = None,
        eos_token_id: int | Sequence[int] | None = None, generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """:meth:`generate` one token at a time from :meth:`next_token_logits` (the wrapped logits): every wrapper's
        definition of decoding, and its path when it has no faster one."""
        eos = _eos_ids(eos_token_id if eos_token_id is not None else getattr(self.generation_config, "eos_token_id", None))
        pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
        ids, mask = input_ids, attention_mask
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            logits = self.next_token_logits(ids, mask).float()  # (B, V)
            token = sample_token(logits, temperature, top_p, generator) if do_sample else logits.argmax(dim=-1)
            token = torch.where(finished, torch.full_like(token, pad), token)
            ids = torch.cat([ids, token[:, None]], dim=1)
            mask = torch.cat([mask, (~finished).long()[:, None]], dim=1)
            if eos:
                finished |= torch.isin(token, torch.tensor(eos, device=token.device))
            if bool(finished.all()):
                break
        return ids

    # Input-side wrappers decode with the target's own cached ``generate`` --------------------------------------------
    # A wrapper that changes only what the target is shown (not its logits) sets ``decodes_on_target``: generation then
    # runs the target's ``generate`` (its key/value cache) on :meth:`target_prompt` inside :meth:`target_decoding`,
    # instead of recomputing the wrapped logits of the whole sequence for every new token.
    decodes_on_target: ClassVar[bool] = False

    def target_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The left-padded (ids, mask) the target decodes from for these left-padded prompts (by default: themselves)."""
        return input_ids, attention_mask

    @contextmanager
    def target_decoding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Iterator[None]:
        """What stays in force while the target decodes from ``input_ids`` (by default nothing)."""
        yield

    def _generate_on_target(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, do_sample: bool, temperature: float,
        top_p: float, pad_token_id: int | None, eos_token_id: int | Sequence[int] | None,
    ) -> torch.Tensor:
        """(B, T + new) ids: the given prompts, then what the target generates from :meth:`target_prompt` of them."""
        pad = pad_token_id if pad_token_id is not None else (self.tokenizer.pad_token_id or 0)
        ids, mask = self.target_prompt(input_ids, attention_mask, pad)
        options: dict[str, Any] = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": pad,
                                   "eos_token_id": eos_token_id, "use_cache": True}
        if do_sample:
            options.update(temperature=temperature, top_p=top_p)
        with self.target_decoding(ids, mask):
            generated = self.model.generate(input_ids=ids, attention_mask=mask, **options)
        return torch.cat([input_ids, generated[:, ids.shape[1]:]], dim=1)

    # Saving and loading ---------------------------------------------------------------------------------------------
    def referenced_models(self) -> dict[str, str]:
        """Models besides the target that the saved wrapper loads by source (role -> source), never copied or changed."""
        return {}

    def save_parts(self, folder: Path) -> dict[str, Any]:
        """Write what the wrapper adds to the target into ``folder`` (safetensors / JSON); return a JSON-able record of it."""
        return {}

    @classmethod
    def load_parts(
        cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: Any, folder: Path, parts: Mapping[str, Any]
    ) -> WrappedModel:
        """The wrapper saved by :meth:`save_parts` into ``folder``, around ``model``."""
        raise NotImplementedError

    @classmethod
    def build(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: WrapData, settings: Any,
              progress: bool = False) -> WrappedModel:
        """Build the wrapper around ``model`` from ``data`` (training what it trains); ``model`` is never changed."""
        raise NotImplementedError


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row (B,) sampled from ``logits`` (B, V) at ``temperature`` within the nucleus of mass ``top_p``."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probabilities = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probabilities, order = probabilities.sort(dim=-1, descending=True)
        # Keep the smallest set of tokens whose mass reaches top_p (the first token always).
        outside = sorted_probabilities.cumsum(dim=-1) - sorted_probabilities >= top_p
        sorted_probabilities = sorted_probabilities.masked_fill(outside, 0.0)
        probabilities = torch.zeros_like(probabilities).scatter(-1, order, sorted_probabilities)
    return torch.multinomial(probabilities, 1, generator=generator).squeeze(-1)


def _eos_ids(value: int | Sequence[int] | None) -> list[int]:
    if value is None:
        return []
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


@dataclass(frozen=True)
class WrapperSpec:
    """What the registry knows of a wrapper: its class, config, paper, one-line summary and family."""

    name: str
    wrapper: type[WrappedModel]
    config: type
    paper: str
    summary: str
    family: str  # "input" (the prompt changes) or "logits" (the output distribution changes)
    needs_retain: bool = False


WRAPPERS: Registry[WrapperSpec] = Registry("wrapper")
FAMILIES = ("input", "logits")


def register_wrapper(
    name: str, *, config: type, paper: str, summary: str, family: str, needs_retain: bool = False
) -> Callable[[type[WrappedModel]], type[WrappedModel]]:
    """Class decorator that registers a :class:`WrappedModel` subclass under ``name``."""
    if family not in FAMILIES:
        raise ValueError(f"wrapper family {family!r} must be one of {FAMILIES}.")

    def decorate(wrapper: type[WrappedModel]) -> type[WrappedModel]:
        wrapper.name = name
        WRAPPERS.register(name)(WrapperSpec(name, wrapper, config, paper, summary, family, needs_retain))
        return wrapper

    return decorate


def wrapper_record(wrapped: WrappedModel, target: str, target_sha256: str | None, parts: Mapping[str, Any]) -> dict[str, Any]:
    """The contents of ``wrapper.json``: the wrapper, its settings, the target it wraps (by source, with its weights' digest,
    checked on loading), the other models it reads (:meth:`WrappedModel.referenced_models`) and its parts."""
    return {"format": WRAPPER_FORMAT, "wrapper": wrapped.name, "settings": asdict(wrapped.settings), "target": target,
            "target_sha256": target_sha256, "references": dict(wrapped.referenced_models()), "parts": dict(parts)}


def read_wrapper_record(folder: Path) -> dict[str, Any]:
    """``folder``'s ``wrapper.json``, checked for the fields every wrapper needs."""
    path = folder / WRAPPER_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UnlearnkitError(f"{path} cannot be read ({error}); build the wrapped model again with `unlearnkit wrap`.") from None
    if not isinstance(record, dict) or record.get("format") != WRAPPER_FORMAT:
        raise UnlearnkitError(f"{path} is not a wrapped model of format {WRAPPER_FORMAT}; build it again with `unlearnkit wrap`.")
    for key, kind in (("wrapper", str), ("settings", dict), ("target", str), ("references", dict), ("parts", dict)):
        if not isinstance(record.get(key), kind):
            raise UnlearnkitError(f"{path} lacks '{key}' ({kind.__name__}); build the wrapped model again with `unlearnkit wrap`.")
    return record


def is_wrapped_folder(path: str | Path) -> bool:
    return (Path(path) / WRAPPER_FILE).is_file()
