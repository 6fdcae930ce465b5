"""Gradient ascent on the forget set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel

from unlearnkit import losses
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method


@dataclass
class GradAscentConfig(MethodConfig):
    """Gradient ascent has no hyperparameters beyond the optimiser's."""


@register_method(
    "ga",
    config=GradAscentConfig,
    paper='Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", ACL 2023',
    summary="Maximise the forget answers' NLL: L = -mean NLL(D_f). No retain data.",
    needs_retain=False,
)
class GradAscent(UnlearnTrainer):
    """Gradient ascent (Jang et al., ACL 2023): minimise -NLL of the forget answers."""

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        forget = inputs["forget"]
        loss = losses.gradient_ascent_loss(self.logits(model, forget), forget["labels"])
        self.record(forget_loss=loss)
        return (loss, None) if return_outputs else loss
