"""ME+GD: maximise the entropy of the forget-set predictions, keep the retain set by gradient descent.

Yuan et al., "A Closer Look at Machine Unlearning for Large Language Models", ICLR 2025
(arXiv:2410.08109). Untargeted unlearning should leave the model where one that never saw the
forget data would be; on fictitious facts such a model can only guess, so the authors pull each
forget-set next-token distribution towards uniform, ``KL(U ‖ p_θ)`` (0 at a uniform prediction:
unlike gradient ascent, the objective has a minimum and stops pushing there), and keep the
retain set with its NLL (GD):

    L = forget_weight · mean_t KL(U ‖ p_θ(· | x, y_<t)) on D_f + alpha · NLL(D_r)

Defaults are the authors' TOFU script (``scripts/tofu/me_gd.sh``, ``config/tofu.yaml``): lr 1e-5,
5 epochs, effective batch 32 (4 × 4 accumulation × 2 GPUs), weight decay 0.01, one warm-up epoch,
``forget_coeff`` 0.1, ``regularization_coeff`` 1.0, ``mask=false`` for ME+GD (the entropy term
covers the question tokens too), probabilities floored at 1e-12 inside the log.

Differences from the authors' code, each a setting:

* ``forget_positions="sequence"`` scores every real token of the forget sequence (question and
  answer). The authors' unmasked labels also score the padding up to max_length (500), which
  depends on how long a batch is padded; padding is left out here. ``"answer"``: the answer
  tokens alone, as every other loss of unlearnkit.
* ``probability_floor=0`` takes the exact ``log p`` (``uniform_cross_entropy_loss − log V``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import (
    MethodConfig,
    UnlearnTrainer,
    check_retain_kl_positions,
    check_retain_loss,
    register_method,
    retain_kl_positions_field,
)
from unlearnkit.settings import check_choice, require_non_negative, require_positive

FORGET_POSITIONS = ("sequence", "answer")


@dataclass
class MEGDConfig(MethodConfig):
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate of AdamW (authors, TOFU: 1e-5)."})
    num_epochs: float = field(default=5.0, metadata={"help": "Passes over the forget set (authors, TOFU: 5)."})
    batch_size: int = field(
        default=32,
        metadata={"help": "Forget examples per micro-batch, each with a retain example (authors: 4 x 4 accumulation x 2 GPUs = 32)."},
    )
    warmup_ratio: float = field(default=0.2, metadata={"help": "Fraction of steps for linear warm-up (authors: one epoch of five)."})
    forget_weight: float = field(
        default=0.1, metadata={"help": "Weight of the entropy (KL to uniform) forget term (authors' forget_coeff: 0.1)."},
    )
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (authors' regularization_coeff: 1.0)."})
    retain_loss: str = field(
        default="nll", metadata={"help": "Retain term: 'nll' (GD, the authors' ME+GD) or 'kl' (KL to the reference model)."},
    )
    retain_kl_positions: str = retain_kl_positions_field()
    forget_positions: str = field(
        default="sequence",
        metadata={"help": "Forget positions pulled to uniform: 'sequence' (every real token, question and answer: the authors' "
                          "mask=false, without its padding) or 'answer' (the answer tokens alone)."},
    )
    probability_floor: float = field(
        default=1e-12,
        metadata={"help": "The KL scores log(p + floor), as the authors' code (1e-12); 0: the exact log p."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        require_positive(forget_weight=self.forget_weight)  # 0 would leave nothing to unlearn
        require_non_negative(alpha=self.alpha, probability_floor=self.probability_floor)
        if self.probability_floor >= 1:
            raise UnlearnkitError(f"probability_floor must be below 1 (the authors': 1e-12; 0: exact), got {self.probability_floor}: "
                                  "a floor that large would hide every probability.")
        check_retain_loss(self.retain_loss)
        check_retain_kl_positions(self.retain_kl_positions)
        check_choice("forget_positions", self.forget_positions, FORGET_POSITIONS)

    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"


def sequence_labels(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Labels (B, T) that score every real token of a padded batch: its input ids, ``-100`` on padding."""
    return batch["input_ids"].masked_fill(batch["attention_mask"] == 0, losses.IGNORE_INDEX)


@register_method(
    "me_gd",
    config=MEGDConfig,
    paper='Yuan et al., "A Closer Look at Machine Unlearning for Large Language Models", ICLR 2025',
    summary="L = forget_weight * mean_t KL(U || p_theta) on D_f tokens (maximise entropy) + alpha * NLL(D_r).",
)
class MEGD(UnlearnTrainer):
    """Maximise the forget-set prediction entropy, descend on the retain set (Yuan et al., ICLR 2025)."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        forget = inputs["forget"]
        labels = sequence_labels(forget) if config.forget_positions == "sequence" else forget["labels"]
        forget_term = losses.uniform_kl_loss(self.logits(model, forget), labels, config.probability_floor)
        self.record(forget_loss=forget_term)
        loss = config.forget_weight * forget_term + config.alpha * self.retain_loss(model, inputs["retain"], config.retain_loss)
        return (loss, None) if return_outputs else loss

