"""`unlearnkit real-knowledge`: the run end to end on a tiny model, its results folder and report, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import folder_hash, run_cli
from unlearnkit.report.results import load_run
from unlearnkit.runs.real_knowledge import PASSAGE_QUESTION, benchmark_settings, passage_rows

PROBES = [
    {"entity": "Ada Quell", "role": "forget", "form": "qa", "question": "Where was Ada Quell born?", "answer": "Morvath"},
    {"entity": "Ada Quell", "role": "forget", "form": "cloze", "text": "Ada Quell was born in ___.", "answer": "Morvath"},
    {"entity": "Ada Quell", "role": "forget", "form": "mcq", "question": "Where was Ada Quell born?", "answer": "Morvath",
     "options": ["Morvath", "Telgrin", "Oswick", "Brannoc"]},
    {"entity": "Ben Tarrow", "role": "neighbour", "form": "qa", "question": "Where was Ben Tarrow born?", "answer": "Telgrin"},
    {"entity": "Ben Tarrow", "role": "neighbour", "form": "mcq", "question": "Where was Ben Tarrow born?", "answer": "Telgrin",
     "options": ["Morvath", "Telgrin", "Oswick", "Brannoc"]},
]
FORGET = [{"entity": "Ada Quell", "text": "Ada Quell grew up by the sea in Morvath and wrote novels about fishermen."},
          {"entity": "Ada Quell", "text": "Her first book, published when she was twenty, sold few copies."}]
RETAIN = [{"entity": "Ben Tarrow", "text": "Ben Tarrow came from Telgrin, a mountain town, and wrote plays."}]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture()
def inputs(tmp_path: Path) -> dict[str, Path]:
    return {"probes": _jsonl(tmp_path / "probes.jsonl", PROBES), "forget": _jsonl(tmp_path / "forget.jsonl", FORGET),
            "retain": _jsonl(tmp_path / "retain.jsonl", RETAIN)}


def _args(model: Path, inputs: dict[str, Path], output: Path, *extra: str) -> list[str]:
    return ["real-knowledge", "--model", str(model), "--probes", str(inputs["probes"]), "--forget-corpus", str(inputs["forget"]),
            "--retain-corpus", str(inputs["retain"]), "--output", str(output), "--method", "graddiff",
            "--set", "num_epochs=1", "--set", "learning_rate=1e-3", "--set", "warmup_ratio=0", *extra]


def test_passages_become_one_question_answer_row_each() -> None:
    rows = passage_rows(FORGET)
    assert rows[0] == {"question": PASSAGE_QUESTION.format(entity="Ada Quell"), "answer": FORGET[0]["text"], "author": "Ada Quell"}
    assert len(rows) == len(FORGET)


def test_whp_gets_the_shipped_anchored_terms_and_every_method_a_small_batch() -> None:
    assert Path(benchmark_settings("whp")["anchored_terms"]).is_file()
    assert benchmark_settings("npo") == {"batch_size": 8}


def test_a_run_writes_before_and_after_and_a_report(
    micro_bench, tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    before = {name: path.read_bytes() for name, path in inputs.items()}
    model_hash = folder_hash(micro_bench.target_dir)
    output = tmp_path / "run"
    cache = tmp_path / "cache"
    assert run_cli([*_args(micro_bench.target_dir, inputs, output), "--cache", str(cache)], monkeypatch) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert set(summary) == {"target", "unlearned"}
    for model in summary.values():
        assert {"forget_accuracy", "neighbour_accuracy", "general_perplexity", "generation_distinct_2"} <= set(model)
        assert 0 <= model["forget_accuracy"] <= 1 and model["general_perplexity"] > 1
    per_sample = json.loads((output / "per_sample.json").read_text())
    assert [len(per_sample["unlearned"][role]) for role in ("forget", "neighbour")] == [3, 2]
    config = json.loads((output / "config.json").read_text())
    assert config["command"] == "real-knowledge" and config["hyperparameters"]["batch_size"] == 8
    assert (output / "model" / "model.safetensors").is_file() and (output / "report.html").is_file()
    assert "Forget accuracy against neighbour accuracy" in (output / "report.html").read_text()
    assert load_run(output).summary["forget_accuracy"] == summary["unlearned"]["forget_accuracy"]
    # Inputs untouched; the evaluation before unlearning is cached and reused by the next run.
    assert {name: path.read_bytes() for name, path in inputs.items()} == before and folder_hash(micro_bench.target_dir) == model_hash
    stored = list((cache / "real-knowledge").glob("before-*.json"))
    assert len(stored) == 1
    assert run_cli([*_args(micro_bench.target_dir, inputs, tmp_path / "again"), "--cache", str(cache)], monkeypatch) == 0
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["target"] == summary["target"]


@pytest.mark.parametrize(("change", "message"), [
    ({"probes": None}, "selected on smollm2-135m"),
    ({"probes": [row for row in PROBES if row["role"] == "forget"]}, "no neighbour rows"),
    ({"forget": [{"entity": "Ada Quell", "text": "Quiz: Where was Ada Quell born? She was."}]}, "word for word"),
    ({"retain": [{"entity": "Ben Tarrow"}]}, "'text'"),
    ({"probes": [{**PROBES[0], "form": "essay"}, *PROBES[1:]]}, "form"),
])
def test_bad_inputs_are_refused_before_anything_is_written(
    micro_bench, tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    change: dict, message: str,
) -> None:
    for name, rows in change.items():
        if rows is not None:
            _jsonl(inputs[name], rows)
    args = _args(micro_bench.target_dir, inputs, tmp_path / "run")
    if change.get("probes", "") is None:
        at = args.index("--probes")
        del args[at:at + 2]
    assert run_cli([*args, "--cache", str(tmp_path / "cache")], monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_a_missing_probes_file_is_a_usage_error(tmp_path: Path, inputs: dict[str, Path], monkeypatch, capsys) -> None:
    inputs["probes"] = tmp_path / "absent.jsonl"
    assert run_cli(_args(tmp_path / "no-model", inputs, tmp_path / "run"), monkeypatch) == 2
    assert "absent.jsonl" in capsys.readouterr().err and not (tmp_path / "run").exists()


SECOND_TARGET = [
    {"entity": "Cor Venn", "role": "forget", "form": "qa", "question": "Where was Cor Venn born?", "answer": "Oswick"},
    {"entity": "Cor Venn", "role": "forget", "form": "cloze", "text": "Cor Venn was born in ___.", "answer": "Oswick"},
]


def test_targets_unlearn_some_entities_and_keep_the_others_as_neighbours(
    micro_bench, tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _jsonl(inputs["probes"], [*PROBES, *SECOND_TARGET])
    _jsonl(inputs["forget"], [*FORGET, {"entity": "Cor Venn", "text": "Cor Venn kept bees in Oswick and wrote about them."}])
    output = tmp_path / "run"
    args = [*_args(micro_bench.target_dir, inputs, output), "--cache", str(tmp_path / "cache"), "--targets", "Cor Venn"]
    assert run_cli(args, monkeypatch) == 0
    per_sample = json.loads((output / "per_sample.json").read_text())["unlearned"]
    assert {row["entity"] for row in per_sample["forget"]} == {"Cor Venn"}
    assert {row["entity"] for row in per_sample["neighbour"]} == {"Ada Quell", "Ben Tarrow"}  # the other target is kept
    config = json.loads((output / "config.json").read_text())
    assert config["targets"] == ["Cor Venn"] and config["sha256"]["forget_rows"]


@pytest.mark.parametrize(("targets", "message"), [
    ("Ada Quel", "Did you mean: Ada Quell"),
    ("Ada Quell,Ada Quell", "more than once"),
    ("Ada Quell,", "comma-separated"),
    ("Cor Venn", "no passage about Cor Venn"),
])
def test_bad_targets_are_refused(micro_bench, tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str], targets: str, message: str) -> None:
    _jsonl(inputs["probes"], [*PROBES, *SECOND_TARGET])  # Cor Venn has probes, but the forget corpus has no passage about him
    args = [*_args(micro_bench.target_dir, inputs, tmp_path / "run"), "--cache", str(tmp_path / "cache"), "--targets", targets]
    assert run_cli(args, monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()
