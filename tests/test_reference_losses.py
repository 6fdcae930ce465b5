"""Every loss against an independent transcription of its reference's formula, on the same fixed tensors, to 1e-6.

Each test writes the reference's computation out again here, from the cited file or
equation (never by calling the library), and compares it with the library's function.
Where the library deliberately departs from a reference (a bug it fixes, or a choice
with an option restoring the reference), the test asserts both values: that the
option reproduces the reference, and that the default differs from it by what the
departure predicts.

References (OpenUnlearning at d3d7cf9): TOFU dataloader.py and data_module.py
(get_batch_loss); OpenUnlearning src/trainer/utils.py and src/trainer/unlearn/*.py;
the NPO authors' TOFU/dataloader.py; WMDP rmu/unlearn.py; Yao, Xu & Liu's utils.py
(compute_kl, get_answer_loss); the papers for WHP, EUL and the label methods.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from unlearnkit import losses
from unlearnkit.methods.base import UnlearnTrainer
from unlearnkit.methods.grad_diff import GradDiff, GradDiffConfig
from unlearnkit.methods.idk import IDK, IDKConfig
from unlearnkit.methods.idk_dpo import IDKDPO, IDKDPOConfig
from unlearnkit.methods.pdu import PDU, PDUConfig

TOL = {"atol": 1e-6, "rtol": 1e-6}
B, T, V = 3, 8, 128  # V > 100, so that OpenUnlearning's UNDIAL can index its mask with label -100 (see below)


def close(actual: torch.Tensor | float, expected: torch.Tensor | float) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64), **TOL)


def far(actual: torch.Tensor | float, expected: torch.Tensor | float) -> None:
    assert abs(float(actual) - float(expected)) > 1e-3, (float(actual), float(expected))


def make_labels(lengths: list[tuple[int, int]], generator: torch.Generator) -> torch.Tensor:
    """(B, T) labels: per row ``prompt`` tokens of -100, then ``answer`` token ids, then -100 padding."""
    labels = torch.full((len(lengths), T), -100)
    for row, (prompt, answer) in enumerate(lengths):
        labels[row, prompt:prompt + answer] = torch.randint(V, (answer,), generator=generator)
    return labels


GEN = torch.Generator().manual_seed(1234)
LOGITS = torch.randn(B, T, V, generator=GEN, dtype=torch.float64) * 2  # (B, T, V)
REFERENCE = LOGITS + torch.randn(B, T, V, generator=GEN, dtype=torch.float64)  # a nearby frozen model
LABELS = make_labels([(3, 5), (2, 3), (4, 2)], GEN)  # varied answer lengths, prompt masking and right padding
OTHER_LOGITS = torch.randn(2, T - 2, V, generator=GEN, dtype=torch.float64) * 2
OTHER_LABELS = make_labels([(1, 4), (2, 2)], GEN)[:, : T - 2]


# --- transcriptions of the references' building blocks ------------------------------------------------


def tofu_get_batch_loss(output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TOFU data_module.py get_batch_loss (= OpenUnlearning compute_batch_nll): per-sequence sum of token CE."""
    shifted_labels = labels[..., 1:].contiguous()
    output = output[..., :-1, :].contiguous()
    return nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(output.transpose(-1, -2), shifted_labels).sum(dim=-1)


def hf_causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``model(input_ids, labels=labels).loss`` of a Hugging Face causal LM: mean CE over all shifted, non-ignored tokens."""
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def tofu_kl(current_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """TOFU dataloader.py loss_type "KL" / OpenUnlearning compute_kl_divergence: kl_div batchmean on (B·T, V)."""
    retain_probs = F.log_softmax(reference_logits, dim=-1).view(-1, reference_logits.shape[-1])
    current_probs = F.log_softmax(current_logits, dim=-1).view(-1, current_logits.shape[-1])
    return nn.functional.kl_div(current_probs, retain_probs, reduction="batchmean", log_target=True)


def shifted_scored_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (N, V) of the logits that predict a scored label, and those labels (N,)."""
    mask = labels[:, 1:] != -100
    return logits[:, :-1][mask], labels[:, 1:][mask]


