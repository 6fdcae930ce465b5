"""IDK fine-tuning: teach the model to answer forget questions with a refusal."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.settings import require_non_negative


@dataclass
class IDKConfig(MethodConfig):
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL term."})

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(alpha=self.alpha)  # a negative weight would ascend on the retain set


@register_method(
    "idk",
    config=IDKConfig,
    paper='Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024 ("Preference Optimization")',
    summary="L = NLL(forget question -> random 'I don't know' answer) + alpha * NLL(D_r).",
    needs_idk=True,
)
class IDK(UnlearnTrainer):
    """IDK fine-tuning (TOFU's "preference optimisation"): refusal answers on the forget questions."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        idk = inputs["idk"]
        loss = losses.mean_nll(self.logits(model, idk), idk["labels"])
        self.record(forget_loss=loss)
        loss = loss + self.method_config.alpha * self.retain_loss(model, inputs["retain"], "nll")
        return (loss, None) if return_outputs else loss
