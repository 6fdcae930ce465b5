"""Weighted gradient ascent (WGA): gradient ascent with each token weighted by its own probability.

Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go
Beyond", ICLR 2025.

Forget loss, over the answer tokens of the forget batch::

    L_f = mean_t  w_t · log p_θ(y_t | x, y_<t),   w_t = p_θ(y_t | x, y_<t)^β  (detached)

and ``L = L_f + alpha · L_r`` with ``L_r`` the retain answer NLL (or KL to the frozen
model). Gradient ascent's gradient is largest on tokens already unlikely, so it
keeps pushing what is forgotten; the weight moves the effort to tokens the model
still predicts and fades once a token is gone.

Choices: the mean is over all answer tokens of the batch (every token weighs the
same, as in the usual LM loss and in OpenUnlearning's port), not a mean of
per-answer means. Defaults beta 1.0, alpha 1.0 with the retain NLL are
OpenUnlearning's WGA configuration.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class WGAConfig(MethodConfig):
    beta: float = field(default=1.0, metadata={"help": "Exponent of the token weight p^beta (0: plain gradient ascent; authors: 1.0)."})
    alpha: float = field(default=1.0, metadata={"help": "Weight of the retain term (0: forget term alone)."})
    retain_loss: str = field(default="nll", metadata={"help": "Retain term: 'nll' (answer NLL) or 'kl' (KL to the reference model)."})
    retain_kl_positions: str = retain_kl_positions_field()

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta < 0:
            raise UnlearnkitError(f"beta must be >= 0 (0 is plain gradient ascent), got {self.beta}.")
        if self.alpha < 0:
            raise UnlearnkitError(f"alpha must be >= 0 (0 drops the retain term), got {self.alpha}.")
        check_retain_loss(self.retain_loss)
        check_retain_kl_positions(self.retain_kl_positions)

    def needs_reference(self) -> bool:
        return self.retain_loss == "kl"


@register_method(
    "wga",
    config=WGAConfig,
    paper='Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond", ICLR 2025',
    summary="L = mean_t sg(p_t^beta) * log p_theta(y_t) on D_f + alpha * retain term.",
)
class WGA(UnlearnTrainer):
    """Weighted gradient ascent (Wang et al., ICLR 2025) with a retain term."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        config = self.method_config
        forget = inputs["forget"]
        loss = losses.weighted_gradient_ascent_loss(self.logits(model, forget), forget["labels"], config.beta)
        self.record(forget_loss=loss)
        if config.alpha:
            loss = loss + config.alpha * self.retain_loss(model, inputs["retain"], config.retain_loss)
        return (loss, None) if return_outputs else loss
