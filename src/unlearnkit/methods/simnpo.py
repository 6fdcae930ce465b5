"""SimNPO: reference-free, length-normalised NPO."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.settings import require_non_negative, require_positive


@dataclass
class SimNPOConfig(MethodConfig):
    beta: float = field(default=4.5, metadata={"help": "Inverse temperature (authors, TOFU forget10: 4.5; forget05: 2.5)."})
    gamma: float = field(default=0.0, metadata={"help": "Reward margin inside the sigmoid (authors: 0)."})
    npo_coeff: float = field(default=0.125, metadata={"help": "Weight of the SimNPO term (authors, forget10: 0.125; forget05: 0.1375)."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL term."})
    num_epochs: float = field(default=10.0, metadata={"help": "Passes over the forget set (authors: 10)."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of steps for warm-up."})

    def __post_init__(self) -> None:
        super().__post_init__()
        # npo_coeff weighs the forget term (0 leaves nothing to unlearn); gamma, a margin, may be any finite number.
        require_positive(beta=self.beta, npo_coeff=self.npo_coeff)
        require_non_negative(alpha=self.alpha)


@register_method(
    "simnpo",
    config=SimNPOConfig,
    paper='Fan et al., "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning", arXiv 2410.07163, 2024',
    summary="L = npo_coeff * -(2/beta) log sigmoid(beta (NLL/|y| - gamma)) on D_f + alpha * NLL(D_r); no reference model.",
)
class SimNPO(UnlearnTrainer):
    """SimNPO (Fan et al., 2024): NPO without a reference model, on length-normalised NLL."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        forget = inputs["forget"]
        nll = losses.sequence_nll(self.logits(model, forget), forget["labels"])
        forget_term = losses.simnpo_loss(nll, losses.sequence_token_count(forget["labels"]), config.beta, config.gamma)
        self.record(forget_loss=forget_term)
        loss = config.npo_coeff * forget_term + config.alpha * self.retain_loss(model, inputs["retain"], "nll")
        return (loss, None) if return_outputs else loss
