"""IDK fine-tuning: teach the model to answer forget questions with a refusal.

Two forms (``form``):

* ``"pooled"`` (default): ``L = (Σ ℓ_t over refusal tokens + α · Σ ℓ_t over retain tokens)
  / (N_refusal + N_retain)``, one token mean over the refusal and retain batches pooled;
  with ``α = 1`` it is TOFU's loss (dataloader.py, loss_type "idk": the two batches are
  concatenated and the model's mean token loss taken once), so every token weighs the
  same whichever batch it comes from.
* ``"two_means"``: ``L = ℓ̄(refusals) + α · ℓ̄(D_r)``, each batch's own token mean, so the
  refusal batch weighs as much as the retain batch however short its answers are
  (refusals are short, so their tokens weigh several times more than in the pooled form).

The refusal answers are TOFU's list (data/idontknow.jsonl), one drawn uniformly for each
forget example and epoch, as TOFU draws one per item (``PairedDataset``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.settings import check_choice, require_non_negative

FORMS = ("pooled", "two_means")


@dataclass
class IDKConfig(MethodConfig):
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL (TOFU: 1, the pooled token mean)."})
    form: str = field(
        default="pooled",
        metadata={"help": "'pooled': one token mean over the refusal and retain batches together (TOFU); "
                          "'two_means': mean NLL of the refusals + alpha * mean NLL of the retain batch."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(alpha=self.alpha)  # a negative weight would ascend on the retain set
        check_choice("form", self.form, FORMS)


@register_method(
    "idk",
    config=IDKConfig,
    paper='Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024 ("Preference Optimization")',
    summary="L = one token mean of the NLL over (forget question -> random TOFU refusal) and D_r pooled (TOFU); "
            "form=two_means: NLL(refusals) + alpha * NLL(D_r).",
    needs_idk=True,
)
class IDK(UnlearnTrainer):
    """IDK fine-tuning (TOFU's "preference optimisation"): refusal answers on the forget questions."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        idk = inputs["idk"]
        idk_logits = self.logits(model, idk)
        refusal_nll = losses.mean_nll(idk_logits, idk["labels"])
        self.record(forget_loss=refusal_nll)
        if config.form == "two_means":
            loss = refusal_nll + config.alpha * self.retain_loss(model, inputs["retain"], "nll")
        else:
            retain = inputs["retain"]
            retain_logits = self.logits(model, retain)
            self.record(retain_loss=losses.mean_nll(retain_logits, retain["labels"]))
            loss = losses.pooled_mean_nll(idk_logits, idk["labels"], retain_logits, retain["labels"], other_weight=config.alpha)
        return (loss, None) if return_outputs else loss
