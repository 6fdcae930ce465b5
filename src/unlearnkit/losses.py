"""Loss functions for LLM unlearning.

Every function here is pure: tensors in, tensor out, no model calls. The
training code runs the model (and the frozen reference model) and hands the
resulting logits or sequence NLLs to these functions.

Conventions
-----------
* ``logits`` has shape ``(B, T, V)`` and ``labels`` shape ``(B, T)``; a label of
  ``-100`` marks a position that is not scored (prompt or padding).
* Causal shift: the prediction for ``labels[:, t]`` is ``logits[:, t - 1]``, so
  the functions compare ``logits[:, :-1]`` with ``labels[:, 1:]`` themselves.
* ``ℓ`` is the sequence-SUM NLL over answer tokens, ``ℓ̄ = ℓ / |y|`` the
  per-token mean, ``σ`` the logistic sigmoid. A sequence log-probability is
  ``log π(y | x) = −ℓ``.
* Reference-model quantities are treated as constants: they are detached, so
  no gradient reaches a reference even if the caller forgot ``torch.no_grad``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
"""Label value for positions that carry no loss (the Hugging Face convention)."""


def _check_lm_inputs(logits: Tensor, labels: Tensor) -> None:
    """Reject shapes that would make the shifted comparison silently wrong."""
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape (B, T, V); got {tuple(logits.shape)}.")
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape (B, T); got {tuple(labels.shape)}.")
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits (B, T, V) = {tuple(logits.shape)} and labels (B, T) = "
            f"{tuple(labels.shape)} must agree on B and T; pass the labels of the "
            "same batch the logits were computed on."
        )
    if labels.shape[1] < 2:
        raise ValueError(
            f"sequences need at least 2 positions for a next-token loss; got T = {labels.shape[1]}."
        )


def _check_beta(beta: float) -> None:
    """β scales log-ratios and divides the NPO losses, so it must be a positive number."""
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a finite number > 0 (for example 0.1); got {beta}.")


def _check_same_shape(**tensors: Tensor) -> None:
    """Per-sample quantities must pair up one-to-one; broadcasting would hide a bug."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"per-sample inputs must have the same shape (B,); got {shapes}.")


