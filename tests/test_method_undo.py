"""UNDO (Lee, Foote et al., "Distillation Robustifies Unlearning", NeurIPS 2025): noise, distillation loss, stopping rule, runs."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from tests.helpers import FMT, folder_hash, matrix_config, micro, run_cli
from unlearnkit import losses
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_avg_nll
from unlearnkit.methods.undo import (
    UNDO,
    parse_unlearn_settings,
    recovered,
    shrink_and_perturb,
    stack_batches,
    xavier_uniform_bound,
)
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.unlearning import resolve_method, unlearn

# --------------------------------------------------------------------------------------------- shrink and perturb


def test_shrink_only_by_hand() -> None:
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    bias = torch.tensor([2.0, -4.0])
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(shrink_and_perturb(weight, 0.25, 0.0, generator), torch.tensor([[0.75, 1.5], [2.25, 3.0]]))
    assert torch.equal(shrink_and_perturb(bias, 0.25, 0.0, generator), torch.tensor([1.5, -3.0]))


def test_perturbation_is_a_seeded_xavier_uniform_draw_on_matrices_only() -> None:
    teacher = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    alpha, beta = 0.5, 0.1
    generator = torch.Generator().manual_seed(7)
    student = shrink_and_perturb(teacher, alpha, beta, generator)
    assert student.shape == teacher.shape and student.dtype == teacher.dtype
    noise = (student - (1 - alpha) * teacher) / (alpha * beta)
    # Glorot's bound for a (2, 3) matrix, by hand: sqrt(6 / (3 + 2)).
    assert xavier_uniform_bound((2, 3)) == pytest.approx(math.sqrt(6 / 5))
    assert noise.abs().max() <= math.sqrt(6 / 5) + 1e-6 and noise.abs().min() > 0
    # The same draw through torch's own initialiser, seeded alike.
    expected = torch.nn.init.xavier_uniform_(torch.empty(2, 3), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(noise, expected, rtol=0, atol=1e-5)
    # A 1-D tensor is only shrunk, and draws nothing from the generator.
    state = generator.get_state()
    assert torch.equal(shrink_and_perturb(torch.tensor([2.0, 4.0]), alpha, beta, generator), torch.tensor([1.0, 2.0]))
    assert torch.equal(generator.get_state(), state)


def test_noise_is_reproducible_by_seed_and_alpha_zero_is_the_identity() -> None:
    weight = torch.randn(4, 5, generator=torch.Generator().manual_seed(1))
    first = shrink_and_perturb(weight, 0.3, 0.05, torch.Generator().manual_seed(3))
    again = shrink_and_perturb(weight, 0.3, 0.05, torch.Generator().manual_seed(3))
    other = shrink_and_perturb(weight, 0.3, 0.05, torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    same = shrink_and_perturb(weight, 0.0, 0.05, torch.Generator().manual_seed(3))
    assert torch.equal(same, weight) and same is not weight
    # A fresh random student: alpha 1 keeps nothing of the teacher.
    fresh = shrink_and_perturb(weight, 1.0, 1.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(fresh, torch.nn.init.xavier_uniform_(torch.empty(4, 5), generator=torch.Generator().manual_seed(3)))


def test_noise_keeps_the_dtype_and_counts_receptive_fields() -> None:
    half = shrink_and_perturb(torch.ones(3, 3, dtype=torch.bfloat16), 0.5, 0.1, torch.Generator().manual_seed(0))
    assert half.dtype == torch.bfloat16
    assert xavier_uniform_bound((4, 3, 2, 2)) == pytest.approx(math.sqrt(6 / (3 * 4 + 4 * 4)))
    with pytest.raises(ValueError, match="alpha must be in"):
        shrink_and_perturb(torch.ones(2, 2), 1.5, 0.0, torch.Generator())


# --------------------------------------------------------------------------------------------- distillation loss


def test_forward_kl_by_hand() -> None:
    # Position 0: p_T = (1/2, 1/2), p_S = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3). Position 1 is padding.
    student = torch.tensor([[[0.0, math.log(3.0)], [9.0, -9.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [-9.0, 9.0]]])
    mask = torch.tensor([[1, 0]])
    value = losses.forward_kl_distillation_loss(student, teacher, mask)
    assert value.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    assert losses.forward_kl_distillation_loss(teacher, teacher, torch.ones(1, 2)).item() == pytest.approx(0.0, abs=1e-7)


def _transcribed_kl(student, teacher, mask) -> float:
    """KL(T||S) = sum_v p_T (log p_T - log p_S) at each real token, averaged over them: the paper's formula, by loops."""
    total, count = 0.0, 0
    for b in range(student.shape[0]):
        for t in range(student.shape[1]):
            if not mask[b, t]:
                continue
            p_teacher = [math.exp(x) for x in teacher[b, t].tolist()]
            p_student = [math.exp(x) for x in student[b, t].tolist()]
            z_teacher, z_student = sum(p_teacher), sum(p_student)
            pairs = zip(p_teacher, p_student, strict=True)
            total += sum(p / z_teacher * (math.log(p / z_teacher) - math.log(q / z_student)) for p, q in pairs)
            count += 1
    return total / count


