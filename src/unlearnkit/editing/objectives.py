"""The losses a rank-one deletion optimises its value vector for: small pure functions (tensors in, tensor out).

ROME's value optimisation (Meng et al., "Locating and Editing Factual Associations
in GPT", NeurIPS 2022, ``compute_v``) minimises an objective plus a KL term on an
essence prompt and a norm penalty. Patil, Hase & Bansal ("Can Sensitive Information
Be Deleted From LLMs? Objectives for Defending Against Extraction Attacks", ICLR
2024) swap the objective for deletion:

* ``dummy`` (empty response) and ``error_injection``: the NLL of a replacement
  answer (a dummy such as "I don't know", or a wrong one), :func:`target_nll`;
* ``fact_erasure``: the probability of the true answer, :func:`answer_probability`;
* ``max_entropy``: minus the mean entropy of the logit-lens distributions at the
  answer position, :func:`negative_lens_entropy`;
* ``head_projection``: hinges that push the answer's logit-lens probability below
  the k-th largest and above the k-th smallest of each layer, :func:`head_projection_margin`.
"""

from __future__ import annotations

import torch

from unlearnkit.data.encoding import IGNORE_INDEX


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over prompts of each prompt's target NLL divided by its target length (ROME's ``nll_loss``).

    ``logits`` (B, T, V); ``labels`` (B, T) with the target token ids at the positions they
    are predicted *from* (already shifted: ``labels[b, t]`` is scored by ``logits[b, t]``), IGNORE_INDEX elsewhere.
    """
    log_probs = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    mask = labels != IGNORE_INDEX
    picked = log_probs.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1) * mask  # (B, T)
    return (-picked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def answer_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``exp(-target_nll)``: Patil et al.'s fact-erasure term, minimised to make the true answer unlikely."""
    return torch.exp(-target_nll(logits, labels))


def negative_lens_entropy(lens_probs: torch.Tensor) -> torch.Tensor:
    """Minus the mean entropy of the logit-lens distributions ``lens_probs`` (L, B, V) (Max-Entropy objective)."""
    entropy = -(lens_probs * torch.log(lens_probs.clamp_min(torch.finfo(lens_probs.dtype).tiny))).sum(dim=-1)  # (L, B)
    return -entropy.mean()


def head_projection_margin(lens_probs: torch.Tensor, target: torch.Tensor, k: int, offset: int = 0) -> torch.Tensor:
    """Patil et al.'s Head-Projection defence: ``mean max(0, p(t) - p_top_k) + mean max(0, p_bottom_k - p(t))``.

    ``lens_probs`` (L, B, V): the logit-lens distributions at each prompt's answer position;
    ``target`` (B,): the answer token of each prompt. ``p_top_k`` is the k-th largest
    probability of a layer's distribution, ``p_bottom_k`` the k-th smallest: both hinges are
    zero once the answer is neither among the top k nor among the bottom k, the candidate
    set the head-projection attack searches.

    With ``offset`` 0 (Patil et al.'s code, ``sorted[..., -k]``) both hinges are already zero when the
    answer *is* the k-th largest (or k-th smallest): the optimisation can stop with the answer inside the
    attack's candidate set. ``offset`` 1 compares with the (k+1)-th instead, so a zero loss puts the
    answer outside the top k and the bottom k.
    """
    ordered = lens_probs.sort(dim=-1).values  # (L, B, V), ascending
    kth_top, kth_bottom = ordered[..., -(k + offset)], ordered[..., k - 1 + offset]  # (L, B)
    answer = lens_probs.gather(-1, target.view(1, -1, 1).expand(lens_probs.shape[0], -1, 1)).squeeze(-1)  # (L, B)
    return (answer - kth_top).clamp(min=0).mean() + (kth_bottom - answer).clamp(min=0).mean()


def essence_kl(initial_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """``KL(p || p_init)`` summed over the vocabulary and averaged over prompts, both given as log-probabilities (B, V).

    This is ROME's ``kl_div(init, current, log_target=True, reduction="batchmean")``: the
    current distribution weights the log-ratio, so mass the edit moves onto new tokens costs.
    """
    return (log_probs.exp() * (log_probs - initial_log_probs)).sum(dim=-1).mean()


def norm_penalty(delta: torch.Tensor, initial_value: torch.Tensor) -> torch.Tensor:
    """ROME's weight decay on the value shift: ``||delta|| / ||v_init||^2`` (its code's form, not a squared norm)."""
    return delta.norm() / initial_value.norm() ** 2


@torch.no_grad()
def clamp_norm(delta: torch.Tensor, max_norm: float) -> None:
    """Project ``delta`` (in place) onto the ball of radius ``max_norm`` (ROME: clamp_norm_factor * ||v_init||)."""
    norm = delta.norm()
    if norm > max_norm:
        delta.mul_(max_norm / norm)
