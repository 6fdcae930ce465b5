"""Fisher forgetting: the Newton removal step, then Gaussian noise shaped by the inverse Fisher of the retain data.

Golatkar et al., "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks", CVPR 2020: after a
Newton step towards the retain-only optimum, add noise with covariance proportional to the inverse Fisher of the
retained data D_r, so that what the weights still hold about D_f (in the directions D_r does not pin down) is
drowned, while the directions D_r constrains barely move. In the diagonal form used here:

    θ_u = θ + s · (1/N) (G + λI)⁻¹ Σ_{z∈D_f} ∇θ L(z, θ)          (the ``newton`` method's step, s chosen on D_r)
    θ_f = θ_u + n,   n_i ~ N(0, σ² / (F_ii + λ_F)),  independent,

with F the diagonal true Fisher of a row's summed answer NLL on the retain rows (up to ``max_curvature_rows``, evenly
spaced), fitted at θ_u; λ_F = ``damping``, or 0.1 x the mean of each layer's F (Grosse et al.'s rule for the diagonal
estimator); σ = ``noise_scale``. Only the stepped layers (the MLP's linear layers by default) get noise.

Choices: the step size is chosen on the Newton step alone; the noise comes after and is not searched (its retain cost
is recorded). Golatkar et al. write the noise as (λσ_h²)^(1/4) F^(-1/4) for the full Newton/Fisher form; this is the
σ² F⁻¹ covariance of their Fisher-forgetting variant with the diagonal Fisher, as the method's description names it.
The default σ = 1e-3 is deliberately mild. Measured on the micro benchmark model (tiny-model numbers, over the EK-FAC
step alone): σ = 1e-3 barely moves the answer NLLs; 1e-2 adds +0.03 nats on forget and +0.02 on retain; 3e-2 adds
+0.60 and +0.38: the noise does not single out D_f, so on this model it costs retain NLL nearly as fast as it raises
the forget NLL. Raise it to move further from the trained weights at that price.

What a run records: everything ``newton`` records (keys ``newton_*``), plus ``fisher_noise_scale`` (σ),
``fisher_noise_norm`` (‖n‖), ``fisher_noise_std_mean`` (the mean of σ / sqrt(F_ii + λ_F)) and ``fisher_damping_mean``;
``newton_*_after`` are measured after the noise. ``seed`` seeds the noise (and the Fisher's sampled labels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from unlearnkit.attribution.newton_step import diagonal_fisher_noise
from unlearnkit.attribution.scores import InfluenceConfig, fit_factors
from unlearnkit.methods.base import register_method
from unlearnkit.methods.newton import Newton, NewtonConfig, encoded_batches, layer_matrix, set_layer_matrix
from unlearnkit.methods.task_vector import evenly_spaced
from unlearnkit.settings import require_non_negative


@dataclass
class FisherForgettingConfig(NewtonConfig):
    noise_scale: float = field(
        default=1e-3, metadata={"help": "σ: each stepped weight gets noise N(0, σ² / (F_ii + λ)), F the diagonal Fisher of the "
                                        "retain rows (0: the Newton step alone)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        require_non_negative(noise_scale=self.noise_scale)

    @staticmethod
    def method_name() -> str:
        return "fisher_forgetting"


@register_method(
    "fisher_forgetting",
    config=FisherForgettingConfig,
    paper='Golatkar et al., "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks", CVPR 2020',
    summary="No training: newton's damped Newton step on the MLP weights, then Gaussian noise N(0, σ²/(F_ii+λ)) with F the "
            "diagonal Fisher of D_r.",
    family="influence/second-order",
)
class FisherForgetting(Newton):
    """Fisher forgetting (Golatkar et al., CVPR 2020), diagonal form, after the Newton removal step."""

    def perturb(self, model: PreTrainedModel, modules: Mapping[str, nn.Linear], influence: InfluenceConfig,
                dataset: Any) -> dict[str, float]:
        config: FisherForgettingConfig = self.method_config
        if config.noise_scale == 0:
            return {"fisher_noise_scale": 0.0, "fisher_noise_norm": 0.0}
        device = next(model.parameters()).device
        retain = evenly_spaced(dataset.retain, config.max_curvature_rows)
        batches = encoded_batches(retain, dataset.tokenizer.pad_token_id, config.batch_size, device)
        fisher = fit_factors(model, modules, batches, "diagonal", influence)  # F_ii per layer, (d_out, d_in')
        generator = torch.Generator().manual_seed(config.seed)
        squared = 0.0
        std_sum = 0.0
        count = 0
        for name, module in modules.items():
            diagonal = fisher.tensors[name]["diagonal"]
            noise = diagonal_fisher_noise(diagonal, fisher.damping[name], config.noise_scale, generator)
            set_layer_matrix(module, layer_matrix(module) + noise.to(module.weight.device))
            squared += float(noise.double().square().sum())
            std_sum += float((config.noise_scale / torch.sqrt(diagonal.double() + fisher.damping[name])).sum())
            count += diagonal.numel()
        return {"fisher_noise_scale": config.noise_scale, "fisher_noise_norm": math.sqrt(squared),
                "fisher_noise_std_mean": std_sum / max(count, 1),
                "fisher_damping_mean": sum(fisher.damping.values()) / len(fisher.damping)}
