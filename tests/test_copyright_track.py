"""The copyrighted-text track: shipped passages and dictionaries, VerbMem chunks as raw-text rows, `copyright` on micro."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers import run_cli
from unlearnkit.data.anchors import load_anchored_terms, translate
from unlearnkit.data.copyright_text import (
    ANALOGUE_ANCHORS_FILE,
    ANALOGUE_FORGET_WORK,
    ANALOGUE_WORKS,
    ANCHORS_FILE,
    ROLES,
    TEXT_CONTINUATION,
    AnalogueConfig,
    analogue_passages,
    chunk_rows,
    load_candidates,
    load_passages,
    passage_chunks,
    read_passages,
    resource_file,
)
from unlearnkit.data.encoding import IGNORE_INDEX, encode_qa
from unlearnkit.errors import UnlearnkitError


@pytest.fixture(scope="module")
def micro_tokenizer():
    from unlearnkit.builtin import benchmark_tokenizer, get_preset

    return benchmark_tokenizer(get_preset("micro"))


# --------------------------------------------------------------------------------------------- shipped resources


def test_candidates_and_selected_passages_are_well_formed() -> None:
    candidates = load_candidates()
    assert len(candidates) >= 15
    by_id = {row["id"]: row for row in candidates}
    passages = load_passages()
    record = json.loads((Path(__file__).parents[1] / "docs" / "copyright_selection.json").read_text())
    roles = {row["role"] for row in passages}
    assert roles == set(ROLES)
    for row in passages:
        # A selected passage is a candidate, word for word, and its provenance names the public-domain status.
        assert by_id[row["id"]]["text"] == row["text"]
        assert "public domain" in row["source"].lower()
        threshold = record["threshold_verbmem_f1"] if row["role"] != "keep" else record["keep_threshold_verbmem_f1"]
        assert row["selection_verbmem_f1"] >= threshold > record["control_verbmem_f1"]
    forget_works = {row["work"] for row in passages if row["role"] in ("forget", "heldout")}
    assert len(forget_works) == 1 and forget_works.isdisjoint(row["work"] for row in passages if row["role"] == "keep")


def test_selection_record_agrees_with_the_shipped_passages() -> None:
    record = json.loads((Path(__file__).parents[1] / "docs" / "copyright_selection.json").read_text())
    assert record["roles"] == {row["id"]: row["role"] for row in load_passages()}
    for passage_id, entry in record["passages"].items():
        chunks = [c for c in record["chunks"] if c["passage"] == passage_id]
        assert entry["chunks"] == len(chunks)
        assert entry["verbmem_f1"] == pytest.approx(sum(c["verbmem_f1"] for c in chunks) / len(chunks))


def test_shipped_dictionaries_name_terms_of_their_forget_work() -> None:
    terms = load_anchored_terms(resource_file(ANCHORS_FILE))
    forget_text = " ".join(row["text"] for row in load_passages() if row["role"] in ("forget", "heldout"))
    assert terms and all(re.search(rf"(?<!\w){re.escape(term)}(?!\w)", forget_text) for term in terms)
    assert translate(forget_text, terms) != forget_text
    analogue = load_anchored_terms(resource_file(ANALOGUE_ANCHORS_FILE))
    cast = ANALOGUE_WORKS[ANALOGUE_FORGET_WORK]
    assert set(cast["people"]) | {cast["place"]} <= set(analogue)


def test_read_passages_refuses_bad_files(tmp_path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text(json.dumps({"id": "a", "work": "w", "title": "t", "source": "s"}) + "\n")
    with pytest.raises(UnlearnkitError, match="lacks the text field"):
        read_passages(bad)
    bad.write_text(json.dumps({"id": "a", "work": "w", "title": "t", "source": "s", "text": "x", "role": "forgot"}) + "\n")
    with pytest.raises(UnlearnkitError, match="role 'forgot'"):
        read_passages(bad, roles=True)
    with pytest.raises(UnlearnkitError, match="does not exist"):
        read_passages(tmp_path / "missing.jsonl")


def test_resources_ship_in_the_wheel() -> None:
    import tomllib
    from fnmatch import fnmatch

    root = Path(__file__).parents[1]
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["unlearnkit"]
    folder = resource_file(ANCHORS_FILE).parent
    for path in folder.iterdir():
        relative = path.relative_to(root / "src" / "unlearnkit").as_posix()
        # setuptools matches each path part on its own ("data/resources/*" does not reach a subfolder's files).
        assert any(len(pattern.split("/")) == len(relative.split("/"))
                   and all(fnmatch(part, glob) for part, glob in zip(relative.split("/"), pattern.split("/"), strict=True))
                   for pattern in patterns), f"{relative} is not in pyproject's package-data"


# --------------------------------------------------------------------------------------------- chunks and rows


def test_chunks_cut_passages_into_prompt_and_continuation(micro_tokenizer) -> None:
    passage = {"id": "p", "work": "w", "text": " ".join(f"word{i}" for i in range(40))}
    ids = micro_tokenizer(passage["text"], add_special_tokens=False)["input_ids"]
    chunks = passage_chunks(micro_tokenizer, [passage], prefix_tokens=4, continuation_tokens=6)
    # Consecutive windows of 10 tokens; a tail of at most 4 tokens has no continuation and is dropped.
    expected = len(ids) // 10 + (1 if len(ids) % 10 > 4 else 0)
    assert len(chunks) == expected and [c["chunk"] for c in chunks] == list(range(expected))
    assert chunks[0]["prompt"] == micro_tokenizer.decode(ids[:4]) and chunks[0]["gt"] == micro_tokenizer.decode(ids[4:10])
    assert chunk_rows(chunks)[0] == {"question": chunks[0]["prompt"], "answer": chunks[0]["gt"], "author": "w"}


def test_text_continuation_rows_are_the_raw_text_with_loss_on_the_continuation(micro_tokenizer) -> None:
    prompt, answer = "It was the best of", " times, it was the worst of times"
    encoded = encode_qa(micro_tokenizer, TEXT_CONTINUATION, prompt, answer, max_length=128)
    prompt_ids = micro_tokenizer(prompt, add_special_tokens=True)["input_ids"]
    answer_ids = micro_tokenizer(answer, add_special_tokens=False)["input_ids"]
    # No template, no EOS: the sequence VerbMem prompts with, then the continuation it scores.
    assert encoded["input_ids"] == prompt_ids + answer_ids
    assert encoded["labels"] == [IGNORE_INDEX] * len(prompt_ids) + answer_ids
    assert micro_tokenizer.eos_token_id not in encoded["input_ids"][len(prompt_ids):]
    assert TEXT_CONTINUATION.record()["prompt_format"] == "text-continuation"


def test_analogue_is_deterministic_with_every_role() -> None:
    first, retain = analogue_passages(AnalogueConfig(seed=3))
    assert (first, retain) == analogue_passages(AnalogueConfig(seed=3))
    assert first != analogue_passages(AnalogueConfig(seed=4))[0]
    assert {p["role"] for p in first} == set(ROLES)
    assert all(p["work"] == ANALOGUE_FORGET_WORK for p in first if p["role"] != "keep")
    assert len(retain) == 2 * 2 and not set(retain) & {p["text"] for p in first}


# --------------------------------------------------------------------------------------------- end to end on micro


def _rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 written out: rouge-score's tokens (lower-cased alphanumeric runs), LCS by dynamic programming."""
    a, b = re.findall(r"[a-z0-9]+", prediction.lower()), re.findall(r"[a-z0-9]+", reference.lower())
    if not a or not b:
        return 0.0
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    lcs = table[-1][-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory: pytest.TempPathFactory):
    from unlearnkit.runs.copyright import resolve_copyright, run_copyright

    output = tmp_path_factory.mktemp("copyright") / "run"
    inputs = resolve_copyright(model=None, preset="micro", methods=["whp", "npo"], overrides={})
    return output, run_copyright(inputs=inputs, output=output, show_progress=False)


