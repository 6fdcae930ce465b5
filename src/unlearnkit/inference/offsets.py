"""What the logit-combining wrappers (δ-unlearning, ULD) share.

The tokenizer check (component models must read text as the target does),
incremental decoding with one key/value cache per component model, and the
small training loop over paired forget/retain batches.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat, encode_qa, pad_batch
from unlearnkit.errors import NumericalFault, UnlearnkitError
from unlearnkit.inference.base import position_ids_of
from unlearnkit.provenance import tokenizer_sha256

logger = logging.getLogger("unlearnkit")


def check_same_tokenizer(
    tokenizer: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase, model: nn.Module, other_model: nn.Module, what: str
) -> None:
    """Refuse a component model whose tokenizer or output vocabulary differs from the target's.

    Logits are added token id by token id, so the two models must read the same
    ids as the same text (same vocabulary and merges, :func:`tokenizer_sha256`),
    agree on the special tokens that start, end and pad a sequence, and produce
    the same number of logits.
    """
    problems = []
    if tokenizer_sha256(tokenizer) != tokenizer_sha256(other):
        problems.append(f"their vocabularies differ ({len(tokenizer.get_vocab())} vs {len(other.get_vocab())} tokens)")
    for special in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        mine, theirs = getattr(tokenizer, special, None), getattr(other, special, None)
        if mine != theirs:
            problems.append(f"{special} is {mine} for the target but {theirs} for {what}")
    rows, other_rows = _output_rows(model), _output_rows(other_model)
    if rows != other_rows:
        problems.append(f"the target has {rows} output logits but {what} {other_rows}")
    if problems:
        raise UnlearnkitError(
            f"{what} does not share the target's tokenizer: {'; '.join(problems)}. Logits can only be combined between models "
            "of one tokenizer: use a model of the target's family (the same tokenizer), or leave the setting out."
        )


def _output_rows(model: nn.Module) -> int:
    head = model.get_output_embeddings()
    return int(head.weight.shape[0]) if head is not None else int(model.config.vocab_size)


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


class IncrementalLogits:
    """Last-position logits of several causal LMs on a growing left-padded batch, each with its own key/value cache.

    ``generate`` asks for the next token's logits with the whole sequence so far;
    when the batch extends the one of the previous call (same rows, same prefix
    and mask), only the new tokens run, on each model's cache. Anything else (a
    new batch) starts over. Positions are counted over real tokens, as
    :func:`position_ids_of` gives them to the full forward pass, so the cached and
    the full computation see the same inputs.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ids: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.caches: list[Any] = []

    def _extends(self, ids: torch.Tensor, mask: torch.Tensor, count: int) -> bool:
        if self.ids is None or self.mask is None or len(self.caches) != count:
            return False
        width = self.ids.shape[1]
        return (ids.shape[0] == self.ids.shape[0] and ids.shape[1] > width and torch.equal(ids[:, :width], self.ids)
                and torch.equal(mask[:, :width], self.mask))

    @torch.no_grad()
    def __call__(self, models: Sequence[nn.Module], ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """One (B, V) logits tensor per model, for the position after the last of ``ids`` (B, T)."""
        start = self.ids.shape[1] if self._extends(ids, mask, len(models)) else 0
        caches = self.caches if start else [None] * len(models)
        positions = position_ids_of(mask)[:, start:]  # (B, T - start)
        outputs, new_caches = [], []
        for model, cache in zip(models, caches, strict=True):
            extra = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
            out = model(input_ids=ids[:, start:], attention_mask=mask, position_ids=positions, past_key_values=cache,
                        use_cache=True, **extra)
            outputs.append(out.logits[:, -1])
            new_caches.append(out.past_key_values)
        self.ids, self.mask, self.caches = ids, mask, new_caches
        return outputs


class CachedDecodingMixin:
    """``next_token_logits`` through :class:`IncrementalLogits`, its caches dropped when ``generate`` returns."""

    decoder: IncrementalLogits

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        try:
            return super().generate(*args, **kwargs)  # type: ignore[misc]
        finally:
            self.decoder.reset()


def encode_rows(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, pairs: Sequence[tuple[str, str]], max_length: int
) -> list[dict[str, list[int]]]:
    """Prompt + answer ids of each (question, answer) pair, loss on the answer (``encode_qa``)."""
    return [encode_qa(tokenizer, fmt, question, answer, max_length) for question, answer in pairs]


def paired_batches(forget: int, retain: int, batch_size: int, epochs: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Micro-batches of forget indices, each paired with as many retain indices (``retain`` = 0: none).

    Each epoch visits the forget rows once in a fresh shuffled order; the retain
    rows are drawn in shuffled order, reshuffled whenever they run out, as the
    methods' paired dataset does.
    """
    generator = random.Random(seed)
    retain_order: list[int] = []
    batches = []
    for _ in range(epochs):
        order = list(range(forget))
        generator.shuffle(order)
        for start in range(0, forget, batch_size):
            chosen = order[start:start + batch_size]
            partners = []
            while retain and len(partners) < len(chosen):
                if not retain_order:
                    retain_order = list(range(retain))
                    generator.shuffle(retain_order)
                partners.append(retain_order.pop())
            batches.append((chosen, partners))
    return batches


def batch_of(features: Sequence[dict[str, list[int]]], indices: Sequence[int], pad_token_id: int, device: torch.device
             ) -> dict[str, torch.Tensor]:
    """The right-padded batch (input_ids, labels, attention_mask) of ``features[indices]`` on ``device``."""
    return {key: value.to(device) for key, value in pad_batch([features[i] for i in indices], pad_token_id).items()}


@dataclass(frozen=True)
class Optimisation:
    """What :func:`optimise` needs of a wrapper's settings."""

    learning_rate: float
    weight_decay: float
    warmup_ratio: float
    gradient_accumulation_steps: int
    max_grad_norm: float


def optimise(
    parameters: Sequence[nn.Parameter],
    batches: Sequence[Any],
    loss_of: Callable[[Any], torch.Tensor],
    settings: Optimisation,
    progress: bool,
    what: str,
) -> list[float]:
    """AdamW over ``parameters``: one backward pass per micro-batch, a step every ``gradient_accumulation_steps``.

    Linear warm-up over ``warmup_ratio`` of the steps, then linear decay to 0 (the
    Hugging Face Trainer's default schedule); gradients clipped to
    ``max_grad_norm``. Returns the loss of each optimiser step (the mean of its
    micro-batches). A non-finite loss stops the build with :class:`NumericalFault`.
    """
    from tqdm.auto import tqdm

    accumulation = settings.gradient_accumulation_steps
    steps = math.ceil(len(batches) / accumulation)
    warmup = int(settings.warmup_ratio * steps)
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (steps - step) / max(1, steps - warmup))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    history = []
    for step in tqdm(range(steps), desc=what, disable=not progress):
        group = batches[step * accumulation:(step + 1) * accumulation]
        total = 0.0
        for batch in group:
            loss = loss_of(batch) / len(group)
            if not torch.isfinite(loss):
                raise NumericalFault(f"Building {what}: the training loss became {loss.item() * len(group)} at step {step}; "
                                     "nothing was saved. Lower learning_rate.")
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.append(total)
    logger.info("%s: %d optimiser steps, loss %.4f -> %.4f", what, steps, history[0] if history else float("nan"),
                history[-1] if history else float("nan"))
    return history


def training_summary(step_losses: Sequence[float]) -> dict[str, Any]:
    """What a build's training did, for its summary: optimiser steps and the first and last step's loss."""
    return {"optimiser_steps": len(step_losses), "first_step_loss": step_losses[0] if step_losses else None,
            "last_step_loss": step_losses[-1] if step_losses else None}
