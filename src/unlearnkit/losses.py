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


def at_least_float32(logits: Tensor) -> Tensor:
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
    shifted_logits = at_least_float32(logits[:, :-1])
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


def pooled_mean_nll(
    logits: Tensor, labels: Tensor, other_logits: Tensor, other_labels: Tensor, other_weight: float = 1.0
) -> Tensor:
    """One token mean of the NLL over two batches pooled into one (scalar).

    ``L = (Σ ℓ_t over the first batch + w · Σ ℓ_t over the other) / (N + N_other)`` with ``N``
    and ``N_other`` the scored tokens of each batch. With ``w = 1`` it is :func:`mean_nll` of
    the two batches concatenated along the batch dimension, which is how TOFU's IDK loss
    (dataloader.py, loss_type "idk") pools the refusal and retain batches into one forward;
    every token weighs the same, whichever batch it comes from.

    Args:
        logits, labels: ``(B, T, V)`` and ``(B, T)`` of the first batch.
        other_logits, other_labels: ``(B', T', V)`` and ``(B', T')`` of the other batch.
        other_weight: finite weight ``>= 0`` of the other batch's token NLLs in the pooled sum.
    """
    if not (math.isfinite(other_weight) and other_weight >= 0):
        raise ValueError(f"other_weight must be a finite number >= 0; got {other_weight}.")
    nll, mask = token_nll(logits, labels)
    other_nll, other_mask = token_nll(other_logits, other_labels)
    return (nll.sum() + other_weight * other_nll.sum()) / _scored_count(torch.cat([mask.flatten(), other_mask.flatten()]))