# --- NLLs, gradient ascent -----------------------------------------------------------------------------


def test_token_and_sequence_nll_equal_tofus_get_batch_loss() -> None:
    close(losses.sequence_nll(LOGITS, LABELS), tofu_get_batch_loss(LOGITS, LABELS))
    nll, mask = losses.token_nll(LOGITS, LABELS)
    reference = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(LOGITS[:, :-1].transpose(1, 2), LABELS[:, 1:])
    close(nll, reference)
    close(mask, (LABELS[:, 1:] != -100).double())
    close(losses.sequence_token_count(LABELS), (LABELS[:, 1:] != -100).sum(dim=1).double())


def test_mean_nll_and_gradient_ascent_equal_the_causal_lm_loss() -> None:
    """TOFU grad_ascent and OpenUnlearning GradAscent: ``-outputs.loss`` (Jang et al., ACL 2023: −mean NLL)."""
    close(losses.mean_nll(LOGITS, LABELS), hf_causal_lm_loss(LOGITS, LABELS))
    close(losses.gradient_ascent_loss(LOGITS, LABELS), -hf_causal_lm_loss(LOGITS, LABELS))


# --- KL to the reference ---------------------------------------------------------------------------------


def test_kl_to_reference_default_equals_tofu_and_openunlearning_batchmean() -> None:
    close(losses.kl_to_reference(LOGITS, REFERENCE, LABELS), tofu_kl(LOGITS, REFERENCE))
    # Option "answer": the mean over the positions predicting answer tokens; a different number on this padded batch.
    current, _ = shifted_scored_rows(LOGITS, LABELS)
    ref, _ = shifted_scored_rows(REFERENCE, LABELS)
    answer_only = (ref.softmax(-1) * (ref.log_softmax(-1) - current.log_softmax(-1))).sum(-1).mean()
    close(losses.kl_to_reference(LOGITS, REFERENCE, LABELS, positions="answer"), answer_only)
    far(answer_only, tofu_kl(LOGITS, REFERENCE))


def test_kl_to_reference_is_yao_et_als_cross_entropy_less_the_reference_entropy() -> None:
    """Yao, Xu & Liu utils.py compute_kl: −Σ p_pre log(p_θ + 1e-12), mean over all positions (the KL plus a constant)."""
    prob_p, prob_q = REFERENCE.softmax(-1), LOGITS.softmax(-1)
    authors = -(prob_p * torch.log(prob_q + 1e-12)).sum(-1).mean()
    entropy = -(prob_p * prob_p.log()).sum(-1).mean()
    close(losses.kl_to_reference(LOGITS, REFERENCE, LABELS), authors - entropy)


# --- NPO, SimNPO, DPO --------------------------------------------------------------------------------------


def test_npo_equals_openunlearning_and_npo_authors() -> None:
    """OpenUnlearning compute_dpo_loss(win=None), and the NPO authors' loss_type "npo": −(2/β) mean log σ(β(ℓ_θ − ℓ_ref))."""
    beta = 0.1
    lose_loss, lose_ref_loss = tofu_get_batch_loss(LOGITS, LABELS), tofu_get_batch_loss(REFERENCE, LABELS)
    lose_log_ratio = -(lose_loss - lose_ref_loss)
    reference = -2 / beta * F.logsigmoid(beta * (0.0 - lose_log_ratio)).mean()
    ours = losses.npo_loss(losses.sequence_nll(LOGITS, LABELS), losses.sequence_nll(REFERENCE, LABELS), beta)
    close(ours, reference)


