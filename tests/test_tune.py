"""``unlearnkit tune``: the search space, the objective and its constraints, the Pareto front, studies end to end on the
micro benchmark (resume, interrupted trials, pruning, parallel workers), and every bad input refused before any write."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import optuna
import pytest

from tests.helpers import folder_hash, micro, run_cli
from unlearnkit.api import tune
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.tracking import Constraint
from unlearnkit.runs.inputs import Builtin, resolve_method
from unlearnkit.runs.tune import resolve_tune
from unlearnkit.tuning.benchmarks import BuiltinTuning
from unlearnkit.tuning.objective import MISSING_VIOLATION, STRICT_MARGIN, Objective, choose_best, mean_metrics, pareto_front, violation
from unlearnkit.tuning.plan import TunePlan
from unlearnkit.tuning.space import Dimension, check_space, default_space, parse_dimension, parse_space
from unlearnkit.tuning.study import open_study, storage

# Two optimiser steps per trial (micro forget10: 8 questions, batch 8), no warm-up: a trial takes a few seconds.
QUICK = {"num_epochs": "2", "warmup_ratio": "0"}
QUICK_SETS = [arg for name, value in QUICK.items() for arg in ("--set", f"{name}={value}")]
MICRO = BuiltinTuning(Builtin("micro", None, False))
SPACE = ["learning_rate=log:1e-3:2e-2", "beta=log:0.05:1"]


# --------------------------------------------------------------------------------------------- pure functions


def test_pareto_front_of_a_hand_made_example() -> None:
    points = [(0.90, 1e-3), (0.95, 1e-5), (0.85, 1e-2), (0.88, 1e-4), (0.95, 1e-6), (0.90, 1e-3), (math.nan, 1.0)]
    # 3 is beaten by 0 on both axes, 4 by 1 on y at equal x; 5 repeats 0; 6 has no x. Sorted by x: 2, 0, 1.
    assert pareto_front(points) == [2, 0, 1]
    # Lower y better: 4 (0.95, 1e-6) beats everything of x <= 0.95; the lowest x (0.85) is still on the front.
    assert pareto_front(points, (True, False)) == [4]
    assert pareto_front(points, (False, False)) == [2, 3, 4]
    assert pareto_front([]) == []


def test_pareto_front_matches_a_brute_force_transcription() -> None:
    """Reference: a point is on the front iff no other point is >= on both coordinates and > on one (Pareto 1896)."""
    import random

    rng = random.Random(3)
    points = [(round(rng.random(), 1), round(rng.random(), 1)) for _ in range(40)]
    for maximise in ((True, True), (True, False), (False, True)):
        sx, sy = (1 if maximise[0] else -1), (1 if maximise[1] else -1)
        expected = set()
        seen = set()
        for i, (x, y) in enumerate(points):
            beaten = any(sx * ox >= sx * x and sy * oy >= sy * y and (ox, oy) != (x, y) for ox, oy in points)
            if not beaten and (x, y) not in seen:
                expected.add(i)
                seen.add((x, y))
        assert set(pareto_front(points, maximise)) == expected


def test_constraint_violations_by_hand() -> None:
    references = {"oracle": {"model_utility": 0.9}}
    at_least = Constraint("model_utility", ">=", factor=0.95, reference="oracle")  # bound 0.855
    assert violation(at_least, {"model_utility": 0.8}, references) == pytest.approx(0.055)
    assert violation(at_least, {"model_utility": 0.9}, references) == pytest.approx(-0.045)
    assert violation(at_least, {}, references) == MISSING_VIOLATION
    assert violation(at_least, {"model_utility": math.nan}, references) == MISSING_VIOLATION
    at_most = Constraint("forget_rouge_l", "<=", value=0.4)
    assert violation(at_most, {"forget_rouge_l": 0.5}, references) == pytest.approx(0.1)
    # A strict bound met with equality is violated, by a hair, as Optuna must read it (<= 0 is feasible there).
    strict = Constraint("forget_rouge_l", "<", value=0.4)
    assert violation(strict, {"forget_rouge_l": 0.4}, references) == STRICT_MARGIN


def test_objective_intermediate_value_and_parsing() -> None:
    goal = Objective.parse("forget_quality", "model_utility>=0.95*oracle")
    references = {"oracle": {"model_utility": 1.0}}
    assert goal.maximise and goal.metrics() == ["forget_quality", "model_utility"]
    assert goal.intermediate({"forget_quality": 0.2, "model_utility": 0.96}, references) == 0.2
    assert math.isnan(goal.intermediate({"forget_quality": 0.2, "model_utility": 0.94}, references))
    assert goal.trade_off() == ("model_utility", True)
    assert not Objective.parse("forget_rouge_l", "").maximise
    with pytest.raises(UnlearnkitError, match=r"--objective: unknown metric 'forget_qualty'.*Did you mean: forget_quality"):
        Objective.parse("forget_qualty", None)
    with pytest.raises(UnlearnkitError, match=r"--subject-to.*unknown metric 'model_utilty'.*Did you mean: model_utility"):
        Objective.parse("forget_quality", "model_utilty>=0.9*oracle")


def test_best_trial_is_the_best_feasible_one() -> None:
    goal = Objective.parse("forget_quality", "model_utility>=0.5")

    def row(number: int, state: str, value: float | None, utility: float, feasible: bool) -> dict:
        return {"number": number, "state": state, "value": value, "feasible": feasible,
                "metrics": {"forget_quality": value, "model_utility": utility}}

    records = [row(0, "complete", 0.9, 0.4, False),  # the best value, but infeasible: never chosen
               row(1, "complete", 0.3, 0.6, True), row(2, "pruned", None, 0.9, True),
               row(3, "complete", 0.5, 0.7, True), row(4, "complete", 0.5, 0.8, True),  # a tie on 0.5: higher utility wins
               row(5, "failed", None, 0.0, False)]
    assert choose_best(records, goal)["number"] == 4
    assert choose_best([records[0], records[5]], goal) is None
    assert mean_metrics([{"a": 1.0, "b": 2, "c": "x"}, {"a": 3.0, "b": 4}]) == {"a": 2.0, "b": 3.0}


@pytest.mark.parametrize(("text", "message"), [
    ("learning_rate=log:1e-3:1e-3", "range is empty"),
    ("learning_rate=log:1e-2:1e-3", "above HIGH"),
    ("learning_rate=log:0:1e-3", "LOW > 0"),
    ("learning_rate=logg:1e-5:1e-3", "Did you mean: log"),
    ("learning_rate=log:1e-5", "takes LOW:HIGH"),
    ("learning_rate=float:a:1", "'a' is not a number"),
    ("num_epochs=int:1.5:3", "not a whole number"),
    ("beta=float:0.1:1:2", "STEP must be"),
    ("retain_loss=choice:nll", "two values or more"),
    ("retain_loss=choice:nll,nll", "listed twice"),
    ("learning_rate", "NAME=KIND:ARGS"),
])
def test_malformed_space_entries(text: str, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        parse_dimension(text)


def test_space_parsing_and_sampling() -> None:
    dimensions = parse_space(["learning_rate=log:1e-5:1e-3", "lora_rank=int:0:16:4", "retain_loss=choice:nll,kl", "beta=float:0.1:1"])
    assert [str(dimension) for dimension in dimensions] == [
        "learning_rate=log:1e-05:0.001", "lora_rank=int:0:16:4", "retain_loss=choice:nll,kl", "beta=float:0.1:1.0"]
    assert parse_space([str(dimension) for dimension in dimensions]) == dimensions  # tune.json round-trips
    with pytest.raises(UnlearnkitError, match="more than once"):
        parse_space(["beta=float:0.1:1", "beta=log:0.1:1"])
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    drawn = {dimension.name: dimension.suggest(trial) for dimension in dimensions}
    assert 1e-5 <= drawn["learning_rate"] <= 1e-3 and drawn["lora_rank"] in (0, 4, 8, 12, 16)
    assert drawn["retain_loss"] in ("nll", "kl") and 0.1 <= drawn["beta"] <= 1


def _builder(builtin: Builtin, method: str = "npo"):
    return lambda overrides: resolve_method(method, overrides, builtin).config


@pytest.mark.parametrize(("entry", "fixed", "message"), [
    ("lerning_rate=log:1e-5:1e-3", {}, "no setting 'lerning_rate'.*Did you mean: learning_rate"),
    ("lora_rank=log:1:16", {}, "whole-number setting, which takes int or choice, not log"),
    ("retain_loss=float:0:1", {}, "text setting, which takes choice"),
    ("beta=float:0:1", {}, "refuses beta=0.0: beta must be > 0"),
    ("retain_loss=choice:nll,kll", {}, "refuses retain_loss=kll"),
    ("beta=log:0.1:1", {"beta": "0.2"}, "also fixed by --set beta=0.2"),
    ("seed=int:0:3", {}, "--seeds"),
])
def test_space_checked_against_the_method(entry: str, fixed: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        check_space("npo", parse_space([entry]), fixed, _builder(Builtin("micro", None, False)))


def test_an_empty_space_is_refused() -> None:
    with pytest.raises(UnlearnkitError, match="search space for npo is empty"):
        check_space("npo", (), {}, _builder(Builtin("micro", None, False)))


def test_default_space_is_derived_from_the_resolved_settings() -> None:
    builtin = Builtin("micro", None, False)
    build = _builder(builtin)
    config = build({})  # micro: learning_rate 2e-3; NPO: 10 epochs, beta 0.1, alpha 1
    assert {str(dimension) for dimension in default_space("npo", config, {}, build)} == {
        "learning_rate=log:0.0002:0.02", "num_epochs=int:5:20", "beta=log:0.01:1.0", "alpha=log:0.1:10.0"}
    fixed = {"beta": "0.3"}
    assert "beta" not in {dimension.name for dimension in default_space("npo", build(fixed), fixed, build)}
    # A fraction is cut at 1; a method with no coefficient of its own searches the optimiser's settings only.
    assert {dimension.name for dimension in default_space("ga", _builder(builtin, "ga")({}), {}, _builder(builtin, "ga"))} == {
        "learning_rate", "num_epochs"}
    assert BuiltinTuning(builtin).auto_eval_every("forget10", config) == 2  # 10 steps (8 rows, batch 8, 10 epochs) / 4


def test_plan_round_trips_through_its_identity() -> None:
    plan, holdout = resolve_tune(benchmark=MICRO, method="npo", space=SPACE, fixed=QUICK, prune_after=1)
    assert holdout == "forget05" and plan.eval_every == 1  # 2 steps: every step
    assert TunePlan.from_identity(json.loads(json.dumps(plan.identity()))) == plan


# --------------------------------------------------------------------------------------------- studies on the micro benchmark


def _records(output: Path) -> list[dict]:
    return json.loads((output / "trials.json").read_text(encoding="utf-8"))["trials"]


def test_a_three_trial_study_end_to_end(micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "study"
    args = ["tune", "--method", "npo", "--output", str(output), "--trials", "3", *micro(micro_cache), *QUICK_SETS,
            *(arg for entry in SPACE for arg in ("--space", entry)), "--subject-to", "model_utility>=0.97*oracle",
            "--prune-after", "1"]
    assert run_cli(args, monkeypatch) == 0
    for name in ("tune.json", "study.db", "trials.json", "best.json", "report.md", "report.html"):
        assert (output / name).is_file(), name
    assert (output / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = _records(output)
    assert [record["number"] for record in records] == [0, 1, 2]
    best = json.loads((output / "best.json").read_text(encoding="utf-8"))
    complete = [record for record in records if record["state"] == "complete"]
    feasible = [record for record in complete if record["feasible"]]
    # Seeded sampler, deterministic training: the high learning rates cost too much utility (trials 0 and 2).
    assert [record["feasible"] for record in complete] == [False, True, False]
    assert best["chosen"] == 1  # all three tie on forget quality (micro's 8 questions): the infeasible ones are passed over
    chosen = next(record for record in records if record["number"] == best["chosen"])
    # Hand check of the constraint from the chosen trial's own results folder: utility >= 0.97 x the oracle's.
    summary = json.loads((output / chosen["folders"][0] / "summary.json").read_text(encoding="utf-8"))
    assert summary["unlearned"]["model_utility"] >= 0.97 * summary["oracle"]["model_utility"]
    assert best["tuned"]["metrics"]["model_utility"] == pytest.approx(summary["unlearned"]["model_utility"])
    assert best["tuned"]["bounds"]["model_utility>=0.97*oracle"] == pytest.approx(0.97 * summary["oracle"]["model_utility"])
    assert chosen["value"] == max(record["value"] for record in feasible)
    for record in complete:  # Optuna's constraint values agree with our feasibility
        assert (record["constraints"]["model_utility>=0.97*oracle"] <= 0) == record["feasible"]
    assert best["chosen"] in best["pareto_front"]  # the constraint's metric is the front's x: no infeasible trial beats it
    assert best["settings"]["num_epochs"] == "2" and set(best["settings"]) == {"num_epochs", "warmup_ratio", "learning_rate", "beta"}
    # Held out: the chosen setting on forget05, with forget05's oracle; on micro both splits hold the same author.
    assert best["holdout"]["split"] == "forget05" and best["holdout"]["forget_overlap"] == 1.0
    assert (output / best["holdout"]["folders"][0] / "summary.json").is_file()
    # Only the chosen trial keeps its model.
    for record in complete:
        assert (output / record["folders"][0] / "model").is_dir() == (record["number"] == best["chosen"])
    assert "Chosen setting" in (output / "report.md").read_text(encoding="utf-8")


def test_resume_runs_only_the_rest_and_reruns_an_interrupted_trial(micro_cache: Path, tmp_path: Path) -> None:
    output = tmp_path / "study"
    settings = {"space": SPACE, "settings": QUICK, "preset": "micro", "cache": micro_cache, "holdout_split": "none",
                "pruner": "none", "progress": False}
    tune(method="npo", output=output, trials=2, **settings)
    before = {name: folder_hash(output / "trials" / name) for name in ("trial-0000-seed0", "trial-0001-seed0")}
    # A trial interrupted by a kill: left RUNNING in the database, its run half-built.
    plan, _ = resolve_tune(benchmark=BuiltinTuning(Builtin("micro", micro_cache, False)), method="npo", space=SPACE, fixed=QUICK,
                           pruner="none")
    study = open_study(output, plan, 0)
    killed = study.ask()
    params = {dimension.name: dimension.suggest(killed) for dimension in plan.space}
    staging = output / "trials" / ".trial-0002-seed0.partial"
    staging.mkdir()
    result = tune(method="npo", output=output, trials=3, **settings)
    records = _records(output)
    assert [(record["number"], record["state"]) for record in records] == [(0, "complete"), (1, "complete"), (2, "failed"),
                                                                           (3, "complete")]
    assert records[2]["interrupted"] and records[3]["rerun_of"] == 2 and records[3]["settings"] == params
    assert not staging.exists()
    assert {name: folder_hash(output / "trials" / name) for name in before} == before  # the earlier trials are untouched
    assert result.summary["holdout"] == {"note": "skipped (--holdout-split none)"}
    # The same command again runs nothing.
    tune(method="npo", output=output, trials=3, **settings)
    assert len(_records(output)) == 4
    # Another method or another space on this folder is refused, before any write.
    stamp = (output / "tune.json").read_bytes()
    with pytest.raises(UnlearnkitError, match="holds a study of method npo, not ga"):
        tune(method="ga", output=output, trials=3, **{**settings, "space": ["learning_rate=log:1e-3:2e-2"]})
    with pytest.raises(UnlearnkitError, match=r"other settings.*space"):
        tune(method="npo", output=output, trials=3, **{**settings, "space": ["learning_rate=log:1e-3:3e-2"]})
    assert (output / "tune.json").read_bytes() == stamp


def test_pruning_stops_trials_that_never_meet_the_constraint(micro_cache: Path, tmp_path: Path) -> None:
    """Forced: no evaluation meets model_utility >= 2, so each reports NaN and, once one trial has finished, is pruned."""
    output = tmp_path / "study"
    result = tune(method="npo", output=output, trials=3, preset="micro", cache=micro_cache, space=SPACE,
                  settings={**QUICK, "num_epochs": "3"}, subject_to="model_utility>=2", eval_every=1, prune_after=1,
                  progress=False)
    records = _records(output)
    assert [record["state"] for record in records] == ["complete", "pruned", "pruned"]
    assert [record["pruned_at_step"] for record in records[1:]] == [1, 1]
    assert not records[0]["feasible"] and result.summary["chosen"] is None and "no complete trial" in result.summary["note"]
    assert not list((output / "trials").glob(".*.partial"))  # a pruned trial leaves no unfinished run behind
    study = optuna.load_study(study_name="unlearnkit-tune", storage=storage(output))
    # The tracker's listeners hear the evaluations while training goes on: steps 1 and 2 of 3, not the baseline nor the last.
    assert sorted(study.trials[0].intermediate_values) == [1, 2]
    assert all(math.isnan(value) for trial in study.trials for value in trial.intermediate_values.values())
    assert all(trial.constraints["model_utility>=2"] > 0 for trial in study.trials)


@pytest.mark.slow  # two fresh Python processes, each loading torch: about 40 s on two shared cores
def test_parallel_trials_run_in_separate_processes(micro_cache: Path, tmp_path: Path) -> None:
    output = tmp_path / "study"
    tune(method="npo", output=output, trials=2, jobs=2, threads=1, preset="micro", cache=micro_cache, space=SPACE,
         settings=QUICK, holdout_split="none", pruner="none", progress=False)
    study = optuna.load_study(study_name="unlearnkit-tune", storage=storage(output))
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    processes = {trial.user_attrs["process"] for trial in study.trials}
    assert len(processes) == 2 and os.getpid() not in processes


def test_worker_records_failures_and_requeues_an_interrupted_trial(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker loop alone (the trials' runs replaced): a refused setting fails and the study goes on; an interrupted
    trial fails, is queued again with its settings, runs first on the next call, and is not counted."""
    from unlearnkit.errors import NumericalFault
    from unlearnkit.tuning import worker
    from unlearnkit.tuning.trial import TrialContext

    plan, _ = resolve_tune(benchmark=MICRO, method="npo", space=SPACE, fixed=QUICK, pruner="none",
                           subject_to="")
    context = TrialContext(tmp_path, plan, None, {})
    outcomes = iter([0.5, NumericalFault("loss is nan"), KeyboardInterrupt(), 0.7, 0.9])

    def fake_run(context, trial):
        for dimension in context.plan.space:
            dimension.suggest(trial)
        outcome = next(outcomes)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(worker, "run_trial", fake_run)
    with pytest.raises(KeyboardInterrupt):
        worker.work(context, trials=4, sampler_seed=0)
    study = optuna.load_study(study_name="unlearnkit-tune", storage=storage(tmp_path))
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "FAIL", "FAIL", "WAITING"]
    assert "NumericalFault: loss is nan" in study.trials[1].user_attrs["error"]
    assert worker.work(context, trials=4, sampler_seed=1) == 2  # the queued rerun, then one more: 4 counted
    trials = optuna.load_study(study_name="unlearnkit-tune", storage=storage(tmp_path)).trials
    assert trials[3].params == trials[2].params and trials[3].user_attrs["rerun_of"] == 2
    assert [trial.state.name for trial in trials] == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]


