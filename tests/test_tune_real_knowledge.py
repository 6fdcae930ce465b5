"""``unlearnkit tune --benchmark real-knowledge``: a study with no retain oracle, on forget entities, held out on others.

Runs on the micro benchmark's tiny model with hand-written probes (the shipped ones belong to SmolLM2): what is
checked is the plumbing (splits of entities, target-relative constraints, the held-out entities, the rerun
command, the report without an oracle) and every bad input refused before any write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import folder_hash, run_cli
from tests.test_real_knowledge_command import FORGET, PROBES, RETAIN, SECOND_TARGET, _jsonl
from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs.tune import resolve_tune
from unlearnkit.tuning.benchmarks import DEFAULT_GOALS, REAL_KNOWLEDGE
from unlearnkit.tuning.objective import Objective
from unlearnkit.tuning.plan import reported_metrics
from unlearnkit.tuning.real_knowledge import RealKnowledgeTuning

SECOND_PASSAGE = {"entity": "Cor Venn", "text": "Cor Venn kept bees in Oswick and wrote about them."}
QUICK = ["--set", "num_epochs=1", "--set", "warmup_ratio=0"]


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    return {"probes": _jsonl(tmp_path / "probes.jsonl", [*PROBES, *SECOND_TARGET]),
            "forget_corpus": _jsonl(tmp_path / "forget.jsonl", [*FORGET, SECOND_PASSAGE]),
            "retain_corpus": _jsonl(tmp_path / "retain.jsonl", RETAIN)}


def _args(model: Path, files: dict[str, Path], output: Path, cache: Path, *extra: str) -> list[str]:
    return ["tune", "--benchmark", "real-knowledge", "--model", str(model), "--output", str(output), "--cache", str(cache),
            *(part for name, path in files.items() for part in (f"--{name.replace('_', '-')}", str(path))), *extra]


def test_defaults_split_the_entities_and_judge_against_the_model_before_unlearning(micro_bench, files: dict[str, Path]) -> None:
    ground = RealKnowledgeTuning(model=str(micro_bench.target_dir), **{name: str(path) for name, path in files.items()})
    plan, holdout = resolve_tune(benchmark=ground, method="npo")
    # Two forget entities: the first half is tuned on, the other held out; no oracle, so the target is the reference.
    assert (plan.split, holdout) == ("Ada Quell", "Cor Venn")
    assert (plan.objective, plan.subject_to) == DEFAULT_GOALS[REAL_KNOWLEDGE]
    assert plan.preset == REAL_KNOWLEDGE and plan.pruner == "none" and plan.eval_every == 0
    assert plan.inputs["probes"] == str(files["probes"]) and plan.base_settings["batch_size"] == 8  # the benchmark's batch
    assert {dimension.name for dimension in plan.space} >= {"learning_rate", "num_epochs", "beta"}


def test_a_study_end_to_end(micro_bench, tmp_path: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    before = {name: path.read_bytes() for name, path in files.items()}
    model_hash = folder_hash(micro_bench.target_dir)
    output, cache = tmp_path / "study", tmp_path / "cache"
    args = _args(micro_bench.target_dir, files, output, cache, "--method", "graddiff", "--trials", "2",
                 "--space", "learning_rate=log:1e-4:1e-2", "--subject-to", "neighbour_accuracy>=0.0*target", *QUICK)
    assert run_cli(args, monkeypatch) == 0
    plan = json.loads((output / "tune.json").read_text())
    assert plan["identity"]["preset"] == REAL_KNOWLEDGE and set(plan["references"]) == {"target"}
    records = json.loads((output / "trials.json").read_text())["trials"]
    assert [record["state"] for record in records] == ["complete", "complete"]
    best = json.loads((output / "best.json").read_text())
    chosen = next(record for record in records if record["number"] == best["chosen"])
    # The chosen trial's own results folder: a real-knowledge run on the tuned entity only.
    run = output / chosen["folders"][0]
    per_sample = json.loads((run / "per_sample.json").read_text())["unlearned"]
    assert {row["entity"] for row in per_sample["forget"]} == {"Ada Quell"}
    summary = json.loads((run / "summary.json").read_text())
    assert best["tuned"]["metrics"]["forget_accuracy"] == pytest.approx(summary["unlearned"]["forget_accuracy"])
    assert best["tuned"]["target"]["forget_accuracy"] == pytest.approx(summary["target"]["forget_accuracy"])
    assert chosen["value"] == min(record["value"] for record in records)  # forget accuracy: lower is better
    assert "forget_cloze_accuracy" in best["tuned"]["metrics"] and "model_utility" not in best["tuned"]["metrics"]
    # Held out on the other entity, beside the model before unlearning on that split.
    held = best["holdout"]
    assert held["split"] == "Cor Venn" and held["targets"] == ["Cor Venn"] and held["forget_overlap"] == 0.0
    held_run = json.loads((output / held["folders"][0] / "per_sample.json").read_text())["unlearned"]
    assert {row["entity"] for row in held_run["forget"]} == {"Cor Venn"}
    assert "--targets" in best["command"] and best["command"].startswith("unlearnkit real-knowledge --model")
    report = (output / "report.md").read_text()
    assert "real-knowledge benchmark" in report and "retain oracle" not in report
    # Inputs untouched.
    assert {name: path.read_bytes() for name, path in files.items()} == before and folder_hash(micro_bench.target_dir) == model_hash


def _refused(args: list[str], message: str, output: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    assert run_cli(args, monkeypatch) == 2, args
    error = capsys.readouterr().err.strip()
    assert error.startswith("error:") and "Traceback" not in error and message in error, error
    assert not output.exists()


def test_bad_input_is_refused_before_any_write(micro_bench, micro_cache: Path, tmp_path: Path, files: dict[str, Path],
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    output, cache = tmp_path / "study", tmp_path / "cache"
    base = [*_args(micro_bench.target_dir, files, output, cache), "--method", "npo"]
    cases = [
        ([*base, "--subject-to", "model_utility>=0.95*oracle"], "model_utility is not among the metrics the benchmark reports"),
        ([*base, "--subject-to", "neighbour_accuracy>=0.9*oracle"], "oracle's neighbour_accuracy is not known"),
        ([*base, "--objective", "forget_quality"], "forget_quality is not among the metrics the benchmark reports"),
        ([*base, "--pruner", "median"], "pass --pruner none"),
        ([*base, "--eval-every", "3"], "pass --pruner none"),
        ([*base, "--split", "Ada Quel"], "Did you mean: Ada Quell"),
        ([*base, "--split", "Ada Quell", "--holdout-split", "Ada Quell,Cor Venn"], "which the study tunes on"),
        # Each message names the option the user typed.
        ([*base, "--split", ""], "--split takes comma-separated forget entities"),
        ([*base, "--split", "Ada Quell,Ada Quell"], "--split names Ada Quell more than once"),
        ([*base, "--split", "Ada Quell", "--holdout-split", "Cor Venn,"], "--holdout-split takes comma-separated forget entities"),
        ([*base, "--split", "Ada Quell", "--holdout-split", "Cor Venn,Cor Venn"], "--holdout-split names Cor Venn more than once"),
        ([*base, "--benchmark", "real-knowlege"], "real-knowledge"),
        ([*base, "--preset", "smollm2"], "names a built-in benchmark"),
    ]
    for args, message in cases:
        _refused(args, message, output, monkeypatch, capsys)
    # The built-in benchmark has its own model and data; the shipped probes belong to SmolLM2.
    _refused(["tune", "--method", "npo", "--output", str(output), "--preset", "micro", "--cache", str(micro_cache),
              "--probes", str(files["probes"])], "--probes belong(s) to --benchmark real-knowledge", output, monkeypatch, capsys)
    _refused(["tune", "--benchmark", "real-knowledge", "--method", "npo", "--output", str(output), "--model",
              str(micro_bench.target_dir)], "selected on smollm2-135m", output, monkeypatch, capsys)
    assert not cache.exists()


def test_metrics_are_checked_against_the_benchmark_and_the_trade_off_is_its_utility() -> None:
    reported = reported_metrics(REAL_KNOWLEDGE)
    goal = Objective.parse("forget_accuracy", "", reported)
    assert not goal.maximise and goal.trade_off() == ("neighbour_accuracy", True)  # no constraint: traded against the neighbours
    assert Objective.parse("forget_quality", "").trade_off() == ("model_utility", True)
    with pytest.raises(UnlearnkitError, match="Did you mean: forget_accuracy"):
        Objective.parse("forget_acuracy", "", reported)
    with pytest.raises(UnlearnkitError, match="not among the metrics the benchmark reports"):
        Objective.parse("forget_accuracy", "model_utility>=0.9", reported)
    with pytest.raises(UnlearnkitError, match="not among the metrics evaluated during training"):
        Objective.parse("forget_accuracy", "")  # the built-in benchmark does not report it