def test_simnpo_equals_openunlearning() -> None:
    """OpenUnlearning simnpo.py: ℓ / (labels != -100).sum(-1) − δ, then −(2/β) mean log σ(β ·)."""
    beta, delta = 0.5, 5.0  # per-token NLLs here are about 6 nats: a margin that keeps log σ away from saturation
    forget_loss = tofu_get_batch_loss(LOGITS, LABELS) / (LABELS != -100).sum(-1) - delta
    reference = -F.logsigmoid(beta * forget_loss).mean() * 2 / beta
    ours = losses.simnpo_loss(losses.sequence_nll(LOGITS, LABELS), losses.sequence_token_count(LABELS), beta, delta)
    close(ours, reference)
    # OpenUnlearning counts unshifted labels; where labels[:, 0] is scored (it never is after a prompt) that counts a
    # token no position predicts. Ours counts the predicted tokens: both values on such a batch.
    scored_first = LABELS.clone()
    scored_first[:, 0] = 5
    theirs = -F.logsigmoid(beta * (tofu_get_batch_loss(LOGITS, scored_first) / (scored_first != -100).sum(-1) - delta)).mean() * 2 / beta
    ours = losses.simnpo_loss(losses.sequence_nll(LOGITS, scored_first), losses.sequence_token_count(scored_first), beta, delta)
    close(ours, -F.logsigmoid(beta * (tofu_get_batch_loss(LOGITS, scored_first) / (scored_first[:, 1:] != -100).sum(-1)
                                      - delta)).mean() * 2 / beta)
    far(ours, theirs)


CHOSEN_LABELS = make_labels([(2, 2), (3, 4), (1, 3)], torch.Generator().manual_seed(7))


def dpo_inputs() -> tuple[torch.Tensor, ...]:
    return (losses.sequence_nll(LOGITS.flip(0), CHOSEN_LABELS), losses.sequence_nll(LOGITS, LABELS),
            losses.sequence_nll(REFERENCE.flip(0), CHOSEN_LABELS), losses.sequence_nll(REFERENCE, LABELS))


def test_dpo_equals_tofu_and_its_scaled_form_equals_openunlearning() -> None:
    beta = 0.1
    idk_current, forget_current = -tofu_get_batch_loss(LOGITS.flip(0), CHOSEN_LABELS), -tofu_get_batch_loss(LOGITS, LABELS)
    idk_oracle, forget_oracle = -tofu_get_batch_loss(REFERENCE.flip(0), CHOSEN_LABELS), -tofu_get_batch_loss(REFERENCE, LABELS)
    # TOFU dataloader.py loss_type "dpo" (its forget terms use an undefined `labels`, the forget labels are meant).
    pi_logratios, ref_logratios = idk_current - forget_current, idk_oracle - forget_oracle
    tofu = -F.logsigmoid(beta * (pi_logratios - ref_logratios)).mean()
    # OpenUnlearning compute_dpo_loss (= the NPO authors' loss_type "dpo"): −(2/β) log σ(β (win − lose log-ratios)).
    win_log_ratio, lose_log_ratio = idk_current - idk_oracle, forget_current - forget_oracle
    openunlearning = -2 / beta * F.logsigmoid(beta * (win_log_ratio - lose_log_ratio)).mean()
    close(losses.dpo_loss(*dpo_inputs(), beta), tofu)
    close(losses.dpo_loss(*dpo_inputs(), beta, scale_by_two_over_beta=True), openunlearning)
    close(openunlearning, tofu * 2 / beta)


# --- token-reweighted and distribution-target losses ------------------------------------------------------


def openunlearning_token_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    shift_logits, shift_labels = logits[..., :-1, :].contiguous(), labels[..., 1:].contiguous()
    lm_loss = nn.CrossEntropyLoss(ignore_index=-100, reduction="none")(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1))
    return lm_loss, shift_labels.view(-1)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.5])
def test_wga_equals_openunlearning(beta: float) -> None:
    lm_loss, shift_labels = openunlearning_token_ce(LOGITS, LABELS)
    weight_ce = ((-lm_loss).exp().detach()) ** beta
    reference = -(weight_ce * lm_loss)[shift_labels != -100].mean()
    close(losses.weighted_gradient_ascent_loss(LOGITS, LABELS, beta), reference)


@pytest.mark.parametrize(("beta1", "beta2"), [(5.0, 1.0), (0.0, 0.0), (2.0, 3.0)])
def test_satimp_equals_openunlearning(beta1: float, beta2: float) -> None:
    lm_loss, shift_labels = openunlearning_token_ce(LOGITS * 0.2, LABELS)  # milder logits: p not all ~0
    weight_sat = ((-lm_loss).exp().detach()) ** beta1
    weight_imp = (1 - (-lm_loss).exp().detach()) ** beta2
    reference = -((weight_sat * weight_imp) * lm_loss)[shift_labels != -100].mean()
    close(losses.satimp_loss(LOGITS * 0.2, LABELS, beta1, beta2), reference)


