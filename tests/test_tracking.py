"""Evaluation during training: the curve, early stopping, restoring the best weights, the criterion syntax, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import TrainerCallback

from tests.helpers import micro, run_cli
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate, load_reference
from unlearnkit.evaluation.tracking import (
    Constraint,
    Criterion,
    EvalTracker,
    TrackingConfig,
    parse_constraints,
    parse_criterion,
    subset_reference,
    subset_rows,
)
from unlearnkit.methods import METHODS
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.settings import build_config
from unlearnkit.unlearning import unlearn

FMT = PromptFormat("plain")
# Short generations keep each evaluation fast; the same settings are used to re-evaluate.
EVAL = EvalConfig(batch_size=64, max_new_tokens=8)


class TrainModeProbe(TrainerCallback):
    """Records whether the model is in train mode when each optimiser step begins (after evaluations too)."""

    def __init__(self) -> None:
        self.modes: list[bool] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.modes.append(model.training)


def track(micro_bench, tracking: TrackingConfig, method: str = "ga", **settings: object):
    """Unlearn forget10 of the micro benchmark (2 steps per epoch) with an EvalTracker; returns (outcome, tracker, probe, splits, reference)."""  # noqa: E501 - a docstring's summary line, kept whole
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    splits = micro_bench.eval_splits("forget10")
    reference = load_reference(micro_bench.reference_path("forget10"))
    config = build_config(METHODS.get(method).config,
                          {"learning_rate": 3e-3, "num_epochs": 3, "batch_size": 4, "warmup_ratio": 0.0, **settings})
    tracker = EvalTracker(tokenizer, splits, tracking, FMT, EVAL, reference)
    probe = TrainModeProbe()
    outcome = unlearn(model, tokenizer, method, micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                      show_progress=False, callbacks=[tracker, probe])
    return outcome, tracker, probe, splits, reference, tokenizer


def test_curve_has_a_baseline_every_n_steps_and_the_end(micro_bench) -> None:
    outcome, tracker, probe, _, _, _ = track(micro_bench, TrackingConfig(every=2), num_epochs=2.5)  # 5 steps
    assert [entry["step"] for entry in tracker.curve] == [0, 2, 4, 5]
    assert [round(entry["epoch"], 2) for entry in tracker.curve] == [0.0, 1.0, 2.0, 2.5]
    for entry in tracker.curve:
        assert {"forget_quality", "model_utility", "forget_probability"} <= set(entry["metrics"])
    # Evaluating switches to eval mode; every optimiser step still begins in train mode.
    assert probe.modes and all(probe.modes)
    # Without a criterion nothing is selected or restored.
    assert tracker.selected_step is None and tracker.selection()["criterion"] is None
    losses = [line for line in outcome.log_history if "loss" in line]
    assert len(losses) == 5


def test_early_stopping_when_no_evaluation_meets_the_constraint(micro_bench) -> None:
    tracking = TrackingConfig(every=1, select_best="forget_quality", subject_to="model_utility>=2", patience=2)
    outcome, tracker, _, _, _, _ = track(micro_bench, tracking, num_epochs=5)  # 10 steps planned
    assert [entry["step"] for entry in tracker.curve] == [0, 1, 2]
    assert tracker.stopped_early and tracker.selected_step is None
    assert tracker.selection()["note"].startswith("no evaluation met the constraints")
    assert max(line["step"] for line in outcome.log_history if "loss" in line) == 2


@pytest.mark.parametrize("lora", [False, True])
def test_restored_model_is_the_best_evaluation(micro_bench, lora: bool) -> None:
    # Gradient ascent drives forget probability down, so maximising it makes the first trained step the best
    # and every later evaluation a non-improvement: early stopping after `patience` of them.
    tracking = TrackingConfig(every=1, select_best="max:forget_probability", patience=2)
    settings = {"lora_rank": 4, "learning_rate": 1e-2} if lora else {}
    outcome, tracker, _, splits, reference, tokenizer = track(micro_bench, tracking, num_epochs=5, **settings)
    trained = [entry for entry in tracker.curve if entry["step"] > 0]
    best = max(trained, key=lambda entry: entry["metrics"]["forget_probability"])
    assert tracker.selected_step == best["step"]
    assert tracker.stopped_early
    # The evaluations after the best are exactly `patience` long.
    assert trained[-1]["step"] - best["step"] == 2
    # The model handed back has the best evaluation's weights: evaluating it again gives the same numbers.
    again = evaluate(outcome.model, tokenizer, splits, FMT, EVAL, reference).summary
    tolerance = 1e-4 if lora else 1e-9  # LoRA: the adapter is merged into the weights after training
    for name in ("forget_probability", "model_utility", "forget_truth_ratio"):
        assert again[name] == pytest.approx(best["metrics"][name], rel=tolerance), name
    assert again["forget_probability"] != pytest.approx(trained[-1]["metrics"]["forget_probability"], rel=1e-6)


def test_subset_of_rows_and_reference() -> None:
    rows = [{"question": f"q{i}"} for i in range(10)]
    assert [row["question"] for row in subset_rows(rows, 4)] == ["q0", "q2", "q5", "q7"]
    assert subset_rows(rows, 0) == rows and subset_rows(rows, 20) == rows
    reference = {"split": "s", "questions": [f"q{i}" for i in range(10)], "truth_ratio": [float(i) for i in range(10)],
                 "membership": {"forget_nll": list(range(10))}}
    cut = subset_reference(reference, subset_rows(rows, 4))
    assert cut["questions"] == ["q0", "q2", "q5", "q7"] and cut["truth_ratio"] == [0.0, 2.0, 5.0, 7.0]
    assert "membership" not in cut  # whole-set statistics do not describe a subset
    with pytest.raises(UnlearnkitError, match="no value for the forget question"):
        subset_reference(reference, [{"question": "other"}])


def test_criterion_parser_hand_cases() -> None:
    assert parse_constraints("model_utility>=0.85") == (Constraint("model_utility", ">=", value=0.85),)
    assert parse_constraints(" model_utility >= 0.9*oracle , forget_rouge_l<.5 ") == (
        Constraint("model_utility", ">=", factor=0.9, reference="oracle"),
        Constraint("forget_rouge_l", "<", value=0.5),
    )
    assert parse_constraints("forget_probability<=1e-2*target") == (
        Constraint("forget_probability", "<=", factor=0.01, reference="target"),)
    assert parse_constraints("") == () and parse_constraints(None) == ()
    # Directions: the glossary's for known metrics, explicit prefixes otherwise.
    assert parse_criterion("forget_quality") == Criterion("forget_quality", True)
    assert parse_criterion("forget_rouge_l") == Criterion("forget_rouge_l", False)
    assert parse_criterion("min:model_utility").maximise is False
    assert parse_criterion("max:my_metric", "model_utility>0.5").constraints[0].op == ">"
    for bad in ("model_utility=>0.9", "model_utility>=x", "model_utility>=0.9*retain", ">=0.3"):
        with pytest.raises(UnlearnkitError, match="--subject-to"):
            parse_constraints(bad)
    with pytest.raises(UnlearnkitError, match="max:forget_truth_ratio or min:forget_truth_ratio"):
        parse_criterion("forget_truth_ratio")  # its best is "closer to 1": the direction must be said
    with pytest.raises(UnlearnkitError, match="--select-best"):
        parse_criterion("best:forget_quality")


def test_criterion_evaluates_constraints_by_hand() -> None:
    criterion = parse_criterion("forget_quality", "model_utility>=0.9*oracle,forget_rouge_l<0.5")
    references = {"oracle": {"model_utility": 0.5}}
    # 0.9 * 0.5 = 0.45: 0.46 passes, 0.44 fails; ROUGE 0.5 fails the strict bound.
    assert criterion.feasible({"model_utility": 0.46, "forget_rouge_l": 0.2}, references)
    assert not criterion.feasible({"model_utility": 0.44, "forget_rouge_l": 0.2}, references)
    assert not criterion.feasible({"model_utility": 0.46, "forget_rouge_l": 0.5}, references)
    assert not criterion.feasible({"forget_rouge_l": 0.2}, references)  # a missing metric fails its constraint
    assert criterion.score({"forget_quality": 0.3}) == 0.3
    assert parse_criterion("min:forget_rouge_l").score({"forget_rouge_l": 0.3}) == -0.3
    with pytest.raises(UnlearnkitError, match="oracle's model_utility is not known"):
        criterion.feasible({"model_utility": 0.5, "forget_rouge_l": 0.1}, {})


def test_tracking_config_refuses_inconsistent_options() -> None:
    with pytest.raises(UnlearnkitError, match="need --eval-every"):
        TrackingConfig(select_best="forget_quality")
    with pytest.raises(UnlearnkitError, match="need --select-best"):
        TrackingConfig(every=5, patience=3)
    with pytest.raises(UnlearnkitError, match="--subject-to"):
        TrackingConfig(every=5, select_best="forget_quality", subject_to="utility >> 3")


def test_cli_demo_writes_the_curve_and_the_selected_step(micro_cache: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "demo"
    code = run_cli(["demo", "--method", "ga", "--output", str(out), *micro(micro_cache), "--set", "num_epochs=2",
                    "--eval-every", "1", "--select-best", "forget_quality", "--subject-to", "model_utility>=0.5*oracle",
                    "--patience", "3"], monkeypatch)
    assert code == 0
    curve = json.loads((out / "eval_curve.json").read_text())
    assert curve[0]["step"] == 0 and [entry["step"] for entry in curve][1:] == list(range(1, len(curve)))
    assert all({"step", "epoch", "metrics"} <= set(entry) for entry in curve)
    config = json.loads((out / "config.json").read_text())["eval_during_training"]
    assert config["every"] == 1 and config["criterion"] == "max:forget_quality subject to model_utility>=0.5*oracle"
    summary = json.loads((out / "summary.json").read_text())
    oracle_utility = summary["oracle"]["model_utility"]
    feasible = [entry for entry in curve[1:] if entry["metrics"]["model_utility"] >= 0.5 * oracle_utility]
    if feasible:
        best = max(feasible, key=lambda entry: entry["metrics"]["forget_quality"])
        assert summary["unlearned"]["selected_step"] == best["step"] == config["selected_step"]
    report = (out / "report.html").read_text()
    assert "tracked during training" in report


def test_cli_unlearn_with_eval_rows_and_bad_options(micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    code = run_cli(["unlearn", "--method", "graddiff", "--output", str(out), *micro(micro_cache), "--set", "num_epochs=2",
                    "--eval-every", "1", "--eval-rows", "4", "--select-best", "min:forget_probability"], monkeypatch)
    assert code == 0
    curve = json.loads((out / "eval_curve.json").read_text())
    assert [entry["step"] for entry in curve] == [0, 1, 2]  # forget10 of micro: 8 questions, batch 8
    assert "forget_quality" in curve[-1]["metrics"]  # the oracle reference cut to the same 4 forget questions
    assert json.loads((out / "summary.json").read_text())["selected_step"] in (1, 2)
    code = run_cli(["unlearn", "--method", "graddiff", "--output", str(tmp_path / "bad"), *micro(micro_cache),
                    "--patience", "2"], monkeypatch)
    assert code == 2 and "need --eval-every" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
