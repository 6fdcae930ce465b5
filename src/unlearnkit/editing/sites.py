"""Where a rank-one edit happens: the MLP output projection of a decoder layer, found generically, and token positions.

The edited matrix is the MLP's down-projection (``mlp.down_proj`` in Llama, Qwen
and SmolLM2, ``mlp.c_proj`` in GPT-2): the one linear map of the layer that
takes the MLP's hidden width back to the residual width. Its input at a token is
ROME's *key*, its output the *value*. GPT-2 stores it as a ``Conv1D`` with the
weight transposed (``y = x W + b``); :func:`weight_matrix` and
:func:`set_weight_matrix` always speak of the (out, in) matrix of ``y = W x + b``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.pytorch_utils import Conv1D

from unlearnkit.errors import UnlearnkitError
from unlearnkit.parameters import check_layers_exist, decoder_layers

# The edit layer as a share of the depth: 7/32 gives Patil et al.'s layers for Llama-2-7b (7 of 32) and GPT-J (6 of 28).
DEFAULT_LAYER_SHARE = 7 / 32


def default_edit_layer(depth: int) -> int:
    """The layer edited when none is named: ``floor(depth * 7 / 32)`` (Patil et al.: Llama-2-7b 7, GPT-J 6)."""
    return int(depth * DEFAULT_LAYER_SHARE)


def _features(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) of a linear map, or None for anything else."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.weight.shape[1]
    return None


@dataclass(frozen=True)
class EditSite:
    """The module a rank-one edit changes: its name in the model, its layer and the module itself."""

    name: str
    layer: int
    module: nn.Module

    @property
    def key_size(self) -> int:
        return _features(self.module)[0]

    @property
    def value_size(self) -> int:
        return _features(self.module)[1]


def output_projection(model: nn.Module, layer: int) -> EditSite:
    """The MLP output projection of decoder layer ``layer``: the linear map whose output is the residual width.

    Among the layer's linear maps that write the residual width from another width (attention output
    projections map the residual width to itself), the one inside an ``mlp``/``feed_forward``/``ffn``
    module wins when there are several.
    """
    check_layers_exist(model, [layer], option="layer")
    prefix, blocks = decoder_layers(model)
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)
    found = []
    for name, module in blocks[layer].named_modules():
        features = _features(module)
        if features is not None and features[1] == hidden and features[0] != hidden:
            found.append((name, module))
    if len(found) > 1:
        found = [(name, module) for name, module in found if any(part in name for part in ("mlp", "feed_forward", "ffn"))]
    if len(found) != 1:
        raise UnlearnkitError(
            f"Could not find the MLP output projection of layer {layer} of {type(model).__name__}: "
            f"{'no' if not found else 'more than one'} linear map from the MLP width to the residual width ({hidden}). "
            "rome_delete needs a standard decoder-only transformer (Llama, Qwen, GPT-2 ...)."
        )
    name, module = found[0]
    return EditSite(f"{prefix}.{layer}.{name}", layer, module)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The (out, in) matrix W of ``y = W x + b`` (a view for ``nn.Linear``, a transposed view for GPT-2's ``Conv1D``)."""
    return module.weight.t() if isinstance(module, Conv1D) else module.weight


@torch.no_grad()
def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write the (out, in) matrix ``matrix`` into the module's weight, in its own layout and dtype."""
    target = module.weight
    target.copy_((matrix.t() if isinstance(module, Conv1D) else matrix).to(dtype=target.dtype, device=target.device))


def projection_bias(module: nn.Module) -> torch.Tensor | None:
    return getattr(module, "bias", None)


@contextmanager
def recorded_keys(module: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward pass appends the module's input (B, T, in) to the yielded list (detached)."""
    seen: list[torch.Tensor] = []

    def record(_: nn.Module, args: tuple[Any, ...]) -> None:
        seen.append(args[0].detach())

    handle = module.register_forward_pre_hook(record)
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def added_to_output(module: nn.Module, positions: torch.Tensor, delta: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Within the block, the module's output gets ``delta`` (out,) added where ``positions`` (B, T) is 1.

    Yields a list that each forward pass extends with the unchanged output (B, T, out), detached:
    ROME's initial value is read from it.
    """
    before: list[torch.Tensor] = []

    def add(_: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        before.append(output.detach())
        return output + positions.unsqueeze(-1).to(output.dtype) * delta.to(output.dtype)  # (B, T, out)

    handle = module.register_forward_hook(add)
    try:
        yield before
    finally:
        handle.remove()


def token_character_spans(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text ``ids`` decode to and each token's character span in it, from decoding growing prefixes.

    Decoding (rather than re-tokenising a prompt string) works for every prompt format,
    chat templates included: the spans are those of the very ids the model reads.
    """
    spans, previous = [], 0
    for end in range(1, len(ids) + 1):
        length = len(tokenizer.decode(ids[:end], skip_special_tokens=False))
        spans.append((previous, max(previous, length)))
        previous = max(previous, length)
    return tokenizer.decode(ids, skip_special_tokens=False), spans


def last_token_of(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str, where: str) -> int:
    """Index in ``ids`` of the last token overlapping the last occurrence of ``text`` (ROME's "subject_last")."""
    decoded, spans = token_character_spans(tokenizer, ids)
    start = decoded.rfind(text)
    if start < 0:
        raise UnlearnkitError(f"{where}: {text!r} does not occur in the tokenised prompt {decoded!r}; "
                              "the subject must be written in the question as it is in the subject field.")
    end = start + len(text)
    covering = [index for index, (first, last) in enumerate(spans) if first < end and last > start]
    return covering[-1]


def last_tokens_of_each(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str) -> list[int]:
    """Indices in ``ids`` of the last token of every occurrence of ``text`` (an answer that repeats the subject has several)."""
    decoded, spans = token_character_spans(tokenizer, ids)
    found, start = [], decoded.find(text) if text else -1
    while start >= 0:
        end = start + len(text)
        covering = [index for index, (first, last) in enumerate(spans) if first < end and last > start]
        if covering and covering[-1] not in found:
            found.append(covering[-1])
        start = decoded.find(text, end)
    return found


def first_token_of(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], text: str) -> int | None:
    """Index in ``ids`` of the first token overlapping the first occurrence of ``text``; None when it does not occur."""
    decoded, spans = token_character_spans(tokenizer, ids)
    start = decoded.find(text)
    if start < 0 or not text:
        return None
    end = start + len(text)
    return next(index for index, (first, last) in enumerate(spans) if first < end and last > start)


@contextmanager
def layer_outputs(model: nn.Module, layers: Sequence[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, forward passes store each listed decoder layer's output hidden states (B, T, H), with gradients."""
    _, blocks = decoder_layers(model)
    outputs: dict[int, torch.Tensor] = {}
    handles = []
    for index in layers:
        def keep(_: nn.Module, args: tuple[Any, ...], output: Any, index: int = index) -> None:
            outputs[index] = output[0] if isinstance(output, tuple) else output
        handles.append(blocks[index].register_forward_hook(keep))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
