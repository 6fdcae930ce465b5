"""Evaluation metrics for LLM unlearning (TOFU-style).

All functions are pure and work on numpy arrays / Python floats. Their inputs are
per-sample length-normalised NLLs ("avg-loss": mean NLL over the answer tokens),
so the per-sample answer probability is ``p = exp(−avg_nll)``.

Main source: Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024.

Each function that gives a reported number carries its catalog entries
(:func:`unlearnkit.evaluation.catalog.metric`): one per summary key it serves.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from rouge_score import rouge_scorer
from scipy.special import logsumexp
from scipy.stats import ks_2samp

from unlearnkit.evaluation.catalog import AS_IS, MEAN, TOFU, metric

MODEL_UTILITY_COMPONENTS: tuple[str, ...] = (
    "retain_probability",
    "retain_rouge_l",
    "retain_truth_ratio",
    "real_authors_probability",
    "real_authors_rouge_l",
    "real_authors_truth_ratio",
    "world_facts_probability",
    "world_facts_rouge_l",
    "world_facts_truth_ratio",
)
"""The nine TOFU scores whose harmonic mean is Model Utility."""


def _as_float_array(values: np.ndarray | Sequence[float], name: str, ndim: int) -> np.ndarray:
    """Convert to a non-empty float64 array of the expected rank, so errors name the argument."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array; got shape {array.shape}.")
    if array.size == 0:
        raise ValueError(f"{name} is empty; pass at least one sample.")
    return array


def _check_perturbed(first: np.ndarray, perturbed: np.ndarray, first_name: str) -> None:
    """Perturbed NLLs are (N, K): one row of K wrong answers per sample of ``first``."""
    if perturbed.shape[0] != first.shape[0]:
        raise ValueError(
            f"perturbed_avg_nll must have shape (N, K) with N = len({first_name}) = "
            f"{first.shape[0]}; got {perturbed.shape}."
        )


def _as_truth_ratios(truth_ratios: np.ndarray | Sequence[float]) -> np.ndarray:
    """Truth ratios are ratios of probabilities, hence finite and > 0."""
    ratios = _as_float_array(truth_ratios, "truth_ratios", ndim=1)
    if not np.all(np.isfinite(ratios) & (ratios > 0)):
        raise ValueError("truth ratios must be finite and > 0; compute them with truth_ratio().")
    return ratios


@metric("forget_probability", "lower", "Mean over forget questions of p = exp(-mean answer-token NLL).", TOFU, "tofu",
        label="forget probability", aggregation=MEAN)
@metric("retain_probability", "higher", "Mean p of the answer on the retain set.", TOFU, "tofu",
        label="retain probability", aggregation=MEAN)
def probability(avg_nll: np.ndarray) -> np.ndarray:
    """Per-sample answer probability ``p = exp(−avg_nll)``.

    The geometric-mean per-token probability of the answer; higher means the model
    finds the answer more likely (higher is better on retain data). Source: TOFU.
    """
    return np.exp(-np.asarray(avg_nll, dtype=np.float64))


@metric("real_authors_probability", "higher", "Mean normalised p_true / (p_true + sum p_perturbed) on the real-authors set.",
        TOFU, "tofu", label="real-authors probability", aggregation=MEAN)
@metric("world_facts_probability", "higher", "Mean normalised p_true / (p_true + sum p_perturbed) on the world-facts set.",
        TOFU, "tofu", label="world-facts probability", aggregation=MEAN)
def normalized_probability(true_avg_nll: np.ndarray, perturbed_avg_nll: np.ndarray) -> np.ndarray:
    """Probability of the true answer normalised over the answer options, per sample; ``(N,)``.

    ``p_true / (p_true + Σ_j p_pert_j)`` with ``p = exp(−avg_nll)``, used by TOFU on the
    Real Authors and World Facts sets. Higher is better. Computed as a softmax over
    ``−avg_nll`` so that large NLLs do not underflow to 0/0.

    Args:
        true_avg_nll: ``(N,)`` avg-loss of the correct answer.
        perturbed_avg_nll: ``(N, K)`` avg-loss of the K wrong answers.
    """
    true_nll = _as_float_array(true_avg_nll, "true_avg_nll", ndim=1)
    perturbed_nll = _as_float_array(perturbed_avg_nll, "perturbed_avg_nll", ndim=2)
    _check_perturbed(true_nll, perturbed_nll, "true_avg_nll")
    all_log_p = np.concatenate([-true_nll[:, None], -perturbed_nll], axis=1)
    return np.exp(-true_nll - logsumexp(all_log_p, axis=1))