def test_forward_kl_matches_a_transcription_of_the_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 5, 7, generator=generator, dtype=torch.float64) * 2
    teacher = torch.randn(3, 5, 7, generator=generator, dtype=torch.float64) * 2
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    value = losses.forward_kl_distillation_loss(student, teacher, mask)
    assert value.item() == pytest.approx(_transcribed_kl(student, teacher, mask), rel=1e-10)
    # Padding does not count: changing padded logits leaves the value as it was.
    moved = student.clone()
    moved[2, 1:] += 5.0
    assert losses.forward_kl_distillation_loss(moved, teacher, mask).item() == pytest.approx(value.item(), rel=1e-12)


def test_forward_kl_trains_the_student_only_and_refuses_bad_shapes() -> None:
    student = torch.randn(2, 3, 4, requires_grad=True)
    teacher = torch.randn(2, 3, 4, requires_grad=True)
    losses.forward_kl_distillation_loss(student, teacher, torch.ones(2, 3)).backward()
    assert student.grad is not None and teacher.grad is None
    with pytest.raises(ValueError, match="same 3-D shape"):
        losses.forward_kl_distillation_loss(student, teacher[:, :2], torch.ones(2, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        losses.forward_kl_distillation_loss(student, teacher, torch.ones(2, 2))
    with pytest.raises(ValueError, match="no real token"):
        losses.forward_kl_distillation_loss(student, teacher, torch.zeros(2, 3))


# --------------------------------------------------------------------------------------------- stopping rule and batching


def test_stopping_rule_is_a_relative_gap_under_the_threshold() -> None:
    assert recovered(1.04, 1.0, 0.05)
    assert not recovered(1.06, 1.0, 0.05)
    assert recovered(0.8, 1.0, 0.05)  # a student better than the teacher has recovered
    assert not recovered(2.0, 2.0, 0.0)  # strict, as the authors' rule
    assert recovered(1e-7, 0.0, 0.5)  # the teacher's CE is floored, no division by zero


def test_mixture_draws_the_data_proportion_of_retain_rows() -> None:
    config = resolve_method("undo", {"unlearn_method": "none"})
    assert config.resolve_mixture(8, 72) == 9 and config.resolve_mixture(10, 5) == 1
    retain = [{"question": f"q{index}", "answer": f"a{index}"} for index in range(5)]
    config.resolve_mixture(8, 72)
    extras = UNDO.pair_extras(config, random.Random("0:0:3"), {"question": "f", "answer": "g"}, retain)
    assert sorted(extras) == [f"retain_{index}" for index in range(1, 9)]
    assert extras == UNDO.pair_extras(config, random.Random("0:0:3"), {}, retain)  # drawn from the item's rng only
    fixed = resolve_method("undo", {"unlearn_method": "none", "retain_per_forget": "2"})
    assert fixed.resolve_mixture(8, 72) == 2 and list(UNDO.pair_extras(fixed, random.Random(0), {}, retain)) == ["retain_1"]


def test_stack_batches_pads_to_the_widest() -> None:
    first = {"input_ids": torch.tensor([[5, 6, 7]]), "labels": torch.tensor([[-100, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    second = {"input_ids": torch.tensor([[8, 0], [9, 9]]), "labels": torch.tensor([[-100, -100], [-100, 9]]),
              "attention_mask": torch.tensor([[1, 0], [1, 1]])}
    stacked = stack_batches([first, second], pad_token_id=0)
    assert stacked["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0], [9, 9, 0]]
    assert stacked["labels"].tolist() == [[-100, 6, 7], [-100, -100, -100], [-100, 9, -100]]
    assert stacked["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]


# --------------------------------------------------------------------------------------------- settings


def test_inner_settings_layer_defaults_inherited_values_and_unlearn_settings() -> None:
    plain = resolve_method("undo", {})
    assert plain.inner_method == "graddiff" and plain.inner_config.learning_rate == 1e-5  # graddiff's own default
    assert (plain.noise_alpha, plain.noise_beta, plain.retain_threshold) == (0.25, 0.0, 0.05)
    given = resolve_method("undo", {"learning_rate": "5e-4", "batch_size": "8", "unlearn_settings": "num_epochs=2; alpha=0.5"})
    assert (given.inner_config.learning_rate, given.inner_config.batch_size) == (5e-4, 8)
    assert (given.inner_config.num_epochs, given.inner_config.alpha) == (2.0, 0.5)
    assert given.inner_config.weight_decay == 0.01  # not inherited: graddiff's own
    wins = resolve_method("undo", {"learning_rate": "5e-4", "unlearn_settings": "learning_rate=1e-3"})
    assert wins.inner_config.learning_rate == 1e-3
    benchmark = resolve_method("undo", {}, defaults={"learning_rate": 5e-4})  # a benchmark's overrides reach the inner run too
    assert benchmark.inner_config.learning_rate == 5e-4
    assert resolve_method("undo", {"unlearn_method": "none"}).inner_config is None
    assert parse_unlearn_settings(" a=1 ;; b = x=y ") == {"a": "1", "b": "x=y"}


@pytest.mark.parametrize(("overrides", "message"), [
    ({"lora_rank": "4"}, "Set lora_rank=0"),
    ({"stop_forget_nll": "5"}, r"unlearn_settings=stop_forget_nll=5"),
    ({"unlearn_method": "npoo"}, "Unknown method 'npoo'. Did you mean: npo"),
    ({"unlearn_method": "undo"}, "would nest UNDO in itself"),
    ({"unlearn_settings": "num_epochs"}, "unlearn_settings expects KEY=VALUE"),
    ({"unlearn_settings": "a=1;a=2"}, "gives a twice"),
    ({"unlearn_settings": "gama=2"}, r"The inner unlearning \(graddiff\): Unknown hyperparameter 'gama'.*Did you mean: gamma"),
    ({"unlearn_settings": "learning_rate=-1"}, r"The inner unlearning \(graddiff\): learning_rate must be > 0"),
    ({"unlearn_settings": "lora_rank=4;lora_merge=false"}, "drop lora_merge=false"),
    ({"unlearn_method": "none", "unlearn_settings": "num_epochs=1"}, "no use with unlearn_method=none"),
    ({"noise_alpha": "1.5"}, r"noise_alpha must be in \[0, 1\]"),
    ({"noise_beta": "-0.1"}, "noise_beta must be >= 0"),
    ({"retain_threshold": "-1"}, "retain_threshold must be >= 0"),
    ({"check_every_steps": "-1"}, "check_every_steps must be >= 0"),
    ({"check_rows": "0"}, "check_rows must be >= 1"),
    ({"retain_per_forget": "0"}, "retain_per_forget must be >= 1"),
    ({"check_tokens": "answers"}, "check_tokens must be one of answer, all"),
])
def test_bad_settings_are_refused_with_the_fix(overrides: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        resolve_method("undo", overrides)


def test_the_command_line_refuses_a_bad_inner_method_before_writing(micro_cache, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    code = run_cli(["unlearn", "--method", "undo", "--set", "unlearn_method=gradiff", "--output", str(out), *micro(micro_cache)],
                   monkeypatch)
    assert code == 2 and "Did you mean: graddiff" in capsys.readouterr().err and not out.exists()


# --------------------------------------------------------------------------------------------- runs on the micro benchmark


def _run(micro_bench, **settings):
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    config = matrix_config("undo", **settings)
    outcome = unlearn(model, tokenizer, "undo", micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                      show_progress=False)
    return outcome, tokenizer


def _checks(outcome) -> list[dict]:
    return [line for line in outcome.log_history if "undo_student_retain_ce" in line]


def test_distillation_stops_once_the_student_recovers(micro_bench) -> None:
    # micro forget10: 8 forget rows, batch 4: two steps per epoch. A generous threshold holds at the first check.
    outcome, _ = _run(micro_bench, unlearn_method="none", num_epochs=5, retain_threshold=100.0)
    checks = _checks(outcome)
    assert len(checks) == 1 and checks[0]["step"] == 2 and checks[0]["undo_retain_gap"] < 100.0
    stepwise, _ = _run(micro_bench, unlearn_method="none", num_epochs=5, retain_threshold=100.0, check_every_steps=1)
    assert [line["step"] for line in _checks(stepwise)] == [1]
    # A threshold never met: every epoch runs, one check each.
    strict, _ = _run(micro_bench, unlearn_method="none", num_epochs=3, retain_threshold=0.0)
    assert [line["step"] for line in _checks(strict)] == [2, 4, 6] and all(line["undo_retain_gap"] >= 0 for line in _checks(strict))
    unchecked, _ = _run(micro_bench, unlearn_method="none", num_epochs=3, retain_threshold="none")
    assert _checks(unchecked) == [] and max(line.get("step", 0) for line in unchecked.log_history) == 6


def test_the_student_starts_as_the_shrunk_teacher(micro_bench) -> None:
    # No inner unlearning and a learning rate too small to matter: what is left is the noise, 1-D tensors included.
    before = {name: p.detach().clone() for name, p in load_model(micro_bench.target_dir).named_parameters()}
    outcome, _ = _run(micro_bench, unlearn_method="none", num_epochs=1, learning_rate=1e-12, noise_alpha=0.5, retain_threshold="none")
    for name, parameter in outcome.model.named_parameters():
        torch.testing.assert_close(parameter.detach(), 0.5 * before[name], rtol=0, atol=1e-6, msg=name)


def test_a_seed_gives_the_same_student(micro_bench) -> None:
    settings = {"noise_beta": 0.1, "num_epochs": 1, "unlearn_settings": "num_epochs=1"}
    first, _ = _run(micro_bench, **settings)
    again, _ = _run(micro_bench, **settings)
    other, _ = _run(micro_bench, seed=1, **settings)
    weights = [dict(outcome.model.named_parameters()) for outcome in (first, again, other)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert any(not torch.equal(weights[0][name], weights[2][name]) for name in weights[0])


def test_unlearn_command_forgets_and_leaves_the_target_as_it_was(micro_bench, micro_cache, tmp_path, monkeypatch) -> None:
    target = micro_bench.target_dir
    before = folder_hash(target)
    out = tmp_path / "undo"
    sets = ["--set", "num_epochs=3", "--set", "warmup_ratio=0", "--set", "unlearn_settings=num_epochs=5"]
    assert run_cli(["unlearn", "--method", "undo", "--forget", "forget10", *sets, "--output", str(out), *micro(micro_cache)],
                   monkeypatch) == 0
    assert folder_hash(target) == before, "the input model was changed"
    tokenizer = load_tokenizer(target)
    pairs = [(row["question"], row["answer"]) for row in micro_bench.split("forget10")]
    target_nll = answer_avg_nll(load_model(target), tokenizer, FMT, pairs).mean()
    unlearned_nll = answer_avg_nll(load_model(out / "model"), tokenizer, FMT, pairs).mean()
    assert unlearned_nll > target_nll, (target_nll, unlearned_nll)
    log = json.loads((out / "training_log.json").read_text(encoding="utf-8"))
    assert any("forget_loss" in line for line in log) and any("undo_unlearn_forget_loss" in line for line in log)
    assert "forget_truth_ratio" in json.loads((out / "summary.json").read_text(encoding="utf-8"))


def test_bench_runs_undo_from_the_target(micro_cache, tmp_path, monkeypatch) -> None:
    out = tmp_path / "bench"
    args = ["bench", "--methods", "undo", "--splits", "forget10", "--set", "num_epochs=2", "--set", "warmup_ratio=0"]
    assert run_cli([*args, "--output", str(out), *micro(micro_cache)], monkeypatch) == 0
    assert "| undo |" in (out / "leaderboard.md").read_text(encoding="utf-8")
    config = json.loads((out / "undo-forget10-seed0" / "config.json").read_text(encoding="utf-8"))
    assert "unlearn_method" in json.dumps(config)


def test_distillation_in_chunks_equals_the_whole_batch(micro_bench) -> None:
    # 5 right-padded rows of different lengths, back-propagated 2 at a time: the gradient of one token mean over all.
    import contextlib
    from types import SimpleNamespace

    from unlearnkit.methods.undo import UNDO

    student, teacher = load_model(micro_bench.target_dir), load_model(micro_bench.target_dir)
    with torch.no_grad():
        for parameter in teacher.parameters():
            parameter.mul_(0.9)
    generator = torch.Generator().manual_seed(0)
    lengths = [7, 3, 5, 1, 6]
    input_ids = torch.randint(3, 100, (len(lengths), max(lengths)), generator=generator)
    attention_mask = torch.tensor([[1] * n + [0] * (max(lengths) - n) for n in lengths])
    batch = {"input_ids": input_ids * attention_mask, "attention_mask": attention_mask}

    whole = losses.forward_kl_distillation_loss(UNDO.logits(student, batch), UNDO.logits(teacher, batch).detach(), attention_mask)
    whole_grads = torch.autograd.grad(whole, list(student.parameters()))
    trainer = SimpleNamespace(teacher=teacher, method_config=SimpleNamespace(batch_size=2), logits=UNDO.logits,
                              compute_loss_context_manager=contextlib.nullcontext,
                              accelerator=SimpleNamespace(backward=lambda loss: loss.backward()))
    weight = 0.5 / sum(lengths)  # e.g. two micro-batches per optimiser step
    summed = UNDO.distil_backward(trainer, student, batch, weight)
    torch.testing.assert_close(summed / sum(lengths), whole.detach(), rtol=1e-6, atol=1e-7)
    for parameter, expected in zip(student.parameters(), whole_grads, strict=True):
        torch.testing.assert_close(parameter.grad, 0.5 * expected, rtol=1e-5, atol=1e-8)