def openunlearning_undial(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    """OpenUnlearning compute_undial_loss: every shifted position, the mask indexed with the raw labels (−100 included)."""
    shift_labels, shift_logits = labels[..., 1:].contiguous(), logits[..., :-1, :].contiguous()
    shift_teacher_logits = teacher_logits[..., :-1, :].contiguous()
    mask = torch.zeros_like(shift_teacher_logits)
    batch_idx = torch.arange(mask.shape[0]).view(-1, 1, 1)
    seq_idx = torch.arange(mask.shape[1]).view(1, -1, 1)
    mask[batch_idx, seq_idx, shift_labels.unsqueeze(-1)] = 1.0
    soft_label = F.softmax(shift_teacher_logits - mask * beta, dim=-1)
    loss = nn.CrossEntropyLoss(reduction="none")(shift_logits.view(-1, shift_logits.size(-1)), soft_label.view(-1, soft_label.size(-1)))
    return loss.mean()


def test_undial_equals_openunlearning_where_every_position_is_scored_and_fixes_its_masking() -> None:
    beta = 10.0
    all_scored = torch.randint(V, (B, T), generator=torch.Generator().manual_seed(3))
    close(losses.undial_loss(LOGITS, REFERENCE, all_scored, beta), openunlearning_undial(LOGITS, REFERENCE, all_scored, beta))
    # With prompt and padding (-100), OpenUnlearning averages over those positions too, and its mask index -100
    # lowers token V − 100 there. Ours: the scored positions only, which the same formula gives on those rows.
    buggy = openunlearning_undial(LOGITS, REFERENCE, LABELS, beta)
    student, targets = shifted_scored_rows(LOGITS, LABELS)
    teacher, _ = shifted_scored_rows(REFERENCE, LABELS)
    teacher = teacher - beta * F.one_hot(targets, V)
    scored_only = -(teacher.softmax(-1) * student.log_softmax(-1)).sum(-1).mean()
    close(losses.undial_loss(LOGITS, REFERENCE, LABELS, beta), scored_only)
    far(scored_only, buggy)


def openunlearning_ceu(logits: torch.Tensor, labels: torch.Tensor, ignore_first_n_answer_tokens: int) -> torch.Tensor:
    """OpenUnlearning ceu.py compute_batch_ceu and cross_entropy_unlearning_loss."""
    valid_mask = labels != -100
    update_mask = (valid_mask.cumsum(dim=-1) <= ignore_first_n_answer_tokens) & valid_mask
    shifted_labels = labels.masked_fill(update_mask, -100)[..., 1:].contiguous()
    shifted_logits = logits[..., :-1, :].contiguous()
    valid = shifted_labels != -100
    valid_logits, valid_labels = shifted_logits[valid], shifted_labels[valid]
    target_logits = valid_logits.detach().clone()
    target_logits.scatter_(dim=-1, index=valid_labels.unsqueeze(-1), value=float("-inf"))
    return F.cross_entropy(input=valid_logits, target=F.softmax(target_logits, dim=-1))


@pytest.mark.parametrize("ignore_first", [0, 1])
def test_ce_u_equals_openunlearning(ignore_first: int) -> None:
    close(losses.ce_u_loss(LOGITS, LABELS, ignore_first), openunlearning_ceu(LOGITS, LABELS, ignore_first))


def test_uniform_cross_entropy_is_the_cross_entropy_from_the_uniform_distribution() -> None:
    """−(1/V) Σ_v log p_θ(v) at each predicting position (= log V + KL(U ‖ p_θ), ULD's uniform loss plus log V)."""
    rows, _ = shifted_scored_rows(LOGITS, LABELS)
    uniform = torch.full_like(rows, 1.0 / V)
    close(losses.uniform_cross_entropy_loss(LOGITS, LABELS), F.cross_entropy(rows, uniform))
    kl_from_uniform = F.kl_div(rows.log_softmax(-1), uniform, reduction="batchmean")
    close(losses.uniform_cross_entropy_loss(LOGITS, LABELS), kl_from_uniform + torch.log(torch.tensor(float(V))))


def openunlearning_logit_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """OpenUnlearning pdu.py compute_loss: (max − mean)² of the logits, masked by the UNshifted labels."""
    logits = logits.reshape(-1, logits.size(-1))
    forget_loss = (logits.max(dim=-1)[0] - logits.mean(dim=-1)) ** 2
    mask = (labels != -100).reshape(-1)
    return (forget_loss * mask).sum() / mask.sum()


def test_logit_margin_unshifted_equals_openunlearning_and_the_default_is_shifted() -> None:
    close(losses.logit_margin_flattening_loss(LOGITS, LABELS, shift=False), openunlearning_logit_margin(LOGITS, LABELS))
    # Default: the same formula at the positions predicting the answer tokens (the reference's mask shifted by one).
    rows, _ = shifted_scored_rows(LOGITS, LABELS)
    close(losses.logit_margin_flattening_loss(LOGITS, LABELS), ((rows.max(-1).values - rows.mean(-1)) ** 2).mean())
    far(losses.logit_margin_flattening_loss(LOGITS, LABELS), openunlearning_logit_margin(LOGITS, LABELS))


def test_lagrangian_and_dual_ascent_equal_openunlearning_over_micro_batches() -> None:
    """OpenUnlearning pdu.py final_loss_value: loss = γ L_f + α (L_r − ε), then α ← max(0, α + η (L_r − ε)), per micro-batch."""
    epsilon, step_size = 0.3, 5.0
    preferences = [1.0, 0.5]  # gamma, alpha (alpha is lambda)
    multiplier = 0.5
    history = []
    for forget_value, retain_value in [(2.0, 0.35), (1.5, 0.1), (1.2, 0.05), (0.9, 0.5)]:
        forget_loss, retain_loss = torch.tensor(forget_value, dtype=torch.float64), torch.tensor(retain_value, dtype=torch.float64)
        shifted = retain_loss - epsilon
        reference = (torch.tensor(preferences, dtype=torch.float64) * torch.hstack([forget_loss, shifted])).sum()
        preferences[1] = max(0, preferences[1] + step_size * shifted.item())
        close(losses.primal_dual_lagrangian(forget_loss, retain_loss, multiplier, epsilon), reference)
        multiplier = losses.dual_ascent_step(multiplier, retain_value, epsilon, step_size)
        close(multiplier, preferences[1])
        history.append(multiplier)
    close(torch.tensor(history), torch.tensor([0.75, 0.0, 0.0, 1.0]))  # the projection onto lambda >= 0 was exercised


# --- Who's Harry Potter, random and adversarial labels ----------------------------------------------------


def test_whp_generic_logits_and_labels_equal_the_papers_equation() -> None:
    """Eldan & Russinovich (2023), eq. 1: v_generic = v_baseline − α ReLU(v_reinforced − v_baseline); labels = argmax, shifted."""
    alpha = 5.0
    generic = REFERENCE - alpha * torch.clamp(LOGITS - REFERENCE, min=0.0)
    close(losses.whp_generic_logits(REFERENCE, LOGITS, alpha), generic)
    expected = torch.full_like(LABELS, -100)
    for b in range(B):
        for t in range(1, T):
            if LABELS[b, t] != -100:
                expected[b, t] = int(generic[b, t - 1].argmax())
    assert torch.equal(losses.whp_generic_labels(REFERENCE, LOGITS, LABELS, alpha), expected)


def test_random_labels_are_one_uniform_draw_per_position_from_the_seeded_generator() -> None:
    """Yao et al. (ACL 2024): every scored label replaced by a uniformly random token; ignored and kept ids stay."""
    candidates = torch.arange(3, V)  # ids 0-2 play the special tokens
    keep = torch.tensor([int(LABELS[0, 3])])
    draws = torch.randint(candidates.numel(), (B, T), generator=torch.Generator().manual_seed(11))
    expected = LABELS.clone()
    for b in range(B):
        for t in range(T):
            if LABELS[b, t] != -100 and LABELS[b, t] not in keep:
                expected[b, t] = candidates[draws[b, t]]
    got = losses.random_labels(LABELS, candidates, torch.Generator().manual_seed(11), keep)
    assert torch.equal(got, expected)
    assert got[0, 3] == LABELS[0, 3] and (got != LABELS).sum() >= 5


def test_adversarial_labels_are_the_references_best_wrong_token() -> None:
    """Yao et al. (ACL 2024) ``top_k 1 rm_groundtruth``: the frozen model's most likely token other than the ground truth."""
    excluded = torch.tensor([0, 1, 2])
    expected = torch.full_like(LABELS, -100)
    for b in range(B):
        for t in range(1, T):
            if LABELS[b, t] != -100:
                ranked = REFERENCE[b, t - 1].argsort(descending=True).tolist()
                expected[b, t] = next(v for v in ranked if v != LABELS[b, t] and v not in excluded.tolist())
    assert torch.equal(losses.adversarial_labels(REFERENCE, LABELS, excluded), expected)
    # The ground truth is masked where it is the reference's top-1.
    top1 = LABELS.clone()
    top1[:, 1:] = torch.where(LABELS[:, 1:] != -100, REFERENCE[:, :-1].argmax(-1), -100)
    assert (losses.adversarial_labels(REFERENCE, top1) != top1)[top1 != -100].all()


# --- GA with random mismatch, RMU, EUL ------------------------------------------------------------------


def test_ga_mismatch_combines_its_terms_as_yao_xu_and_liu() -> None:
    """unlearn_harm.py: loss = bad_weight · bad_loss + random_weight · random_loss + normal_weight · normal_loss, bad_loss = −NLL."""
    forget_nll = losses.mean_nll(LOGITS, LABELS)
    mismatch_nll = losses.mean_nll(OTHER_LOGITS, OTHER_LABELS)
    normal_kl = losses.kl_to_reference(LOGITS, REFERENCE, LABELS)
    reference = 0.5 * (-forget_nll) + 1.0 * mismatch_nll + 1.0 * normal_kl
    close(losses.ga_mismatch_loss(forget_nll, mismatch_nll, normal_kl, 0.5, 1.0, 1.0), reference)
    # Their NLLs are per-sequence means averaged over the batch (get_answer_loss); ours weigh tokens equally.
    per_sequence = (tofu_get_batch_loss(LOGITS, LABELS) / (LABELS[:, 1:] != -100).sum(-1)).mean()
    close(forget_nll, tofu_get_batch_loss(LOGITS, LABELS).sum() / (LABELS[:, 1:] != -100).sum())
    far(forget_nll, per_sequence)


def test_activation_mse_and_steering_target_equal_wmdps_rmu() -> None:
    """WMDP rmu/unlearn.py: control_vec = rand / ‖rand‖ · steering_coeff; loss = F.mse_loss(h, control_vec) (no padding)."""
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(B, T, 16, generator=gen, dtype=torch.float64)
    frozen = torch.randn(B, T, 16, generator=gen, dtype=torch.float64)
    random_vector = torch.rand(1, 1, 16, generator=gen, dtype=torch.float64)
    control_vec = random_vector / torch.norm(random_vector) * 20.0
    unit = (random_vector / torch.norm(random_vector)).view(16)
    target = losses.rmu_steering_target(unit, 20.0)
    close(target, control_vec.view(16))
    no_padding = torch.ones(B, T)
    close(losses.activation_mse(hidden, target, no_padding), F.mse_loss(hidden, control_vec.expand_as(hidden)))
    close(losses.activation_mse(hidden, frozen, no_padding), F.mse_loss(hidden, frozen))
    # Adaptive RMU (Dang et al., AAAI 2025): the coefficient is β · ‖h_frozen(x_t)‖ per token.
    adaptive = 5.0 * torch.norm(frozen, dim=-1, keepdim=True) * unit
    close(losses.rmu_steering_target(unit, 5.0, frozen), adaptive)
    # With padding, the mean runs over the real tokens only.
    mask = (LABELS != -100).long()
    real = mask.bool()
    close(losses.activation_mse(hidden, frozen, mask), F.mse_loss(hidden[real], frozen[real]))


def test_eul_halves_sum_to_the_papers_objective() -> None:
    """Chen & Yang (EMNLP 2023): L_EUL = α Σ_r KL − Σ_f KL + λ L_TASK + γ L_LM, with L_LM the negated forget NLL."""
    alpha, lambda_task, gamma = 0.8, 1.0, 0.2
    kl_f, nll_f = torch.tensor(0.7, dtype=torch.float64), torch.tensor(2.5, dtype=torch.float64)
    kl_r, nll_r = torch.tensor(0.2, dtype=torch.float64), torch.tensor(1.1, dtype=torch.float64)
    paper = alpha * kl_r - kl_f + lambda_task * nll_r + gamma * (-nll_f)
    total = losses.eul_forget_loss(kl_f, nll_f, gamma, max_forget_kl=5.0) + losses.eul_retain_loss(kl_r, nll_r, alpha, lambda_task)
    close(total, paper)
    # Above the clamp the forget KL is constant (the paper's −KL has no lower bound).
    close(losses.eul_forget_loss(torch.tensor(9.0, dtype=torch.float64), nll_f, gamma, max_forget_kl=5.0), -5.0 - gamma * nll_f)


# --- composed method losses: each method's compute_loss against the reference's compute_loss -----------------


PAD = 0


@pytest.fixture(scope="module")
def models() -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    """A tiny random model in float64 and a perturbed copy as the frozen reference."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, pad_token_id=PAD)
    model = LlamaForCausalLM(config).double()
    reference = LlamaForCausalLM(config).double()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model.eval(), reference.eval()


def qa_batch(rows: list[tuple[int, int]], seed: int, width: int | None = None) -> dict[str, torch.Tensor]:
    """Right-padded batch of (prompt length, answer length) rows of random ids, labels on the answers only."""
    gen = torch.Generator().manual_seed(seed)
    width = width or max(p + a for p, a in rows)
    input_ids, labels, mask = torch.full((len(rows), width), PAD), torch.full((len(rows), width), -100), torch.zeros(len(rows), width)
    for row, (prompt, answer) in enumerate(rows):
        ids = torch.randint(1, V, (prompt + answer,), generator=gen)
        input_ids[row, : prompt + answer], mask[row, : prompt + answer] = ids, 1
        labels[row, prompt: prompt + answer] = ids[prompt:]
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask.long()}


def repad(batch: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    extra = width - batch["input_ids"].shape[1]
    return {"input_ids": F.pad(batch["input_ids"], (0, extra), value=PAD), "labels": F.pad(batch["labels"], (0, extra), value=-100),
            "attention_mask": F.pad(batch["attention_mask"], (0, extra), value=0)}


FORGET = qa_batch([(3, 6), (4, 2)], seed=1)
RETAIN = qa_batch([(2, 5), (5, 3), (3, 1)], seed=2)
IDK_BATCH = qa_batch([(3, 2), (4, 3)], seed=3)


def bare_trainer(trainer_class: type[UnlearnTrainer], config: object, reference: nn.Module | None) -> UnlearnTrainer:
    """The method's trainer without a Trainer around it: enough for compute_loss on one batch."""
    trainer = trainer_class.__new__(trainer_class)
    trainer.method_config, trainer.reference_model, trainer._recorded = config, reference, {}
    return trainer


def compute(trainer: UnlearnTrainer, model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return trainer.compute_loss(model, {"forget": FORGET, "retain": RETAIN, "idk": IDK_BATCH})


def out(model: nn.Module, batch: dict[str, torch.Tensor]) -> SimpleNamespace:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], labels=batch["labels"], attention_mask=batch["attention_mask"])