def truth_ratio(paraphrased_avg_nll: np.ndarray, perturbed_avg_nll: np.ndarray) -> np.ndarray:
    """Truth ratio per sample; ``(N,)``.

    ``R = p(paraphrased) / (Π_j p(perturbed_j))^(1/K) = exp(mean_j pert_j − para)``:
    how much more likely the model finds a correct paraphrase than wrong answers.
    ``R > 1`` means it prefers the truth. This is the reciprocal of the ratio as
    written in the TOFU paper (perturbed over paraphrased); the aggregations below
    are written for this orientation. Source: TOFU.

    Args:
        paraphrased_avg_nll: ``(N,)`` avg-loss of the paraphrased correct answer.
        perturbed_avg_nll: ``(N, K)`` avg-loss of the K perturbed (wrong) answers.
    """
    paraphrased = _as_float_array(paraphrased_avg_nll, "paraphrased_avg_nll", ndim=1)
    perturbed = _as_float_array(perturbed_avg_nll, "perturbed_avg_nll", ndim=2)
    _check_perturbed(paraphrased, perturbed, "paraphrased_avg_nll")
    return np.exp(perturbed.mean(axis=1) - paraphrased)


@metric("forget_truth_ratio", "closer to 1",
        "Mean over forget questions of min(R, 1/R), R = p(paraphrased answer) / geometric mean p(perturbed answers).",
        TOFU, "tofu", label="forget truth ratio", aggregation=AS_IS)
def forget_truth_ratio_score(truth_ratios: np.ndarray | Sequence[float]) -> float:
    """Forget-set truth-ratio score: ``mean(min(R, 1/R))`` in (0, 1].

    Closer to 1 means the model can no longer tell the right answer from wrong
    ones, the desired state on forget data. Source: TOFU.
    """
    ratios = _as_truth_ratios(truth_ratios)
    return float(np.mean(np.minimum(ratios, 1.0 / ratios)))


@metric("retain_truth_ratio", "higher", "Mean of max(0, 1 - 1/R) on the retain set.", TOFU, "tofu",
        label="retain truth ratio", aggregation=AS_IS)
@metric("real_authors_truth_ratio", "higher",
        "Mean of max(0, 1 - 1/R) on the real-authors set (the answer itself is the correct one).", TOFU, "tofu",
        label="real-authors truth ratio", aggregation=AS_IS)
@metric("world_facts_truth_ratio", "higher",
        "Mean of max(0, 1 - 1/R) on the world-facts set (the answer itself is the correct one).", TOFU, "tofu",
        label="world-facts truth ratio", aggregation=AS_IS)
def retain_truth_ratio_score(truth_ratios: np.ndarray | Sequence[float]) -> float:
    """Retain-set truth-ratio score: ``mean(max(0, 1 − 1/R))`` in [0, 1).

    Higher is better: the model still prefers correct answers on data it should
    keep. Source: TOFU (there written ``max(0, 1 − R_paper)`` with ``R_paper = 1/R``).
    """
    ratios = _as_truth_ratios(truth_ratios)
    return float(np.mean(np.maximum(0.0, 1.0 - 1.0 / ratios)))


@metric("forget_quality", "higher",
        "p-value of the two-sample KS test between the model's and the retain oracle's per-sample forget truth ratios "
        "(1 = indistinguishable from the oracle).", TOFU, "tofu", label="forget quality", aggregation=AS_IS)
def forget_quality(
    model_truth_ratios: np.ndarray | Sequence[float],
    oracle_truth_ratios: np.ndarray | Sequence[float],
) -> float:
    """Forget Quality: two-sided two-sample Kolmogorov–Smirnov p-value.

    Compares the raw per-sample forget-set truth ratios ``R`` of the evaluated
    model with those of the retain oracle (a model never trained on the forget
    set). Higher is better: a large p-value means the two distributions are
    indistinguishable. The KS statistic depends only on the ranks of the pooled
    samples, so applying ``R -> 1/R`` to both samples leaves the p-value
    unchanged: this equals the value computed on OpenUnlearning's ``1/R``. It is
    NOT computed on ``min(R, 1/R)``, which folds the two sides together and
    changes the ranks. Source: TOFU.
    """
    model = _as_truth_ratios(model_truth_ratios)
    oracle = _as_truth_ratios(oracle_truth_ratios)
    return float(ks_2samp(model, oracle).pvalue)