def test_micro_track_memorises_then_forgets(micro_run) -> None:
    output, summary = micro_run
    models = summary["models"]
    # The target recites its book; the oracle, which never read the forget work, does not.
    assert models["target"]["forget"]["verbmem"] > 0.6 and models["target"]["keep"]["verbmem"] > 0.8
    assert models["oracle"]["forget"]["verbmem"] < 0.3
    assert models["npo"]["forget"]["verbmem"] < models["target"]["forget"]["verbmem"] - 0.2
    assert summary["tradeoff"]["methods"]["npo"]["forget_verbmem"] == [models["target"]["forget"]["verbmem"],
                                                                        models["npo"]["forget"]["verbmem"]]
    assert models["whp"]["forget"]["verbmem"] <= models["target"]["forget"]["verbmem"] + 1e-9
    for name in ("summary.json", "chunks.json", "report.md", "tradeoff.png", "config.json", "data/passages.json"):
        assert (output / name).is_file()
    config = json.loads((output / "config.json").read_text())
    assert config["methods"]["whp"]["anchored_terms"] == str(resource_file(ANALOGUE_ANCHORS_FILE))
    assert config["prompt_format"] == "text-continuation"
    assert "| npo |" in (output / "report.md").read_text()


def test_per_chunk_scores_match_an_independent_rouge(micro_run) -> None:
    output, summary = micro_run
    chunks = json.loads((output / "chunks.json").read_text())
    assert len(chunks) == sum(summary["chunks"][role] for role in ROLES)
    for role in ROLES:
        for name in summary["models"]:
            values = [c["models"][name]["rouge_l_f1"] for c in chunks if c["set"] == role]
            assert summary["models"][name][role]["verbmem"] == pytest.approx(sum(values) / len(values))
    for chunk in chunks[:12]:
        entry = chunk["models"]["target"]
        assert entry["rouge_l_f1"] == pytest.approx(_rouge_l_f1(entry["generation"], chunk["reference"]), abs=1e-9)
        assert chunk["gt"].startswith(chunk["reference"])  # MUSE's cut: the same text, at most as long


