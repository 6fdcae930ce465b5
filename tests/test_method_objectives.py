"""WGA, SatImp, UNDIAL, CE-U and PDU: their losses against hand-computed values, their configs, and PDU's dual state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerControl, TrainerState, TrainingArguments

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_avg_nll
from unlearnkit.losses import (
    ce_u_loss,
    dual_ascent_step,
    gradient_ascent_loss,
    logit_margin_flattening_loss,
    primal_dual_lagrangian,
    satimp_loss,
    undial_loss,
    uniform_cross_entropy_loss,
    weighted_gradient_ascent_loss,
)
from unlearnkit.methods import pdu
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.training import last_checkpoint
from unlearnkit.unlearning import UnlearnOutcome, resolve_method, unlearn

TOL = 1e-12  # inputs are float64, so hand values must match to rounding error
LN2 = math.log(2.0)
FMT = PromptFormat("plain")


def f64(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# One sequence, T = 3, V = 3. logits[0] predicts label 2 and logits[1] predicts label 0;
# logits[2] predicts nothing and is set to values that would change every result if
# the causal shift were missing or off by one.
LOGITS = [[[0.0, 0.0, LN2], [LN2, 0.0, 0.0], [9.0, -9.0, 4.0]]]
LABELS = [[-100, 2, 0]]
# softmax([0, 0, ln 2]) = (1/4, 1/4, 1/2) and softmax([ln 2, 0, 0]) = (1/2, 1/4, 1/4):
# both scored tokens have probability 1/2.
P_LABEL = 0.5


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return f64(LOGITS).requires_grad_(True), torch.tensor(LABELS)


# --- WGA -------------------------------------------------------------------------------


def test_wga_hand_value_and_detached_weight() -> None:
    logits, labels = batch()
    beta = 2.0
    loss = weighted_gradient_ascent_loss(logits, labels, beta)
    # Both tokens: w = (1/2)^2 = 1/4, log p = −ln 2; mean over the 2 tokens.
    assert loss.item() == pytest.approx(0.25 * -LN2, abs=TOL)
    loss.backward()
    # With w constant, d(w log p_y)/dz_y = w (1 − p_y), divided by the 2 tokens. Differentiating
    # through the weight would add β p^β (1 − p) log p, a different number.
    assert logits.grad[0, 0, 2].item() == pytest.approx(0.25 * (1 - P_LABEL) / 2, abs=TOL)
    assert logits.grad[0, 2].abs().sum().item() == 0


def test_wga_with_beta_zero_is_gradient_ascent() -> None:
    logits, labels = batch()
    expected = gradient_ascent_loss(logits, labels).item()
    assert weighted_gradient_ascent_loss(logits, labels, 0.0).item() == pytest.approx(expected, abs=TOL)


def test_wga_weights_tokens_by_probability() -> None:
    # Two tokens of probability 1/2 and 1/4 (softmax([0, 0, ln 2]) at labels 2 and 0), β = 1.
    logits = f64([[[0.0, 0.0, LN2], [0.0, 0.0, LN2], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2, 0]])
    expected = (0.5 * math.log(0.5) + 0.25 * math.log(0.25)) / 2
    assert weighted_gradient_ascent_loss(logits, labels, 1.0).item() == pytest.approx(expected, abs=TOL)


# --- SatImp ----------------------------------------------------------------------------


def test_satimp_hand_value() -> None:
    # Tokens of probability 1/2 and 1/4; β1 = 2, β2 = 3.
    logits = f64([[[0.0, 0.0, LN2], [0.0, 0.0, LN2], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2, 0]])
    weight = [0.5**2 * 0.5**3, 0.25**2 * 0.75**3]
    expected = (weight[0] * math.log(0.5) + weight[1] * math.log(0.25)) / 2
    assert satimp_loss(logits, labels, 2.0, 3.0).item() == pytest.approx(expected, abs=TOL)


def test_satimp_gradient_treats_the_weight_as_constant() -> None:
    logits, labels = batch()
    satimp_loss(logits, labels, 5.0, 1.0).backward()
    weight = P_LABEL**5 * (1 - P_LABEL)
    assert logits.grad[0, 1, 0].item() == pytest.approx(weight * (1 - P_LABEL) / 2, abs=TOL)


def test_satimp_without_exponents_is_gradient_ascent() -> None:
    logits, labels = batch()
    expected = gradient_ascent_loss(logits, labels).item()
    assert satimp_loss(logits, labels, 0.0, 0.0).item() == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_reweighting_exponents_must_be_non_negative(bad: float) -> None:
    logits, labels = batch()
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        weighted_gradient_ascent_loss(logits, labels, bad)
    with pytest.raises(ValueError, match="beta2 must be a finite number >= 0"):
        satimp_loss(logits, labels, 1.0, bad)


# --- UNDIAL ----------------------------------------------------------------------------


def test_undial_hand_value() -> None:
    # T = 2, V = 3, one scored position (label 1). The reference has logits (0, ln 4, 0);
    # lowering the label by β = ln 2 gives (0, ln 2, 0), so q = (1/4, 1/2, 1/4).
    # The student has p = softmax(ln 2, 0, 0) = (1/2, 1/4, 1/4).
    student = f64([[[LN2, 0.0, 0.0], [5.0, -5.0, 1.0]]]).requires_grad_(True)
    reference = f64([[[0.0, math.log(4.0), 0.0], [0.0, 0.0, 0.0]]]).requires_grad_(True)
    labels = torch.tensor([[-100, 1]])
    loss = undial_loss(student, reference, labels, beta=LN2)
    expected = -(0.25 * math.log(0.5) + 0.5 * math.log(0.25) + 0.25 * math.log(0.25))  # = 1.75 ln 2
    assert loss.item() == pytest.approx(expected, abs=TOL)
    loss.backward()
    # d CE / d z = p − q at the scored position; none reaches the reference.
    assert student.grad[0, 0].tolist() == pytest.approx([0.5 - 0.25, 0.25 - 0.5, 0.25 - 0.25], abs=TOL)
    assert reference.grad is None


def test_undial_averages_over_scored_positions_only() -> None:
    # Two scored positions; at the second the student already equals its target, whose
    # cross-entropy is then its entropy. Unscored positions hold values that would show.
    uniform = [0.0, 0.0, 0.0]
    student = f64([[[LN2, 0.0, 0.0], uniform, [7.0, 0.0, -7.0]]])
    reference = f64([[[0.0, math.log(4.0), 0.0], [0.0, LN2, 0.0], [1.0, 2.0, 3.0]]])
    labels = torch.tensor([[-100, 1, 1]])
    first = 1.75 * LN2
    second = math.log(3.0)  # target softmax(0, ln 2 − ln 2, 0) is uniform, so is the student
    assert undial_loss(student, reference, labels, beta=LN2).item() == pytest.approx((first + second) / 2, abs=TOL)


def test_undial_rejects_bad_beta_and_reference() -> None:
    logits, labels = batch()
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        undial_loss(logits, logits.detach(), labels, beta=0.0)
    with pytest.raises(ValueError, match="same shape"):
        undial_loss(logits, logits.detach()[:, :, :2], labels, beta=1.0)


# --- CE-U ------------------------------------------------------------------------------


def test_ce_u_hand_value_and_gradient() -> None:
    # One scored position: z = (ln 2, 0, ln 2), label 0. p = (2/5, 1/5, 2/5);
    # removing the label gives q = softmax(−inf, 0, ln 2) = (0, 1/3, 2/3).
    logits = f64([[[LN2, 0.0, LN2], [9.0, 0.0, -9.0]]]).requires_grad_(True)
    labels = torch.tensor([[-100, 0]])
    loss = ce_u_loss(logits, labels)
    expected = -(1 / 3 * math.log(1 / 5) + 2 / 3 * math.log(2 / 5))
    assert loss.item() == pytest.approx(expected, abs=TOL)
    loss.backward()
    assert logits.grad[0, 0].tolist() == pytest.approx([2 / 5, 1 / 5 - 1 / 3, 2 / 5 - 2 / 3], abs=TOL)
    assert logits.grad[0, 1].abs().sum().item() == 0


def test_ce_u_ignores_the_first_answer_tokens_of_each_sequence() -> None:
    # Sequence 0 scores positions 0 and 1, sequence 1 only position 1. Ignoring one token
    # per sequence leaves sequence 0's position 1 alone.
    logits = f64([
        [[5.0, 0.0, 0.0], [LN2, 0.0, LN2], [0.0, 0.0, 0.0]],
        [[0.0, 0.0, 0.0], [3.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
    ])
    labels = torch.tensor([[-100, 1, 0], [-100, -100, 2]])
    expected = -(1 / 3 * math.log(1 / 5) + 2 / 3 * math.log(2 / 5))
    assert ce_u_loss(logits, labels, ignore_first_answer_tokens=1).item() == pytest.approx(expected, abs=TOL)
    assert ce_u_loss(logits, labels).item() != pytest.approx(expected, abs=1e-3)
    assert labels.tolist() == [[-100, 1, 0], [-100, -100, 2]], "the caller's labels are left as they were"
    with pytest.raises(ValueError, match="lower ignore_first_answer_tokens"):
        ce_u_loss(logits, labels, ignore_first_answer_tokens=2)


def test_ce_u_needs_two_tokens_in_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="at least 2 tokens"):
        ce_u_loss(f64([[[1.0], [1.0]]]), torch.tensor([[-100, 0]]))


# --- PDU -------------------------------------------------------------------------------


def test_uniform_cross_entropy_hand_value() -> None:
    # z = (ln 2, 0, 0): logsumexp = ln 4, mean = ln 2 / 3, so the loss is (5/3) ln 2.
    logits = f64([[[LN2, 0.0, 0.0], [9.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2]])
    loss = uniform_cross_entropy_loss(logits, labels).item()
    assert loss == pytest.approx(5 / 3 * LN2, abs=TOL)
    # The same number written as log V + KL(U ‖ p) with p = (1/2, 1/4, 1/4).
    kl = (math.log((1 / 3) / 0.5) + 2 * math.log((1 / 3) / 0.25)) / 3
    assert loss == pytest.approx(math.log(3.0) + kl, abs=TOL)
    # Its minimum, log V, is at a uniform prediction.
    flat = f64([[[2.0, 2.0, 2.0], [9.0, 0.0, 0.0]]])
    assert uniform_cross_entropy_loss(flat, labels).item() == pytest.approx(math.log(3.0), abs=TOL)


def test_logit_margin_flattening_hand_value_and_gradient() -> None:
    # Two scored positions: (3, 0, 0) has margin 3 − 1 = 2, (1, 2, 3) has margin 3 − 2 = 1.
    logits = f64([[[3.0, 0.0, 0.0], [1.0, 2.0, 3.0], [0.0, 9.0, 0.0]]]).requires_grad_(True)
    labels = torch.tensor([[-100, 0, 1]])
    loss = logit_margin_flattening_loss(logits, labels)
    assert loss.item() == pytest.approx((2.0**2 + 1.0**2) / 2, abs=TOL)
    loss.backward()
    # d/dz (max − mean)² = 2 (max − mean) (onehot(argmax) − 1/V), halved by the mean over 2 positions.
    assert logits.grad[0, 0].tolist() == pytest.approx([2 * 2 * (2 / 3) / 2, -2 * 2 / 3 / 2, -2 * 2 / 3 / 2], abs=TOL)
    assert logits.grad[0, 2].abs().sum().item() == 0
    flat = f64([[[4.0, 4.0, 4.0], [1.0, 1.0, 1.0], [0.0, 9.0, 0.0]]])
    assert logit_margin_flattening_loss(flat, labels).item() == pytest.approx(0.0, abs=TOL)
    # shift=False (the authors' mask): the logits at the labels' own positions 1 and 2, margins 1 and 9 − 3 = 6.
    assert logit_margin_flattening_loss(logits, labels, shift=False).item() == pytest.approx((1.0**2 + 6.0**2) / 2, abs=TOL)


def test_lagrangian_and_dual_ascent_hand_values() -> None:
    forget, retain = torch.tensor(2.0, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
    assert primal_dual_lagrangian(forget, retain, 3.0, 0.3).item() == pytest.approx(2.0 + 3.0 * 0.2, abs=TOL)
    # Constraint broken (0.5 > 0.3): λ rises by η (L_r − ε) = 2 · 0.2.
    assert dual_ascent_step(1.0, 0.5, 0.3, 2.0) == pytest.approx(1.4, abs=TOL)
    # Constraint met with room: λ falls, and is projected back onto λ >= 0.
    assert dual_ascent_step(1.0, 0.1, 0.3, 2.0) == pytest.approx(0.6, abs=TOL)
    assert dual_ascent_step(0.1, 0.1, 0.5, 1.0) == 0.0
    with pytest.raises(ValueError, match="retain loss must be finite"):
        dual_ascent_step(1.0, float("nan"), 0.3, 1.0)
    with pytest.raises(ValueError, match="multiplier must be a finite number >= 0"):
        primal_dual_lagrangian(forget, retain, -1.0, 0.3)


# --- Configs ---------------------------------------------------------------------------


def test_configs_refuse_bad_values_naming_the_option() -> None:
    with pytest.raises(UnlearnkitError, match="beta must be >= 0"):
        resolve_method("wga", {"beta": "-1"})
    with pytest.raises(UnlearnkitError, match="beta1 must be >= 0"):
        resolve_method("satimp", {"beta1": "-0.5"})
    with pytest.raises(UnlearnkitError, match="beta must be > 0"):
        resolve_method("undial", {"beta": "0"})
    with pytest.raises(UnlearnkitError, match="alpha must be >= 0"):
        resolve_method("ce_u", {"alpha": "-1"})
    with pytest.raises(UnlearnkitError, match="forget_loss must be one of logit_margin, uniform"):
        resolve_method("pdu", {"forget_loss": "entropy"})
    with pytest.raises(UnlearnkitError, match="retain_epsilon must be set when retain_loss is 'kl'"):
        resolve_method("pdu", {"retain_loss": "kl", "retain_epsilon": "none"})
    with pytest.raises(UnlearnkitError, match="dual_lr must be a finite number >= 0"):
        resolve_method("pdu", {"dual_lr": "-1"})
    with pytest.raises(UnlearnkitError, match="form must be one of pooled, two_means"):
        resolve_method("idk", {"form": "tofu"})
    with pytest.raises(UnlearnkitError, match="form must be one of openunlearning, tofu"):
        resolve_method("idk_dpo", {"form": "pooled"})
    with pytest.raises(UnlearnkitError, match="retain_kl_positions must be one of all, answer"):
        resolve_method("graddiff", {"retain_kl_positions": "prompt"})


def test_configs_defaults_and_reference_needs() -> None:
    assert resolve_method("undial", {"alpha": "0"}).alpha == 0.0  # the paper's forget-only form
    assert resolve_method("undial", {}).needs_reference()
    assert not resolve_method("wga", {}).needs_reference()
    assert resolve_method("satimp", {"retain_loss": "kl"}).needs_reference()
    config = resolve_method("pdu", {"retain_loss": "kl", "retain_epsilon": "0.05"})
    assert config.needs_reference() and config.retain_epsilon == 0.05
    assert resolve_method("pdu", {"retain_epsilon": "none"}).retain_epsilon is None


# --- Training on the micro benchmark ---------------------------------------------------

SHORT = {"learning_rate": "3e-3", "num_epochs": "3", "batch_size": "4", "warmup_ratio": "0"}


def forget_nll(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict]) -> float:
    return float(answer_avg_nll(model, tokenizer, FMT, [(row["question"], row["answer"]) for row in rows]).mean())


def test_undial_forget_only_form_forgets(micro_bench) -> None:
    tokenizer, model = load_tokenizer(micro_bench.target_dir), load_model(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    before = forget_nll(model, tokenizer, forget)
    config = resolve_method("undial", {**SHORT, "alpha": "0"})
    outcome = unlearn(model, tokenizer, "undial", forget, micro_bench.split("retain90"), config, FMT, show_progress=False)
    assert forget_nll(outcome.model, tokenizer, forget) > before


def dual_log(log_history: list[dict]) -> list[tuple[int, float, float, float, float, float]]:
    """(step, epoch after the step, loss, lambda, epsilon, retain loss) of every training log line."""
    return [(e["step"], e["epoch"], e["loss"], e["dual_lambda"], e["retain_epsilon"], e["retain_loss"])
            for e in log_history if "loss" in e]


def test_pdu_defaults_are_the_authors_tofu_recipe() -> None:
    config = resolve_method("pdu", {})
    assert (config.initial_lambda, config.dual_lr, config.retain_epsilon, config.dual_warmup_epochs) == (100.0, 5.0, 0.3, 5.0)
    assert (config.num_epochs, config.learning_rate, config.forget_alignment, config.retain_kl_positions) == (10.0, 1e-5, "shifted", "all")
    with pytest.raises(UnlearnkitError, match="forget_alignment 'unshifted'"):
        resolve_method("pdu", {"forget_loss": "uniform", "forget_alignment": "unshifted"})
    with pytest.raises(UnlearnkitError, match="dual_warmup_epochs must be a finite number >= 0"):
        resolve_method("pdu", {"dual_warmup_epochs": "-1"})


def test_pdu_holds_lambda_through_the_warmup_then_ascends(micro_bench) -> None:
    tokenizer, model = load_tokenizer(micro_bench.target_dir), load_model(micro_bench.target_dir)
    config = resolve_method("pdu", {**SHORT, "dual_lr": "0.5", "initial_lambda": "2.0", "retain_epsilon": "none",
                                    "dual_warmup_epochs": "1"})
    outcome = unlearn(model, tokenizer, "pdu", micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                      show_progress=False)
    steps = dual_log(outcome.log_history)
    assert [step for step, *_ in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 4
    # epsilon: the first step's retain NLL (the model before any update) times 1 + retain_slack.
    epsilon = steps[0][4]
    assert all(entry[4] == epsilon for entry in steps)
    assert epsilon == pytest.approx(steps[0][5] * 1.1, rel=1e-12)
    # lambda stays at initial_lambda while fewer than dual_warmup_epochs epochs are done (the epoch before the step),
    # then follows the dual ascent on each step's retain loss.
    multiplier, epochs_done, held, moved = 2.0, 0.0, 0, 0
    for _, epoch, _, logged_multiplier, _, retain in steps:
        if epochs_done >= 1.0:
            multiplier = max(0.0, multiplier + 0.5 * (retain - epsilon))
            moved += 1
        else:
            held += 1
        assert logged_multiplier == pytest.approx(multiplier, rel=1e-12)
        epochs_done = epoch
    assert held >= 1 and moved >= 2
    assert all(entry[3] == 2.0 for entry in steps[:held])
    assert len({round(entry[3], 9) for entry in steps}) > 2, "lambda should move after the warm-up"


def test_pdu_resumes_with_the_same_multiplier(micro_bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    # Two steps an epoch: the warm-up covers steps 1-2, lambda moves from step 3 on.
    config = resolve_method("pdu", {**SHORT, "initial_lambda": "1.0", "dual_lr": "1.0", "dual_warmup_epochs": "1"})

    def run(checkpoints: Path) -> UnlearnOutcome:
        tokenizer, model = load_tokenizer(micro_bench.target_dir), load_model(micro_bench.target_dir)
        return unlearn(model, tokenizer, "pdu", forget, retain, config, FMT, show_progress=False,
                       checkpoint_dir=checkpoints, checkpoint_every=2)

    straight = dual_log(run(tmp_path / "straight").log_history)

    # Crash in step 5, after the checkpoint of step 4 (the multiplier has moved by then).
    original_step_end = pdu.DualVariable.on_step_end

    def crash_at_step_five(
        self: pdu.DualVariable, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if state.global_step == 5:
            raise RuntimeError("simulated crash")
        return original_step_end(self, args, state, control, **kwargs)

    monkeypatch.setattr(pdu.DualVariable, "on_step_end", crash_at_step_five)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed")
    monkeypatch.setattr(pdu.DualVariable, "on_step_end", original_step_end)
    assert last_checkpoint(tmp_path / "resumed").endswith("checkpoint-4")
    assert straight[1][3] == 1.0 and straight[3][3] != pytest.approx(1.0), "lambda must have moved by the checkpoint"

    resumed = dual_log(run(tmp_path / "resumed").log_history)
    assert len(resumed) == len(straight)
    for got, want in zip(resumed, straight, strict=True):
        assert got == pytest.approx(want, rel=1e-6)
