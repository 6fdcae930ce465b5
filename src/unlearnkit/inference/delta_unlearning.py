"""δ-unlearning: a small model's logit offset, learned by unlearning, added to a frozen large model's logits.

Huang et al., "Offset Unlearning for Large Language Models", arXiv 2024. The
wrapped model's logits are

    l(x) = l_base(x) + w · (l_θ^small(x) − l_orig^small(x)),   w = 1,

with the base (the target) and the original small model frozen, and the
unlearned small model θ initialised from the original. At build time an
unlearning loss (gradient ascent, gradient difference, NPO, NPO+RT) is applied
to the *combined* logits and only θ is updated, so at the start the offset is
exactly zero and the wrapped model is the target. The optimisation settings
are ULD's reimplementation of the method (Ji et al., NeurIPS 2024, code
``UCSB-NLP-Chang/ULD``, ``configs/model_mode/offset.yaml``): learning rate
1e-5, batch 2 × gradient accumulation 8, every weight of the small model
trained; the paper's own model pairs and settings could not be checked.

The small model must read text as the target does (same vocabulary, same
special tokens, same number of output logits): a pair whose tokenizers differ is
refused. Without a ``small_model`` the small original is a copy of the target
(the only model sharing the tokenizer of the tiny built-in benchmark, and of
SmolLM2-135M, the smallest of its family); the method's memory saving needs a
genuinely smaller model of the same family (e.g. SmolLM2-135M for a
SmolLM2-360M or 1.7B target).

"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.base import WrapData, WrappedModel, causal_lm_logits, register_wrapper
from unlearnkit.inference.offsets import (
    CachedDecodingMixin,
    IncrementalLogits,
    Optimisation,
    batch_of,
    check_same_tokenizer,
    encode_rows,
    optimise,
    paired_batches,
    training_summary,
)
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.settings import (
    check_choice,
    check_field_types,
    check_seed,
    require_at_least,
    require_fraction,
    require_non_negative,
    require_positive,
)

logger = logging.getLogger("unlearnkit")

SMALL_UNLEARNED_FOLDER = "small_unlearned"
DELTA_LOSSES = ("ga", "gd", "npo", "npo_rt")
RETAIN_LOSSES = ("gd", "npo_rt")  # the losses with a retain term


# --- δ-unlearning ------------------------------------------------------------------------------------------------


def offset_logits(base: torch.Tensor, small_unlearned: torch.Tensor, small_original: torch.Tensor, weight: float) -> torch.Tensor:
    """δ-unlearning's combination ``l_base + w · (l_θ − l_orig)``; any shape, all three alike ((B, T, V) or (B, V))."""
    if not base.shape == small_unlearned.shape == small_original.shape:
        raise ValueError(f"logits must have one shape; got base {tuple(base.shape)}, small unlearned "
                         f"{tuple(small_unlearned.shape)}, small original {tuple(small_original.shape)}.")
    return base + weight * (small_unlearned - small_original)


