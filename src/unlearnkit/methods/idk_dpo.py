"""IDK-DPO: prefer a refusal over the forget answer, with DPO against the frozen reference."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, cache_reference_field, register_method
from unlearnkit.settings import require_non_negative, require_positive


@dataclass
class IDKDPOConfig(MethodConfig):
    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature (TOFU: 0.1)."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL term."})
    cache_reference: bool = cache_reference_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(beta=self.beta)
        require_non_negative(alpha=self.alpha)  # a negative weight would ascend on the retain set

    def needs_reference(self) -> bool:
        return not self.cache_reference


@register_method(
    "idk_dpo",
    config=IDKDPOConfig,
    paper='Rafailov et al., "Direct Preference Optimization", NeurIPS 2023; as IDK-DPO in Maini et al., "TOFU", COLM 2024',
    summary="L = -log sigmoid(beta [log-ratio(IDK answer) - log-ratio(forget answer)]) + alpha * NLL(D_r).",
    needs_idk=True,
)
class IDKDPO(UnlearnTrainer):
    """DPO with the refusal as the chosen answer and the forget answer as the rejected one.

    The refusal paired with a forget question is drawn anew each epoch (``PairedDataset``);
    the reference cache holds every (question, refusal) pair the run's epochs will draw.
    """

    cached_reference_keys = ("idk", "forget")

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        idk, forget = inputs["idk"], inputs["forget"]
        chosen = losses.sequence_nll(self.logits(model, idk), idk["labels"])
        rejected = losses.sequence_nll(self.logits(model, forget), forget["labels"])
        reference_chosen, reference_rejected = self.reference_sequence_nll(idk), self.reference_sequence_nll(forget)
        loss = losses.dpo_loss(chosen, rejected, reference_chosen, reference_rejected, self.method_config.beta)
        self.record(forget_loss=loss)
        loss = loss + self.method_config.alpha * self.retain_loss(model, inputs["retain"], "nll")
        return (loss, None) if return_outputs else loss
