"""DEPN: deactivate the forget set's privacy neurons; no training.

Wu et al., "DEPN: Detecting and Editing Privacy Neurons in Pretrained Language
Models", EMNLP 2023 (code: flamewei123/DEPN).

The forget set is localized with the ``depn`` localizer
(:mod:`unlearnkit.localization.depn`: integrated gradients with m = 20 steps of
the answer tokens' probability over the FFN intermediate neurons, threshold
0.1 x the example's largest attribution, kept by at least half of the forget
examples, at most 20 neurons; its module docstring lists the deviations from
the paper), and the selected neurons are deactivated by zeroing their columns
of the MLP down projection (rows of GPT-2's ``Conv1D`` weight, which is stored
transposed). The authors set the neuron's activation to 0 (their editing
script zeroes the same column): for a linear down projection ``W a + b`` a zero
activation ``a_k`` removes ``W[:, k] a_k`` from the output, and a zero column
removes it for every input, so the two are the same edit (the bias stays).

No optimiser step runs: :meth:`DEPN.train` returns at once and
:meth:`DEPN.finalize` localizes and edits. The optimisation settings shared by
every method (learning_rate, num_epochs, ...) are therefore unused. The retain
data are only measured, never trained on.

What a run records: in the training log (``training_log.json``), the number
of privacy neurons, the mean answer NLL of the forget examples and of up to
``retain_eval_size`` retain examples before and after the edit, the
localization's time and passes (keys ``depn_*``); next to the model,
``depn_neurons.safetensors`` holds the attributions (mean over the forget
examples), the votes, the selected neurons and their count and share per
layer (per decoder layer x FFN neuron).

No LoRA form: the edit changes the weights themselves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel
from transformers.trainer_utils import TrainOutput

from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization.depn import (
    CITATION,
    DEPNSettings,
    PrivacyNeurons,
    detect_privacy_neurons,
    feed_forward_projections,
    full_depth,
)
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.methods.task_vector import evenly_spaced, mean_answer_nll
from unlearnkit.parameters import decoder_layers, parse_layers
from unlearnkit.settings import require_at_least

logger = logging.getLogger("unlearnkit")

NEURONS_FILE = "depn_neurons.safetensors"


@dataclass
class DEPNConfig(MethodConfig, DEPNSettings):
    layers: str | None = field(
        default=None,
        metadata={"help": "Search and edit only these decoder layers' FFN neurons: '5,6,7' or '5-7'. None: every layer (authors)."},
    )
    retain_eval_size: int = field(
        default=64,
        metadata={"help": "Retain examples (evenly spaced over the retain set) whose answer NLL is measured before and after the edit."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_depn_settings()
        require_at_least(1, retain_eval_size=self.retain_eval_size)
        if self.uses_lora:
            raise UnlearnkitError("depn zeroes columns of the weights themselves and has no LoRA form; set lora_rank=0.")
        if self.target_modules is not None:
            raise UnlearnkitError(
                "depn always edits the MLP down projections (the FFN neurons' outgoing weights); drop target_modules "
                "(restrict the search with layers)."
            )

    def check_model(self, model: PreTrainedModel) -> None:
        feed_forward_projections(model, parse_layers(self.layers))  # an MLP it can find, in layers the model has


def zero_neurons(found: PrivacyNeurons) -> None:
    """Zero each privacy neuron's outgoing weights in place: its column of the down projection (row of a Conv1D)."""
    chosen = found.by_layer()
    with torch.no_grad():
        for projection in found.projections:
            if projection.layer in chosen:
                weight = projection.module.weight
                indices = torch.tensor(chosen[projection.layer], device=weight.device)
                weight.index_fill_(projection.neuron_dim, indices, 0.0)


def neuron_tables(found: PrivacyNeurons, num_layers: int) -> dict[str, torch.Tensor]:
    """The artifact: attributions, votes and the selection per decoder layer x FFN neuron, with per-layer counts and shares."""
    width = found.attribution.shape[-1]
    selected = torch.zeros(num_layers, width)
    for layer, neuron in found.neurons:
        selected[layer, neuron] = 1.0
    return {
        "attribution": full_depth(found, found.attribution.mean(dim=0), num_layers),  # mean over the forget examples
        "votes": full_depth(found, found.votes, num_layers),
        "selected": selected,
        "neurons_per_layer": selected.sum(dim=1),
        "share_per_layer": selected.sum(dim=1) / width,
    }


@register_method(
    "depn",
    config=DEPNConfig,
    paper=CITATION,
    summary="No training: integrated gradients (m=20) find the forget set's privacy neurons in the FFNs "
            "(0.1 x max per example, voted by >= 50%, at most 20); their down-projection columns are zeroed.",
    family="editing",
)
class DEPN(UnlearnTrainer):
    """DEPN (Wu et al., EMNLP 2023): locate the forget set's privacy neurons, then zero their outgoing weights."""

    supports_lora = False
    # No optimiser steps (read by the run's warnings, which count steps): the edit happens in finalize().
    uses_optimizer: ClassVar[bool] = False

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        """DEPN takes no optimiser step; a checkpoint to resume from has nothing to restore."""
        return TrainOutput(self.state.global_step, 0.0, {})

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        raise RuntimeError("depn has no training loss: it edits the weights in finalize().")

    def finalize(self, model: PreTrainedModel) -> PreTrainedModel:
        config: DEPNConfig = self.method_config
        dataset = self.train_dataset
        forget = dataset.forget
        retain = evenly_spaced(dataset.retain, config.retain_eval_size)
        before = self._answer_nll(model, forget, retain)
        found = detect_privacy_neurons(model, forget, config, parse_layers(config.layers))
        if not found.neurons:
            logger.warning(
                "depn found no privacy neuron (none passed threshold_ratio=%g in at least vote_share=%g of the %d forget "
                "examples): the model is unchanged. Lower vote_share or threshold_ratio.",
                config.threshold_ratio, config.vote_share, len(forget),
            )
        zero_neurons(found)
        after = self._answer_nll(model, forget, retain)
        num_layers = len(decoder_layers(model)[1])
        self.artifacts[NEURONS_FILE] = neuron_tables(found, num_layers)
        record = {
            "depn_privacy_neurons": float(len(found.neurons)),
            "depn_layers_with_neurons": float(len(found.by_layer())),
            "depn_forget_nll_before": before[0],
            "depn_forget_nll_after": after[0],
            "depn_localize_seconds": round(found.seconds, 3),
            "depn_forward_passes": float(found.forward_passes),
        }
        if retain:
            record.update(depn_retain_nll_before=before[1], depn_retain_nll_after=after[1])
        self.log(record)
        counts = ", ".join(f"layer {layer}: {len(neurons)}" for layer, neurons in found.by_layer().items()) or "none"
        logger.info("depn: zeroed %d privacy neuron(s) (%s); forget answer NLL %.4g -> %.4g%s", len(found.neurons), counts,
                    before[0], after[0], f", retain {before[1]:.4g} -> {after[1]:.4g}" if retain else "")
        return model

    def _answer_nll(self, model: PreTrainedModel, forget: list, retain: list) -> tuple[float, float]:
        """Mean answer NLL of the forget examples and of the measured retain examples (nan without any)."""
        pad_token_id = self.train_dataset.tokenizer.pad_token_id
        size = self.method_config.batch_size
        retain_nll = mean_answer_nll(model, retain, pad_token_id, size) if retain else float("nan")
        return mean_answer_nll(model, forget, pad_token_id, size), retain_nll
