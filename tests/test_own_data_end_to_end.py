"""A researcher's own data from start to end, on a TOFU-schema set written for this test (tests/fixtures/own_data).

Six fictitious writers (not the world generator's): one to forget, three to retain, two never trained on (holdout),
with hand-written real-authors and world-facts utility sets. Target and oracle are fine-tuned from scratch on the
micro preset's tiny model, so the numbers are a tiny-model check of the plumbing, not of any method.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import folder_hash, micro, run_cli

DATA = Path(__file__).parent / "fixtures" / "own_data"


def _file(name: str) -> str:
    return str(DATA / f"{name}.json")


def _summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


@pytest.mark.timeout(900)
def test_own_data_end_to_end(micro_cache, tmp_path: Path, monkeypatch, capsys) -> None:
    before = folder_hash(DATA)
    runs = tmp_path / "runs"
    common = micro(micro_cache)
    evaluation_sets = ["--retain", _file("retain"), "--real-authors", _file("real_authors"), "--world-facts", _file("world_facts"),
                       "--holdout", _file("holdout")]

    # The data passes every check before anything is trained.
    assert run_cli(["check-data", _file("forget"), "--retain", _file("retain"), "--json"], monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []

    # Target (everything) and retain oracle (without the forget writer), one tokenizer by construction.
    for name, data in (("target", "full"), ("oracle", "retain")):
        assert run_cli(["finetune", "--model", "tiny", "--data", _file(data), "--max-epochs", "60", "--learning-rate", "1e-2",
                        "--output", str(runs / name), *common], monkeypatch) == 0
    tokenizers = [json.loads((runs / name / "config.json").read_text())["sha256"]["tokenizer"] for name in ("target", "oracle")]
    assert tokenizers[0] == tokenizers[1]
    target, oracle = str(runs / "target" / "model"), str(runs / "oracle" / "model")

    reference = runs / "oracle_reference.json"
    assert run_cli(["eval", "--model", oracle, "--forget", _file("forget"), *evaluation_sets, "--save-reference", str(reference),
                    "--output", str(runs / "oracle-eval")], monkeypatch) == 0
    assert run_cli(["eval", "--model", target, "--forget", _file("forget"), *evaluation_sets, "--oracle-reference", str(reference),
                    "--output", str(runs / "target-eval")], monkeypatch) == 0
    target_summary = _summary(runs / "target-eval")
    assert {"forget_quality", "model_utility", "mia_min_k_auc"} <= set(target_summary) and "not_computed" not in target_summary
    # The target learnt the forget writer; the oracle never saw it.
    assert target_summary["forget_probability"] > _summary(runs / "oracle-eval")["forget_probability"]

    # Two methods, with the tiny model's starting point (the authors' lr 1e-5 would barely move it).
    for method in ("npo", "graddiff"):
        assert run_cli(["unlearn", "--method", method, "--model", target, "--forget", _file("forget"), *evaluation_sets,
                        "--oracle-reference", str(reference), "--set", "learning_rate=5e-4", "--set", "num_epochs=3",
                        "--output", str(runs / method)], monkeypatch) == 0
        summary = _summary(runs / method)
        assert {"forget_quality", "model_utility"} <= set(summary)
        assert summary["forget_probability"] < target_summary["forget_probability"]

    # The audit on plain rows: fact-span recall, entities grouped by the data's own field.
    assert run_cli(["audit", str(runs / "npo"), "--target", target, "--oracle", oracle, "--forget", _file("forget"),
                    "--retain", _file("retain"), "--holdout", _file("holdout"), "--attacks", "direct,relearning,membership",
                    "--set", "entity_field=person", "--output", str(runs / "npo-audit")], monkeypatch) == 0
    rows = {row["attack"]: row for row in _summary(runs / "npo-audit")["attacks"]}
    assert rows["direct"]["recall_rule"] == "fact_span" and set(rows) == {"direct", "relearning", "membership"}

    # One report: the target's eval beside the unlearn runs on the same data, with the oracle's truth ratios.
    report = tmp_path / "report.html"
    assert run_cli(["report", str(runs / "target-eval"), str(runs / "npo"), str(runs / "graddiff"), "--output", str(report)],
                   monkeypatch) == 0
    html = report.read_text(encoding="utf-8")
    assert "target (before)" in html and "retain oracle" in html
    assert folder_hash(DATA) == before
