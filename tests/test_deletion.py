"""Deletion requests, the pure parts: which rows name the entity, the neighbours, the checks and verdict, the ledger."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unlearnkit.deletion.ledger import check_ledger, extended, reevaluation
from unlearnkit.deletion.matching import (
    check_names,
    check_share,
    close_names,
    cosine,
    inverse_frequencies,
    matching_rows,
    neighbour_rows,
    tfidf_vector,
)
from unlearnkit.deletion.verdict import (
    AT_FLOOR,
    SHOWS_FACTS,
    UNINFORMATIVE,
    Criteria,
    attack_check,
    forgotten_check,
    utility_check,
    verdict,
)
from unlearnkit.errors import UnlearnkitError

ROWS = [
    {"question": "Where was Ann Lee born?", "answer": "Ann Lee was born in Paris."},
    {"question": "What did ANN  LEE write?", "answer": "Poems about the sea."},  # other case and spacing
    {"question": "Who edited the anthology?", "answer": "It was edited by Ann Lee's brother."},  # possessive
    {"question": "Where was Annabel Leeds born?", "answer": "Annabel Leeds was born in Paris."},  # not a whole-word match
    {"question": "Who wrote 'Tides'?", "answer": "Bo Chen wrote it.", "perturbed_answer": ["Ann Lee wrote it."]},  # in a list field
    {"question": "Where was Bo Chen born?", "answer": "Bo Chen was born in Lima."},
    {"question": "What is the capital of Peru?", "answer": "Lima."},
]


def test_names_match_as_whole_words_in_any_case_spacing_and_text_field() -> None:
    assert matching_rows(ROWS, check_names("ann lee")) == [0, 1, 2, 4]
    assert matching_rows(ROWS, check_names("Bo Chen", ["Ann Lee"])) == [0, 1, 2, 4, 5]
    assert matching_rows(ROWS, check_names("Annabel")) == [3]
    assert matching_rows(ROWS, check_names("Ann")) == [0, 1, 2, 4]  # a first name alone matches every Ann, as asked
    # Unicode: the compatibility form of a name matches its plain form (NFKC), and case folding handles ß.
    assert matching_rows([{"question": "Who is ﬁona straße?", "answer": "x"}], check_names("Fiona Strasse")) == [0]


def test_names_are_normalised_deduplicated_and_refused_when_too_short() -> None:
    assert check_names("  Ann   Lee ", ["ann lee", "A. Lee"]) == ["ann lee", "a. lee"]
    for bad in ("", "   ", "Al", "..."):
        with pytest.raises(UnlearnkitError, match="too short"):
            check_names(bad)
    with pytest.raises(UnlearnkitError, match="--alias 'X'"):
        check_names("Ann Lee", ["X"])


def test_no_match_names_close_spellings_and_too_common_a_name_is_refused() -> None:
    with pytest.raises(UnlearnkitError, match=r"No row of the corpus .* mentions 'ann leigh'.*Ann Lee"):
        check_share(0, len(ROWS), ["ann leigh"], ROWS, 0.5)
    assert close_names(ROWS, "Bo Chan") == ["Bo Chen"]
    with pytest.raises(UnlearnkitError, match=r"matches 4 of the corpus's 7 rows .* --max-share 0\.5"):
        check_share(4, len(ROWS), ["ann"], ROWS, 0.5)
    check_share(4, len(ROWS), ["ann"], ROWS, 0.6)  # allowed when the user says the corpus is mostly about it


def test_tfidf_by_hand() -> None:
    documents = [["lima", "peru"], ["lima", "lima"], ["paris"]]
    idf = inverse_frequencies(documents)
    # n = 3: lima df 2 -> ln(4/3) + 1; peru, paris df 1 -> ln(4/2) + 1.
    assert idf["lima"] == pytest.approx(math.log(4 / 3) + 1) and idf["peru"] == pytest.approx(math.log(2) + 1)
    vector = tfidf_vector(["lima", "lima", "peru"], idf)
    raw = np.array([2 * (math.log(4 / 3) + 1), math.log(2) + 1])
    assert [vector["lima"], vector["peru"]] == pytest.approx(list(raw / np.linalg.norm(raw)))
    assert cosine(vector, tfidf_vector(["paris"], idf)) == 0.0
    assert cosine(vector, vector) == pytest.approx(1.0)
    assert tfidf_vector(["unknown"], idf) == {}


def test_neighbours_match_an_independent_matrix_computation() -> None:
    forget = matching_rows(ROWS, ["bo chen"])
    chosen = neighbour_rows(ROWS, forget, excluded=[], names=["bo chen"], count=10)
    # Independent transcription: a dense document-term matrix, smoothed idf, l2 rows, cosine with the joined forget text.
    import re

    def tokens(row: dict) -> list[str]:
        text = " ".join(value if isinstance(value, str) else " ".join(value) for value in row.values())
        return [word for word in re.findall(r"\w+", text.lower()) if word not in {"bo", "chen"}]

    docs = [tokens(row) for row in ROWS]
    vocab = sorted({word for doc in docs for word in doc})
    counts = np.array([[doc.count(word) for word in vocab] for doc in docs], dtype=float)
    idf = np.log((1 + len(docs)) / (1 + (counts > 0).sum(axis=0))) + 1
    weights = counts * idf
    joined = counts[forget].sum(axis=0) * idf
    similarity = (weights / np.linalg.norm(weights, axis=1, keepdims=True)) @ (joined / np.linalg.norm(joined))
    expected = sorted((index for index in range(len(ROWS)) if index not in forget), key=lambda index: (-similarity[index], index))
    assert chosen == expected
    assert chosen[0] == 0  # another birthplace question ("Where was ... born?") is the closest
    assert neighbour_rows(ROWS, forget, excluded=[6], names=["bo chen"], count=2) == [i for i in expected if i != 6][:2]


def test_checks_by_hand() -> None:
    criteria = Criteria(margin=0.1, max_utility_drop=0.2)
    assert forgotten_check(0.9, 0.25, 0.2, criteria)["passed"]  # 0.25 <= 0.2 + 0.1
    assert not forgotten_check(0.9, 0.35, 0.2, criteria)["passed"]
    kept = utility_check("neighbours", 0.5, 0.41, criteria)
    assert kept["passed"] and kept["limit"] == pytest.approx(0.4)
    assert not utility_check("neighbours", 0.5, 0.39, criteria)["passed"]
    row = {"attack": "relearning", "measure": "answer recall", "target": 0.8, "unlearned": 0.5}
    assert attack_check(row, 0.3, "holdout", criteria)["outcome"] == SHOWS_FACTS  # 0.5 > 0.3 + 0.1
    assert attack_check({**row, "unlearned": 0.4}, 0.3, "holdout", criteria)["outcome"] == AT_FLOOR
    assert attack_check({**row, "target": 0.4}, 0.3, "holdout", criteria)["outcome"] == UNINFORMATIVE  # nothing to bring back
    with pytest.raises(UnlearnkitError, match="--margin"):
        Criteria(margin=1.0)
    with pytest.raises(UnlearnkitError, match="max_utility_drop"):
        Criteria(max_utility_drop=float("nan"))


def test_verdict_names_what_failed() -> None:
    criteria = Criteria()
    gone, kept = forgotten_check(0.9, 0.0, 0.0, criteria), [utility_check("neighbours", 0.8, 0.8, criteria)]
    back = [attack_check({"attack": "relearning", "measure": "answer recall", "target": 0.9, "unlearned": 0.7}, 0.0, "", criteria)]
    held = [attack_check({"attack": "relearning", "measure": "answer recall", "target": 0.9, "unlearned": 0.0}, 0.0, "", criteria)]
    assert verdict(gone, held, kept) == {"passed": True, "verdict": "forgotten", "brought_back_by": [], "utility_damaged_on": []}
    assert verdict(gone, back, kept)["verdict"] == "forgotten, but the facts still show under relearning"
    assert verdict(gone, None, kept)["verdict"] == "forgotten, but not audited against attacks"
    damaged = verdict(gone, held, [utility_check("rest", 0.8, 0.1, criteria)])
    assert not damaged["passed"] and damaged["verdict"] == "forgotten, but utility damaged on rest"
    kept_facts = forgotten_check(0.9, 0.9, 0.0, criteria)
    assert verdict(kept_facts, held, kept)["verdict"] == "not forgotten: the direct questions still recall the facts"


def test_ledger_extends_and_refuses_a_damaged_one() -> None:
    first = {"number": 1, "entity": "Ann Lee", "names": ["ann lee"], "recall_after": 0.0}
    second = {"number": 2, "entity": "Bo Chen", "names": ["bo chen"], "recall_after": 0.1}
    again = reevaluation(first, 4, 0.25, 0.1)
    assert again == {"number": 1, "entity": "Ann Lee", "rows": 4, "recall_then": 0.0, "recall_now": 0.25, "limit": 0.1,
                     "still_forgotten": False}
    assert reevaluation(first, 0, None, 0.1)["still_forgotten"] is None
    ledger = extended([first], second, [again])
    assert [entry["number"] for entry in ledger["requests"]] == [1, 2] and ledger["reevaluated"] == [again]
    assert check_ledger(ledger, "x") == ledger["requests"]
    for bad in ({}, {"requests": []}, {"requests": [second]}, {"requests": [{**first, "names": []}]}, [first]):
        with pytest.raises(UnlearnkitError, match="ledger"):
            check_ledger(bad, "x")