def test_idk_pooled_equals_tofus_concatenated_batch_and_two_means_differs(models) -> None:
    model, _ = models
    # TOFU dataloader.py loss_type "idk": torch.cat of the idk and retain batches (padded alike), one outputs.loss.
    width = max(IDK_BATCH["input_ids"].shape[1], RETAIN["input_ids"].shape[1])
    idk, retain = repad(IDK_BATCH, width), repad(RETAIN, width)
    pooled = {key: torch.cat((idk[key], retain[key]), dim=0) for key in idk}
    tofu = out(model, pooled).loss
    close(compute(bare_trainer(IDK, IDKConfig(), None), model), tofu)
    two_means = out(model, IDK_BATCH).loss + 1.0 * out(model, RETAIN).loss
    close(compute(bare_trainer(IDK, IDKConfig(form="two_means"), None), model), two_means)
    far(two_means, tofu)


def test_idk_dpo_forms_equal_openunlearning_and_tofu(models) -> None:
    model, reference = models
    beta = 0.1
    idk_current, forget_current = -tofu_get_batch_loss(out(model, IDK_BATCH).logits, IDK_BATCH["labels"]), \
        -tofu_get_batch_loss(out(model, FORGET).logits, FORGET["labels"])
    idk_oracle, forget_oracle = -tofu_get_batch_loss(out(reference, IDK_BATCH).logits, IDK_BATCH["labels"]), \
        -tofu_get_batch_loss(out(reference, FORGET).logits, FORGET["labels"])
    # OpenUnlearning dpo.py: gamma · compute_dpo_loss(win=alternate, lose=forget) + alpha · retain outputs.loss (1, 1).
    dpo = -2 / beta * F.logsigmoid(beta * ((idk_current - idk_oracle) - (forget_current - forget_oracle))).mean()
    openunlearning = 1.0 * dpo + 1.0 * out(model, RETAIN).loss
    config = IDKDPOConfig(cache_reference=False)
    close(compute(bare_trainer(IDKDPO, config, reference), model), openunlearning)
    # TOFU dataloader.py loss_type "dpo": the unscaled loss, no retain term.
    tofu = -F.logsigmoid(beta * ((idk_current - forget_current) - (idk_oracle - forget_oracle))).mean()
    close(compute(bare_trainer(IDKDPO, replace(config, form="tofu"), reference), model), tofu)
    far(openunlearning, tofu)


