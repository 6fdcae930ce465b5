"""E2URec's evaluation: recommendation quality from p(yes), and the distance of a model's answers to the retrained one's.

As the authors' ``evaluate.py`` (Wang et al., "Towards Efficient and Effective Unlearning of Large Language Models
for Recommendation", Frontiers of Computer Science, 2024):

* AUC (``roc_auc_score``), ACC with the threshold 0.5 (p(yes) > 0.5 predicts "yes"), log-loss
  (``log_loss``: p clipped to [eps, 1 − eps], eps the float64 machine epsilon as scikit-learn takes it for
  float64 input) and confidence, the mean probability given to the gold answer;
* "JSD", in fact the symmetrised KL 0.5·KL(p‖q) + 0.5·KL(q‖p) between the full-vocabulary answer-position
  distributions of the retrained model p and the evaluated model q (not the mixture-based Jensen–Shannon
  divergence), averaged over examples;
* L2, ‖p − q‖₂ between the same two probability vectors, averaged over examples.

The distances take log-probabilities (N, V) and compute KL exactly with them; the reference adds 1e-12 inside
its logarithms, which changes values by about V·1e-12.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from unlearnkit.evaluation.mia import roc_auc as membership_roc_auc

# p(yes) above this predicts "yes" (the reference: accuracy_score(gold, pred > 0.5)).
THRESHOLD = 0.5
EPS = float(np.finfo(np.float64).eps)


def _arrays(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"labels and scores must be non-empty and of one length; got {y.size} and {p.size}.")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1.")
    if not np.isfinite(p).all():
        raise ValueError("scores must be finite.")
    return y, p


def roc_auc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative), ties counted 1/2
    (the package's AUC, :func:`unlearnkit.evaluation.mia.roc_auc`, on the two classes). ValueError with one class only."""
    y, p = _arrays(labels, scores)
    if y.all() or not y.any():
        raise ValueError("AUC needs both a positive and a negative label.")
    return membership_roc_auc(p[y == 1], p[y == 0])


def accuracy(labels: Sequence[int] | np.ndarray, p_yes: Sequence[float] | np.ndarray, threshold: float = THRESHOLD) -> float:
    """Share of rows where (p(yes) > threshold) equals the label."""
    y, p = _arrays(labels, p_yes)
    return float(np.mean((p > threshold).astype(np.int64) == y))


def log_loss(labels: Sequence[int] | np.ndarray, p_yes: Sequence[float] | np.ndarray, eps: float = EPS) -> float:
    """Binary cross-entropy −mean(y log p + (1 − y) log(1 − p)), p clipped to [eps, 1 − eps]."""
    y, p = _arrays(labels, p_yes)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1.0 - p)))


def confidence(labels: Sequence[int] | np.ndarray, p_yes: Sequence[float] | np.ndarray) -> float:
    """Mean probability given to the gold answer: p(yes) on positives, 1 − p(yes) on negatives."""
    y, p = _arrays(labels, p_yes)
    return float(np.mean(np.where(y == 1, p, 1.0 - p)))


def recommendation_metrics(labels: Sequence[int] | np.ndarray, p_yes: Sequence[float] | np.ndarray) -> dict:
    """AUC (None when one class is missing), ACC, log-loss and confidence of p(yes) against the labels."""
    try:
        auc: float | None = roc_auc(labels, p_yes)
    except ValueError:
        auc = None
    return {"auc": auc, "acc": accuracy(labels, p_yes), "log_loss": log_loss(labels, p_yes), "confidence": confidence(labels, p_yes)}


def _check_log_probs(reference: torch.Tensor, other: torch.Tensor) -> None:
    if reference.shape != other.shape or reference.dim() != 2:
        raise ValueError(f"log-probabilities must both be (N, V); got {tuple(reference.shape)} and {tuple(other.shape)}.")


def symmetrised_kl(reference_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Per example (N,): 0.5·KL(p‖q) + 0.5·KL(q‖p), p the reference (retrained) model, q the evaluated one; inputs (N, V)."""
    _check_log_probs(reference_log_probs, log_probs)
    log_p, log_q = reference_log_probs.double(), log_probs.double()
    difference = log_p - log_q  # (N, V)
    return 0.5 * (log_p.exp() * difference).sum(-1) + 0.5 * (log_q.exp() * -difference).sum(-1)


def l2_distance(reference_log_probs: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
    """Per example (N,): ‖p − q‖₂ between the two probability vectors (V,)."""
    _check_log_probs(reference_log_probs, log_probs)
    return torch.linalg.vector_norm(reference_log_probs.double().exp() - log_probs.double().exp(), dim=-1)


def distance_metrics(reference_log_probs: torch.Tensor, log_probs: torch.Tensor) -> dict:
    """Mean symmetrised KL ("jsd", the reference's name) and mean L2 to the reference model."""
    return {"jsd": float(symmetrised_kl(reference_log_probs, log_probs).mean()),
            "l2": float(l2_distance(reference_log_probs, log_probs).mean())}
