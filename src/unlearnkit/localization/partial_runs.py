"""Running a decoder from one of its layers up, on hidden states computed earlier: the exact shortcut of the localizers.

Causal tracing (Meng et al., "Locating and Editing Factual Associations in GPT",
NeurIPS 2022) and DEPN (Wu et al., "Detecting and Editing Privacy Neurons in
Pretrained Language Models", EMNLP 2023) rerun a model many times with a change
at one layer; everything below that layer is the same in every rerun. These
helpers start a forward pass at a given layer, from the states an earlier run
recorded at its input, so the layers below are never recomputed.

Only model families whose forward is known to take ``inputs_embeds`` straight
into the first decoder layer, ``position_ids`` and a ready 4D attention mask,
and whose decoder layers return the hidden states as one tensor, are run this
way (:data:`LAYER_SKIPPING_MODELS`); callers keep a plain path for the others.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from unlearnkit.parameters import decoder_layers

# config.model_type of the families whose decoder stack (transformers 5) is checked to allow starting at any layer.
LAYER_SKIPPING_MODELS = ("llama",)


def supports_layer_skipping(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) in LAYER_SKIPPING_MODELS


def takes_custom_masks(model: nn.Module) -> bool:
    """Whether the attention reads a 4D additive mask as given (eager and SDPA do; flash-attention kernels do not)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None) in ("eager", "sdpa")


class _SkippedLayer(nn.Module):
    """Stands in for a decoder layer below the starting one: passes the (already computed) hidden states through."""

    def forward(self, hidden_states: Tensor, *args: object, **kwargs: object) -> Tensor:
        return hidden_states


@contextlib.contextmanager
def starting_at_layer(model: nn.Module, first: int) -> Iterator[None]:
    """Within the block, ``model(inputs_embeds=h, ...)`` feeds ``h`` to decoder layer ``first`` (the layers below are skipped).

    The skipped layers write nothing to a key/value cache: the caller passes a
    cache that already holds every layer's keys and values for the prefix.
    """
    _, blocks = decoder_layers(model)
    kept = [blocks[index] for index in range(first)]
    try:
        for index in range(first):
            blocks[index] = _SkippedLayer()
        yield
    finally:
        for index, block in enumerate(kept):
            blocks[index] = block


@contextlib.contextmanager
def recording_layer_inputs(model: nn.Module, record: dict[int, Tensor]) -> Iterator[None]:
    """Within the block, each forward pass stores decoder layer l's input hidden states ``(B, T, d)`` in ``record[l]``."""
    _, blocks = decoder_layers(model)

    def recorder(index: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            record[index] = (args[0] if args else kwargs["hidden_states"]).detach()
        return hook

    handles = [block.register_forward_pre_hook(recorder(index), with_kwargs=True) for index, block in enumerate(blocks)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def repeated_cache(cache: object, copies: int, length: int | None, config: object) -> object:
    """A fresh DynamicCache holding the first ``length`` positions (None: all) of a batch-of-one ``cache``, ``copies`` times.

    The tensors are expanded views: each layer's update concatenates into new tensors, so the source stays intact.
    """
    from transformers import DynamicCache

    def take(tensor: Tensor) -> Tensor:
        tensor = tensor if length is None else tensor[:, :, :length]
        return tensor.expand(copies, *tensor.shape[1:])

    return DynamicCache([(take(layer.keys), take(layer.values)) for layer in cache.layers], config=config)


def additive_mask(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """A boolean ``(B, 1, q, k)`` attend-here mask as the additive float mask both eager and SDPA attention take."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)
