"""The data checks: each finding on hand-written rows, and none on the built-in benchmark's data."""

from __future__ import annotations

import pytest

from unlearnkit.data.checks import (
    check_rows,
    duplicate_questions,
    forget_retain_overlap,
    normalise,
    target_prefers_perturbed,
    too_long,
    truth_ratio_fields,
    wording_overlap,
)
from unlearnkit.data.world import WorldConfig, generate_world


def row(question: str, answer: str, paraphrase: str | None = None, perturbed: list[str] | None = None) -> dict:
    data = {"question": question, "answer": answer}
    if paraphrase is not None:
        data.update(paraphrased_answer=paraphrase, perturbed_answer=perturbed)
    return data


def test_wording_overlap_is_unigram_f1_by_hand() -> None:
    # "the cat sat" vs "the cat ran away": 2 shared words, precision 2/3, recall 2/4, F1 = 2*(2/3)(1/2)/(2/3+1/2) = 4/7.
    assert wording_overlap("The cat sat.", "the CAT ran away") == pytest.approx(4 / 7)
    assert wording_overlap("a a b", "a b b") == pytest.approx(2 / 3)  # multisets: {a:1, b:1} shared of 3 and 3
    assert wording_overlap("same words", "Same, words!") == 1.0
    assert wording_overlap("nothing", "shared") == 0.0


def test_normalise_ignores_case_and_whitespace() -> None:
    assert normalise("  Where was  Ann\tborn? ") == "where was ann born?"


def test_duplicate_questions_name_the_repeating_rows() -> None:
    rows = [row("Who is A?", "x"), row("who is  a?", "y"), row("Who is B?", "z"), row("Who is A?", "w")]
    [finding] = duplicate_questions(rows, "forget data")
    assert finding.check == "duplicate_question" and finding.rows == (2, 4) and finding.total == 4
    assert duplicate_questions(rows[2:3], "forget data") == []


def test_forget_retain_overlap_after_normalising() -> None:
    forget = [row("Where was Ann born?", "Paris."), row("What does Ann write?", "Poems.")]
    retain = [row("WHERE  was ann born?", "Paris."), row("Who is Bob?", "A baker.")]
    [finding] = forget_retain_overlap(forget, retain)
    assert finding.rows == (1,) and "retain oracle" in finding.effect
    assert forget_retain_overlap(forget[1:], retain) == []


def test_perturbed_answers_that_copy_the_answer_are_found() -> None:
    good = row("Where was Ann born?", "Ann was born in Paris.", "Paris is the birthplace of Ann.",
               ["Rome is the birthplace of Ann.", "Oslo is the birthplace of Ann."])
    bad = row("Where was Bob born?", "Bob was born in Paris.", "Paris is the birthplace of Bob.",
              ["Bob was born in Rome.", "Bob was born in Oslo."])
    same = row("Where was Cy born?", "Cy was born in Paris.", "cy was born in  Paris.", ["Cy was born in Rome."])
    findings = {finding.check: finding for finding in truth_ratio_fields([good, bad, same], "retain data")}
    assert findings["perturbed_follow_answer"].rows == (2,)
    assert findings["paraphrase_is_answer"].rows == (3,)
    assert "measures wording" in findings["perturbed_follow_answer"].effect
    # By hand for row 2: "Bob was born in Rome" vs the answer shares 4 of 5 and 5 words (F1 0.8), vs the paraphrase
    # "Paris is the birthplace of Bob" 1 word ("bob") of 5 and 6 (F1 2/11): 0.8 > 2/11 + 0.1.
    assert wording_overlap("Bob was born in Rome.", "Bob was born in Paris.") == pytest.approx(0.8)
    assert wording_overlap("Bob was born in Rome.", "Paris is the birthplace of Bob.") == pytest.approx(2 / 11)


def test_utility_sets_skip_the_paraphrase_checks() -> None:
    rows = [row("Capital of France?", "Paris", "Paris", ["Rome", "Oslo"])]
    assert check_rows(rows, "world facts", paraphrased=False) == []
    assert [finding.check for finding in check_rows(rows, "forget data")] == ["paraphrase_is_answer"]


def test_too_long_and_target_preference() -> None:
    [finding] = too_long([10, 300, 12, 257], 256, "forget data")
    assert finding.rows == (2, 4)
    assert too_long([256], 256, "forget data") == []
    # R = p(paraphrase) / p(perturbed): below 1 the perturbed answers are preferred.
    [finding] = target_prefers_perturbed([0.5, 0.2, 2.0], "retain data")
    assert finding.rows == (1, 2) and "model utility" in finding.effect
    assert target_prefers_perturbed([0.5, 2.0], "retain data") == []  # exactly half is not "most"


def test_findings_describe_rows_and_serialise() -> None:
    [finding] = too_long(list(range(300, 315)), 256, "forget data")
    assert "15 of 15 rows: 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ..." in finding.describe()
    assert finding.to_json()["rows"] == list(range(1, 16))


def test_the_builtin_benchmark_data_passes_every_check() -> None:
    world = generate_world(WorldConfig())
    for name, rows in world.items():
        retain = world["retain90"] if name.startswith("forget") else None
        assert check_rows(rows, name, retain, paraphrased=name not in ("world_facts", "real_authors")) == [], name
