"""Curvature estimators for influence functions: K-FAC, EK-FAC, the diagonal Fisher, and none (TracIn).

Grosse et al., "Studying Large Language Model Generalization with Influence Functions", arXiv 2023: the influence
of a training row z on a query q is ``grad_qᵀ (G + λI)⁻¹ grad_z``, with G the Gauss-Newton Hessian (the true Fisher,
labels sampled from the model), approximated layer by layer (block diagonal) over the MLP's linear layers.

Conventions (every function here is pure: tensors in, tensors out). A linear layer ``y = W a (+ b)`` has
``W`` of shape ``(d_out, d_in)``; with a bias, ``a`` gets a constant 1 appended (``d_in' = d_in + 1``) and the
bias becomes the last column of ``W``, so one ``(d_out, d_in')`` matrix holds the layer's gradient. For one row
with tokens t, the gradient of its loss is ``dW = Σ_t s_t a_tᵀ``, with ``a_t`` the layer's input at token t and
``s_t = ∂loss/∂y_t`` its pre-activation (pseudo-)gradient. A vector of the layer's parameters is kept as a
``(d_out, d_in')`` matrix V; the Kronecker product ``S ⊗ A`` acts on it as ``S V A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# Grosse et al. (and the coauthor's kronfluence library): damping λ = 0.1 × the mean eigenvalue of the layer's block.
DAMPING_FACTOR = 0.1


def with_bias_column(activations: Tensor) -> Tensor:
    """``(..., d_in)`` -> ``(..., d_in + 1)``: a constant 1 appended, the input that multiplies the bias."""
    return torch.cat([activations, activations.new_ones(*activations.shape[:-1], 1)], dim=-1)


def row_gradients(activations: Tensor, pseudo_gradients: Tensor) -> Tensor:
    """Per-row gradients of a linear layer: ``dW_b = Σ_t s_{b,t} a_{b,t}ᵀ``.

    activations ``(B, T, d_in')``, pseudo_gradients ``(B, T, d_out)`` -> ``(B, d_out, d_in')``.
    """
    return torch.einsum("bto,bti->boi", pseudo_gradients, activations)


@dataclass
class CovarianceSums:
    """Running sums of one layer's K-FAC factors (Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored
    Approximate Curvature", ICML 2015; for sequences as in Grosse et al. 2023).

    ``A = E_tokens[a aᵀ]`` (mean over tokens) and ``S = (1/N) Σ_rows Σ_t s sᵀ`` (mean over rows of the per-token sum),
    so that ``S ⊗ A ≈ (1/N) Σ_rows Σ_t (s sᵀ) ⊗ (a aᵀ)``, the Fisher of a row's summed loss without the cross-token
    terms, at the scale of a row's gradient (the scale the damping and the influence are measured in).
    """

    activation: Tensor  # (d_in', d_in'): Σ a aᵀ over tokens
    gradient: Tensor  # (d_out, d_out): Σ s sᵀ over tokens
    tokens: int = 0
    rows: int = 0

    @classmethod
    def zeros(cls, d_out: int, d_in: int, dtype: torch.dtype = torch.float64) -> CovarianceSums:
        """Empty sums. float64 by default; float32 halves the memory (SmolLM2-135M's MLPs: 1.0 GB instead of 1.9) for a
        relative rounding error of about 1e-7 per batch added (each batch is first summed on its own)."""
        return cls(torch.zeros(d_in, d_in, dtype=dtype), torch.zeros(d_out, d_out, dtype=dtype))

    def add(self, activations: Tensor, pseudo_gradients: Tensor, mask: Tensor) -> None:
        """activations ``(B, T, d_in')``, pseudo_gradients ``(B, T, d_out)``, mask ``(B, T)`` (1 on real tokens, 0 on padding)."""
        # One batch's sums in float32 (a few hundred tokens: float32 keeps ~7 digits there, at half float64's time), added
        # to the running sums in their own dtype.
        weight = mask.to("cpu", torch.float32).unsqueeze(-1)
        a = (activations.to("cpu", torch.float32) * weight).flatten(0, -2)  # (B*T, d_in')
        s = (pseudo_gradients.to("cpu", torch.float32) * weight).flatten(0, -2)  # (B*T, d_out)
        self.activation += (a.T @ a).to(self.activation.dtype)
        self.gradient += (s.T @ s).to(self.gradient.dtype)
        self.tokens += int(mask.sum())
        self.rows += int(mask.shape[0])

    def factors(self) -> tuple[Tensor, Tensor]:
        """``(A, S)``: ``(d_in', d_in')`` and ``(d_out, d_out)``."""
        return self.activation / max(self.tokens, 1), self.gradient / max(self.rows, 1)


@dataclass
class Eigenbasis:
    """Eigenvectors (columns) and eigenvalues of A and S: ``A = Q_A diag(e_A) Q_Aᵀ``, ``S = Q_S diag(e_S) Q_Sᵀ``."""

    q_activation: Tensor  # (d_in', d_in')
    eig_activation: Tensor  # (d_in',)
    q_gradient: Tensor  # (d_out, d_out)
    eig_gradient: Tensor  # (d_out,)


def eigenbasis(activation_covariance: Tensor, gradient_covariance: Tensor) -> Eigenbasis:
    """The eigendecompositions of A and S (in float64; eigenvalues of these PSD matrices clamped at 0 against round-off)."""
    eig_a, q_a = torch.linalg.eigh(activation_covariance.to(torch.float64))
    eig_s, q_s = torch.linalg.eigh(gradient_covariance.to(torch.float64))
    return Eigenbasis(q_a, eig_a.clamp(min=0), q_s, eig_s.clamp(min=0))


def kfac_eigenvalues(basis: Eigenbasis) -> Tensor:
    """K-FAC's eigenvalues of ``S ⊗ A`` in the Kronecker eigenbasis: ``Λ[i, j] = e_S[i] e_A[j]``; ``(d_out, d_in')``.

    Martens & Grosse, ICML 2015.
    """
    return torch.outer(basis.eig_gradient, basis.eig_activation)


def to_eigenbasis(matrices: Tensor, basis: Eigenbasis) -> Tensor:
    """``Q_Sᵀ V Q_A`` for each ``V`` of ``(..., d_out, d_in')``."""
    return basis.q_gradient.T.to(matrices.dtype) @ matrices @ basis.q_activation.to(matrices.dtype)


def from_eigenbasis(matrices: Tensor, basis: Eigenbasis) -> Tensor:
    """``Q_S V Q_Aᵀ``, the inverse of :func:`to_eigenbasis`."""
    return basis.q_gradient.to(matrices.dtype) @ matrices @ basis.q_activation.T.to(matrices.dtype)


def ekfac_square_sums(gradients: Tensor, basis: Eigenbasis) -> Tensor:
    """``Σ_rows (Q_Sᵀ dW Q_A)²`` over the rows of ``gradients`` ``(B, d_out, d_in')``; ``(d_out, d_in')`` in float64.

    George et al., "Fast Approximate Natural Gradient Descent in a Kronecker-factored Eigenbasis", NeurIPS 2018
    (EK-FAC), as used by Grosse et al. 2023: the eigenvalues are refitted in the Kronecker eigenbasis,
    ``Λ = E_rows[(Q_Sᵀ dW Q_A)²]``, the Fisher's exact diagonal in that basis (K-FAC's ``e_S e_Aᵀ`` is not).
    """
    return to_eigenbasis(gradients.to("cpu", torch.float64), basis).square().sum(dim=0)


def token_rotation_is_cheaper(tokens: int, d_out: int, d_in: int) -> bool:
    """Whether rotating each token's ``s`` and ``a`` (``T (d_out² + d_in²)`` multiply-adds, then ``T d_out d_in`` to sum the
    outer products) costs less than rotating the dense row gradient (``T d_out d_in`` to form it, then
    ``d_out d_in (d_out + d_in)``): true while the row has fewer tokens than about ``d_out d_in / max(d_out, d_in)``."""
    return tokens * (d_out * d_out + d_in * d_in) < d_out * d_in * (d_out + d_in)


def rotated_token_factors(activations: Tensor, pseudo_gradients: Tensor, basis: Eigenbasis) -> tuple[Tensor, Tensor]:
    """Each token's factors in the Kronecker eigenbasis: ``u_t = Q_Sᵀ s_t`` and ``v_t = Q_Aᵀ a_t``, so that a row's rotated
    gradient ``Q_Sᵀ dW Q_A = Σ_t u_t v_tᵀ`` (:func:`row_gradients` of ``(v, u)``).

    activations ``(B, T, d_in')``, pseudo_gradients ``(B, T, d_out)`` -> ``(u (B, T, d_out), v (B, T, d_in'))``, in the
    inputs' dtype.
    """
    dtype = activations.dtype
    return pseudo_gradients @ basis.q_gradient.to(dtype), activations @ basis.q_activation.to(dtype)


def rotated_row_gradients(activations: Tensor, pseudo_gradients: Tensor, basis: Eigenbasis) -> Tensor:
    """``Q_Sᵀ dW_b Q_A`` for each row, ``(B, d_out, d_in')``, by the cheaper of two routes that give the same matrix
    (:func:`token_rotation_is_cheaper`): ``Σ_t (Q_Sᵀ s_t)(Q_Aᵀ a_t)ᵀ`` over tokens, or the dense gradient rotated.

    For a language model's MLP (d ~ 10³, rows of ~10² tokens) the token route is several times cheaper.
    activations ``(B, T, d_in')``, pseudo_gradients ``(B, T, d_out)``; the result in the inputs' dtype.
    """
    tokens, d_out, d_in = activations.shape[1], pseudo_gradients.shape[-1], activations.shape[-1]
    if token_rotation_is_cheaper(tokens, d_out, d_in):
        u, v = rotated_token_factors(activations, pseudo_gradients, basis)
        return row_gradients(v, u)
    return to_eigenbasis(row_gradients(activations, pseudo_gradients), basis)


def default_damping(eigenvalues: Tensor) -> float:
    """λ = 0.1 × the mean eigenvalue (Grosse et al., arXiv 2023), with a floor so that a zero block stays invertible."""
    return max(DAMPING_FACTOR * float(eigenvalues.mean()), 1e-12)


def eigen_inverse_product(matrices: Tensor, basis: Eigenbasis, eigenvalues: Tensor, damping: float) -> Tensor:
    """``(G + λI)⁻¹ V = Q_S [(Q_Sᵀ V Q_A) ⊘ (Λ + λ)] Q_Aᵀ`` for each V of ``(..., d_out, d_in')`` (Grosse et al., arXiv 2023).

    With K-FAC's Λ (:func:`kfac_eigenvalues`) this is the damped inverse of ``S ⊗ A``; with EK-FAC's (:func:`ekfac_square_sums`
    divided by the row count) that of the eigenvalue-corrected approximation.
    """
    rotated = to_eigenbasis(matrices.to(torch.float64), basis)
    return from_eigenbasis(rotated / (eigenvalues.to(torch.float64) + damping), basis).to(matrices.dtype)


def diagonal_inverse_product(matrices: Tensor, diagonal: Tensor, damping: float) -> Tensor:
    """``(diag(F) + λI)⁻¹ V``, with ``diag(F) = E_rows[dW ⊙ dW]`` the diagonal Fisher (``(d_out, d_in')``).

    The diagonal approximation of the Gauss-Newton Hessian that Grosse et al. (arXiv 2023) compare EK-FAC with.
    """
    return (matrices.to(torch.float64) / (diagonal.to(torch.float64) + damping)).to(matrices.dtype)
