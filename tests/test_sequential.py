"""Scalability and sustainability runners on the micro benchmark and on MUSE-format fixtures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from unlearnkit.builtin import PRESETS
from unlearnkit.cli import main
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.muse import MuseConfig
from unlearnkit.modeling import load_tokenizer
from unlearnkit.runs.inputs import MethodChoice, ModelChoice, RunOptions
from unlearnkit.runs.sequence import SequenceInputs, run_sequence
from unlearnkit.sequential import builtin_plan, muse_plan, split_requests
from unlearnkit.unlearning import resolve_method

MUSE = Path(__file__).parent / "fixtures" / "muse-news"
# Two epochs without warm-up: one step of warm-up from lr 0 would leave the tiny model unchanged.
FAST = {"num_epochs": 2, "warmup_ratio": 0.0, "learning_rate": 3e-3}


def _npo():
    return resolve_method("npo", {**PRESETS["micro"].overrides_for("npo"), **FAST})


def test_requests_are_whole_authors_last_first() -> None:
    rows = [{"author": name, "question": f"{name}{i}"} for name in "abcdef" for i in range(2)]
    parts = split_requests(rows, 3)
    assert [[row["question"] for row in part] for part in parts] == [
        ["e0", "e1", "f0", "f1"], ["c0", "c1", "d0", "d1"], ["a0", "a1", "b0", "b1"]]
    # Fewer authors than requests: the rows are grouped instead, still last first.
    assert [[row["question"] for row in part] for part in split_requests(rows[:2], 2)] == [["a1"], ["a0"]]
    with pytest.raises(UnlearnkitError, match="lower --requests"):
        split_requests(rows[:2], 3)


def _inputs(plan, bench, tokenizer) -> SequenceInputs:
    return SequenceInputs(plan, ModelChoice(str(bench.target_dir), "builtin", PromptFormat("plain")), tokenizer,
                          MethodChoice("npo", _npo()))


def test_sustainability_chains_requests_and_reports_forget_quality_only_with_an_oracle(micro_bench, tmp_path: Path) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    plan = builtin_plan(micro_bench, "sustainability", tokenizer, context=96, source_split="forget10", num_requests=2)
    out = tmp_path / "sustain"
    summary = run_sequence(inputs=_inputs(plan, micro_bench, tokenizer), options=RunOptions(out, show_progress=False))
    assert list(summary) == ["target", "1-request1", "2-request2"]
    first, second = summary["1-request1"], summary["2-request2"]
    # Request 1 is half of forget10: no oracle was trained without exactly it.
    assert first["forget_size"] == 4 and first["oracle"] is None and "forget_quality" not in first
    # After both requests the forget set is forget10 again, whose oracle the micro benchmark has.
    assert second["requests"] == ["request1", "request2"] and second["oracle"] == "forget10" and "forget_quality" in second
    assert second["forget_probability"] < summary["target"]["forget_probability"]
    assert {"verbmem_forget", "model_utility"} <= set(second)
    for name in ("config.json", "summary.json", "per_sample.json", "training_log.json", "log.txt"):
        assert (out / name).is_file()
    per_sample = json.loads((out / "per_sample.json").read_text())
    assert len(per_sample["1-request1"]["forget"]) == 4 and per_sample["2-request2"]["verbmem_forget"]
    assert json.loads((out / "config.json").read_text())["requests"][0]["forget_rows"] == 4


def test_scalability_starts_every_stage_from_the_target(micro_bench, tmp_path: Path) -> None:
    """On the micro benchmark forget01 and forget10 are the same author: both stages must give the same model."""
    tokenizer = load_tokenizer(micro_bench.target_dir)
    plan = builtin_plan(micro_bench, "scalability", tokenizer, context=96, splits=("forget01", "forget10"))
    summary = run_sequence(inputs=_inputs(plan, micro_bench, tokenizer), options=RunOptions(tmp_path / "scale", show_progress=False))
    first, second = summary["1-forget01"], summary["2-forget10"]
    assert first["forget_probability"] == pytest.approx(second["forget_probability"])
    assert first["forget_probability"] < summary["target"]["forget_probability"]
    assert second["oracle"] == "forget10" and first["oracle"] in (None, "forget10")


def test_muse_folder_through_the_command_line(micro_bench, micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "muse"
    args = ["--quiet", "sequence", "--mode", "sustainability", "--muse", str(MUSE), "--model", str(micro_bench.target_dir),
            "--requests", "2", "--num-shots", "0", "--preset", "micro", "--cache", str(micro_cache), "--output", str(out)]
    for key, value in {**PRESETS["micro"].overrides_for("npo"), **FAST}.items():
        args += ["--set", f"{key}={value}"]
    monkeypatch.setattr(sys, "argv", ["unlearnkit", *args])
    main()
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["target", "1-sust1", "2-sust2"]
    assert summary["1-sust1"]["forget_texts"] == 2 and summary["2-sust2"]["forget_texts"] == 4
    assert {"verbmem_forget", "verbmem_stage_forget", "knowmem_forget", "knowmem_retain"} <= set(summary["2-sust2"])
    assert "knowmem_retain" in capsys.readouterr().out


def test_muse_scalability_grows_and_bad_input_is_refused(micro_bench, tmp_path: Path, monkeypatch) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    plan = muse_plan(MUSE, "scalability", tokenizer, 96, num_requests=2, muse_config=MuseConfig(num_shots=0), prefix_tokens=8,
                     window_tokens=48)
    assert [len(request.payload) for request in plan.requests] == [2, 4]  # growing prefixes of raw/forget
    assert plan.requests[0].retain and all(set(row) == {"question", "answer"} for row in plan.requests[0].forget)
    with pytest.raises(UnlearnkitError, match="too few for 5 requests"):
        muse_plan(MUSE, "sustainability", tokenizer, 96, num_requests=5)
    with pytest.raises(UnlearnkitError, match="--mode must be one of"):
        builtin_plan(micro_bench, "growth", tokenizer, 96)
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "--quiet", "sequence", "--mode", "growth", "--output", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2 and not (tmp_path / "x").exists()
