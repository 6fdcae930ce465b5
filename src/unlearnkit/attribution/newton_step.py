"""The damped Newton step that removes a set of training rows, with the curvature of :mod:`unlearnkit.attribution.scores`.

Koh & Liang, "Understanding Black-box Predictions via Influence Functions", ICML 2017: up-weighting a training row z by
ε moves the empirical-risk minimiser θ̂ = argmin (1/N) Σ_i L(z_i, θ) by dθ/dε = −H⁻¹ ∇θ L(z, θ̂), with H the Hessian of
the mean loss. Removing the rows D_f is ε = −1/N for each, so

    θ_u = θ̂ + (1/N) (G + λI)⁻¹ Σ_{z∈D_f} ∇θ L(z, θ̂),

one damped Newton ascent step on the forget loss, with G the Gauss-Newton Hessian approximated as in Grosse et al.,
"Studying Large Language Model Generalization with Influence Functions", arXiv 2023 (EK-FAC, K-FAC or the diagonal
Fisher over the MLP's linear layers; λ = 0.1 x the mean eigenvalue unless set).

For a quadratic loss the step is exact when G is the Hessian of the retain rows' loss scaled as G's own mean: then
θ_u is the minimiser of the retain loss (the retrained model) whatever the forget rows. With G fitted on all N rows
(the training distribution, Koh & Liang's H) it is the first-order influence approximation of that minimiser.

Shapes: a layer's parameters are one ``(d_out, d_in')`` matrix (the bias as the last column, see
:mod:`unlearnkit.attribution.curvature`); the functions here take and return dicts of such matrices by layer name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from unlearnkit.attribution.scores import Factors


def newton_direction(gradient_sum: Tensor, inverse_product: Callable[[Tensor], Tensor], rows: int) -> Tensor:
    """``d = (1/N) (G + λI)⁻¹ Σ_{z∈D_f} ∇L(z)`` for one block of parameters.

    gradient_sum: ``Σ ∇L`` over the forget rows, any shape ``inverse_product`` accepts (a flat vector, or a layer's
    ``(d_out, d_in')`` matrix); inverse_product: ``v -> (G + λI)⁻¹ v``; rows: N, the number of rows G stands for
    (G being their MEAN curvature, the step is ε = 1/N of a full Newton step per removed row).
    """
    if rows < 1:
        raise ValueError(f"newton_direction needs the number of rows G stands for (>= 1), got {rows}.")
    return inverse_product(gradient_sum) / rows


def layer_directions(gradient_sums: Mapping[str, Tensor], factors: Factors, rows: int) -> dict[str, Tensor]:
    """The Newton direction of every tracked layer, with the fitted (block-diagonal) curvature ``factors``.

    gradient_sums: layer name -> ``Σ_{z∈D_f} ∇_W L(z)`` of shape ``(d_out, d_in')``; returns the same shapes, float32.
    """
    return {name: newton_direction(gradient.double(), lambda v, name=name: factors.inverse_product(name, v), rows).float()
            for name, gradient in gradient_sums.items()}


def summed_gradients(per_batch: Iterable[Mapping[str, Tensor]]) -> tuple[dict[str, Tensor], int]:
    """``Σ_rows ∇L`` per layer from :func:`unlearnkit.attribution.scores.data_gradients`' per-batch ``(B, d_out, d_in')``
    row gradients (in float64, the sum of many rows), and the number of rows summed."""
    sums: dict[str, Tensor] = {}
    rows = 0
    for part in per_batch:
        for name, gradients in part.items():
            block = gradients.double().sum(dim=0)
            sums[name] = sums[name] + block if name in sums else block
        rows += int(next(iter(part.values())).shape[0])
    return sums, rows


def diagonal_fisher_noise(diagonal: Tensor, damping: float, scale: float, generator: torch.Generator) -> Tensor:
    """Gaussian noise with covariance ``σ² (diag(F) + λI)⁻¹``: entry i ~ N(0, σ² / (F_ii + λ)), independent.

    Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR 2020 (Fisher forgetting, diagonal form): directions the
    retained data constrain little (small F_ii) get the most noise. diagonal ``(d_out, d_in')`` -> the same shape, float32.
    """
    standard = torch.randn(diagonal.shape, generator=generator, dtype=torch.float64)
    return (scale * standard / torch.sqrt(diagonal.to(torch.float64) + damping)).float()
