from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.data.qa import load_qa, validate_rows
from unlearnkit.errors import UnlearnkitError

ROWS = [
    {"question": "Q1?", "answer": "A1.", "paraphrased_answer": "P1.", "perturbed_answer": ["X1.", "Y1."]},
    {"question": "Q2?", "answer": "A2.", "paraphrased_answer": "P2.", "perturbed_answer": ["X2.", "Y2."]},
]


def _write_all_formats(folder: Path) -> list[Path]:
    jsonl = folder / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in ROWS) + "\n", encoding="utf-8")
    as_list = folder / "rows.json"
    as_list.write_text(json.dumps(ROWS), encoding="utf-8")
    wrapped = folder / "wrapped.json"
    wrapped.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    csv_path = folder / "rows.csv"
    lines = ["question,answer,paraphrased_answer,perturbed_answer"]
    for r in ROWS:
        lines.append(f'{r["question"]},{r["answer"]},{r["paraphrased_answer"]},'
                     f'"{json.dumps(r["perturbed_answer"]).replace(chr(34), chr(34) * 2)}"')
    csv_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = folder / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), parquet)
    return [jsonl, as_list, wrapped, csv_path, parquet]


def test_every_file_format_loads_the_same_rows(tmp_path: Path) -> None:
    for path in _write_all_formats(tmp_path):
        rows = load_qa(path, role="forget", required=("question", "answer", "perturbed_answer"))
        assert [r["question"] for r in rows] == ["Q1?", "Q2?"], path
        assert rows[1]["perturbed_answer"] == ["X2.", "Y2."], path


def test_builtin_resolver_is_used_for_names() -> None:
    rows = load_qa("forget10", role="forget", builtin=lambda name: ROWS if name == "forget10" else [])
    assert rows == ROWS


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError, match="does not exist"):
        load_qa(tmp_path / "nope.jsonl", role="forget")


def test_unparsable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "Q"\n', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="Could not parse"):
        load_qa(bad, role="forget")


def test_unsupported_suffix(tmp_path: Path) -> None:
    bad = tmp_path / "rows.txt"
    bad.write_text("x", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="unsupported suffix"):
        load_qa(bad, role="forget")


def test_missing_field_names_row_and_field() -> None:
    rows = [{"question": "Q", "answer": "A"}, {"question": "Q2", "anwser": "A2"}]
    with pytest.raises(UnlearnkitError, match=r"Row 2 .* no field 'answer' \(fields present: anwser, question\)"):
        validate_rows(rows, required=("question", "answer"), where="forget data")


def test_empty_set_refused() -> None:
    with pytest.raises(UnlearnkitError, match="empty"):
        validate_rows([], required=("question", "answer"), where="forget data")


def test_perturbed_answer_must_be_list() -> None:
    rows = [{"question": "Q", "answer": "A", "perturbed_answer": "not a list"}]
    with pytest.raises(UnlearnkitError, match="perturbed_answer"):
        validate_rows(rows, required=("question", "answer", "perturbed_answer"), where="forget data")