def _at_least_float32(logits: Tensor) -> Tensor:
    """Upcast fp16/bf16 logits (their log-softmax loses small probabilities); keep float64."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _shifted_mask(labels: Tensor) -> Tensor:
    """Float mask (B, T-1): 1 where the shifted label is scored, 0 where it is ignored."""
    return (labels[:, 1:] != IGNORE_INDEX).float()


def _scored_count(mask: Tensor) -> Tensor:
    """Total number of scored positions; an all-ignored batch would give 0/0 = NaN."""
    count = mask.sum()
    if count.item() == 0:
        raise ValueError(
            "labels contain no scored token after the shift; every batch needs at least "
            "one label != -100 at a position t >= 1 (check prompt masking and truncation)."
        )
    return count


def token_nll(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token negative log-likelihood of the labels under the model, with the causal shift.

    Args:
        logits: ``(B, T, V)`` next-token logits.
        labels: ``(B, T)`` token ids, ``-100`` on positions that are not scored.

    Returns:
        ``(nll, mask)``, both ``(B, T-1)``:
        ``nll[b, t] = −log softmax(logits[b, t])[labels[b, t+1]]`` (0 where ignored)
        and ``mask`` the float indicator of scored positions.
        Half-precision logits are upcast to float32 so that the log-softmax keeps its tail.
    """
    _check_lm_inputs(logits, labels)
    shifted_logits = _at_least_float32(logits[:, :-1])
    shifted_labels = labels[:, 1:]
    # cross_entropy wants the class dimension second: (B, V, T-1).
    nll = F.cross_entropy(
        shifted_logits.transpose(1, 2),
        shifted_labels,
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return nll, _shifted_mask(labels)


def sequence_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Sequence-sum NLL ``ℓ = −log π(y | x)`` over the label tokens; shape ``(B,)``."""
    nll, _ = token_nll(logits, labels)
    return nll.sum(dim=1)


def sequence_token_count(labels: Tensor) -> Tensor:
    """Number of scored label tokens ``|y|`` per sequence, after the shift; float ``(B,)``."""
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape (B, T); got {tuple(labels.shape)}.")
    return _shifted_mask(labels).sum(dim=1)


def mean_nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Standard LM loss: mean NLL over ALL label tokens of the batch (scalar).

    Tokens, not sequences, are weighted equally, as in the usual causal-LM loss.
    """
    nll, mask = token_nll(logits, labels)
    return nll.sum() / _scored_count(mask)


def gradient_ascent_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Gradient-ascent unlearning loss ``−mean_nll`` (scalar).

    Minimising it maximises the NLL of the forget answers.

    Reference: Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in
    Language Models", ACL 2023.
    """
    return -mean_nll(logits, labels)


def kl_to_reference(logits: Tensor, reference_logits: Tensor, labels: Tensor) -> Tensor:
    """Forward KL ``KL(p_ref ‖ p_θ)`` per position, averaged over the scored positions (scalar).

    ``KL_t = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v))`` at each shifted position
    ``t`` whose label is not ``-100``; the result is the mean of ``KL_t`` over all
    such positions of the batch. TOFU's KL regulariser averages over every
    position, prompt and padding included; here only answer positions count, so
    the regulariser is not diluted by prompt length or padding.

    Args:
        logits: ``(B, T, V)`` logits of the model being trained.
        reference_logits: ``(B, T, V)`` logits of the frozen reference model (detached here).
        labels: ``(B, T)`` labels; only their ``-100`` pattern is used.

    Reference: Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024.
    """
    _check_lm_inputs(logits, labels)
    if reference_logits.shape != logits.shape:
        raise ValueError(
            f"reference_logits {tuple(reference_logits.shape)} must have the same shape as "
            f"logits {tuple(logits.shape)}; run both models on the same batch."
        )
    log_p = F.log_softmax(_at_least_float32(logits[:, :-1]), dim=-1)
    log_p_ref = F.log_softmax(_at_least_float32(reference_logits[:, :-1].detach()), dim=-1)
    kl_per_position = (log_p_ref.exp() * (log_p_ref - log_p)).sum(dim=-1)
    mask = _shifted_mask(labels)
    return (kl_per_position * mask).sum() / _scored_count(mask)


def npo_loss(sequence_nll: Tensor, reference_sequence_nll: Tensor, beta: float) -> Tensor:
    """Negative Preference Optimization loss (scalar).

    ``L = −(2/β) · mean_i log σ(β · (ℓ_θ,i − ℓ_ref,i))``, which equals
    ``(2/β) · mean log(1 + (π_θ/π_ref)^β)``. At ``ℓ_θ = ℓ_ref`` it is ``(2/β)·log 2``
    and it decreases towards 0 as the model's NLL on the forget answers grows.

    Args:
        sequence_nll: ``(B,)`` sequence-sum NLL ``ℓ_θ`` of the trained model.
        reference_sequence_nll: ``(B,)`` sequence-sum NLL ``ℓ_ref`` of the reference
            (detached here).
        beta: inverse temperature, > 0.

    Reference: Zhang et al., "Negative Preference Optimization: From Catastrophic
    Collapse to Effective Unlearning", COLM 2024.
    """
    _check_beta(beta)
    _check_same_shape(sequence_nll=sequence_nll, reference_sequence_nll=reference_sequence_nll)
    margin = sequence_nll - reference_sequence_nll.detach()
    # logsigmoid stays finite where log(sigmoid(x)) would underflow to -inf.
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def simnpo_loss(
    sequence_nll: Tensor, token_count: Tensor, beta: float, gamma: float = 0.0
) -> Tensor:
    """SimNPO loss: reference-free, length-normalised NPO (scalar).

    ``L = −(2/β) · mean_i log σ(β · (ℓ_θ,i / |y_i| − γ))``. The margin ``γ`` is
    on the per-token NLL scale and is subtracted before the β scaling.

    Args:
        sequence_nll: ``(B,)`` sequence-sum NLL ``ℓ_θ``.
        token_count: ``(B,)`` answer lengths ``|y|`` (see :func:`sequence_token_count`), all > 0.
        beta: inverse temperature, > 0.
        gamma: reward margin, a finite number (0 by default).

    Reference: Fan et al., "Simplicity Prevails: Rethinking Negative Preference
    Optimization for LLM Unlearning", arXiv:2410.07163, 2024.
    """
    _check_beta(beta)
    if not math.isfinite(gamma):
        raise ValueError(f"gamma must be a finite number (for example 0.0); got {gamma}.")
    _check_same_shape(sequence_nll=sequence_nll, token_count=token_count)
    if bool((token_count <= 0).any()):
        raise ValueError(
            "token_count must be > 0 for every sequence; drop samples whose answer has no "
            "scored token (all labels -100 after the shift)."
        )
    per_token_nll = sequence_nll / token_count
    return -(2.0 / beta) * F.logsigmoid(beta * (per_token_nll - gamma)).mean()


def dpo_loss(
    chosen_nll: Tensor,
    rejected_nll: Tensor,
    reference_chosen_nll: Tensor,
    reference_rejected_nll: Tensor,
    beta: float,
) -> Tensor:
    """Direct Preference Optimization loss on sequence-sum NLLs (scalar).

    With ``log π = −ℓ``:
    ``Δ = (log π_θ(chosen) − log π_ref(chosen))
    − (log π_θ(rejected) − log π_ref(rejected))``
    and ``L = −mean log σ(β · Δ)``. For unlearning (TOFU's IDK-DPO), ``chosen`` is an
    "I don't know"-style answer and ``rejected`` the forget-set answer.

    Args:
        chosen_nll: ``(B,)`` ``ℓ_θ`` of the preferred answers.
        rejected_nll: ``(B,)`` ``ℓ_θ`` of the dispreferred (forget) answers.
        reference_chosen_nll: ``(B,)`` reference ``ℓ`` of the preferred answers (detached here).
        reference_rejected_nll: ``(B,)`` reference ``ℓ`` of the dispreferred answers
            (detached here).
        beta: inverse temperature, > 0.

    References: Rafailov et al., "Direct Preference Optimization: Your Language Model
    is Secretly a Reward Model", NeurIPS 2023; Maini et al., "TOFU: A Task of
    Fictitious Unlearning for LLMs", COLM 2024.
    """
    _check_beta(beta)
    _check_same_shape(
        chosen_nll=chosen_nll,
        rejected_nll=rejected_nll,
        reference_chosen_nll=reference_chosen_nll,
        reference_rejected_nll=reference_rejected_nll,
    )
    chosen_log_ratio = -chosen_nll + reference_chosen_nll.detach()
    rejected_log_ratio = -rejected_nll + reference_rejected_nll.detach()
    return -F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio)).mean()
