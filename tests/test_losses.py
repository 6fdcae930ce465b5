"""Loss functions checked against values computed by hand from their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.losses import (
    dpo_loss,
    gradient_ascent_loss,
    kl_to_reference,
    mean_nll,
    npo_loss,
    pooled_mean_nll,
    sequence_nll,
    sequence_token_count,
    simnpo_loss,
    token_nll,
)

TOL = 1e-12  # inputs are float64, so hand values must match to rounding error


def log_softmax_at(row: list[float], index: int) -> float:
    """log softmax(row)[index], written out: row[index] − log Σ_v exp(row[v])."""
    return row[index] - math.log(sum(math.exp(x) for x in row))


def log_sigmoid(x: float) -> float:
    return math.log(1.0 / (1.0 + math.exp(-x)))


# Two sequences, T = 3, V = 3. The last logits row of each sequence predicts
# nothing (there is no label after it); it is set to values that would change
# every result if the shift were missing or off by one.
LOGITS = [
    [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [9.0, -9.0, 4.0]],
    [[0.0, 1.0, 0.0], [2.0, 0.0, -1.0], [0.0, 7.0, 0.0]],
]
LABELS = [
    [-100, 2, 0],  # logits[0] predicts label 2, logits[1] predicts label 0
    [-100, -100, 1],  # only logits[1] predicts a scored label (1)
]
# Hand values of the three scored token NLLs.
NLL_0_0 = -log_softmax_at([1.0, 2.0, 3.0], 2)  # log(e + e² + e³) − 3
NLL_0_1 = math.log(3.0)  # uniform over 3 classes
NLL_1_1 = -log_softmax_at([2.0, 0.0, -1.0], 1)  # log(e² + 1 + e⁻¹)


def f64(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(LABELS)


def test_token_nll_shifts_and_masks() -> None:
    logits, labels = batch()
    nll, mask = token_nll(logits, labels)
    assert nll.shape == mask.shape == (2, 2)
    expected_nll = [[NLL_0_0, NLL_0_1], [0.0, NLL_1_1]]
    assert nll.tolist() == [pytest.approx(row, abs=TOL) for row in expected_nll]
    assert mask.tolist() == [[1.0, 1.0], [0.0, 1.0]]


def test_sequence_nll_is_sum_over_label_tokens() -> None:
    logits, labels = batch()
    result = sequence_nll(logits, labels)
    assert result.tolist() == pytest.approx([NLL_0_0 + NLL_0_1, NLL_1_1], abs=TOL)


def test_sequence_token_count_counts_after_shift() -> None:
    # labels[:, 0] is never predicted, so a scored first label does not count.
    labels = torch.tensor([[5, 2, 0], [-100, -100, 1], [7, -100, -100]])
    assert sequence_token_count(labels).tolist() == [2.0, 1.0, 0.0]


def test_mean_nll_weights_tokens_not_sequences() -> None:
    logits, labels = batch()
    # Three scored tokens in the batch; the mean of per-sequence means would differ.
    expected = (NLL_0_0 + NLL_0_1 + NLL_1_1) / 3
    assert mean_nll(logits, labels).item() == pytest.approx(expected, abs=TOL)


def test_mean_nll_rejects_batch_without_labels() -> None:
    logits, _ = batch()
    with pytest.raises(ValueError, match="no scored token"):
        mean_nll(logits, torch.full((2, 3), -100))


def test_lm_inputs_must_agree_in_shape() -> None:
    logits, labels = batch()
    with pytest.raises(ValueError, match="must agree on B and T"):
        token_nll(logits, labels[:, :2])
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        token_nll(logits[0], labels)


def test_half_precision_logits_are_upcast() -> None:
    logits, labels = batch()
    nll, _ = token_nll(logits.to(torch.bfloat16), labels)
    assert nll.dtype == torch.float32


def test_gradient_ascent_is_negated_mean_nll_with_opposite_gradient() -> None:
    logits, labels = batch()
    logits.requires_grad_(True)
    loss = gradient_ascent_loss(logits, labels)
    assert loss.item() == pytest.approx(-(NLL_0_0 + NLL_0_1 + NLL_1_1) / 3, abs=TOL)
    loss.backward()
    # d(−mean NLL)/d(target logit) = −(p_target − 1)/3 = (1 − p_target)/3 > 0, so a
    # descent step on this loss lowers the logit of the forget token.
    p_target = math.exp(-NLL_0_0)
    assert logits.grad[0, 0, 2].item() == pytest.approx((1.0 - p_target) / 3, abs=TOL)


def test_kl_to_reference_hand_value_on_answer_positions() -> None:
    # T = 3, V = 2. Only the shifted position 0 is scored (labels[1] != -100).
    logits = torch.tensor([[[0.0, 0.0], [5.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    reference = torch.tensor([[[math.log(3.0), 0.0], [0.0, 5.0], [0.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[-100, 1, -100]])
    # p_θ = (1/2, 1/2), p_ref = (3/4, 1/4): KL(p_ref ‖ p_θ) = Σ p_ref log(p_ref / p_θ).
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    # The reverse KL(p_θ ‖ p_ref) is a different number, so the direction is tested.
    reverse = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert abs(expected - reverse) > 1e-3
    assert kl_to_reference(logits, reference, labels, positions="answer").item() == pytest.approx(expected, abs=TOL)


def test_kl_to_reference_averages_over_scored_positions() -> None:
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    reference = torch.tensor([[[math.log(3.0), 0.0], [0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[-100, 1, 0]])  # two scored positions; KL is 0 at the second
    kl_first = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kl_to_reference(logits, reference, labels, positions="answer").item() == pytest.approx(kl_first / 2, abs=TOL)


def test_kl_to_reference_default_averages_over_every_position_of_the_padded_batch() -> None:
    # B = 2, T = 2, V = 2: four positions, no shift. KL is nonzero at two of them:
    # (3/4, 1/4) against (1/2, 1/2) at row 0 position 0 (a prompt position), and
    # (1/2, 1/2) against (3/4, 1/4) at row 1 position 1 (the last position, which predicts no label).
    logits = torch.tensor([[[0.0, 0.0], [1.0, 1.0]], [[2.0, 2.0], [math.log(3.0), 0.0]]], dtype=torch.float64)
    reference = torch.tensor([[[math.log(3.0), 0.0], [4.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]]], dtype=torch.float64)
    labels = torch.tensor([[-100, 1], [-100, -100]])  # padding: row 1 has no scored label at all
    kl_a = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    kl_b = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kl_to_reference(logits, reference, labels).item() == pytest.approx((kl_a + kl_b) / 4, abs=TOL)
    assert kl_to_reference(logits, reference, labels, positions="all").item() == pytest.approx((kl_a + kl_b) / 4, abs=TOL)
    # Answer positions only: the one shifted position predicting labels[0, 1] is position 0 of row 0.
    assert kl_to_reference(logits, reference, labels, positions="answer").item() == pytest.approx(kl_a, abs=TOL)
    with pytest.raises(ValueError, match="positions must be one of all, answer"):
        kl_to_reference(logits, reference, labels, positions="prompt")


def test_kl_to_reference_is_zero_for_equal_logits() -> None:
    logits, labels = batch()
    assert kl_to_reference(logits, logits.clone(), labels).item() == pytest.approx(0.0, abs=TOL)


def test_kl_to_reference_rejects_mismatched_reference() -> None:
    logits, labels = batch()
    with pytest.raises(ValueError, match="same shape"):
        kl_to_reference(logits, logits[:, :, :2], labels)


def test_npo_hand_value() -> None:
    beta = 0.1
    loss = npo_loss(f64(2.0, 0.5), f64(1.0, 1.5), beta)
    # margins ℓ_θ − ℓ_ref = (1, −1)
    expected = -(2 / beta) * (log_sigmoid(beta * 1.0) + log_sigmoid(beta * -1.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=TOL)


def test_npo_single_sample_from_brief() -> None:
    loss = npo_loss(f64(2.0), f64(1.0), 0.1)
    assert loss.item() == pytest.approx(-(2 / 0.1) * log_sigmoid(0.1), abs=TOL)


def test_npo_at_reference_equals_two_over_beta_log_two() -> None:
    nll = f64(3.0, 7.0)
    expected = (2 / 0.5) * math.log(2.0)
    assert npo_loss(nll, nll.clone(), 0.5).item() == pytest.approx(expected, abs=TOL)


def test_npo_gradient_matches_hand_derivative_and_skips_reference() -> None:
    beta = 0.5
    nll = torch.tensor([2.0, 0.5], dtype=torch.float64, requires_grad=True)
    reference = torch.tensor([1.0, 1.5], dtype=torch.float64, requires_grad=True)
    npo_loss(nll, reference, beta).backward()
    # dL/dℓ_i = −(2/β)(1/B) β (1 − σ(β m_i)) = −(1 − σ(β m_i)) for B = 2.
    expected = [-(1 - 1 / (1 + math.exp(-beta * m))) for m in (1.0, -1.0)]
    assert nll.grad.tolist() == pytest.approx(expected, abs=TOL)
    assert reference.grad is None


def test_simnpo_hand_value() -> None:
    beta, gamma = 2.0, 0.5
    loss = simnpo_loss(f64(6.0, 2.0), f64(3.0, 4.0), beta, gamma)
    # per-token NLLs (2, 0.5); arguments β(2 − 0.5) = 3 and β(0.5 − 0.5) = 0.
    expected = -(2 / beta) * (log_sigmoid(3.0) + log_sigmoid(0.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=TOL)


def test_simnpo_default_gamma_is_zero() -> None:
    loss = simnpo_loss(f64(3.0), f64(2.0), 1.0)
    assert loss.item() == pytest.approx(-2.0 * log_sigmoid(1.5), abs=TOL)


def test_simnpo_rejects_empty_answers() -> None:
    with pytest.raises(ValueError, match="token_count must be > 0"):
        simnpo_loss(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]), 1.0)


def test_dpo_hand_value() -> None:
    beta = 0.5
    loss = dpo_loss(
        chosen_nll=f64(3.0, 2.0),
        rejected_nll=f64(5.0, 1.0),
        reference_chosen_nll=f64(4.0, 2.0),
        reference_rejected_nll=f64(4.0, 2.0),
        beta=beta,
    )
    # Sample 0: Δ = (−3 + 4) − (−5 + 4) = 2.
    # Sample 1: Δ = (−2 + 2) − (−1 + 2) = −1.
    expected = -(log_sigmoid(beta * 2.0) + log_sigmoid(beta * -1.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=TOL)
    # The scaled form (OpenUnlearning, NPO authors): −(2/β) mean log σ(βΔ), here 2/0.5 = 4 times the plain one.
    scaled = dpo_loss(f64(3.0, 2.0), f64(5.0, 1.0), f64(4.0, 2.0), f64(4.0, 2.0), beta, scale_by_two_over_beta=True)
    assert scaled.item() == pytest.approx(4.0 * expected, abs=TOL)


def test_pooled_mean_nll_weighs_every_token_alike() -> None:
    logits, labels = batch()  # three scored tokens: NLL_0_0, NLL_0_1, NLL_1_1
    # A second batch of one row, T = 2, V = 3, one scored token with NLL log 3 (uniform logits).
    other_logits = torch.zeros(1, 2, 3, dtype=torch.float64)
    other_labels = torch.tensor([[-100, 2]])
    tokens = NLL_0_0 + NLL_0_1 + NLL_1_1
    assert pooled_mean_nll(logits, labels, other_logits, other_labels).item() == pytest.approx(
        (tokens + math.log(3.0)) / 4, abs=TOL)
    # other_weight scales the other batch's token NLLs in the sum; the count stays the pooled one.
    assert pooled_mean_nll(logits, labels, other_logits, other_labels, other_weight=0.5).item() == pytest.approx(
        (tokens + 0.5 * math.log(3.0)) / 4, abs=TOL)
    # Not the sum of the two means (3 tokens vs 1): (tokens / 3) + log 3 is a different number.
    assert abs((tokens + math.log(3.0)) / 4 - (tokens / 3 + math.log(3.0))) > 0.1
    with pytest.raises(ValueError, match="other_weight must be a finite number >= 0"):
        pooled_mean_nll(logits, labels, other_logits, other_labels, other_weight=-1.0)


def test_losses_backpropagate_to_logits() -> None:
    logits, labels = batch()
    logits.requires_grad_(True)
    reference = (logits.detach() + 0.3).requires_grad_(True)
    seq = sequence_nll(logits, labels)
    ref_seq = sequence_nll(reference, labels)
    total = (
        npo_loss(seq, ref_seq, 0.1)
        + simnpo_loss(seq, sequence_token_count(labels), 0.1)
        + dpo_loss(seq, seq.flip(0), ref_seq, ref_seq.flip(0), 0.1)
        + kl_to_reference(logits, reference, labels, positions="answer")
    )
    total.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum().item() > 0
    # Unscored positions (the last row) receive no gradient from any loss.
    assert logits.grad[:, -1].abs().sum().item() == 0
    assert reference.grad is None


@pytest.mark.parametrize("beta", [0.0, -0.1, float("nan"), float("inf")])
def test_beta_must_be_positive(beta: float) -> None:
    one = torch.tensor([1.0])
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        npo_loss(one, one, beta)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        simnpo_loss(one, one, beta)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        dpo_loss(one, one, one, one, beta)


def test_simnpo_rejects_non_finite_gamma() -> None:
    one = torch.tensor([1.0])
    with pytest.raises(ValueError, match="gamma must be a finite number"):
        simnpo_loss(one, one, 1.0, float("nan"))


def test_per_sample_inputs_must_pair_up() -> None:
    with pytest.raises(ValueError, match="same shape"):
        npo_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0]), 0.1)