# --------------------------------------------------------------------------------------------- bad input: exit 2, nothing written


def _refused(args: list[str], message: str, output: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    before = folder_hash(output) if output.exists() else None
    assert run_cli(args, monkeypatch) == 2, args
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "Traceback" not in error and message in error, error
    assert (folder_hash(output) if output.exists() else None) == before


def test_bad_input_is_refused_before_any_write(micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / "new"
    base = ["tune", "--output", str(output), *micro(micro_cache)]
    npo = [*base, "--method", "npo"]
    cases = [
        ([*base, "--method", "nop"], "Unknown method 'nop'"),
        ([*npo, "--objective", "forget_qualty"], "Did you mean: forget_quality"),
        ([*npo, "--subject-to", "model_utilty>=0.9*oracle"], "Did you mean: model_utility"),
        ([*npo, "--subject-to", "model_utility>=0.9*orcale"], "not a reference"),
        ([*base, "--method", "ga", "--set", "learning_rate=1e-3", "--set", "num_epochs=2"], "search space for ga is empty"),
        ([*npo, "--space", "learning_rate=log:1e-3:1e-3"], "range is empty"),
        ([*npo, "--space", "learning_rate=log:1e-2:1e-3"], "above HIGH"),
        ([*npo, "--space", "learning_rate=log:0:1e-3"], "LOW > 0"),
        ([*npo, "--space", "lerning_rate=log:1e-4:1e-3"], "Did you mean: learning_rate"),
        ([*npo, "--space", "lora_rank=log:1:16"], "not log"),
        ([*npo, "--space", "beta=float:0:1"], "beta must be > 0"),
        ([*base, "--method", "pcgu", "--space", "lora_rank=int:0:4"], "no LoRA form"),
        ([*npo, "--trials", "0"], "--trials"),
        ([*npo, "--jobs", "0"], "--jobs"),
        ([*npo, "--holdout-split", "forget10"], "is the split the study tunes on"),
        ([*npo, "--holdout-split", "forget11"], "Unknown forget split"),
        ([*npo, "--eval-every", "0"], "give --eval-every N"),
        ([*npo, "--set", "seed=1"], "--seeds"),
        ([*npo, "--seeds", "a"], "--seeds"),
        ([*npo, "--objective", "max:mia_gradnorm_auc"], "not reported on forget10"),
        (["tune", "--method", "npo", *micro(micro_cache)], "--output is needed"),
    ]
    for args, message in cases:
        _refused(args, message, output, monkeypatch, capsys)
    assert not output.exists()
    # A results folder of another command, a study of another method, a damaged plan.
    other = tmp_path / "demo"
    other.mkdir()
    (other / "summary.json").write_text("{}")
    _refused(["tune", "--method", "npo", "--output", str(other), *micro(micro_cache)], "not a tuning study", other, monkeypatch, capsys)
    foreign = tmp_path / "ga-study"
    foreign.mkdir()
    (foreign / "tune.json").write_text(json.dumps({"command": "tune", "identity": {"method": "ga"}}))
    _refused(["tune", "--method", "npo", "--output", str(foreign), *micro(micro_cache)], "study of method ga, not npo", foreign,
             monkeypatch, capsys)
    (foreign / "tune.json").write_text("{not json")
    _refused(["tune", "--method", "npo", "--output", str(foreign), *micro(micro_cache)], "damaged", foreign, monkeypatch, capsys)


def test_show_space_prints_and_writes_nothing(micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    assert run_cli(["tune", "--method", "npo", *micro(micro_cache), "--set", "beta=0.2", "--show-space"], monkeypatch) == 0
    shown = capsys.readouterr().out
    assert "--space learning_rate=log:0.0002:0.02" in shown and "--space beta" not in shown
    assert Dimension("alpha", "log", 0.1, 10.0).__str__() in shown
