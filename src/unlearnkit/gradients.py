"""Gradient partitioning for PCGU: split gradients into blocks, compare two of them block by block, keep a few blocks.

Every function here is pure: gradient tensors in, tensors out, no model calls.

A *block* is one vector of a parameter's gradient. A 1-D parameter (a bias or
a norm scale) is one block. A parameter with two or more dimensions is split
into vectors along one dimension, as in Yu et al.'s ``partition_params.py``:

* ``"rows"`` ("input aggregation", the authors' default): vectors along the last
  dimension, so a weight ``W`` of shape ``(out, in)`` gives ``out`` blocks ``W[i, :]``,
  each gathering every input weight of one output unit;
* ``"columns"`` ("output aggregation", ``--output-agg``): vectors along the
  second-to-last dimension, so ``W`` gives ``in`` blocks ``W[:, j]``.

Reference: Yu et al., "Unlearning Bias in Language Models by Partitioning
Gradients", Findings of ACL 2023.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PARTITIONS = ("rows", "columns")


def _check_partition(partition: str) -> None:
    if partition not in PARTITIONS:
        raise ValueError(f"partition must be one of {', '.join(PARTITIONS)}; got {partition!r}.")


def gradient_blocks(gradient: Tensor, partition: str = "rows") -> Tensor:
    """The blocks of one parameter's gradient as the rows of a ``(num_blocks, block_size)`` tensor.

    A 1-D gradient of size ``n`` gives ``(1, n)``; an ``(out, in)`` gradient gives
    ``(out, in)`` for ``"rows"`` and ``(in, out)`` for ``"columns"``; leading
    dimensions of a higher-dimensional gradient multiply the number of blocks.
    """
    _check_partition(partition)
    if gradient.dim() == 0:
        raise ValueError("a scalar parameter has no vector to compare; PCGU needs parameters with at least one dimension.")
    if gradient.dim() == 1:
        return gradient.unsqueeze(0)
    if partition == "columns":
        gradient = gradient.movedim(-2, -1)
    return gradient.reshape(-1, gradient.shape[-1])


def block_count(shape: torch.Size | Sequence[int], partition: str = "rows") -> int:
    """Number of blocks a parameter of ``shape`` splits into."""
    _check_partition(partition)
    if len(shape) == 1:
        return 1
    kept_dim = -1 if partition == "rows" else -2
    return math.prod(shape) // shape[kept_dim]


def block_cosine_similarity(update: Tensor, contrast: Tensor, partition: str = "rows") -> Tensor:
    """Cosine similarity of two gradients of one parameter, block by block; shape ``(num_blocks,)``.

    A block where ``update`` is zero everywhere gets ``+inf``: keeping it would
    change nothing, so it must not take the place of a block that can move.
    (The authors' ``F.cosine_similarity`` gives such a block 0, which can spend
    their top-k budget on blocks the update leaves as they are.) A block where
    only ``contrast`` is zero gets 0: the two gradients share no direction.
    """
    if update.shape != contrast.shape:
        raise ValueError(f"the two gradients must have the same shape; got {tuple(update.shape)} and {tuple(contrast.shape)}.")
    update_blocks = gradient_blocks(update, partition).float()
    contrast_blocks = gradient_blocks(contrast, partition).float()
    similarity = F.cosine_similarity(update_blocks, contrast_blocks, dim=-1)
    moves = update_blocks.ne(0).any(dim=-1)
    return torch.where(moves, similarity, torch.full_like(similarity, math.inf))


def blocks_to_keep(num_blocks: int, top_k: int | None, top_fraction: float | None = None) -> int:
    """How many blocks to keep: ``ceil(top_fraction * num_blocks)`` when a fraction is given, else ``top_k``.

    Either way the result is capped at ``num_blocks`` (a ``top_k`` beyond the
    number of blocks keeps them all), and ``top_k=None`` without a fraction
    keeps every block (the authors' ``--use-full-grad``).
    """
    if num_blocks < 1:
        raise ValueError(f"there must be at least one block; got {num_blocks}.")
    if top_fraction is not None:
        if not 0 < top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1]; got {top_fraction}.")
        return min(num_blocks, max(1, math.ceil(top_fraction * num_blocks)))
    if top_k is None:
        return num_blocks
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None for every block); got {top_k}.")
    return min(num_blocks, top_k)


def lowest_similarity_masks(similarities: Sequence[Tensor], k: int) -> list[Tensor]:
    """Boolean masks, one per parameter, marking the ``k`` blocks of lowest similarity over ALL parameters.

    ``similarities[p]`` has shape ``(num_blocks_p,)``; the ``k`` smallest values of
    their concatenation are kept (the authors' ``topk(k, largest=False)``; ties are
    broken by ``torch.topk``). ``k`` larger than the number of blocks keeps all.
    """
    if not similarities:
        raise ValueError("no similarities were given: PCGU needs at least one trainable parameter.")
    flat = torch.cat([s.reshape(-1).float() for s in similarities])
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[torch.topk(flat, min(k, flat.numel()), largest=False).indices] = True
    return list(keep.split([s.numel() for s in similarities]))


def expand_block_mask(block_mask: Tensor, shape: torch.Size | Sequence[int], partition: str = "rows") -> Tensor:
    """A per-block mask ``(num_blocks,)`` broadcast to every entry of a parameter of ``shape``."""
    shape = torch.Size(shape)
    expected = block_count(shape, partition)
    if block_mask.numel() != expected:
        raise ValueError(f"a parameter of shape {tuple(shape)} has {expected} {partition} blocks; got a mask of {block_mask.numel()}.")
    if len(shape) == 1:
        return block_mask.reshape(1).expand(shape)
    if partition == "rows":
        return block_mask.reshape(*shape[:-1], 1).expand(shape)
    # Columns: blocks enumerate the leading dimensions and the last one; dimension -2 runs along each block.
    return block_mask.reshape(*shape[:-2], 1, shape[-1]).expand(shape)


def partitioned_gradient_masks(
    update: Sequence[Tensor | None],
    contrast: Sequence[Tensor | None],
    top_k: int | None,
    top_fraction: float | None = None,
    partition: str = "rows",
) -> list[Tensor | None]:
    """PCGU's selection: entry masks that keep the blocks where ``update`` and ``contrast`` agree least.

    Args:
        update: per-parameter gradients of the quantity the step acts on (PCGU:
            ``∇ log p(forget answer)``); ``None`` for a parameter the loss does not reach.
        contrast: the same parameters' gradients for the contrasting sequence.
        top_k, top_fraction: how many blocks to keep (see :func:`blocks_to_keep`),
            counted over the blocks of the parameters that have both gradients.
        partition: ``"rows"`` or ``"columns"`` (see the module docstring).

    Returns:
        One boolean tensor per parameter, shaped like the parameter (``True`` on the
        entries of kept blocks), or ``None`` where either gradient is ``None``.
    """
    if len(update) != len(contrast):
        raise ValueError(f"update and contrast must list the same parameters; got {len(update)} and {len(contrast)} gradients.")
    compared = [index for index, (u, c) in enumerate(zip(update, contrast, strict=True)) if u is not None and c is not None]
    if not compared:
        raise ValueError("no parameter has both gradients: the losses reach none of the trainable parameters.")
    similarities = [block_cosine_similarity(update[i], contrast[i], partition) for i in compared]
    k = blocks_to_keep(sum(s.numel() for s in similarities), top_k, top_fraction)
    masks: list[Tensor | None] = [None] * len(update)
    for index, block_mask in zip(compared, lowest_similarity_masks(similarities, k), strict=True):
        masks[index] = expand_block_mask(block_mask, update[index].shape, partition)
    return masks
