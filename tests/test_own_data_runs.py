"""unlearn and eval on a researcher's own files: the same evaluation sets, and every missing headline metric explained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import micro, run_cli
from unlearnkit.report.results import load_run


@pytest.fixture(scope="module")
def own_files(micro_bench, tmp_path_factory) -> dict[str, str]:
    """The micro benchmark's rows written as the user's own files (small, so each run takes seconds)."""
    folder = tmp_path_factory.mktemp("own-data")
    files = {}
    for role, split, count in (("forget", "forget10", 8), ("retain", "retain90", 12), ("real_authors", "real_authors", 6),
                               ("world_facts", "world_facts", 6), ("holdout", "holdout10", 8)):
        path = folder / f"{role}.json"
        path.write_text(json.dumps(micro_bench.split(split)[:count]), encoding="utf-8")
        files[role] = str(path)
    bare = folder / "forget-bare.json"  # no paraphrased or perturbed answers: no truth ratio, so no forget quality
    bare.write_text(json.dumps([{"question": r["question"], "answer": r["answer"]} for r in micro_bench.split("forget10")[:8]]))
    files["forget_bare"] = str(bare)
    return files


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def test_unlearn_without_model_on_own_data_is_refused(micro_cache, own_files, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    assert run_cli(["unlearn", "--method", "ga", "--forget", own_files["forget"], "--output", str(out), *micro(micro_cache)],
                   monkeypatch) == 2
    error = capsys.readouterr().err
    assert "--model is needed with your own forget data" in error and "--model builtin" in error
    assert not out.exists()


def test_unlearn_evaluates_utility_on_own_data_and_records_the_oracle(micro_bench, own_files, tmp_path, monkeypatch) -> None:
    target = str(micro_bench.target_dir)
    reference = tmp_path / "oracle_reference.json"
    assert run_cli(["eval", "--model", target, "--forget", own_files["forget"], "--save-reference", str(reference),
                    "--output", str(tmp_path / "oracle-eval")], monkeypatch) == 0
    out = tmp_path / "ga"
    assert run_cli(["unlearn", "--method", "ga", "--model", target, "--forget", own_files["forget"], "--retain", own_files["retain"],
                    "--real-authors", own_files["real_authors"], "--world-facts", own_files["world_facts"],
                    "--holdout", own_files["holdout"], "--oracle-reference", str(reference), "--set", "num_epochs=1",
                    "--output", str(out)], monkeypatch) == 0
    summary = _summary(out)
    assert 0 < summary["model_utility"] <= 1 and "forget_quality" in summary and "mia_loss_auc" in summary
    assert "not_computed" not in summary
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["oracle_reference"] == str(reference) and config["real_authors"] == own_files["real_authors"]
    assert load_run(out).oracle_truth_ratios is not None  # the report draws the oracle's truth ratios beside the run's


def test_eval_names_what_it_could_not_compute(micro_bench, own_files, tmp_path, monkeypatch, capsys) -> None:
    target = str(micro_bench.target_dir)
    reference = tmp_path / "reference.json"
    assert run_cli(["eval", "--model", target, "--forget", own_files["forget"], "--save-reference", str(reference),
                    "--output", str(tmp_path / "ref")], monkeypatch) == 0
    capsys.readouterr()
    out = tmp_path / "bare"
    # A forget set without paraphrased/perturbed answers, with an oracle reference: the run says why forget quality is missing.
    assert run_cli(["eval", "--model", target, "--forget", own_files["forget_bare"], "--retain", own_files["retain"],
                    "--oracle-reference", str(reference), "--output", str(out)], monkeypatch) == 0
    printed = " ".join(capsys.readouterr().out.split())
    reasons = _summary(out)["not_computed"]
    assert "no paraphrased_answer and perturbed_answer fields" in reasons["forget_quality"]
    assert "missing --real-authors, --world-facts" in reasons["model_utility"]
    assert "need --holdout" in reasons["membership_inference"]
    assert "model_utility: not computed: TOFU's model utility is the harmonic mean" in printed


def test_utility_sets_with_a_builtin_split_are_refused(micro_cache, own_files, tmp_path, monkeypatch, capsys) -> None:
    assert run_cli(["unlearn", "--method", "ga", "--forget", "forget10", "--real-authors", own_files["real_authors"],
                    "--output", str(tmp_path / "out"), *micro(micro_cache)], monkeypatch) == 2
    assert "brings its own evaluation sets; drop --real-authors" in capsys.readouterr().err


def test_the_report_names_what_each_run_lacks(micro_bench, own_files, tmp_path, monkeypatch) -> None:
    out = tmp_path / "eval"
    assert run_cli(["eval", "--model", str(micro_bench.target_dir), "--forget", own_files["forget_bare"], "--output", str(out)],
                   monkeypatch) == 0
    report = tmp_path / "report.html"
    assert run_cli(["report", str(out), "--output", str(report)], monkeypatch) == 0
    html = " ".join(report.read_text(encoding="utf-8").split())
    assert "no run has both forget quality and model utility" in html
    assert "forget quality the forget data has no paraphrased_answer and perturbed_answer fields" in html
    assert "model utility TOFU&#x27;s model utility is the harmonic mean" in html