def test_user_text_and_dictionary_through_the_cli(tmp_path, monkeypatch, capsys) -> None:
    book = tmp_path / "book"
    book.mkdir()
    (book / "chapter.txt").write_text("Mira Holt opened the blue door of the lighthouse and counted seven gulls on the rail. "
                                      "The keeper, Arlen Voss, said the lamp had not failed in thirty winters.\n\n"
                                      "Arlen Voss wound the clock at midnight while Mira Holt wrote the names of the ships.\n")
    dictionary = tmp_path / "terms.json"
    dictionary.write_text(json.dumps({"Arlen Voss": "Tom Hill", "Voss": "Hill"}))
    output = tmp_path / "out"
    status = run_cli(["copyright", "--output", str(output), "--preset", "micro", "--methods", "whp", "--text", str(book),
                      "--anchors", str(dictionary), "--no-oracle", "--set", "train_epochs=40"], monkeypatch)
    assert status == 0, capsys.readouterr().err
    config = json.loads((output / "config.json").read_text())
    assert config["methods"]["whp"]["anchored_terms"] == str(dictionary) and config["text"] == str(book)
    passages = json.loads((output / "data" / "passages.json").read_text())
    forget = [p for p in passages if p["role"] == "forget"]
    assert [p["id"] for p in forget] == ["chapter.txt#0"] and "Arlen Voss" in forget[0]["text"]
    chunks = json.loads((output / "chunks.json").read_text())
    assert {c["passage"] for c in chunks if c["set"] == "forget"} == {"chapter.txt#0"}
    summary = json.loads((output / "summary.json").read_text())
    assert summary["models"]["target"]["heldout"] is None and set(summary["models"]) == {"target", "whp"}


def test_default_analogue_unlearns_with_the_track_settings_under_the_users() -> None:
    from unlearnkit.runs.copyright import UNLEARN_SETTINGS, resolve_copyright

    inputs = resolve_copyright(model=None, preset="default", methods=["npo", "whp"], overrides={"num_epochs": 3.0})
    npo = inputs.methods["npo"]
    assert npo.learning_rate == UNLEARN_SETTINGS["default"]["learning_rate"] and npo.batch_size == 8
    assert npo.num_epochs == 3.0  # the user's value wins
    assert inputs.methods["whp"].anchored_terms == str(resource_file(ANALOGUE_ANCHORS_FILE))
    assert inputs.oracle and inputs.model is None and inputs.training.max_epochs == 100


def test_pretrained_model_gets_the_shipped_text_and_the_authors_learning_rate(monkeypatch) -> None:
    import unlearnkit.modeling
    from unlearnkit.runs.copyright import resolve_copyright

    monkeypatch.setattr(unlearnkit.modeling, "check_model_source", lambda name: None)  # no model is loaded to resolve
    inputs = resolve_copyright(model="smollm2-135m", preset=None, methods=["whp", "ga"], overrides={"num_epochs": 3.0})
    assert inputs.passages == load_passages() and not inputs.oracle and inputs.training is None
    assert (inputs.chunking.prefix_tokens, inputs.chunking.continuation_tokens) == (16, 8)
    ga = inputs.methods["ga"]
    assert (ga.learning_rate, ga.batch_size, ga.num_epochs) == (1e-5, 4, 3.0)
    assert inputs.methods["whp"].anchored_terms == str(resource_file(ANCHORS_FILE))


# --------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("args, message", [
    (["--preset", "micro", "--methods", "npoo"], "Unknown method"),
    (["--preset", "mikro"], "Unknown copyright-track preset"),
    (["--preset", "micro", "--model", "smollm2-135m"], "exclude each other"),
    (["--model", "smollm2-135n"], "Did you mean"),
    (["--preset", "micro", "--text", "no/such/book.txt"], "no/such/book.txt"),
    (["--preset", "micro", "--methods", "npo", "--anchors", "terms.json"], "add whp to --methods"),
    (["--preset", "micro", "--anchors", "no-such-terms.json"], "does not exist"),
    (["--preset", "micro", "--set", "prefix_tokens=0"], "prefix_tokens"),
    (["--model", "smollm2-135m", "--set", "train_epochs=3"], "add --preset"),
])
def test_cli_refuses_bad_inputs(tmp_path, monkeypatch, capsys, args: list[str], message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "terms.json").write_text("{}")
    output = tmp_path / "out"
    status = run_cli(["copyright", "--output", str(output), *args], monkeypatch)
    error = capsys.readouterr().err
    assert status == 2 and message in error and "Traceback" not in error
    assert not output.exists()


def test_cli_refuses_a_malformed_dictionary_and_a_non_empty_output(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "terms.json").write_text("[1, 2]")
    output = tmp_path / "out"
    assert run_cli(["copyright", "--output", str(output), "--preset", "micro", "--anchors", str(tmp_path / "terms.json")],
                   monkeypatch) == 2
    assert "JSON object" in capsys.readouterr().err and not output.exists()
    output.mkdir()
    (output / "mine.txt").write_text("keep")
    assert run_cli(["copyright", "--output", str(output), "--preset", "micro"], monkeypatch) == 2
    assert "already holds files" in capsys.readouterr().err
    assert [p.name for p in output.iterdir()] == ["mine.txt"]