def test_graddiff_equals_tofu_and_openunlearning_with_nll_and_kl(models) -> None:
    model, reference = models
    forget_loss = -out(model, FORGET).loss
    # TOFU loss_type "grad_diff" / OpenUnlearning GradDiff (NLL): −forget loss + retain loss.
    close(compute(bare_trainer(GradDiff, GradDiffConfig(), None), model), forget_loss + out(model, RETAIN).loss)
    # TOFU loss_type "KL" / OpenUnlearning GradDiff (KL): −forget loss + kl_div(batchmean) over the flattened retain batch.
    kl = tofu_kl(out(model, RETAIN).logits, out(reference, RETAIN).logits)
    close(compute(bare_trainer(GradDiff, GradDiffConfig(retain_loss="kl"), reference), model), forget_loss + kl)
    answer_only = compute(bare_trainer(GradDiff, GradDiffConfig(retain_loss="kl", retain_kl_positions="answer"), reference), model)
    far(answer_only, forget_loss + kl)


def test_npo_with_retain_nll_equals_openunlearning(models) -> None:
    from unlearnkit.methods.npo import NPO, NPOConfig

    model, reference = models
    beta = 0.1
    lose_log_ratio = -(tofu_get_batch_loss(out(model, FORGET).logits, FORGET["labels"])
                       - tofu_get_batch_loss(out(reference, FORGET).logits, FORGET["labels"]))
    openunlearning = -2 / beta * F.logsigmoid(beta * (0.0 - lose_log_ratio)).mean() + out(model, RETAIN).loss
    close(compute(bare_trainer(NPO, NPOConfig(cache_reference=False), reference), model), openunlearning)


def test_pdu_forget_term_with_the_authors_alignment_equals_openunlearning(models) -> None:
    model, _ = models
    trainer = bare_trainer(PDU, PDUConfig(forget_alignment="unshifted"), None)
    with torch.no_grad():
        close(trainer.forget_loss(model, FORGET), openunlearning_logit_margin(out(model, FORGET).logits, FORGET["labels"]))
        shifted = bare_trainer(PDU, PDUConfig(), None).forget_loss(model, FORGET)
    far(shifted, openunlearning_logit_margin(out(model, FORGET).logits, FORGET["labels"]))
