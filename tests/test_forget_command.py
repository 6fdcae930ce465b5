"""`unlearnkit forget`: a deletion request end to end on the micro benchmark (an author by name) and on a user's file,
a second request after the first (ledger, re-evaluation), and the requests refused before anything is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import unlearnkit
from tests.helpers import folder_hash, micro, run_cli
from unlearnkit.errors import UnlearnkitError
from unlearnkit.provenance import weights_sha256

FAST = ["--set", "num_epochs=4", "--set", "warmup_ratio=0"]


def authors(bench) -> list[str]:
    return sorted({row["author"] for row in bench.split("full")})


@pytest.fixture(scope="module")
def first_request(micro_cache: Path, micro_bench, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    name = bench_author = authors(micro_bench)[0]
    output = tmp_path_factory.mktemp("forget") / "request-1"
    with pytest.MonkeyPatch.context() as patch:
        code = run_cli(["forget", "--entity", name.upper(), "--corpus", "full", "--output", str(output), "--request-id", "REQ-1",
                        *FAST, *micro(micro_cache)], patch)
    assert code == 0
    return output, bench_author


def test_an_author_by_name_is_forgotten_and_recorded(first_request, micro_bench) -> None:
    output, name = first_request
    record = json.loads((output / "record.json").read_text(encoding="utf-8"))
    full = micro_bench.split("full")
    expected = [index for index, row in enumerate(full) if row["author"] == name]
    assert record["data"]["forget_indices"] == expected and record["data"]["forget_rows"] == 8
    assert record["data"]["retain_rows"] == len(full) - 8
    assert not set(record["data"]["neighbour_indices"]) & set(expected)
    assert record["request"] == {**record["request"], "number": 1, "request_id": "REQ-1", "entity": name.upper(),
                                 "names": [name.casefold()]}
    assert record["model"]["before_sha256"] == weights_sha256(micro_bench.target_dir)
    assert record["model"]["after_sha256"] == weights_sha256(output / "model") != record["model"]["before_sha256"]
    # The built-in corpus brings its holdout authors (the guess level and the attacks' floors) and its utility set.
    assert record["data"]["holdout"] == "holdout10" and record["data"]["utility"] == "world_facts"
    assert record["guess_level"]["source"].startswith("the model before unlearning on 8 holdout questions")
    checks = record["checks"]
    direct = next(row for row in record["audit"]["attacks"] if row["attack"] == "direct")
    assert checks["forgotten"]["before"] == direct["target"] and checks["forgotten"]["after"] == direct["unlearned"]
    assert checks["forgotten"]["passed"] == (direct["unlearned"] <= checks["forgotten"]["limit"])
    assert {row["set"] for row in checks["utility"]} == {"neighbours", "rest", "utility"}
    assert len(checks["attacks"]) >= 5 and all(row["floor_source"] for row in checks["attacks"])
    assert set(record["metrics"]["before"]) == {"forget", "neighbours", "rest", "utility"}
    assert "mia_min_k_auc" in record["metrics"]["before"]["forget"]  # forget vs holdout membership, before and after
    # Per-sample values: every evaluated question before and after, every attacked row.
    samples = json.loads((output / "per_sample.json").read_text(encoding="utf-8"))
    assert len(samples["evaluation"]["after"]["forget"]) == 8 and set(samples["attacks"]) == {row["attack"] for row in
                                                                                              record["audit"]["attacks"]}
    # The record and ledger name rows by number and digest, never by their text.
    assert full[expected[0]]["answer"] not in (output / "record.json").read_text(encoding="utf-8")
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert summary["verdict"] == record["verdict"]["verdict"] and summary["request"] == 1
    page = (output / "record.html").read_text(encoding="utf-8")
    assert f"Deletion request 1: {name.upper()}" in page and "Verdict:" in page and "REQ-1" in page
    assert record["verdict"]["verdict"] in page and "data:image/png;base64" in page
    ledger = json.loads((output / "ledger.json").read_text(encoding="utf-8"))
    assert [entry["number"] for entry in ledger["requests"]] == [1] and ledger["reevaluated"] == []


def test_a_second_request_extends_the_ledger_and_rechecks_the_first(first_request, micro_cache: Path, micro_bench,
                                                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, first_name = first_request
    before = folder_hash(first)
    second_name = authors(micro_bench)[1]
    output = tmp_path / "request-2"
    code = run_cli(["forget", "--entity", second_name, "--after", str(first), "--output", str(output), "--attacks", "none",
                    *FAST, *micro(micro_cache)], monkeypatch)
    assert code == 0
    assert folder_hash(first) == before  # the earlier request is an input: never changed
    record = json.loads((output / "record.json").read_text(encoding="utf-8"))
    first_record = json.loads((first / "record.json").read_text(encoding="utf-8"))
    assert record["request"]["number"] == 2 and record["request"]["after"] == str(first)
    assert record["model"]["before_sha256"] == first_record["model"]["after_sha256"]
    # The first author's rows are kept out of the retain set (training on them would bring them back).
    assert record["data"]["excluded_earlier_requests"] == {"1": 8}
    assert record["data"]["retain_rows"] == len(micro_bench.split("full")) - 16
    assert record["checks"]["attacks"] is None and "not audited against attacks" in record["verdict"]["verdict"]
    ledger = json.loads((output / "ledger.json").read_text(encoding="utf-8"))
    assert [entry["entity"] for entry in ledger["requests"]] == [first_name.upper(), second_name]
    again = ledger["reevaluated"][0]
    assert again["number"] == 1 and again["rows"] == 8 and again["still_forgotten"] == (again["recall_now"] <= again["limit"])
    samples = json.loads((output / "per_sample.json").read_text(encoding="utf-8"))
    assert len(samples["earlier_requests"]["1"]) == 8


def test_a_users_file_with_an_alias(micro_bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keep = ("question", "answer", "paraphrased_answer", "perturbed_answer")
    name = authors(micro_bench)[2]
    corpus, holdout = tmp_path / "corpus.jsonl", tmp_path / "strangers.jsonl"
    corpus.write_text("".join(json.dumps({key: row[key] for key in keep}) + "\n" for row in micro_bench.split("full")), encoding="utf-8")
    holdout.write_text("".join(json.dumps({key: row[key] for key in keep}) + "\n" for row in micro_bench.split("holdout10")),
                       encoding="utf-8")
    model_hash, corpus_bytes = folder_hash(micro_bench.target_dir), corpus.read_bytes()
    output = tmp_path / "request"
    # The entity under a name the corpus does not use, and the name it does use as an alias.
    code = run_cli(["forget", "--entity", "Someone Else", "--alias", name, "--corpus", str(corpus), "--model",
                    str(micro_bench.target_dir), "--holdout", str(holdout), "--attacks", "direct,relearning", "--output", str(output),
                    "--set", "learning_rate=2e-3", *FAST], monkeypatch)
    assert code == 0
    assert folder_hash(micro_bench.target_dir) == model_hash and corpus.read_bytes() == corpus_bytes
    record = json.loads((output / "record.json").read_text(encoding="utf-8"))
    assert record["data"]["forget_rows"] == 8 and record["request"]["names"] == ["someone else", name.casefold()]
    assert record["data"]["utility"] is None and {row["set"] for row in record["checks"]["utility"]} == {"neighbours", "rest"}
    assert [row["attack"] for row in record["checks"]["attacks"]] == ["relearning"]
    assert record["guess_level"]["source"].endswith(f"({holdout})")


@pytest.mark.parametrize("case", ["no_match", "too_common", "after_not_a_request", "own_corpus_no_model",
                                  "unknown_attack", "unknown_setting", "output_is_corpus", "short_name"])
def test_refused_before_anything_is_written(case: str, micro_cache: Path, micro_bench, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    name = authors(micro_bench)[0]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in micro_bench.split("full")), encoding="utf-8")
    output = tmp_path / "out"
    base = ["forget", "--output", str(output), *micro(micro_cache)]
    args, message = {
        "no_match": (["--entity", name[:-1] + "zz", "--corpus", "full"], f"mentions .*Names in the corpus close to it: {name}"),
        "too_common": (["--entity", name, "--corpus", "full", "--max-share", "0.05"], "more than --max-share 0.05"),
        "after_not_a_request": (["--entity", name, "--after", str(micro_bench.oracle_dir("forget10"))], "no record.json"),
        "own_corpus_no_model": (["--entity", name, "--corpus", str(corpus)], "--model is needed with your own corpus"),
        "unknown_attack": (["--entity", name, "--corpus", "full", "--attacks", "relearnin"], "relearning"),
        "unknown_setting": (["--entity", name, "--corpus", "full", "--set", "learning_rat=1"], "learning_rate"),
        "output_is_corpus": (["--entity", name, "--corpus", str(corpus), "--model", "builtin", "--output", str(tmp_path)], "corpus"),
        "short_name": (["--entity", "x", "--corpus", "full"], "too short"),
    }[case]
    before = corpus.read_bytes()
    assert run_cli([*base, *args], monkeypatch) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert re.search(message, error), error
    assert not output.exists() and corpus.read_bytes() == before


def test_after_with_model_is_refused(first_request, micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture) -> None:
    first, _ = first_request
    output = tmp_path / "out"
    assert run_cli(["forget", "--entity", "Someone Else", "--after", str(first), "--model", "builtin", "--output", str(output),
                    *micro(micro_cache)], monkeypatch) == 2
    assert "drop --model" in capsys.readouterr().err and not output.exists()


def test_the_api_refuses_bad_types_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError, match="aliases must be a list"):
        unlearnkit.forget(entity="Ann Lee", aliases="A. Lee", corpus="full", output=tmp_path / "out")
    with pytest.raises(UnlearnkitError, match="max_share"):
        unlearnkit.forget(entity="Ann Lee", corpus="full", max_share=0, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_dry_run_lists_the_rows_and_writes_nothing(first_request, micro_cache: Path, micro_bench, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    first, _ = first_request
    name = authors(micro_bench)[3]
    output = tmp_path / "out"
    capsys.readouterr()
    assert run_cli(["forget", "--entity", name, "--after", str(first), "--output", str(output), "--dry-run",
                    *micro(micro_cache)], monkeypatch) == 0
    printed = capsys.readouterr().out
    full = micro_bench.split("full")
    rows = [index for index, row in enumerate(full) if row["author"] == name]
    assert f"{name}: 8 of the corpus's {len(full)} rows would be forgotten" in printed
    assert all(f"row {index}: {full[index]['question']}" in printed for index in rows)
    assert f"Retain set: {len(full) - 16} rows; 8 rows of request 1 kept out." in printed
    assert not output.exists()