@dataclass
class DeltaUnlearningConfig:
    """Settings of δ-unlearning (Huang et al., 2024); optimisation as in ULD's reimplementation of it."""

    small_model: str | None = field(
        default=None,
        metadata={"help": "The small original model: a folder or pretrained name sharing the target's tokenizer "
                          "(None: a copy of the target, the only such model for the tiny built-in benchmark)."},
    )
    weight: float = field(default=1.0, metadata={"help": "w in l_base + w (l_small_unlearned - l_small_original) (authors: 1)."})
    loss: str = field(
        default="gd",
        metadata={"help": "Unlearning loss on the combined logits: ga (gradient ascent), gd (ga + retain NLL), npo, "
                          "npo_rt (npo + retain NLL)."},
    )
    retain_weight: float = field(default=1.0, metadata={"help": "gd / npo_rt: weight of the retain NLL (TOFU, NPO: 1)."})
    npo_beta: float = field(default=0.1, metadata={"help": "npo / npo_rt: inverse temperature beta (NPO's TOFU setting: 0.1)."})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the small model (ULD's offset: 1e-5)."})
    num_epochs: int = field(default=5, metadata={"help": "Passes over the forget set (TOFU's unlearning recipes: 5)."})
    batch_size: int = field(default=2, metadata={"help": "Forget rows per micro-batch, each paired with a retain row (ULD's offset: 2)."})
    gradient_accumulation_steps: int = field(default=8, metadata={"help": "Micro-batches per optimiser step (ULD's offset: 8)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (TOFU: 0.01)."})
    warmup_ratio: float = field(default=0.2, metadata={"help": "Share of steps of linear warm-up, then linear decay (TOFU: 1 epoch of 5)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    max_length: int = field(default=256, metadata={"help": "Maximum tokens per training example."})
    seed: int = field(default=0, metadata={"help": "Seed of the data order."})

    def __post_init__(self) -> None:
        check_field_types(self)
        check_choice("loss", self.loss, DELTA_LOSSES)
        require_positive(learning_rate=self.learning_rate, npo_beta=self.npo_beta, max_grad_norm=self.max_grad_norm)
        require_non_negative(retain_weight=self.retain_weight, weight_decay=self.weight_decay)
        require_at_least(1, num_epochs=self.num_epochs, batch_size=self.batch_size,
                         gradient_accumulation_steps=self.gradient_accumulation_steps)
        require_at_least(2, max_length=self.max_length)
        require_fraction("warmup_ratio", self.warmup_ratio, high_open=True)
        check_seed("seed", self.seed)
        if self.small_model is not None and not self.small_model.strip():
            raise UnlearnkitError("small_model is empty: give a model folder or pretrained name, or none (a copy of the target).")

    def optimisation(self) -> Optimisation:
        return Optimisation(self.learning_rate, self.weight_decay, self.warmup_ratio, self.gradient_accumulation_steps,
                            self.max_grad_norm)


@register_wrapper(
    "delta_unlearning",
    config=DeltaUnlearningConfig,
    paper='Huang et al., "Offset Unlearning for Large Language Models", arXiv 2024',
    summary="logits = target + w (small unlearned - small original); the small model unlearned through the combined logits.",
    family="logits",
    needs_retain=True,
)
class DeltaUnlearning(CachedDecodingMixin, WrappedModel):
    """δ-unlearning (Huang et al., 2024): the target plus the logit offset of a pair of small models."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: DeltaUnlearningConfig,
                 small_unlearned: PreTrainedModel, small_original: PreTrainedModel) -> None:
        super().__init__(model, tokenizer, settings)
        # Registered after the target, so layer-based attacks find the target's decoder layers first.
        self.small_unlearned = small_unlearned
        self.small_original = small_original
        self.decoder = IncrementalLogits()

    def wrapped_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = causal_lm_logits(self.model, input_ids, attention_mask)  # (B, T, V)
        unlearned = causal_lm_logits(self.small_unlearned, input_ids, attention_mask)
        original = causal_lm_logits(self.small_original, input_ids, attention_mask)
        return offset_logits(base, unlearned, original, self.settings.weight)

    def next_token_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base, unlearned, original = self.decoder([self.model, self.small_unlearned, self.small_original], input_ids, attention_mask)
        return offset_logits(base, unlearned, original, self.settings.weight)  # (B, V)

    # Saving and loading ---------------------------------------------------------------------------------------------
    def save_parts(self, folder: Path) -> dict[str, Any]:
        self.small_unlearned.save_pretrained(folder / SMALL_UNLEARNED_FOLDER, safe_serialization=True)
        return {"small_unlearned": SMALL_UNLEARNED_FOLDER, "small_original": self.settings.small_model or "a copy of the target"}

    @classmethod
    def load_parts(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: DeltaUnlearningConfig, folder: Path,
                   parts: Mapping[str, Any]) -> DeltaUnlearning:
        original = _small_original(model, tokenizer, settings)
        name = parts.get("small_unlearned")
        if not isinstance(name, str):
            raise UnlearnkitError(f"{folder}/wrapper.json lacks the small unlearned model's folder (parts.small_unlearned); "
                                  "build the wrapped model again.")
        unlearned = load_model(folder / name, dtype=model.dtype).to(model.device)
        check_same_tokenizer(tokenizer, tokenizer, original, unlearned, f"the small unlearned model in {folder / name}")
        if type(unlearned) is not type(original) or unlearned.config.num_hidden_layers != original.config.num_hidden_layers:
            raise UnlearnkitError(f"The small unlearned model in {folder / name} is not of the small original's architecture "
                                  f"({settings.small_model or 'the target'}); build the wrapped model again.")
        return cls(model, tokenizer, settings, _frozen(unlearned), _frozen(original))

    # Building -------------------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: WrapData, settings: DeltaUnlearningConfig,
              progress: bool = False) -> DeltaUnlearning:
        if not data.forget:
            raise UnlearnkitError("δ-unlearning needs forget rows to unlearn.")
        if settings.loss in RETAIN_LOSSES and not data.retain:
            raise UnlearnkitError(f"loss={settings.loss} has a retain term but no retain rows were given: give retain data, "
                                  "or use loss=ga or loss=npo.")
        original = _small_original(model, tokenizer, settings)
        unlearned = copy.deepcopy(original)  # θ starts at the original: the offset is zero before training
        wrapped = cls(model, tokenizer, settings, unlearned, original)
        steps = wrapped.train_offset(data, progress)
        wrapped.build_record = training_summary(steps)
        return wrapped

    def train_offset(self, data: WrapData, progress: bool) -> list[float]:
        """Unlearn through the combined logits, updating the small unlearned model only; the step losses."""
        settings = self.settings
        forget = encode_rows(self.tokenizer, data.fmt, [(r["question"], r["answer"]) for r in data.forget], settings.max_length)
        uses_retain = settings.loss in RETAIN_LOSSES
        retain = encode_rows(self.tokenizer, data.fmt, [(r["question"], r["answer"]) for r in data.retain], settings.max_length) \
            if uses_retain else []
        batches = paired_batches(len(forget), len(retain), settings.batch_size, settings.num_epochs, settings.seed)
        self.model.requires_grad_(False)
        self.small_original.requires_grad_(False)
        self.small_unlearned.requires_grad_(True)
        self.small_unlearned.train()  # dropout as the small model was configured (none in the models here)
        pad, device = self.tokenizer.pad_token_id, self.device

        def combined(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            """(combined logits with the gradient reaching θ only, the frozen base logits), both (B, T, V)."""
            ids, mask = batch["input_ids"], batch["attention_mask"]
            with torch.no_grad():
                base = causal_lm_logits(self.model, ids, mask)
                original = causal_lm_logits(self.small_original, ids, mask)
            return offset_logits(base, causal_lm_logits(self.small_unlearned, ids, mask), original, settings.weight), base

        def loss_of(pair: tuple[list[int], list[int]]) -> torch.Tensor:
            forget_batch = batch_of(forget, pair[0], pad, device)
            logits, base = combined(forget_batch)
            if settings.loss in ("ga", "gd"):
                loss = losses.gradient_ascent_loss(logits, forget_batch["labels"])
            else:
                # π_ref is the wrapped model before unlearning, whose offset is zero: the base model itself.
                reference = losses.sequence_nll(base, forget_batch["labels"])
                loss = losses.npo_loss(losses.sequence_nll(logits, forget_batch["labels"]), reference, settings.npo_beta)
            if uses_retain:
                retain_batch = batch_of(retain, pair[1], pad, device)
                loss = loss + settings.retain_weight * losses.mean_nll(combined(retain_batch)[0], retain_batch["labels"])
            return loss

        try:
            return optimise([p for p in self.small_unlearned.parameters() if p.requires_grad], batches, loss_of,
                            settings.optimisation(), progress, "δ-unlearning")
        finally:
            self.small_unlearned.requires_grad_(False)
            self.small_unlearned.eval()


def _frozen(model: PreTrainedModel) -> PreTrainedModel:
    model.requires_grad_(False)
    return model.eval()


def _small_original(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: DeltaUnlearningConfig) -> PreTrainedModel:
    """The frozen small original: the model ``small_model`` names (its tokenizer checked against the target's), or a copy of the target."""
    if settings.small_model is None:
        return _frozen(copy.deepcopy(model))
    try:
        small_tokenizer = load_tokenizer(settings.small_model)
        small = load_model(settings.small_model, dtype=model.dtype)
    except UnlearnkitError as error:
        raise UnlearnkitError(f"small_model={settings.small_model} cannot be loaded: {error}") from None
    check_same_tokenizer(tokenizer, small_tokenizer, model, small, f"small_model={settings.small_model}")
    return _frozen(small.to(model.device))
