"""Newton: remove the forget set with one damped Newton (influence-function) step; no optimiser loop.

Koh & Liang, "Understanding Black-box Predictions via Influence Functions", ICML 2017 (the influence of up-weighting a
training row); Grosse et al., "Studying Large Language Model Generalization with Influence Functions", arXiv 2023 (the
curvature: EK-FAC over the MLP's linear layers, attention frozen, damping 0.1 x the mean eigenvalue).

The step
--------
Up-weighting every forget row z by ε = −1/N removes it from the empirical risk (1/N) Σ_i L(z_i, θ); to first order
(exactly, for a quadratic loss with G the retain rows' Hessian) the minimiser moves to

    θ_u = θ + s · d,   d = (1/N) (G + λI)⁻¹ Σ_{z∈D_f} ∇θ L(z, θ),

a damped Newton ASCENT step on the forget loss (:mod:`unlearnkit.attribution.newton_step`). Here:

* θ: the weights (and biases) of the decoder layers' MLP linear layers (``modules`` / ``layers``); attention,
  embeddings and norms stay as they are, as in Grosse et al.;
* L(z, θ): the SUM of a row's answer-token NLL (prompt masked), the loss the curvature is fitted for;
* G: the Gauss-Newton Hessian of the mean row loss, per layer (block diagonal), estimated by ``curvature``: ``ekfac``
  (default), ``kfac`` or ``diagonal`` (:func:`unlearnkit.attribution.scores.fit_factors`; the true Fisher, labels
  sampled from the model, unless ``empirical_fisher``);
* the rows G is fitted on (``curvature_data``): ``all`` (default), the retain AND forget rows the method receives, the
  model's training distribution, whose Hessian is Koh & Liang's H; or ``retain``, the retain rows alone (for a
  quadratic loss, the step that lands exactly on the retain-only optimum). At most ``max_curvature_rows`` rows
  (evenly spaced) are used; G is their mean, so a sample estimates the same G;
* N: the number of rows G stands for, i.e. every row of ``curvature_data`` that the method receives (retain + forget
  for ``all``, retain for ``retain``), not the sample size;
* λ: ``damping``, or 0.1 x the mean eigenvalue of each layer's block (Grosse et al.).

Step size on a retain criterion
-------------------------------
A 0.26M-parameter model is far from the quadratic regime and λ is large, so the step is scaled: every ``s`` of
``step_scales`` is tried and the LARGEST whose mean retain answer NLL (per row: the mean NLL of its answer tokens; on
up to ``retain_eval_size`` retain rows, evenly spaced) exceeds the model's before unlearning by at most
``max_retain_nll_increase`` nats is applied. When none passes, the grid's smallest is quartered until a scale passes
or falls below ``min_step_scale`` (on SmolLM2-135M with Grosse et al.'s damping every grid scale multiplied the
retain NLL by about 80); when still none passes, the smallest tried is applied with a warning.

``steps`` > 1 repeats it: each step takes the forget gradient at the current weights and searches the grid again,
against the same pre-unlearning retain NLL (one budget for all steps); G is refitted at the current weights when
``refit_curvature`` (else the first fit is reused: the cost is the forget gradients and the grid). A later step whose
every scale breaks the bound is not applied, and the steps stop there.

What a run records (training log, keys ``newton_*``): per tried scale, ``newton_step``, ``newton_scale``,
``newton_forget_nll`` and ``newton_retain_nll``; per step, ``newton_chosen_scale`` and ``newton_scale_passed``; at the
end, the forget and retain NLL before and after, N (``newton_curvature_rows``), the rows fitted on
(``newton_rows_fitted``), the mean λ, the step's norm and the time spent fitting G and searching.

The optimisation settings every method shares (learning_rate, num_epochs, ...) are unused; ``batch_size`` is the rows
per forward pass and ``seed`` seeds the true Fisher's sampled labels. No LoRA form: the step changes the weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.trainer_utils import TrainOutput

from unlearnkit.attribution.newton_step import layer_directions, summed_gradients
from unlearnkit.attribution.scores import (
    Factors,
    InfluenceConfig,
    data_gradients,
    fit_factors,
    flat_gradient,
    module_patterns,
    tracked_linears,
)
from unlearnkit.data.encoding import pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import MethodConfig, UnlearnTrainer, register_method
from unlearnkit.methods.task_vector import evenly_spaced, mean_answer_nll
from unlearnkit.settings import check_choice, require_at_least, require_non_negative

logger = logging.getLogger("unlearnkit")

CURVATURES = ("ekfac", "kfac", "diagonal")
CURVATURE_DATA = ("all", "retain")
PAPERS = ('Koh & Liang, "Understanding Black-box Predictions via Influence Functions", ICML 2017; Grosse et al., '
          '"Studying Large Language Model Generalization with Influence Functions", arXiv 2023')


@dataclass
class NewtonConfig(MethodConfig):
    curvature: str = field(
        default="ekfac", metadata={"help": "Estimator of G: ekfac (Grosse et al. 2023), kfac (Martens & Grosse 2015) or diagonal "
                                           "(the diagonal Fisher)."})
    damping: float | None = field(
        default=None, metadata={"help": "λ added to G (None: 0.1 x the mean eigenvalue of each layer's block, Grosse et al.)."})
    empirical_fisher: bool = field(
        default=False, metadata={"help": "Fit G with the rows' own answers (empirical Fisher) instead of answers sampled from the "
                                         "model (true Fisher, the Gauss-Newton Hessian in expectation)."})
    fisher_samples: int = field(default=1, metadata={"help": "Sampled answers per row when fitting the true Fisher."})
    modules: str = field(
        default="mlp", metadata={"help": "Linear layers of each decoder layer to step, by name part, comma-separated (default: the "
                                         "MLP's; attention frozen as in Grosse et al.), e.g. 'mlp.down_proj'."})
    layers: str | None = field(
        default=None, metadata={"help": "Step only these decoder layers' linear layers: '0,1' or '0-1'. None: every layer."})
    curvature_data: str = field(
        default="all", metadata={"help": "Rows G is fitted on: 'all' (retain + forget, the training distribution: Koh & Liang's "
                                         "H) or 'retain' (the retain rows alone). N is the number of these rows."})
    max_curvature_rows: int = field(
        default=5000, metadata={"help": "Fit G on at most this many of those rows (evenly spaced; G is a mean, so N stays the "
                                        "full count)."})
    steps: int = field(default=1, metadata={"help": "Newton steps; each takes the forget gradient at the current weights and "
                                                    "searches step_scales again."})
    refit_curvature: bool = field(
        default=False, metadata={"help": "With steps > 1: refit G at the current weights before every step (false: reuse the "
                                         "first fit)."})
    step_scales: str = field(
        default="0.0625,0.125,0.25,0.5,1,2,4,8",
        metadata={"help": "Multiples s of the Newton step to try, comma-separated; the largest within max_retain_nll_increase "
                          "is applied (1: the plain influence step)."})
    max_retain_nll_increase: float = field(
        default=0.1, metadata={"help": "Largest rise (nats) of the mean retain answer NLL over the model before unlearning that a "
                                       "step scale may cause."})
    retain_eval_size: int = field(
        default=64, metadata={"help": "Retain rows (evenly spaced over the retain set) the step scale is chosen on."})
    min_step_scale: float = field(
        default=1e-6, metadata={"help": "When no scale of step_scales keeps the retain NLL within bounds, the smallest is quartered "
                                        "until one does, down to this floor (equal to the grid's smallest or above it: no "
                                        "backtracking)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("curvature", self.curvature, CURVATURES)
        check_choice("curvature_data", self.curvature_data, CURVATURE_DATA)
        require_non_negative(damping=self.damping, max_retain_nll_increase=self.max_retain_nll_increase)
        require_at_least(1, fisher_samples=self.fisher_samples, max_curvature_rows=self.max_curvature_rows, steps=self.steps,
                         retain_eval_size=self.retain_eval_size)
        if not self.modules.strip() or not module_patterns(self.modules):
            raise UnlearnkitError("modules is empty; name the linear layers to step, e.g. modules=mlp.")
        self.scale_candidates()  # a malformed or empty grid fails now, before any loading
        if not (math.isfinite(self.min_step_scale) and self.min_step_scale > 0):
            raise UnlearnkitError(f"min_step_scale must be a finite number > 0 (e.g. 1e-6), got {self.min_step_scale!r}.")
        if self.refit_curvature and self.steps == 1:
            raise UnlearnkitError("refit_curvature applies between Newton steps; set steps > 1 or drop it.")
        if self.uses_lora:
            raise UnlearnkitError(f"{self.method_name()} steps the weights themselves and has no LoRA form; set lora_rank=0.")
        if self.target_modules is not None:
            raise UnlearnkitError(f"{self.method_name()} steps the linear layers named by modules (default: the MLP's); drop "
                                  "target_modules and choose them with modules and layers.")

    @staticmethod
    def method_name() -> str:
        return "newton"

    def scale_candidates(self) -> list[float]:
        """``step_scales`` as sorted, distinct positive floats."""
        try:
            values = [float(part) for part in self.step_scales.split(",") if part.strip()]
        except ValueError:
            raise UnlearnkitError(f"step_scales must be comma-separated numbers such as '0.25,0.5,1,2,4,8', got {self.step_scales!r}.") \
                from None
        if not values:
            raise UnlearnkitError(f"step_scales is empty; list at least one multiple of the Newton step, e.g. '0.25,0.5,1,2,4,8' "
                                  f"(got {self.step_scales!r}).")
        if not all(math.isfinite(value) and value > 0 for value in values):
            raise UnlearnkitError(f"step_scales must be finite numbers > 0 (e.g. '0.25,0.5,1,2,4,8'), got {self.step_scales!r}.")
        return sorted(set(values))

    def influence_config(self) -> InfluenceConfig:
        """The attribution settings that fit G and take the gradients (the same tracked layers, rows per pass and cut)."""
        return InfluenceConfig(damping=self.damping, empirical_fisher=self.empirical_fisher, fisher_samples=self.fisher_samples,
                               modules=self.modules, layers=self.layers, batch_size=self.batch_size, max_length=self.max_length,
                               max_train_rows=self.max_curvature_rows, seed=self.seed)

    def check_model(self, model: PreTrainedModel) -> None:
        tracked_linears(model, self.influence_config())  # refuses a model with no matching nn.Linear (e.g. GPT-2's Conv1D)


BACKTRACK_FACTOR = 0.25


def backtrack_scales(smallest: float, floor: float) -> list[float]:
    """The scales tried below the grid when none of it passes: ``smallest`` quartered while it stays >= ``floor``."""
    scales = []
    scale = smallest * BACKTRACK_FACTOR
    while scale >= floor:
        scales.append(scale)
        scale *= BACKTRACK_FACTOR
    return scales


def choose_step_scale(retain_nll: Mapping[float, float], baseline_nll: float, max_increase: float) -> tuple[float, bool]:
    """The largest scale whose retain NLL is ``<= baseline_nll + max_increase``, and whether any passed.

    ``retain_nll`` maps each tried scale to the mean retain answer NLL of the model stepped with it; a non-finite NLL
    never passes. When none passes, the smallest scale is returned with ``False`` (the step that harms the retain set least).
    """
    if not retain_nll:
        raise ValueError("choose_step_scale needs at least one tried scale.")
    bound = baseline_nll + max_increase
    passing = [scale for scale, nll in retain_nll.items() if math.isfinite(nll) and nll <= bound]
    if passing:
        return max(passing), True
    return min(retain_nll), False


def layer_matrix(module: nn.Linear) -> Tensor:
    """A linear layer's parameters as one ``(d_out, d_in')`` matrix, the bias as the last column (a detached copy)."""
    weight = module.weight.detach()
    if module.bias is None:
        return weight.clone()
    return torch.cat([weight, module.bias.detach().unsqueeze(1)], dim=1)


def set_layer_matrix(module: nn.Linear, matrix: Tensor) -> None:
    """Write a ``(d_out, d_in')`` matrix back into the layer's weight (and bias), in place."""
    with torch.no_grad():
        for name, value in flat_gradient(module, matrix).items():
            parameter = getattr(module, name)
            parameter.copy_(value.to(parameter.device, parameter.dtype))


def encoded_batches(examples: Sequence[dict[str, list[int]]], pad_token_id: int, size: int,
                    device: torch.device) -> list[dict[str, Tensor]]:
    """Encoded rows as padded batches of ``size`` on ``device`` (the format ``fit_factors`` and ``data_gradients`` read)."""
    return [{key: value.to(device) for key, value in pad_batch(examples[start:start + size], pad_token_id).items()}
            for start in range(0, len(examples), size)]


@register_method(
    "newton",
    config=NewtonConfig,
    paper=PAPERS,
    summary="No training: one damped Newton ascent step θ + s·(1/N)(G+λI)⁻¹Σ_{D_f}∇L on the MLP weights (G: EK-FAC/K-FAC/diagonal "
            "Fisher on retain + forget rows), s the largest of a grid keeping the retain NLL within +0.1.",
    family="influence/second-order",
)
class Newton(UnlearnTrainer):
    """Influence-function removal (Koh & Liang, ICML 2017) with EK-FAC curvature (Grosse et al., arXiv 2023)."""

    supports_lora = False
    # No optimiser steps (read by the run's warnings, which count steps): the step happens in finalize().
    uses_optimizer: ClassVar[bool] = False

    def train(self, *args: Any, **kwargs: Any) -> TrainOutput:
        """The method takes no optimiser step; a checkpoint to resume from has nothing to restore."""
        return TrainOutput(self.state.global_step, 0.0, {})

    def compute_loss(self, model: PreTrainedModel, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        raise RuntimeError(f"{self.method_config.method_name()} has no training loss: it edits the weights in finalize().")

    def finalize(self, model: PreTrainedModel) -> PreTrainedModel:
        config: NewtonConfig = self.method_config
        dataset = self.train_dataset
        pad = dataset.tokenizer.pad_token_id
        device = next(model.parameters()).device
        influence = config.influence_config()
        modules = tracked_linears(model, influence)
        curvature_rows = list(dataset.retain) + (list(dataset.forget) if config.curvature_data == "all" else [])
        if not curvature_rows:
            raise UnlearnkitError(f"{config.method_name()} with curvature_data=retain fits G on the retain rows; pass retain data.")
        rows = len(curvature_rows)  # N: every row G stands for, also when it is fitted on a sample
        fitted_on = evenly_spaced(curvature_rows, config.max_curvature_rows)
        curvature_batches = encoded_batches(fitted_on, pad, config.batch_size, device)
        forget_batches = encoded_batches(dataset.forget, pad, config.batch_size, device)
        self.retain_eval = evenly_spaced(dataset.retain, config.retain_eval_size)
        forget_before, retain_before = self.answer_nll(model)
        fit_seconds = search_seconds = 0.0
        factors: Factors | None = None
        start_weights = {name: layer_matrix(module) for name, module in modules.items()}
        for step in range(1, config.steps + 1):
            started = time.perf_counter()
            if factors is None or config.refit_curvature:
                factors = fit_factors(model, modules, curvature_batches, config.curvature, influence)
            fit_seconds += time.perf_counter() - started
            started = time.perf_counter()
            gradient_sums, _ = summed_gradients(data_gradients(model, modules, forget_batches))
            directions = layer_directions(gradient_sums, factors, rows)
            applied = self.search_scale(model, modules, directions, retain_before, step)
            search_seconds += time.perf_counter() - started
            if not applied:
                break
        noise_record = self.perturb(model, modules, influence, dataset)
        forget_after, retain_after = self.answer_nll(model)
        with torch.no_grad():
            # ‖θ_u − θ‖ over the stepped layers (noise included for fisher_forgetting).
            moved = math.sqrt(sum(float((layer_matrix(module).double() - start_weights[name].double()).square().sum())
                                  for name, module in modules.items()))
        self.log({
            "newton_forget_nll_before": forget_before, "newton_forget_nll_after": forget_after,
            "newton_retain_nll_before": retain_before, "newton_retain_nll_after": retain_after,
            "newton_curvature_rows": float(rows), "newton_rows_fitted": float(len(fitted_on)),
            "newton_damping_mean": sum(factors.damping.values()) / len(factors.damping),
            "newton_update_norm": moved, "newton_layers": float(len(modules)),
            "newton_fit_seconds": round(fit_seconds, 3), "newton_search_seconds": round(search_seconds, 3),
            **noise_record,
        })
        logger.info("%s: forget answer NLL %.4g -> %.4g, retain %.4g -> %.4g (%d layer(s), G: %s on %d of N=%d rows)",
                    config.method_name(), forget_before, forget_after, retain_before, retain_after, len(modules), config.curvature,
                    len(fitted_on), rows)
        return model

    def search_scale(self, model: PreTrainedModel, modules: Mapping[str, nn.Linear], directions: Mapping[str, Tensor],
                     retain_before: float, step: int) -> bool:
        """Try every scale of the grid from the current weights, apply the chosen one; False when a later step applies none."""
        config: NewtonConfig = self.method_config
        start = {name: layer_matrix(module) for name, module in modules.items()}
        tried: dict[float, float] = {}

        def try_scale(scale: float) -> None:
            for name, module in modules.items():
                set_layer_matrix(module, start[name] + scale * directions[name].to(start[name].device))
            forget_nll, retain_nll = self.answer_nll(model)
            tried[scale] = retain_nll
            self.log({"newton_step": float(step), "newton_scale": scale, "newton_forget_nll": forget_nll, "newton_retain_nll": retain_nll})

        for scale in config.scale_candidates():
            try_scale(scale)
        scale, passed = choose_step_scale(tried, retain_before, config.max_retain_nll_increase)
        # A step far outside the quadratic regime (a pretrained model, whose curvature is small in most directions, so the
        # damped inverse is large) breaks the bound at every grid scale: search below the grid before giving up.
        for smaller in ([] if passed else backtrack_scales(min(tried), config.min_step_scale)):
            try_scale(smaller)
            scale, passed = choose_step_scale(tried, retain_before, config.max_retain_nll_increase)
            if passed:
                break
        if not passed and step > 1:
            for name, module in modules.items():
                set_layer_matrix(module, start[name])
            logger.info("%s: every scale of step %d raises the retain NLL past %.4g; stopping after %d step(s)",
                        config.method_name(), step, retain_before + config.max_retain_nll_increase, step - 1)
            self.log({"newton_step": float(step), "newton_chosen_scale": 0.0, "newton_scale_passed": 0.0})
            return False
        if not passed:
            logger.warning(
                "%s: every scale tried (step_scales, then quartered down to min_step_scale) raises the retain NLL above %.4g (%.4g "
                "before unlearning, max_retain_nll_increase %g); using the smallest, %g. Lower min_step_scale, raise damping or "
                "max_retain_nll_increase.",
                config.method_name(), retain_before + config.max_retain_nll_increase, retain_before, config.max_retain_nll_increase,
                scale)
        for name, module in modules.items():
            set_layer_matrix(module, start[name] + scale * directions[name].to(start[name].device))
        self.log({"newton_step": float(step), "newton_chosen_scale": scale, "newton_scale_passed": float(passed)})
        return True

    def perturb(self, model: PreTrainedModel, modules: Mapping[str, nn.Linear], influence: InfluenceConfig,
                dataset: Any) -> dict[str, float]:
        """What follows the step (Fisher forgetting's noise); returns what to record. Newton: nothing."""
        return {}

    def answer_nll(self, model: PreTrainedModel) -> tuple[float, float]:
        """Mean answer NLL of the forget rows and of the measured retain rows (nan without any)."""
        pad = self.train_dataset.tokenizer.pad_token_id
        size = self.method_config.batch_size
        retain = mean_answer_nll(model, self.retain_eval, pad, size) if self.retain_eval else float("nan")
        return mean_answer_nll(model, self.train_dataset.forget, pad, size), retain