@functools.cache
def _rouge_l_scorer(use_stemmer: bool = True) -> rouge_scorer.RougeScorer:
    """Build each ROUGE-L scorer once; construction loads the stemmer."""
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)


def _rouge_l_scores(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool) -> list:
    """``rouge_score``'s ROUGE-L score (precision, recall, fmeasure) of each generation against its reference."""
    if len(predictions) != len(references):
        raise ValueError(
            f"predictions ({len(predictions)}) and references ({len(references)}) must pair "
            "up one-to-one; pass one generation per reference answer."
        )
    scorer = _rouge_l_scorer(use_stemmer)
    return [
        scorer.score(target=reference, prediction=prediction)["rougeL"]
        for prediction, reference in zip(predictions, references, strict=True)
    ]


@metric("forget_rouge_l", "lower", "Mean ROUGE-L recall of the greedy answer against the forget answer.", TOFU, "tofu",
        label="forget ROUGE-L", aggregation=MEAN)
@metric("retain_rouge_l", "higher", "Mean ROUGE-L recall of the greedy answer on the retain set.", TOFU, "tofu",
        label="retain ROUGE-L", aggregation=MEAN)
@metric("real_authors_rouge_l", "higher", "Mean ROUGE-L recall of the greedy answer on the real-authors set.", TOFU, "tofu",
        label="real-authors ROUGE-L", aggregation=MEAN)
@metric("world_facts_rouge_l", "higher", "Mean ROUGE-L recall of the greedy answer on the world-facts set.", TOFU, "tofu",
        label="world-facts ROUGE-L", aggregation=MEAN)
def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-sample ROUGE-L recall of each generation against its reference; ``(N,)``.

    ``LCS(prediction, reference) / len(reference)`` in tokens, with Porter
    stemming. Higher is better on retain data (the answer is still produced),
    lower on forget data. Source: TOFU (ROUGE: Lin, "ROUGE: A Package for
    Automatic Evaluation of Summaries", ACL Workshop 2004).
    """
    scores = _rouge_l_scores(predictions, references, use_stemmer=True)
    return np.asarray([score.recall for score in scores], dtype=np.float64)


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False) -> np.ndarray:
    """Per-sample ROUGE-L F1 of each generation against its reference; ``(N,)``.

    ``2PR / (P + R)`` with ``P = LCS / len(prediction)`` and ``R = LCS / len(reference)``
    in tokens (``rouge_score``'s ``fmeasure``). MUSE's VerbMem and KnowMem use it
    without stemming (``use_stemmer=False``, the default here); OpenUnlearning's
    MUSE evaluation stems. Source: MUSE (Shi et al., ICLR 2025).
    """
    scores = _rouge_l_scores(predictions, references, use_stemmer=use_stemmer)
    return np.asarray([score.fmeasure for score in scores], dtype=np.float64)


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean ``n / Σ 1/v`` of non-negative values.

    Returns 0 if any value is 0, the limit of the formula, so one collapsed score
    drags the aggregate to 0. Higher is better when the values are.
    """
    array = _as_float_array(values, "values", ndim=1)
    if not np.all(np.isfinite(array) & (array >= 0)):
        raise ValueError(f"harmonic_mean needs finite values >= 0; got {array.tolist()}.")
    if np.any(array == 0):
        return 0.0
    return float(array.size / np.sum(1.0 / array))


@metric("model_utility", "higher",
        "Harmonic mean of probability, ROUGE-L recall and truth-ratio score on the retain, real-authors and world-facts sets.",
        TOFU, "tofu", label="model utility", aggregation=AS_IS)
def model_utility(components: Mapping[str, float]) -> float:
    """Model Utility: harmonic mean of the nine scores in :data:`MODEL_UTILITY_COMPONENTS`.

    Probability, ROUGE-L recall and truth-ratio score on the Retain, Real Authors
    and World Facts sets. Higher is better. Other keys in ``components`` are
    ignored. Source: TOFU.
    """
    missing = [name for name in MODEL_UTILITY_COMPONENTS if name not in components]
    if missing:
        raise ValueError(f"model_utility is missing component(s): {', '.join(missing)}.")
    return harmonic_mean([components[name] for name in MODEL_UTILITY_COMPONENTS])
