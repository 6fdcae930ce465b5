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


# --- files as other tools write them --------------------------------------------------------------------------------

PANDAS_ROWS = [
    {"question": 'Who is "Ann Vale"?', "answer": "A writer, born 1950.", "paraphrased_answer": "She writes.",
     "perturbed_answer": ["A painter.", "A singer's aide."], "paraphrased_question": "Ann Vale is who?"},
    {"question": "Q2?", "answer": "A2.", "paraphrased_answer": "P2.", "perturbed_answer": ["X2.", "Y2."],
     "paraphrased_question": ["Q2 again?", "And Q2?"]},
]


def test_a_csv_written_by_pandas_loads(tmp_path: Path) -> None:
    """pandas' default to_csv adds an unnamed index column and writes lists as Python reprs (['a', "b's"]), not JSON."""
    import pandas as pd

    path = tmp_path / "rows.csv"
    pd.DataFrame(PANDAS_ROWS).to_csv(path)
    assert path.read_text(encoding="utf-8").startswith(",question,answer")  # the index column pandas writes
    assert load_qa(path, role="forget") == PANDAS_ROWS
    # Read and written again, the index column is called "Unnamed: 0"; it is still no field of the data.
    again = tmp_path / "again.csv"
    pd.read_csv(path).to_csv(again)
    assert [sorted(row) for row in load_qa(again, role="forget")] == [sorted(row) for row in PANDAS_ROWS]


def test_a_list_cell_that_is_no_list_names_row_and_column(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text('question,answer,perturbed_answer\nQ1?,A1.,"[""X1."", ""Y1.""]"\nQ2?,A2.,"[\'X2.\', Y2.]"\n', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"Row 2 of the forget data file .*rows.csv, column 'perturbed_answer': the cell "
                                              r".* is not a list of texts"):
        load_qa(path, role="forget")


@pytest.mark.parametrize("cell", ["[__import__('os').system('echo unsafe')]", "['a', 1]", "[['a']]", "['a' + 'b']"])
def test_a_python_list_cell_is_read_only_as_a_list_of_string_literals(cell: str, tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text(f'question,answer,perturbed_answer\nQ1?,A1.,"{cell}"\n', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"Row 1 .* column 'perturbed_answer'"):
        load_qa(path, role="forget")


def test_a_text_field_opening_with_a_bracket_stays_text(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("question,answer,paraphrased_question\nQ1?,A1.,[INST] Who? [/INST]\n", encoding="utf-8")
    assert load_qa(path, role="forget")[0]["paraphrased_question"] == "[INST] Who? [/INST]"


def test_a_row_with_more_cells_than_columns_is_named(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("question,answer\nQ1?,A1.\nQ2?,A2, with a comma\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"Row 2 of the forget data file .* \(line 3\) has 3 cells .* quote cells"):
        load_qa(path, role="forget")


def test_a_built_in_split_name_where_files_are_read_says_how_to_use_it() -> None:
    """Without a built-in resolver (eval's and audit's --forget), 'forget10' is not suggested as a fix for itself."""
    with pytest.raises(UnlearnkitError) as caught:
        load_qa("forget10", role="forget")
    message = str(caught.value)
    assert "'forget10' is a built-in benchmark split" in message and "--benchmark" in message and "unlearnkit data export" in message
    assert "Did you mean" not in message


def test_a_near_miss_of_a_split_name_is_suggested() -> None:
    with pytest.raises(UnlearnkitError, match=r"forget11 does not exist. Did you mean: forget10.*\? Pass a built-in split name \(where"):
        load_qa("forget11", role="forget")
