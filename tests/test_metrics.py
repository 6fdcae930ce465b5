"""Evaluation metrics checked against values computed by hand from their formulas."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from unlearnkit.evaluation.metrics import (
    MODEL_UTILITY_COMPONENTS,
    forget_quality,
    forget_truth_ratio_score,
    harmonic_mean,
    model_utility,
    normalized_probability,
    probability,
    retain_truth_ratio_score,
    rouge_l_recall,
    truth_ratio,
)

TOL = 1e-12


def test_probability_is_exp_of_negative_avg_nll() -> None:
    result = probability(np.array([0.0, math.log(2.0), 3.0]))
    assert result.tolist() == pytest.approx([1.0, 0.5, math.exp(-3.0)], abs=TOL)


def test_normalized_probability_hand_value() -> None:
    result = normalized_probability(np.array([1.0, 0.0]), np.array([[2.0, 0.5], [0.0, 0.0]]))
    p_true, p_wrong = math.exp(-1.0), [math.exp(-2.0), math.exp(-0.5)]
    expected_first = p_true / (p_true + sum(p_wrong))
    # Second sample: three equally likely options.
    assert result.tolist() == pytest.approx([expected_first, 1.0 / 3.0], abs=TOL)


def test_normalized_probability_survives_large_nlls() -> None:
    # exp(−1000) underflows to 0 in float64; the ratio itself is 1 / (1 + e⁻¹).
    result = normalized_probability(np.array([1000.0]), np.array([[1001.0]]))
    assert result.tolist() == pytest.approx([1.0 / (1.0 + math.exp(-1.0))], abs=TOL)


def test_normalized_probability_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        normalized_probability(np.array([1.0, 2.0]), np.array([[1.0, 2.0]]))


def test_truth_ratio_hand_value() -> None:
    result = truth_ratio(np.array([1.0, 0.5]), np.array([[2.0, 0.5], [0.5, 1.5]]))
    # R = exp(mean(perturbed) − paraphrased), row by row.
    assert result.tolist() == pytest.approx([math.exp(1.25 - 1.0), math.exp(1.0 - 0.5)], abs=TOL)


def test_truth_ratio_rejects_one_dimensional_perturbed() -> None:
    with pytest.raises(ValueError, match="2-D"):
        truth_ratio(np.array([1.0]), np.array([2.0]))


def test_forget_truth_ratio_score_hand_value() -> None:
    # min(R, 1/R) for R = 2, 0.5, 1 is 0.5, 0.5, 1.
    expected = (0.5 + 0.5 + 1.0) / 3
    assert forget_truth_ratio_score([2.0, 0.5, 1.0]) == pytest.approx(expected, abs=TOL)


def test_retain_truth_ratio_score_hand_value() -> None:
    # max(0, 1 − 1/R) for R = 2, 0.5, 1 is 0.5, 0 (clipped from −1), 0.
    assert retain_truth_ratio_score([2.0, 0.5, 1.0]) == pytest.approx(0.5 / 3, abs=TOL)
    # R = 4, 0.5, 1 give 0.75, 0, 0; the paper-orientation 1 − R would give 0, 0.5, 0.
    assert retain_truth_ratio_score([4.0, 0.5, 1.0]) == pytest.approx(0.75 / 3, abs=TOL)


@pytest.mark.parametrize("ratios", [[], [1.0, 0.0], [1.0, -2.0], [float("inf")]])
def test_truth_ratio_scores_reject_invalid_ratios(ratios: list[float]) -> None:
    with pytest.raises(ValueError):
        forget_truth_ratio_score(ratios)
    with pytest.raises(ValueError):
        retain_truth_ratio_score(ratios)


def test_forget_quality_identical_samples_is_one() -> None:
    ratios = [0.2, 0.9, 1.0, 1.7, 3.0]
    assert forget_quality(ratios, list(ratios)) == 1.0


def test_forget_quality_separated_samples_matches_exact_ks_p_value() -> None:
    n = 20
    model = [0.01 + 0.0001 * i for i in range(n)]
    oracle = [1.0 + 0.01 * i for i in range(n)]
    # Every model value lies below every oracle value, so D = 1. Exactly 2 of the
    # C(2n, n) equally likely splits of the pooled ranks reach D = 1 (all of one
    # sample first, or all of the other), giving the two-sided p-value 2 / C(2n, n).
    expected = 2 / math.comb(2 * n, n)
    result = forget_quality(model, oracle)
    assert result < 1e-6
    assert result == pytest.approx(expected, rel=1e-9)


def test_forget_quality_is_invariant_under_reciprocal_but_not_folding() -> None:
    model = np.array([0.3, 0.6, 0.8, 1.5, 2.5, 4.0])
    oracle = np.array([0.5, 0.9, 1.1, 1.2, 2.0, 6.0])
    raw = forget_quality(model, oracle)
    assert forget_quality(1.0 / model, 1.0 / oracle) == pytest.approx(raw, abs=TOL)
    # Folding with min(R, 1/R) mixes values from both sides of 1 and reorders the
    # pooled samples, so it gives a different p-value (0.47 here against 0.93).
    folded = forget_quality(np.minimum(model, 1 / model), np.minimum(oracle, 1 / oracle))
    assert folded != pytest.approx(raw, abs=1e-6)


def test_forget_quality_rejects_empty_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        forget_quality([], [1.0])
    with pytest.raises(ValueError, match="empty"):
        forget_quality([1.0], [])


def test_rouge_l_recall_hand_values() -> None:
    result = rouge_l_recall(
        ["the cat sat", "the cat sat on the mat", "cats"],
        ["the cat sat on the mat", "the cat sat on the mat", "cat"],
    )
    # LCS 3 of 6 reference tokens; identical; "cats" stems to "cat" and matches.
    assert result.tolist() == pytest.approx([3 / 6, 1.0, 1.0], abs=TOL)


def test_rouge_l_recall_uses_the_reference_length() -> None:
    # Swapping roles: LCS 3 of 3 reference tokens, so recall is 1 (precision would be 0.5).
    assert rouge_l_recall(["the cat sat on the mat"], ["the cat sat"]).tolist() == [1.0]


def test_rouge_l_recall_rejects_unpaired_inputs() -> None:
    with pytest.raises(ValueError, match="pair up"):
        rouge_l_recall(["a", "b"], ["a"])


def test_harmonic_mean_hand_values() -> None:
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / (1 / 0.5 + 1 / 1.0), abs=TOL)
    assert harmonic_mean([0.5, 1.0]) == pytest.approx(2 / 3, abs=TOL)
    # A zero is the limit case, returned directly rather than through a division by zero.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert harmonic_mean([0.5, 0.0, 1.0]) == 0.0


@pytest.mark.parametrize("values", [[], [0.5, -0.1], [float("nan")]])
def test_harmonic_mean_rejects_invalid_values(values: list[float]) -> None:
    with pytest.raises(ValueError):
        harmonic_mean(values)


def test_model_utility_is_harmonic_mean_of_the_nine_components() -> None:
    values = [1.0, 0.5, 0.25, 1.0, 1.0, 1.0, 1.0, 0.5, 1.0]
    components = dict(zip(MODEL_UTILITY_COMPONENTS, values, strict=True))
    components["forget_rouge_l"] = 0.0  # not a utility component: must be ignored
    # 9 / (1 + 2 + 4 + 1 + 1 + 1 + 1 + 2 + 1) = 9 / 14
    assert model_utility(components) == pytest.approx(9 / 14, abs=TOL)


def test_model_utility_components_are_the_nine_tofu_scores() -> None:
    assert len(MODEL_UTILITY_COMPONENTS) == len(set(MODEL_UTILITY_COMPONENTS)) == 9
    for split in ("retain", "real_authors", "world_facts"):
        for score in ("probability", "rouge_l", "truth_ratio"):
            assert f"{split}_{score}" in MODEL_UTILITY_COMPONENTS


def test_model_utility_names_missing_components() -> None:
    components = {name: 1.0 for name in MODEL_UTILITY_COMPONENTS}
    del components["world_facts_rouge_l"], components["retain_probability"]
    with pytest.raises(ValueError, match="retain_probability, world_facts_rouge_l"):
        model_utility(components)
