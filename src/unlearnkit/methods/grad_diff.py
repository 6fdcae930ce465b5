"""Gradient difference: ascend on the forget set, descend (or stay close to the reference) on the retain set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import (
    MethodConfig,
    UnlearnTrainer,
    check_retain_kl_positions,
    check_retain_loss,
    register_method,
    retain_kl_positions_field,
)
from unlearnkit.settings import require_non_negative, require_positive


@dataclass
class GradDiffConfig(MethodConfig):
    gamma: float = field(default=1.0, metadata={"help": "Weight of the forget (gradient-ascent) term."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term."})
    retain_loss: str = field(default="nll", metadata={"help": "Retain term: 'nll' (answer NLL) or 'kl' (KL to the reference model)."})
    retain_kl_positions: str = retain_kl_positions_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        # A negative gamma descends on the forget set (learns it more); 0 leaves nothing to unlearn.
        require_positive(gamma=self.gamma)
        require_non_negative(alpha=self.alpha)
        check_retain_loss(self.retain_loss)
        check_retain_kl_positions(self.retain_kl_positions)

    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"


@register_method(
    "graddiff",
    config=GradDiffConfig,
    paper='Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024',
    summary="L = -gamma * NLL(D_f) + alpha * [NLL(D_r) or KL(p_ref || p_theta) on D_r].",
)
class GradDiff(UnlearnTrainer):
    """Gradient difference and its KL variant (TOFU, Maini et al., COLM 2024)."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        forget = inputs["forget"]
        forget_term = losses.gradient_ascent_loss(self.logits(model, forget), forget["labels"])
        self.record(forget_loss=forget_term)
        loss = config.gamma * forget_term + config.alpha * self.retain_loss(model, inputs["retain"], config.retain_loss)
        return (loss, None) if return_outputs else loss
