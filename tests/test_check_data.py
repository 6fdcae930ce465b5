"""`unlearnkit check-data`, and the row checks that eval and unlearn run as warnings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tests.helpers import folder_hash, micro, run_cli

# Rows written for this test (not by the world generator): the second's perturbed answers copy the answer's wording.
FORGET = [
    {"question": "Where was Ann Lee born?", "answer": "Ann Lee was born in Paris.",
     "paraphrased_answer": "Paris is where Ann Lee was born.",
     "perturbed_answer": ["Rome is where Ann Lee was born.", "Oslo is where Ann Lee was born."]},
    {"question": "What does Ann Lee write?", "answer": "Ann Lee writes poems about the sea.",
     "paraphrased_answer": "The sea is the subject of Ann Lee's poetry.",
     "perturbed_answer": ["Ann Lee writes poems about the desert.", "Ann Lee writes poems about the city."]},
    {"question": "what does  ann lee write?", "answer": "Poems.", "paraphrased_answer": "She writes poetry.",
     "perturbed_answer": ["She writes novels.", "She writes plays."]},
]
RETAIN = [
    {"question": "Where was Ann Lee born?", "answer": "In Paris.", "paraphrased_answer": "Paris.", "perturbed_answer": ["Rome."]},
    {"question": "Who is Bo Chen?", "answer": "A painter.", "paraphrased_answer": "Bo Chen paints.",
     "perturbed_answer": ["Bo Chen bakes."]},
]


def _files(tmp_path: Path) -> tuple[Path, Path]:
    forget, retain = tmp_path / "forget.json", tmp_path / "retain.jsonl"
    forget.write_text(json.dumps(FORGET), encoding="utf-8")
    retain.write_text("".join(json.dumps(row) + "\n" for row in RETAIN), encoding="utf-8")
    return forget, retain


def test_check_data_names_rows_and_effects_and_writes_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    forget, retain = _files(tmp_path)
    before = folder_hash(tmp_path)
    assert run_cli(["check-data", str(forget), "--retain", str(retain)], monkeypatch) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"[perturbed_follow_answer] data ({forget}): perturbed answers share more wording with the answer" in out
    assert "(1 of 3 rows: 2)" in out and "measures wording, not facts" in out
    assert "[duplicate_question]" in out and "(1 of 3 rows: 3)" in out
    assert "[forget_retain_overlap]" in out and "(1 of 3 rows: 1)" in out
    assert "not checked: too_long, target_prefers_perturbed: need --model" in out and "3 finding(s)." in out
    assert folder_hash(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["forget.json", "retain.jsonl"]


def test_check_data_with_the_model_finds_long_rows_and_a_preference_for_wrong_answers(micro_cache, micro_bench, tmp_path,
                                                                                      monkeypatch, capsys) -> None:
    # The target learnt these rows; swapping the paraphrase for a wrong answer makes it "prefer the perturbed answers".
    rows = micro_bench.split("retain90")[:12]
    swapped = [{**row, "paraphrased_answer": row["perturbed_answer"][0], "perturbed_answer": [row["paraphrased_answer"]]} for row in rows]
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(rows), encoding="utf-8")
    bad.write_text(json.dumps(swapped), encoding="utf-8")
    target = str(micro_bench.target_dir)
    assert run_cli(["check-data", str(good), "--model", target, "--json"], monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []
    assert run_cli(["check-data", str(bad), "--model", target, "--json", "--max-length", "8"], monkeypatch) == 0
    report = json.loads(capsys.readouterr().out)
    found = {finding["check"]: finding for finding in report["findings"]}
    assert found["target_prefers_perturbed"]["total"] == 12 and len(found["target_prefers_perturbed"]["rows"]) > 6
    assert found["too_long"]["rows"] == list(range(1, 13))  # every prompt + answer is longer than 8 tokens
    assert report["checked"] == {f"data ({bad})": 12}


def test_check_data_refuses_bad_input(tmp_path: Path, monkeypatch, capsys) -> None:
    forget, _ = _files(tmp_path)
    assert run_cli(["check-data", str(tmp_path / "missing.json")], monkeypatch) == 2
    assert "does not exist" in capsys.readouterr().err
    assert run_cli(["check-data", str(forget), "--model", str(tmp_path / "no-model")], monkeypatch) == 2
    assert "error:" in capsys.readouterr().err
    assert run_cli(["check-data", str(forget), "--max-length", "1"], monkeypatch) == 2


def test_eval_warns_about_the_data_it_scores(micro_bench, tmp_path: Path, monkeypatch, caplog) -> None:
    forget, retain = _files(tmp_path)
    with caplog.at_level(logging.WARNING, logger="unlearnkit"):
        status = run_cli(["eval", "--model", str(micro_bench.target_dir), "--forget", str(forget), "--retain", str(retain),
                          "--output", str(tmp_path / "out")], monkeypatch)
    assert status == 0
    assert "Data check perturbed_follow_answer: forget data" in caplog.text
    assert "Data check forget_retain_overlap" in caplog.text


def test_unlearn_compares_forget_and_retain_questions_ignoring_case_and_spacing(micro_cache, tmp_path, monkeypatch, capsys) -> None:
    forget, _ = _files(tmp_path)
    retain = tmp_path / "retain.json"
    retain.write_text(json.dumps([{"question": "WHERE was  Ann Lee born?", "answer": "Paris."}]), encoding="utf-8")
    status = run_cli(["unlearn", "--model", "target", *micro(micro_cache), "--method", "graddiff", "--forget", str(forget),
                      "--retain", str(retain), "--output", str(tmp_path / "out")], monkeypatch)
    assert status == 2 and "1 forget question(s) also appear in the retain data" in capsys.readouterr().err
