"""Gradient ascent with random mismatch and KL on normal data.

Yao, Xu & Liu, "Large Language Model Unlearning", NeurIPS 2024 (arXiv 2310.10683)::

    L = w_bad · (−ℓ̄(D_f)) + w_rand · ℓ̄(forget question → K random normal answers) + w_norm · KL(p_pre ‖ p_θ) on D_r

Gradient ascent removes the forget answers; the mismatch term teaches the forget
questions harmless unrelated answers (here: answers of random retain rows, the
authors use TruthfulQA answers); the KL term keeps the model close to the
pre-unlearning one on normal (retain) data.

Choices and how the authors' settings map:

* Normalisation: each NLL is the per-token mean over the batch's answer tokens,
  as everywhere in this library. The authors' code averages per-sequence means,
  which weighs a short answer as much as a long one; the scale is the same.
* The K mismatched answers are drawn per forget example, without replacement,
  from the retain rows (the authors draw K per batch and pair all its questions
  with them); only their answer tokens are scored (the authors' code computes the
  mismatch pairs' answer start as the length of a tokenizer output dict, 2, and so
  scores nearly the whole text). All K·B mismatched pairs run as one batch.
* The KL term is the mean over every position of the padded normal batch, as the
  authors' (utils.py compute_kl); they write it as the cross-entropy −Σ p_pre log p_θ,
  which differs from the KL by the entropy of p_pre, a constant, so the gradient with
  respect to θ is the same. ``retain_kl_positions="answer"`` averages over the
  positions predicting answer tokens instead.
* Stop rule: the authors stop when the forget ("bad") loss reaches
  ``max_bad_loss`` = 100, which maps to ``stop_forget_nll`` = 100 (their printed bad
  loss is the mean forget NLL; their loop compares the negated value, so as written
  the rule never fires). Their step budget (1000 steps of batch 2) has no epoch
  equivalent in general: five epochs of TOFU's forget10 at batch 2 are 1000 steps.
* Defaults: w_bad 0.5, w_rand 1, w_norm 1, K 5, lr 2e-6, batch 2, linear schedule
  without warm-up (the authors', for OPT-1.3B).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import (
    MethodConfig,
    UnlearnTrainer,
    check_retain_kl_positions,
    register_method,
    retain_kl_positions_field,
)


@dataclass
class GAMismatchConfig(MethodConfig):
    bad_weight: float = field(default=0.5, metadata={"help": "Weight w_bad of gradient ascent on the forget answers (authors: 0.5)."})
    random_weight: float = field(
        default=1.0, metadata={"help": "Weight w_rand of the NLL of forget questions with random retain answers (authors: 1)."}
    )
    normal_weight: float = field(default=1.0, metadata={"help": "Weight w_norm of KL(p_pre || p_theta) on retain data (authors: 1)."})
    retain_kl_positions: str = retain_kl_positions_field()
    num_mismatched: int = field(default=5, metadata={"help": "K: random retain answers paired with each forget question (authors: 5)."})
    learning_rate: float = field(default=2e-6, metadata={"help": "Peak learning rate of AdamW (authors: 2e-6 for OPT-1.3B)."})
    batch_size: int = field(default=2, metadata={"help": "Forget examples per optimiser step (authors: 2)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of steps for warm-up (authors: none)."})
    stop_forget_nll: float | None = field(
        default=100.0,
        metadata={"help": "Stop once a batch's mean forget-answer NLL exceeds this (authors' max_bad_loss: 100; None: off)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("bad_weight", "random_weight", "normal_weight"):
            if getattr(self, name) < 0:
                raise UnlearnkitError(f"{name} must be >= 0 (0 drops that term), got {getattr(self, name)}.")
        check_retain_kl_positions(self.retain_kl_positions)
        if self.num_mismatched < 1:
            raise UnlearnkitError(f"num_mismatched must be >= 1, got {self.num_mismatched}.")
        if self.bad_weight == 0 and self.random_weight == 0:
            raise UnlearnkitError(
                "bad_weight and random_weight are both 0: only the retain term is left and nothing would be unlearned. "
                "Set bad_weight (authors: 0.5) or random_weight (authors: 1) above 0."
            )

    def needs_reference(self) -> bool:
        return True

    def check_data(self, forget: Sequence[dict], retain: Sequence[dict]) -> None:
        check_enough_answers(self, len(retain))


def mismatch_keys(config: GAMismatchConfig) -> list[str]:
    return [f"mismatch_{index}" for index in range(config.num_mismatched)]


def check_enough_answers(config: GAMismatchConfig, available: int) -> None:
    if available < config.num_mismatched:
        raise UnlearnkitError(
            f"ga_mismatch pairs each forget question with num_mismatched={config.num_mismatched} different retain answers, "
            f"and the retain data has {available} row(s). Lower num_mismatched or pass more retain data."
        )


def stack_batches(batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """One batch of all rows, right-padded to the widest: shapes ``(Σ B_k, max T_k)``."""
    width = max(batch["input_ids"].shape[1] for batch in batches)
    # Right padding sits after every real token and is masked, so the filler id never affects a scored position.
    fill = {"input_ids": 0, "labels": losses.IGNORE_INDEX, "attention_mask": 0}
    return {
        key: torch.cat([F.pad(batch[key], (0, width - batch[key].shape[1]), value=value) for batch in batches])
        for key, value in fill.items()
    }


@register_method(
    "ga_mismatch",
    config=GAMismatchConfig,
    paper='Yao, Xu & Liu, "Large Language Model Unlearning", NeurIPS 2024',
    summary="L = -w_bad NLL(D_f) + w_rand NLL(forget question -> K random retain answers) + w_norm KL(p_ref || p_theta) on D_r.",
)
class GAMismatch(UnlearnTrainer):
    """Gradient ascent + random-answer mismatch + KL on normal data (Yao, Xu & Liu, NeurIPS 2024)."""

    @classmethod
    def pair_extras(
        cls, config: GAMismatchConfig, rng: random.Random, forget_row: dict, retain_rows: Sequence[dict]
    ) -> dict[str, tuple[str, str]]:
        """The forget question with K answers of distinct random retain rows, under ``mismatch_0`` .. ``mismatch_{K-1}``."""
        check_enough_answers(config, len(retain_rows))
        picks = rng.sample(range(len(retain_rows)), config.num_mismatched)
        return {key: (forget_row["question"], retain_rows[row]["answer"]) for key, row in zip(mismatch_keys(config), picks, strict=True)}

    def setup(self) -> None:
        # pair_extras runs as batches are drawn; refuse a too-small retain set now, before the first step.
        check_enough_answers(self.method_config, len(self.train_dataset.retain_rows))

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        forget = inputs["forget"]
        mismatched = stack_batches([inputs[key] for key in mismatch_keys(config)])  # (K·B, T)
        forget_nll = losses.mean_nll(self.logits(model, forget), forget["labels"])
        mismatch_nll = losses.mean_nll(self.logits(model, mismatched), mismatched["labels"])
        normal_kl = self.retain_loss(model, inputs["retain"], "kl")
        loss = losses.ga_mismatch_loss(
            forget_nll, mismatch_nll, normal_kl, config.bad_weight, config.random_weight, config.normal_weight
        )
        self.record(forget_loss=-forget_nll, mismatch_loss=mismatch_nll)
        return (loss, None) if return_outputs else loss
