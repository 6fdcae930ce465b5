"""IDK-DPO: prefer a refusal over the forget answer, with DPO against the frozen reference.

Two forms (``form``), both with sequence-sum log-probabilities over the answer tokens
and the mean over the batch:

* ``"openunlearning"`` (default): ``L = −(2/β) · mean log σ(β · Δ) + α · ℓ̄(D_r)``, the form
  of OpenUnlearning (src/trainer/unlearn/dpo.py and src/trainer/utils.py compute_dpo_loss
  at d3d7cf9, configs/trainer/DPO.yaml: β 0.1, γ 1, α 1, retain NLL) and of the NPO
  authors' TOFU code (dataloader.py, loss_type "dpo_grad_diff"). ``ℓ̄(D_r)`` is the
  retain batch's mean token NLL.
* ``"tofu"``: ``L = −mean log σ(β · Δ)`` without a retain term (``alpha`` is not used),
  TOFU's dataloader.py, loss_type "dpo" (β 0.1 hard-coded there). Its forget term is
  β/2 = 1/20 of the other form's, at β = 0.1.

``Δ = (log π_θ − log π_ref)(refusal) − (log π_θ − log π_ref)(forget answer)``. TOFU's
code computes the forget log-probabilities against an undefined ``labels`` name (the
NPO authors' copy uses ``forget_labels``); the forget answer's own labels are meant and
used here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, cache_reference_field, register_method
from unlearnkit.settings import check_choice, require_non_negative, require_positive

FORMS = ("openunlearning", "tofu")


@dataclass
class IDKDPOConfig(MethodConfig):
    beta: float = field(default=0.1, metadata={"help": "DPO inverse temperature (TOFU, OpenUnlearning: 0.1)."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain NLL term (OpenUnlearning: 1; unused by form 'tofu')."})
    form: str = field(
        default="openunlearning",
        metadata={"help": "'openunlearning': -(2/beta) log sigmoid(beta Delta) + alpha NLL(D_r) (OpenUnlearning, NPO authors); "
                          "'tofu': -log sigmoid(beta Delta) with no retain term (TOFU's loss_type 'dpo')."},
    )
    cache_reference: bool = cache_reference_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(beta=self.beta)
        require_non_negative(alpha=self.alpha)  # a negative weight would ascend on the retain set
        check_choice("form", self.form, FORMS)

    def needs_reference(self) -> bool:
        return not self.cache_reference


@register_method(
    "idk_dpo",
    config=IDKDPOConfig,
    paper='Rafailov et al., "Direct Preference Optimization", NeurIPS 2023; IDK-DPO of Maini et al., "TOFU", COLM 2024, '
          'in the form of OpenUnlearning (Dorna et al., arXiv:2506.12618, 2025)',
    summary="L = -(2/beta) log sigmoid(beta [log-ratio(IDK answer) - log-ratio(forget answer)]) + alpha * NLL(D_r) "
            "(OpenUnlearning); form=tofu: TOFU's -log sigmoid(...) alone.",
    needs_idk=True,
)
class IDKDPO(UnlearnTrainer):
    """DPO with the refusal as the chosen answer and the forget answer as the rejected one.

    The refusal paired with a forget question is drawn anew each epoch (``PairedDataset``);
    the reference cache holds every (question, refusal) pair the run's epochs will draw.
    """

    cached_reference_keys = ("idk", "forget")

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        idk, forget = inputs["idk"], inputs["forget"]
        chosen = losses.sequence_nll(self.logits(model, idk), idk["labels"])
        rejected = losses.sequence_nll(self.logits(model, forget), forget["labels"])
        reference_chosen, reference_rejected = self.reference_sequence_nll(idk), self.reference_sequence_nll(forget)
        loss = losses.dpo_loss(chosen, rejected, reference_chosen, reference_rejected, config.beta,
                               scale_by_two_over_beta=config.form == "openunlearning")
        self.record(forget_loss=loss)
        if config.form == "openunlearning":
            loss = loss + config.alpha * self.retain_loss(model, inputs["retain"], "nll")
        return (loss, None) if return_outputs else loss
