"""Negative preference optimisation with a retain term (NPO+RT, or NPO+KL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import (
    MethodConfig,
    UnlearnTrainer,
    cache_reference_field,
    check_retain_kl_positions,
    check_retain_loss,
    register_method,
    retain_kl_positions_field,
)
from unlearnkit.settings import require_non_negative, require_positive


@dataclass
class NPOConfig(MethodConfig):
    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the NPO loss (authors: 0.1)."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (authors' npo_coeff = grad_diff_coeff = 1)."})
    retain_loss: str = field(default="nll", metadata={"help": "Retain term: 'nll' (NPO+RT) or 'kl' (NPO+KL)."})
    retain_kl_positions: str = retain_kl_positions_field()
    num_epochs: float = field(default=10.0, metadata={"help": "Passes over the forget set (authors: 10 on TOFU)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps for warm-up (one epoch of ten)."})
    cache_reference: bool = cache_reference_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(beta=self.beta)
        require_non_negative(alpha=self.alpha)  # a negative weight would ascend on the retain set
        check_retain_loss(self.retain_loss)
        check_retain_kl_positions(self.retain_kl_positions)

    def needs_reference(self) -> bool:
        # The cached forget NLLs replace the reference model, except for the token-level KL retain term.
        return not self.cache_reference or self.retain_loss == "kl"


@register_method(
    "npo",
    config=NPOConfig,
    paper='Zhang et al., "Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning", COLM 2024',
    summary="L = -(2/beta) log sigmoid(beta (NLL_theta - NLL_ref)) on D_f + alpha * retain term.",
)
class NPO(UnlearnTrainer):
    """NPO (Zhang et al., COLM 2024) with sequence-sum NLLs against the frozen reference."""

    cached_reference_keys = ("forget",)

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        forget = inputs["forget"]
        nll = losses.sequence_nll(self.logits(model, forget), forget["labels"])
        loss = losses.npo_loss(nll, self.reference_sequence_nll(forget), config.beta)
        self.record(forget_loss=loss)
        loss = loss + config.alpha * self.retain_loss(model, inputs["retain"], config.retain_loss)
        return (loss, None) if return_outputs else loss