def gradient_ascent_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Gradient-ascent unlearning loss ``−mean_nll`` (scalar).

    Minimising it maximises the NLL of the forget answers.

    Reference: Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in
    Language Models", ACL 2023.
    """
    return -mean_nll(logits, labels)


KL_POSITIONS = ("all", "answer")
"""Where :func:`kl_to_reference` averages: every position of the padded batch, or the answer positions only."""


def kl_to_reference(logits: Tensor, reference_logits: Tensor, labels: Tensor, positions: str = "all") -> Tensor:
    """Forward KL ``KL(p_ref ‖ p_θ)`` per position, averaged over the chosen positions (scalar).

    ``KL_t = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v))`` at each position ``t``.

    * ``positions="all"`` (the references' form): the mean of ``KL_t`` over ALL ``B·T``
      positions of the batch as padded, prompt, answer and padding alike; no causal
      shift, as the KL does not involve the labels. This is TOFU's (dataloader.py,
      loss_type "KL") and OpenUnlearning's (src/trainer/utils.py compute_kl_divergence
      at d3d7cf9) ``kl_div(log p_θ, log p_ref, reduction="batchmean", log_target=True)``
      on logits flattened to ``(B·T, V)``. The value therefore depends on the padding:
      OpenUnlearning and this library pad each batch to its longest row, TOFU pads
      every row to 500 tokens, which dilutes its mean further.
    * ``positions="answer"``: the mean of ``KL_t`` over the shifted positions whose
      label is not ``-100`` (those that predict an answer token), so that the term is
      not diluted by prompt length or padding.

    Args:
        logits: ``(B, T, V)`` logits of the model being trained.
        reference_logits: ``(B, T, V)`` logits of the frozen reference model (detached here).
        labels: ``(B, T)`` labels; only their ``-100`` pattern is used, and only by ``"answer"``.
        positions: ``"all"`` or ``"answer"``.

    Reference: Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024.
    """
    _check_lm_inputs(logits, labels)
    if positions not in KL_POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(KL_POSITIONS)}; got {positions!r}.")
    if reference_logits.shape != logits.shape:
        raise ValueError(
            f"reference_logits {tuple(reference_logits.shape)} must have the same shape as "
            f"logits {tuple(logits.shape)}; run both models on the same batch."
        )
    if positions == "all":
        return forward_kl_per_position(logits, reference_logits).mean()
    kl_per_position = forward_kl_per_position(logits[:, :-1], reference_logits[:, :-1])  # (B, T-1)
    mask = _shifted_mask(labels)
    return (kl_per_position * mask).sum() / _scored_count(mask)


def forward_kl_per_position(logits: Tensor, reference_logits: Tensor) -> Tensor:
    """``KL(p_ref ‖ p_θ)`` at each position, ``(B, T, V)`` logits -> ``(B, T)``; the reference is detached.

    ``KL_t = Σ_v p_ref(v) · (log p_ref(v) − log p_θ(v))``, both softmaxes at temperature 1 in at least float32.
    """
    log_p = F.log_softmax(at_least_float32(logits), dim=-1)
    log_p_ref = F.log_softmax(at_least_float32(reference_logits.detach()), dim=-1)
    return (log_p_ref.exp() * (log_p_ref - log_p)).sum(dim=-1)


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
    scale_by_two_over_beta: bool = False,
) -> Tensor:
    """Direct Preference Optimization loss on sequence-sum NLLs (scalar).

    With ``log π = −ℓ``:
    ``Δ = (log π_θ(chosen) − log π_ref(chosen))
    − (log π_θ(rejected) − log π_ref(rejected))``
    and ``L = −mean log σ(β · Δ)`` (Rafailov et al.; TOFU's dataloader.py, loss_type "dpo").
    With ``scale_by_two_over_beta`` the loss is ``−(2/β) · mean log σ(β · Δ)``, the form of
    OpenUnlearning (src/trainer/utils.py compute_dpo_loss at d3d7cf9) and of the NPO
    authors' TOFU code (dataloader.py, loss_type "dpo"): its gradient does not shrink with
    β. For unlearning (IDK-DPO), ``chosen`` is an "I don't know"-style answer and
    ``rejected`` the forget-set answer.

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
    scale = 2.0 / beta if scale_by_two_over_beta else 1.0
    return -scale * F.logsigmoid(beta * (chosen_log_ratio - rejected_log_ratio)).mean()


# ---------------------------------------------------------------------------
# Token-reweighted and distribution-target forget losses, and the primal-dual
# pieces: WGA, SatImp, UNDIAL, CE-U, PDU.
# ---------------------------------------------------------------------------


def _scored_positions(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The logits and labels of the scored positions only, after the causal shift.

    Returns ``(logits (N, V), labels (N,))`` with ``N`` the number of labels that are
    not ``-100`` at a position ``t >= 1``; half-precision logits are upcast. Working on
    the selected rows keeps ``-inf``/NaN arithmetic of unscored rows out of the result
    (a masked sum would turn ``0 · NaN`` into NaN).
    """
    _check_lm_inputs(logits, labels)
    shifted_labels = labels[:, 1:]
    scored = shifted_labels != IGNORE_INDEX
    _scored_count(scored.float())
    return at_least_float32(logits[:, :-1])[scored], shifted_labels[scored]


def _check_exponent(name: str, value: float) -> None:
    """Weight exponents may be 0 (that factor becomes 1) but must be finite and non-negative."""
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0; got {value}.")


def _weighted_mean_log_likelihood(nll: Tensor, mask: Tensor, weight: Tensor) -> Tensor:
    """``mean_t w_t · log p_θ(y_t)`` over the scored tokens (all ``(B, T-1)``); the weights are detached."""
    return (weight.detach() * -nll * mask).sum() / _scored_count(mask)


def weighted_gradient_ascent_loss(logits: Tensor, labels: Tensor, beta: float = 1.0) -> Tensor:
    """Weighted gradient ascent (WGA) forget loss (scalar).

    ``L = mean_t w_t · log p_θ(y_t | x, y_<t)`` with ``w_t = p_θ(y_t | ·)^β`` treated as a
    constant (detached), the mean taken over all scored answer tokens of the batch
    (tokens weigh equally, as in :func:`mean_nll`). Minimising ``L`` lowers the
    log-likelihood of the forget tokens, most where they are still likely; ``β = 0`` is
    plain gradient ascent (``−mean_nll``).

    Reference: Wang et al., "Rethinking LLM Unlearning Objectives: A Gradient
    Perspective and Go Beyond", ICLR 2025.
    """
    _check_exponent("beta", beta)
    nll, mask = token_nll(logits, labels)
    probability = (-nll).detach().exp()  # (B, T-1): p_θ(y_t | x, y_<t)
    return _weighted_mean_log_likelihood(nll, mask, probability**beta)


def satimp_loss(logits: Tensor, labels: Tensor, beta1: float = 5.0, beta2: float = 1.0) -> Tensor:
    """Saturation-importance (SatImp) forget loss (scalar).

    ``L = mean_t w_t · log p_θ(y_t)`` with ``w_t = p_t^β1 · (1 − p_t)^β2`` detached: the
    ``p^β1`` factor favours tokens the model still predicts, the ``(1 − p)^β2`` factor
    damps those it is all but certain of. Mean over all scored answer tokens of the batch.

    Reference: Yang et al., "Exploring Criteria of Loss Reweighting to Enhance LLM
    Unlearning", ICML 2025.
    """
    _check_exponent("beta1", beta1)
    _check_exponent("beta2", beta2)
    nll, mask = token_nll(logits, labels)
    probability = (-nll).detach().exp()  # (B, T-1): p_θ(y_t | x, y_<t)
    return _weighted_mean_log_likelihood(nll, mask, probability**beta1 * (1.0 - probability) ** beta2)


def undial_loss(logits: Tensor, reference_logits: Tensor, labels: Tensor, beta: float = 10.0) -> Tensor:
    """UNDIAL self-distillation loss toward the reference with the label's logit lowered (scalar).

    Teacher at each scored position: ``q = softmax(z_ref − β · onehot(y_t))`` from the
    frozen reference logits (detached). Loss: the cross-entropy ``−Σ_v q_v log p_θ(v)``,
    averaged over the scored answer positions of the batch. Its minimum is the entropy
    of ``q``, reached when the student equals the adjusted teacher.

    Args:
        logits: ``(B, T, V)`` logits of the model being trained.
        reference_logits: ``(B, T, V)`` logits of the frozen reference model.
        labels: ``(B, T)`` labels, ``-100`` where not scored.
        beta: how far the label's logit is lowered, > 0.

    Reference: Dong et al., "UNDIAL: Self-Distillation with Adjusted Logits for Robust
    Unlearning in Large Language Models", NAACL 2025.
    """
    _check_beta(beta)
    if reference_logits.shape != logits.shape:
        raise ValueError(
            f"reference_logits {tuple(reference_logits.shape)} must have the same shape as "
            f"logits {tuple(logits.shape)}; run both models on the same batch."
        )
    student, targets = _scored_positions(logits, labels)  # (N, V), (N,)
    teacher, _ = _scored_positions(reference_logits.detach(), labels)
    adjusted = teacher.scatter_add(-1, targets.unsqueeze(-1), teacher.new_full((targets.numel(), 1), -beta))
    soft_targets = adjusted.softmax(dim=-1)
    return -(soft_targets * student.log_softmax(dim=-1)).sum(dim=-1).mean()


def ce_u_loss(logits: Tensor, labels: Tensor, ignore_first_answer_tokens: int = 0) -> Tensor:
    """Cross-entropy unlearning (CE-U) loss (scalar).

    Target at each scored position: ``q = softmax(z')`` where ``z'`` is the model's own
    logits, detached, with the label's logit set to ``−∞``. Loss: ``−Σ_v q_v log p_θ(v)``,
    averaged over the scored positions. Its gradient with respect to the logits is
    ``p − q``: the label's probability is pushed to 0 while the other tokens keep their
    relative probabilities.

    Args:
        logits: ``(B, T, V)`` next-token logits, ``V >= 2``.
        labels: ``(B, T)`` labels, ``-100`` where not scored.
        ignore_first_answer_tokens: leave out the first this many scored tokens of each
            sequence (after the shift); ``0`` scores all.

    Reference: Bo Yang, "CE-U: Cross Entropy Unlearning", arXiv:2503.01224, 2025.
    """
    if ignore_first_answer_tokens < 0:
        raise ValueError(f"ignore_first_answer_tokens must be >= 0; got {ignore_first_answer_tokens}.")
    if logits.dim() == 3 and logits.shape[-1] < 2:
        raise ValueError("CE-U needs a vocabulary of at least 2 tokens: with the label removed, none would be left.")
    if ignore_first_answer_tokens > 0 and labels.dim() == 2:
        shifted_scored = labels[:, 1:] != IGNORE_INDEX
        # rank of each scored token within its sequence: 1 for the first one, 2 for the second, ...
        early = shifted_scored & (shifted_scored.long().cumsum(dim=1) <= ignore_first_answer_tokens)
        if not bool((shifted_scored & ~early).any()):
            raise ValueError(
                f"no scored token is left after ignoring the first {ignore_first_answer_tokens} answer token(s) of "
                "each sequence; lower ignore_first_answer_tokens or use longer answers."
            )
        labels = labels.clone()
        labels[:, 1:][early] = IGNORE_INDEX
    student, targets = _scored_positions(logits, labels)  # (N, V), (N,)
    without_label = student.detach().scatter(-1, targets.unsqueeze(-1), float("-inf"))
    soft_targets = without_label.softmax(dim=-1)
    # q is exactly 0 at the label; log p there is finite, so 0 · log p = 0 (no NaN).
    return -(soft_targets * student.log_softmax(dim=-1)).sum(dim=-1).mean()


def uniform_cross_entropy_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy from the uniform distribution to the model, at the scored positions (scalar).

    ``L = mean_t −(1/V) Σ_v log p_θ(v | x, y_<t) = mean_t (logsumexp z_t − mean_v z_t,v)``.
    It equals ``log V + KL(U ‖ p_θ)``, so it is bounded below by ``log V``, reached when
    the prediction is uniform (unlike gradient ascent, which has no minimum).

    References: the entropy-style objective that Entesari et al., "Constrained Entropic
    Unlearning: A Primal-Dual Framework for Large Language Models", arXiv:2506.05314, 2025,
    set their logit-margin loss against; ULD's uniform loss ``KL(U ‖ p)`` (Ji et al.,
    NeurIPS 2024) differs from it by the constant ``log V``.
    """
    scored_logits, _ = _scored_positions(logits, labels)  # (N, V)
    return (scored_logits.logsumexp(dim=-1) - scored_logits.mean(dim=-1)).mean()


def logit_margin_flattening_loss(logits: Tensor, labels: Tensor, shift: bool = True) -> Tensor:
    """Logit-margin flattening at the scored positions (scalar).

    ``L = mean_t (max_v z_t,v − mean_v z_t,v)²``: zero exactly when all logits at a
    position are equal (the prediction is uniform). It needs no softmax, and its
    gradient does not vanish as the prediction approaches uniform.

    Args:
        logits: ``(B, T, V)`` next-token logits.
        labels: ``(B, T)`` labels, ``-100`` where not scored.
        shift: ``True``: the positions that predict an answer token (``logits[:, t−1]``
            where ``labels[:, t] != −100``), as every loss here. ``False``: the positions
            of the answer tokens themselves (``logits[:, t]`` where ``labels[:, t] != −100``),
            OpenUnlearning's mask (src/trainer/unlearn/pdu.py at d3d7cf9): one position
            later, so the prediction of the first answer token is left out and the one
            after the last answer token is flattened.

    Reference: Entesari et al., "Constrained Entropic Unlearning: A Primal-Dual Framework
    for Large Language Models", arXiv:2506.05314, 2025.
    """
    if shift:
        scored_logits, _ = _scored_positions(logits, labels)  # (N, V)
    else:
        _check_lm_inputs(logits, labels)
        scored = labels != IGNORE_INDEX  # (B, T), no shift
        _scored_count(scored.float())
        scored_logits = at_least_float32(logits)[scored]  # (N, V)
    margin = scored_logits.max(dim=-1).values - scored_logits.mean(dim=-1)
    return margin.square().mean()


def primal_dual_lagrangian(forget_loss: Tensor, retain_loss: Tensor, multiplier: float, epsilon: float) -> Tensor:
    """The Lagrangian ``L = L_f + λ · (L_r − ε)`` of ``min L_f`` subject to ``L_r <= ε`` (scalar).

    ``λ`` (>= 0) and ``ε`` are constants for the primal step; :func:`dual_ascent_step` moves ``λ``.
    """
    if not (math.isfinite(multiplier) and multiplier >= 0):
        raise ValueError(f"the multiplier must be a finite number >= 0; got {multiplier}.")
    return forget_loss + multiplier * (retain_loss - epsilon)


def dual_ascent_step(multiplier: float, retain_loss: float, epsilon: float, step_size: float) -> float:
    """Projected dual ascent: ``λ ← max(0, λ + η · (L_r − ε))``.

    ``λ`` grows while the retain loss breaks its bound ``ε`` and shrinks (never below 0)
    while the bound holds with room to spare.
    """
    if not math.isfinite(retain_loss):
        raise ValueError(f"the retain loss must be finite to update the multiplier; got {retain_loss}.")
    return max(0.0, multiplier + step_size * (retain_loss - epsilon))


# ---------------------------------------------------------------------------
# Who's Harry Potter (whp): generic logits and generic labels.
# ---------------------------------------------------------------------------


def whp_generic_logits(baseline_logits: Tensor, reinforced_logits: Tensor, alpha: float) -> Tensor:
    """Who's Harry Potter generic logits ``v_g = v_b − α · ReLU(v_r − v_b)``, same shape as the inputs.

    Tokens the reinforced model (fine-tuned further on the target text) favours
    more than the baseline are pushed down, in proportion to that gain; the
    others keep the baseline's logit. Both inputs are detached: the generic
    logits are targets, not a path for gradients.

    Args:
        baseline_logits: ``(..., V)`` logits ``v_b`` of the baseline (pre-unlearning) model.
        reinforced_logits: ``(..., V)`` logits ``v_r`` of the reinforced model, same shape.
        alpha: finite, ``>= 0`` (``0`` gives the baseline's logits back).

    Reference: Eldan & Russinovich, "Who's Harry Potter? Approximate Unlearning in
    LLMs", arXiv:2310.02238, 2023.
    """
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0 (for example 5.0); got {alpha}.")
    if baseline_logits.shape != reinforced_logits.shape:
        raise ValueError(
            f"baseline_logits {tuple(baseline_logits.shape)} and reinforced_logits "
            f"{tuple(reinforced_logits.shape)} must have the same shape; run both models on the same batch."
        )
    baseline = at_least_float32(baseline_logits.detach())
    reinforced = at_least_float32(reinforced_logits.detach())
    return baseline - alpha * F.relu(reinforced - baseline)


def whp_generic_labels(baseline_logits: Tensor, reinforced_logits: Tensor, labels: Tensor, alpha: float) -> Tensor:
    """Who's Harry Potter generic labels: ``argmax v_g`` at every scored position, as hard labels ``(B, T)``.

    With the causal shift, ``out[b, t] = argmax_v v_g[b, t − 1, v]`` where
    ``labels[b, t] != −100`` and ``t >= 1``, and ``−100`` everywhere else, so the
    result feeds :func:`mean_nll` directly (fine-tuning on it is the unlearning
    step). The result carries no gradient.

    Args:
        baseline_logits: ``(B, T, V)`` logits ``v_b`` of the baseline model.
        reinforced_logits: ``(B, T, V)`` logits ``v_r`` of the reinforced model.
        labels: ``(B, T)`` labels of the original text; only their ``−100`` pattern is used.
        alpha: see :func:`whp_generic_logits`.
    """
    _check_lm_inputs(baseline_logits, labels)
    generic = whp_generic_logits(baseline_logits, reinforced_logits, alpha)
    scored = labels[:, 1:] != IGNORE_INDEX
    _scored_count(scored.float())
    generic_labels = torch.full_like(labels, IGNORE_INDEX)
    generic_labels[:, 1:] = torch.where(scored, generic[:, :-1].argmax(dim=-1), IGNORE_INDEX)
    return generic_labels


# ---------------------------------------------------------------------------
# Random and adversarial labels (random_labels, adversarial_labels), gradient
# ascent with random mismatch (ga_mismatch) and RMU (rmu).
# ---------------------------------------------------------------------------


def random_labels(
    labels: Tensor, candidate_ids: Tensor, generator: torch.Generator, keep_ids: Tensor | None = None
) -> Tensor:
    """Labels ``(B, T)`` with every scored token replaced by an id drawn uniformly from ``candidate_ids``.

    Positions labelled ``-100`` stay so, and so do labels whose value is in
    ``keep_ids`` (Yao et al. keep special tokens, such as an answer's closing
    EOS). One id is drawn for every position, scored or not, so the result
    depends only on the generator's state and the batch's shape and labels.

    Args:
        labels: ``(B, T)`` token ids, ``-100`` where not scored.
        candidate_ids: ``(N,)`` ids a label may become (the vocabulary without its special tokens), ``N >= 1``.
        generator: the source of the draw (its device is where the draw happens).
        keep_ids: ``(K,)`` label values left unchanged; ``None`` replaces every scored label.

    Reference: Yao et al., "Machine Unlearning of Pre-trained Large Language Models", ACL 2024.
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must have shape (B, T); got {tuple(labels.shape)}.")
    if candidate_ids.dim() != 1 or candidate_ids.numel() == 0:
        raise ValueError(f"candidate_ids must be a non-empty 1-D tensor of token ids; got shape {tuple(candidate_ids.shape)}.")
    draws = torch.randint(candidate_ids.numel(), tuple(labels.shape), generator=generator, device=generator.device)
    replacement = candidate_ids.to(draws.device)[draws].to(labels.device)
    replace = labels != IGNORE_INDEX
    if keep_ids is not None:
        replace &= ~torch.isin(labels, keep_ids.to(labels.device))
    return torch.where(replace, replacement, labels)


def adversarial_labels(reference_logits: Tensor, labels: Tensor, excluded_ids: Tensor | None = None) -> Tensor:
    """The reference model's top-1 next token with the ground truth masked out, as labels ``(B, T)``.

    With the causal shift, ``out[b, t] = argmax_v reference_logits[b, t − 1, v]``
    over ``v ≠ labels[b, t]`` and ``v ∉ excluded_ids``, where ``labels[b, t] != −100``
    and ``t >= 1``; ``−100`` everywhere else. The result carries no gradient and
    feeds :func:`mean_nll` directly.

    Args:
        reference_logits: ``(B, T, V)`` logits of the frozen pre-unlearning model (detached here).
        labels: ``(B, T)`` ground-truth labels, ``-100`` where not scored.
        excluded_ids: ids never chosen (e.g. special tokens); ids ``>= V`` are ignored.

    Reference: Yao et al., "Machine Unlearning of Pre-trained Large Language Models", ACL 2024
    (their ``top_k 1 rm_groundtruth`` labels).
    """
    _check_lm_inputs(reference_logits, labels)
    vocab_size = reference_logits.shape[-1]
    if excluded_ids is not None:
        excluded_ids = excluded_ids.to(reference_logits.device)
        excluded_ids = torch.unique(excluded_ids[(excluded_ids >= 0) & (excluded_ids < vocab_size)])
        if vocab_size - excluded_ids.numel() < 2:
            raise ValueError(
                f"excluded_ids leave {vocab_size - excluded_ids.numel()} of {vocab_size} tokens; at least 2 must remain "
                "so that a token other than the ground truth can be chosen."
            )
    shifted_labels = labels[:, 1:]
    scored = shifted_labels != IGNORE_INDEX
    _scored_count(scored.float())
    # A copy: the masking below is in place and must not touch the caller's logits.
    scores = at_least_float32(reference_logits[:, :-1].detach()).clone()  # (B, T-1, V)
    if excluded_ids is not None:
        scores[..., excluded_ids] = float("-inf")
    # Mask the ground truth; unscored positions mask token 0 instead, and their result is discarded below.
    scores.scatter_(-1, shifted_labels.clamp(min=0).unsqueeze(-1), float("-inf"))
    result = torch.full_like(labels, IGNORE_INDEX)
    result[:, 1:] = torch.where(scored, scores.argmax(dim=-1), IGNORE_INDEX)
    return result


def ga_mismatch_loss(
    forget_nll: Tensor,
    mismatch_nll: Tensor,
    normal_kl: Tensor,
    bad_weight: float = 0.5,
    random_weight: float = 1.0,
    normal_weight: float = 1.0,
) -> Tensor:
    """Gradient ascent with random mismatch: ``L = −w_bad·ℓ̄_f + w_rand·ℓ̄_mismatch + w_norm·KL`` (scalar).

    ``−ℓ̄_f`` is gradient ascent on the forget answers; ``ℓ̄_mismatch`` the NLL of
    the forget questions paired with random normal (retain) answers, which gives
    the model something harmless to say instead; ``KL = KL(p_pre ‖ p_θ)`` on normal
    data keeps the rest of its behaviour.

    Args:
        forget_nll: scalar mean NLL of the forget answers (see :func:`mean_nll`).
        mismatch_nll: scalar mean NLL of the mismatched answers.
        normal_kl: scalar KL to the pre-unlearning model on normal data (see :func:`kl_to_reference`).
        bad_weight, random_weight, normal_weight: finite weights ``>= 0`` (authors: 0.5, 1, 1).

    Reference: Yao, Xu & Liu, "Large Language Model Unlearning", NeurIPS 2024.
    """
    for name, weight in (("bad_weight", bad_weight), ("random_weight", random_weight), ("normal_weight", normal_weight)):
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"{name} must be a finite number >= 0; got {weight}.")
    terms = {"forget_nll": forget_nll, "mismatch_nll": mismatch_nll, "normal_kl": normal_kl}
    shapes = {name: tuple(term.shape) for name, term in terms.items() if term.dim() != 0}
    if shapes:
        raise ValueError(f"the three terms must be scalars (batch means); got shapes {shapes}.")
    return -bad_weight * forget_nll + random_weight * mismatch_nll + normal_weight * normal_kl


def activation_mse(activations: Tensor, target: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean squared error between hidden activations and a target over the real tokens (scalar).

    ``L = Σ_{b,t} m_bt · Σ_d (h_btd − y_btd)² / (D · Σ_{b,t} m_bt)``: the mean over
    tokens and hidden units, with padding (``attention_mask`` 0) left out. Without
    padding it equals ``F.mse_loss(h, y)``, the RMU code's loss.

    Args:
        activations: ``(B, T, D)`` hidden states of the model being trained.
        target: broadcastable to ``(B, T, D)``: the frozen model's ``(B, T, D)`` states or a ``(D,)`` vector (detached here).
        attention_mask: ``(B, T)``, 1 on real tokens and 0 on padding.

    RMU's loss is ``activation_mse(h_θ(x_f), c·u) + α · activation_mse(h_θ(x_r), h_frozen(x_r))``
    (Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With
    Unlearning", ICML 2024).
    """
    if activations.dim() != 3:
        raise ValueError(f"activations must have shape (B, T, D); got {tuple(activations.shape)}.")
    if tuple(attention_mask.shape) != tuple(activations.shape[:2]):
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must match the (B, T) of activations {tuple(activations.shape)}."
        )
    try:
        broadcasts = torch.broadcast_shapes(target.shape, activations.shape) == activations.shape
    except RuntimeError:  # incompatible sizes
        broadcasts = False
    if not broadcasts:
        raise ValueError(f"target {tuple(target.shape)} must broadcast to activations {tuple(activations.shape)}.")
    squared = (at_least_float32(activations) - at_least_float32(target.detach())).square().mean(dim=-1)  # (B, T)
    mask = attention_mask.to(squared.dtype)
    count = mask.sum()
    if count.item() == 0:
        raise ValueError("attention_mask marks no real token; the batch must hold at least one.")
    return (squared * mask).sum() / count




def rmu_steering_target(control_vector: Tensor, coefficient: float, frozen_activations: Tensor | None = None) -> Tensor:
    """RMU's forget target: ``c·u`` (a ``(D,)`` vector), or per token ``β·‖h_frozen(x_t)‖·u`` ``(B, T, D)``.

    The fixed form is Li et al.'s (ICML 2024). Given the frozen model's forget
    activations, ``coefficient`` is the adaptive β of Dang et al., "On Effects of
    Steering Latent Representation for Large Language Model Unlearning" (AAAI 2025):
    the target's length follows each token's activation norm, so one β suits
    layers and models whose norms differ by orders of magnitude.
    """
    if control_vector.dim() != 1:
        raise ValueError(f"control_vector must have shape (D,); got {tuple(control_vector.shape)}.")
    if frozen_activations is None:
        return coefficient * control_vector
    norms = at_least_float32(frozen_activations.detach()).norm(dim=-1, keepdim=True)  # (B, T, 1)
    return coefficient * norms * control_vector.to(norms.dtype)

# ---------------------------------------------------------------------------
# EUL (eul): the unlearning-layer objective, split into its forget and retain halves.
# ---------------------------------------------------------------------------


def _check_finite_weights(**weights: float) -> None:
    for name, value in weights.items():
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0; got {value}.")


def eul_forget_loss(forget_kl: Tensor, forget_nll: Tensor, gamma: float, max_forget_kl: float) -> Tensor:
    """EUL's forget half: ``L_f = −min(KL_f, max_forget_kl) − γ · ℓ̄_f`` (scalar).

    ``KL_f = KL(p_base ‖ p_θ)`` on the forget answers (see :func:`kl_to_reference`),
    ``ℓ̄_f`` their mean NLL. Minimising ``L_f`` pushes the model away from the base
    model and from the forget answers. ``−KL`` has no lower bound, so it is clamped:
    once ``KL_f`` exceeds ``max_forget_kl`` the term is constant and adds no gradient.

    Reference: Chen & Yang, "Unlearn What You Want to Forget: Efficient Unlearning
    for LLMs", EMNLP 2023 (``−Σ_{D_f} KL`` of L_KL plus ``γ · L_LM``).
    """
    _check_finite_weights(gamma=gamma)
    if not (math.isfinite(max_forget_kl) and max_forget_kl > 0):
        raise ValueError(f"max_forget_kl must be a finite number > 0; got {max_forget_kl}.")
    if forget_kl.dim() != 0 or forget_nll.dim() != 0:
        raise ValueError("forget_kl and forget_nll must be scalars (batch means).")
    return -forget_kl.clamp(max=max_forget_kl) - gamma * forget_nll


def eul_retain_loss(retain_kl: Tensor, retain_nll: Tensor, alpha: float, lambda_task: float) -> Tensor:
    """EUL's retain half: ``L_r = α · KL_r + λ · ℓ̄_r`` (scalar).

    ``KL_r = KL(p_base ‖ p_θ)`` on the retain answers keeps the model where it was;
    ``ℓ̄_r``, the retain answers' mean NLL, is the task loss. The full objective is
    ``L_EUL = L_r + L_f`` (Chen & Yang, EMNLP 2023: ``L_KL + λ · L_TASK + γ · L_LM``).
    """
    _check_finite_weights(alpha=alpha, lambda_task=lambda_task)
    if retain_kl.dim() != 0 or retain_nll.dim() != 0:
        raise ValueError("retain_kl and retain_nll must be scalars (batch means).")
    return alpha * retain_kl + lambda_task * retain_nll


# ---------------------------------------------------------------------------
# Smoothed and entropy-maximising unlearning: SAM-NPO's pooled NPO form, ME.
# ---------------------------------------------------------------------------


def pooled_npo_loss(sequence_nll: Tensor, reference_sequence_nll: Tensor, token_count: Tensor, beta: float) -> Tensor:
    """NPO on the batch's pooled per-token NLLs: ``−(2/β) · log σ(β · (ℓ̄_θ − ℓ̄_ref))`` (scalar).

    ``ℓ̄ = Σ_i ℓ_i / Σ_i |y_i|`` is the mean NLL over every answer token of the batch, the
    causal-LM ``outputs.loss``: one margin for the whole batch, where :func:`npo_loss` has one per
    sequence, each a sequence-sum. This is the form of Fan et al.'s SAM code for NPO.

    Args:
        sequence_nll: ``(B,)`` sequence-sum NLL ``ℓ_θ`` of the trained model.
        reference_sequence_nll: ``(B,)`` sequence-sum NLL ``ℓ_ref`` of the reference (detached here).
        token_count: ``(B,)`` answer tokens ``|y|`` per sequence (:func:`sequence_token_count`).
        beta: inverse temperature, > 0.

    Reference: Fan et al., "Towards LLM Unlearning Resilient to Relearning Attacks: A
    Sharpness-Aware Minimization Perspective and Beyond", ICML 2025 (NPO: Zhang et al., COLM 2024).
    """
    _check_same_shape(sequence_nll=sequence_nll, reference_sequence_nll=reference_sequence_nll, token_count=token_count)
    tokens = _scored_count(token_count)
    return npo_loss((sequence_nll.sum() / tokens).reshape(1), (reference_sequence_nll.detach().sum() / tokens).reshape(1), beta)


def uniform_kl_loss(logits: Tensor, labels: Tensor, probability_floor: float = 0.0) -> Tensor:
    """Maximising-entropy (ME) loss ``KL(U ‖ p_θ)``, averaged over the scored positions (scalar).

    ``L = mean_t Σ_v (1/V) (log(1/V) − log p_θ(v | x, y_<t)) = mean_t (−log V − mean_v log p_θ(v))``:
    0 exactly when the prediction is uniform (a model that has never seen the fact guesses),
    positive otherwise. With ``probability_floor = 0`` it is :func:`uniform_cross_entropy_loss`
    ``− log V``. A floor ``ε > 0`` scores ``log(p + ε)`` instead of ``log p``, as the authors'
    code does (``ε = 1e-12``): a token whose probability is far below ``ε`` then adds a bounded
    term and almost no gradient.

    Args:
        logits: ``(B, T, V)`` next-token logits.
        labels: ``(B, T)`` labels; only which positions are ``-100`` matters (their values do not).
        probability_floor: finite ``ε >= 0`` added to every probability before the log.

    Reference: Yuan et al., "A Closer Look at Machine Unlearning for Large Language Models",
    ICLR 2025 (arXiv:2410.08109).
    """
    if not (math.isfinite(probability_floor) and probability_floor >= 0):
        raise ValueError(f"probability_floor must be a finite number >= 0; got {probability_floor}.")
    if probability_floor == 0:
        return uniform_cross_entropy_loss(logits, labels) - math.log(logits.shape[-1])
    scored_logits, _ = _scored_positions(logits, labels)  # (N, V)
    # The floor's form takes the softmax first, as the authors' code does.
    log_p = (scored_logits.softmax(dim=-1) + probability_floor).log()
    return (-math.log(scored_logits.shape[-1]) - log_p.mean(dim=-1)).mean()


def forward_kl_distillation_loss(student_logits: Tensor, teacher_logits: Tensor, attention_mask: Tensor) -> Tensor:
    """Forward ``KL(p_T ‖ p_S)`` per next-token position, averaged over the non-pad positions (scalar).

    ``KL_t = Σ_v p_T(v) · (log p_T(v) − log p_S(v))`` with both distributions the softmax of the
    full-vocabulary logits at temperature 1, and ``L = Σ_t m_t KL_t / Σ_t m_t`` with ``m`` the
    attention mask: every real token's position counts once, prompt and answer alike, padding
    not at all. Unlike :func:`kl_to_reference`, no label pattern chooses the positions: the
    distillation matches the teacher on the whole text.

    Args:
        student_logits: ``(B, T, V)`` logits of the model being trained.
        teacher_logits: ``(B, T, V)`` logits of the frozen teacher (detached here).
        attention_mask: ``(B, T)`` 1 at real tokens, 0 at padding.

    Reference: Lee, Foote et al., "Distillation Robustifies Unlearning", NeurIPS 2025 (arXiv:2506.06278).
    """
    if student_logits.dim() != 3 or teacher_logits.shape != student_logits.shape:
        raise ValueError(f"student_logits (B, T, V) = {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same 3-D shape; run both models on the same batch.")
    if attention_mask.shape != student_logits.shape[:2]:
        raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must be (B, T) = {tuple(student_logits.shape[:2])}.")
    kl_per_position = forward_kl_per_position(student_logits, teacher_logits)  # (B, T)
    mask = attention_mask.to(kl_per_position.dtype)
    count = mask.sum()
    if count.item() == 0:
        raise ValueError("attention_mask has no real token: a batch needs at least one position to distil.")
    return (kl_per_position * mask).sum() / count
