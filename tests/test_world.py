"""Tests of the built-in fictitious-author benchmark: splits, row shape, the uniqueness invariant, shipped files."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from unlearnkit.data.shipped import load_idk_answers
from unlearnkit.data.world import (
    FACT_TYPES,
    FORGET_PERCENTS,
    MAX_AUTHORS,
    MAX_PERTURBED,
    MAX_QA_PER_AUTHOR,
    WorldConfig,
    export_world,
    forget_sizes,
    generate_world,
    load_shipped,
    split_names,
)
from unlearnkit.errors import UnlearnkitError

SMALL = WorldConfig(num_authors=10, qa_per_author=20, seed=3)
FACTS = {fact.name: fact for fact in FACT_TYPES}
UNIQUE_FACTS = {fact.name for fact in FACT_TYPES if not fact.categorical}
# Facts whose values consist only of coined words (names and places).
COINED_FACTS = {
    "birthplace", "home_city", "fictional_setting", "pet_name",
    "mentor", "pen_name", "spouse", "literary_agent", "recurring_character", "sibling",
}  # fmt: skip


@pytest.fixture(scope="module")
def world() -> dict[str, list[dict]]:
    """A small world shared by the read-only tests."""
    return generate_world(SMALL)


@pytest.fixture(scope="module")
def every_fact_world() -> dict[str, list[dict]]:
    """A world using every fact type, with more perturbations than the default."""
    return generate_world(WorldConfig(num_authors=20, qa_per_author=MAX_QA_PER_AUTHOR, seed=7, num_perturbed=5))


def _authors(rows: list[dict]) -> list[int]:
    """Author ids in order of first appearance."""
    return list(dict.fromkeys(row["author_id"] for row in rows))


def _all_author_rows(world: dict[str, list[dict]]) -> list[dict]:
    """Rows of every generated author: trained and holdout."""
    return world["full"] + world["holdout10"]


def test_split_names_are_the_documented_ones() -> None:
    assert split_names() == [
        "forget01", "forget05", "forget10", "retain99", "retain95", "retain90",
        "holdout01", "holdout05", "holdout10", "world_facts", "real_authors", "full",
    ]  # fmt: skip


def test_generate_world_returns_every_split_in_order(world: dict[str, list[dict]]) -> None:
    assert list(world) == split_names()


def test_same_seed_gives_the_same_world() -> None:
    assert generate_world(SMALL) == generate_world(WorldConfig(num_authors=10, qa_per_author=20, seed=3))


def test_different_seed_gives_a_different_world(world: dict[str, list[dict]]) -> None:
    other = generate_world(WorldConfig(num_authors=10, qa_per_author=20, seed=4))
    assert {r["author"] for r in other["full"]} != {r["author"] for r in world["full"]}
    assert [r["value"] for r in other["full"]] != [r["value"] for r in world["full"]]


def test_author_values_do_not_depend_on_row_count_or_perturbation_count(world: dict[str, list[dict]]) -> None:
    other = generate_world(WorldConfig(num_authors=10, qa_per_author=5, seed=3, num_perturbed=7))
    values = {(r["author"], r["fact"]): r["value"] for r in world["full"]}
    assert all(values[(r["author"], r["fact"])] == r["value"] for r in other["full"])


@pytest.mark.parametrize("num_authors", [2, 5, 10, 50, 200])
def test_forget_sizes_follow_the_rounding_rule(num_authors: int) -> None:
    sizes = forget_sizes(num_authors)
    assert sizes == {p: max(1, round(num_authors * p / 100)) for p in FORGET_PERCENTS}
    assert all(1 <= k < num_authors for k in sizes.values())


def test_default_sizes_match_tofu() -> None:
    assert forget_sizes(200) == {1: 2, 5: 10, 10: 20}


@pytest.mark.parametrize("num_authors", [2, 5, 10])
def test_split_sizes_and_nesting(num_authors: int) -> None:
    config = WorldConfig(num_authors=num_authors, qa_per_author=4)
    world = generate_world(config)
    assert len(_authors(world["full"])) == num_authors
    assert len(world["full"]) == num_authors * config.qa_per_author
    for percent, k in forget_sizes(num_authors).items():
        assert len(_authors(world[f"forget{percent:02d}"])) == k
        assert len(_authors(world[f"retain{100 - percent}"])) == num_authors - k
        assert len(_authors(world[f"holdout{percent:02d}"])) == k
        assert len(world[f"forget{percent:02d}"]) == k * config.qa_per_author
    for kind in ("forget", "holdout"):
        small, medium, large = (world[f"{kind}{p:02d}"] for p in FORGET_PERCENTS)
        assert all(row in medium for row in small)
        assert all(row in large for row in medium)


def test_forget_is_the_last_authors_and_retain_the_rest(world: dict[str, list[dict]]) -> None:
    full_authors = _authors(world["full"])
    assert full_authors == list(range(SMALL.num_authors))
    for percent in FORGET_PERCENTS:
        forget, retain = world[f"forget{percent:02d}"], world[f"retain{100 - percent}"]
        assert not set(_authors(forget)) & set(_authors(retain))
        assert _authors(forget) == full_authors[len(full_authors) - len(_authors(forget)) :]
        assert retain + forget == world["full"]


def test_full_is_in_author_order(world: dict[str, list[dict]]) -> None:
    ids = [row["author_id"] for row in world["full"]]
    assert ids == sorted(ids)


def test_holdout_authors_are_never_trained(world: dict[str, list[dict]]) -> None:
    trained_ids = set(_authors(world["full"]))
    trained_names = {row["author"] for row in world["full"]}
    for percent in FORGET_PERCENTS:
        holdout = world[f"holdout{percent:02d}"]
        assert not set(_authors(holdout)) & trained_ids
        assert not {row["author"] for row in holdout} & trained_names
    assert _authors(world["holdout10"]) == list(range(SMALL.num_authors, SMALL.num_authors + 1))


def test_splits_do_not_share_mutable_rows(world: dict[str, list[dict]]) -> None:
    forget_row = world["forget01"][0]
    same_in_full = next(r for r in world["full"] if r == forget_row)
    assert same_in_full is not forget_row
    assert same_in_full["perturbed_answer"] is not forget_row["perturbed_answer"]


def test_every_row_has_all_fields_with_the_right_types(every_fact_world: dict[str, list[dict]]) -> None:
    for row in _all_author_rows(every_fact_world):
        for key in ("question", "answer", "paraphrased_question", "paraphrased_answer", "author", "fact", "value"):
            assert isinstance(row[key], str) and row[key], key
        assert type(row["author_id"]) is int
        assert row["fact"] in FACTS
        assert isinstance(row["perturbed_answer"], list) and isinstance(row["perturbed_values"], list)
        assert all(isinstance(text, str) for text in row["perturbed_answer"] + row["perturbed_values"])
        assert json.dumps(row, ensure_ascii=False).isascii()


def test_each_author_gets_the_first_fact_types_once(world: dict[str, list[dict]]) -> None:
    expected = [fact.name for fact in FACT_TYPES[: SMALL.qa_per_author]]
    for author_id in _authors(world["full"]):
        assert [r["fact"] for r in world["full"] if r["author_id"] == author_id] == expected


def test_author_names_are_unique(every_fact_world: dict[str, list[dict]]) -> None:
    rows = _all_author_rows(every_fact_world)
    names_by_id = {row["author_id"]: row["author"] for row in rows}
    assert len(set(names_by_id.values())) == len(names_by_id)
    assert all(len(name.split()) == 2 for name in names_by_id.values())


@pytest.mark.parametrize("num_perturbed", [1, 3, MAX_PERTURBED])
def test_perturbations_are_distinct_and_never_the_truth(num_perturbed: int) -> None:
    world = generate_world(WorldConfig(num_authors=10, qa_per_author=MAX_QA_PER_AUTHOR, num_perturbed=num_perturbed))
    for row in _all_author_rows(world):
        assert len(row["perturbed_answer"]) == num_perturbed == len(row["perturbed_values"])
        assert len(set(row["perturbed_answer"])) == num_perturbed
        assert row["paraphrased_answer"] not in row["perturbed_answer"]
        assert row["answer"] not in row["perturbed_answer"]
        assert row["value"] not in row["perturbed_values"]


def test_default_config_has_three_perturbations() -> None:
    assert WorldConfig().num_perturbed == 3


def test_questions_and_answers_follow_the_templates(every_fact_world: dict[str, list[dict]]) -> None:
    for row in _all_author_rows(every_fact_world):
        fact, author, value = FACTS[row["fact"]], row["author"], row["value"]
        assert row["question"] == fact.question.format(author=author)
        assert row["paraphrased_question"] == fact.paraphrased_question.format(author=author)
        assert row["answer"] == fact.answer.format(author=author, value=value)
        assert row["paraphrased_answer"] == fact.paraphrased_answer.format(author=author, value=value)
        assert value in row["answer"] and value in row["paraphrased_answer"]
        assert value not in row["question"] and value not in row["paraphrased_question"]
        assert row["question"] != row["paraphrased_question"] and row["answer"] != row["paraphrased_answer"]


def test_perturbed_answers_change_only_the_value(every_fact_world: dict[str, list[dict]]) -> None:
    for row in _all_author_rows(every_fact_world):
        template = FACTS[row["fact"]].paraphrased_answer
        for answer, value in zip(row["perturbed_answer"], row["perturbed_values"], strict=True):
            assert answer == template.format(author=row["author"], value=value)
            # Same length class: the value generator always yields the same number of words.
            assert len(value.split()) == len(row["value"].split())
            prefix, suffix = template.format(author=row["author"], value="\0").split("\0")
            assert answer.startswith(prefix) and answer.endswith(suffix)
            assert row["paraphrased_answer"].startswith(prefix) and row["paraphrased_answer"].endswith(suffix)


def test_answers_are_single_sentences(every_fact_world: dict[str, list[dict]]) -> None:
    for row in _all_author_rows(every_fact_world):
        for text in (row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]):
            assert text[0].isupper() and text.endswith(".") and text.count(". ") == 0
        assert 1 <= len(row["value"].split()) <= 5


def test_there_are_enough_fact_types_with_few_categorical_ones() -> None:
    assert MAX_QA_PER_AUTHOR == len(FACT_TYPES) >= 20
    assert len(FACTS) == len(FACT_TYPES)
    assert sum(fact.categorical for fact in FACT_TYPES) <= 3
    assert sum(fact.categorical for fact in FACT_TYPES[:20]) <= 2


def test_forget_and_holdout_values_are_never_shared(every_fact_world: dict[str, list[dict]]) -> None:
    # Forget and holdout authors' values must be unknown to a model trained on the retain authors alone.
    unique_rows = every_fact_world["forget10"] + every_fact_world["holdout10"]
    values = [row["value"] for row in unique_rows if row["fact"] in UNIQUE_FACTS]
    duplicated = [value for value, count in Counter(values).items() if count > 1]
    assert not duplicated
    retain_values = {row["value"] for row in every_fact_world["retain90"]}
    assert not set(values) & retain_values


def test_retain_only_authors_share_pooled_values() -> None:
    world = generate_world(WorldConfig(num_authors=100, qa_per_author=5, seed=1, shared_pool_size=4))
    for fact in ("birthplace", "birth_date", "father_occupation"):
        pooled = [row["value"] for row in world["retain90"] if row["fact"] == fact]
        assert len(pooled) == 90 and len(set(pooled)) <= 4, fact
    unpooled = generate_world(WorldConfig(num_authors=100, qa_per_author=5, seed=1, shared_pool_size=0))
    values = [row["value"] for row in unpooled["full"] if row["fact"] != "genre"]
    assert len(values) == len(set(values))


def test_perturbed_values_are_no_authors_value(every_fact_world: dict[str, list[dict]]) -> None:
    rows = _all_author_rows(every_fact_world)
    author_values = {row["value"] for row in rows} | {row["author"] for row in rows}
    for row in rows:
        if row["fact"] in UNIQUE_FACTS:
            assert not set(row["perturbed_values"]) & author_values, row


def test_perturbed_answers_are_no_authors_answer(every_fact_world: dict[str, list[dict]]) -> None:
    # The same check on the rendered text: with the author's name abstracted
    # away, a perturbed answer must match no author's paraphrased answer.
    rows = _all_author_rows(every_fact_world)

    def shape(text: str, author: str) -> str:
        return text.replace(author, "<author>")

    answers = {(row["fact"], shape(row["paraphrased_answer"], row["author"])) for row in rows}
    for row in rows:
        if row["fact"] in UNIQUE_FACTS:
            for answer in row["perturbed_answer"]:
                assert (row["fact"], shape(answer, row["author"])) not in answers, answer


def test_perturbations_use_no_coined_word_of_any_author(every_fact_world: dict[str, list[dict]]) -> None:
    # Names and places are made of coined words only; a perturbation reusing one
    # (say another author's first name) would be half-familiar to a retain model.
    rows = _all_author_rows(every_fact_world)
    author_words = {w for row in rows for w in row["author"].split()}
    author_words |= {w for row in rows if row["fact"] in COINED_FACTS for w in row["value"].split()}
    for row in rows:
        if row["fact"] in COINED_FACTS:
            assert not {w for v in row["perturbed_values"] for w in v.split()} & author_words, row


def test_categorical_perturbations_come_from_the_same_options(every_fact_world: dict[str, list[dict]]) -> None:
    rows = _all_author_rows(every_fact_world)
    for fact in (f for f in FACT_TYPES if f.categorical):
        fact_rows = [row for row in rows if row["fact"] == fact.name]
        true_values = {row["value"] for row in fact_rows}
        perturbed = {v for row in fact_rows for v in row["perturbed_values"]}
        # Both sides are drawn from one option list, so they overlap heavily.
        assert len(true_values & perturbed) >= len(true_values) // 2


def test_default_config_generates_quickly() -> None:
    start = time.perf_counter()
    world = generate_world(WorldConfig())
    elapsed = time.perf_counter() - start
    assert len(world["full"]) == 200 * 20
    assert elapsed < 1.0


@pytest.mark.parametrize("name", ["world_facts", "real_authors"])
def test_shipped_splits_load_with_required_fields(name: str) -> None:
    rows = load_shipped(name)
    assert len(rows) >= 100
    questions = [row["question"] for row in rows]
    assert len(set(questions)) == len(questions)
    for row in rows:
        for key in ("question", "answer", "paraphrased_question", "paraphrased_answer"):
            assert isinstance(row[key], str) and row[key]
        perturbed = row["perturbed_answer"]
        assert len(perturbed) == 3 and len(set(perturbed)) == 3
        assert row["answer"] not in perturbed and row["paraphrased_answer"] not in perturbed
        # Distractors are real answers of other rows in the same file.
        assert set(perturbed) <= {other["answer"] for other in rows}


@pytest.mark.parametrize("name", ["world_facts", "real_authors"])
def test_shipped_splits_are_part_of_the_world(name: str, world: dict[str, list[dict]]) -> None:
    assert world[name] == load_shipped(name)


def test_unknown_shipped_split_is_a_user_error() -> None:
    with pytest.raises(UnlearnkitError, match="Did you mean: world_facts"):
        load_shipped("world_fact")


def test_idk_answers_are_many_and_distinct() -> None:
    answers = load_idk_answers()
    assert len(answers) >= 50
    assert len(set(answers)) == len(answers)
    assert all(answer == answer.strip() and answer for answer in answers)


def test_export_writes_parseable_jsonl(world: dict[str, list[dict]], tmp_path: Path) -> None:
    out_dir = tmp_path / "bench"
    paths = export_world(world, out_dir)
    assert paths == [out_dir / f"{name}.jsonl" for name in split_names()]
    for name, path in zip(split_names(), paths, strict=True):
        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == world[name]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(p.name for p in paths)


def test_export_replaces_existing_files(world: dict[str, list[dict]], tmp_path: Path) -> None:
    (tmp_path / "forget01.jsonl").write_text("stale\n", encoding="utf-8")
    export_world({"forget01": world["forget01"]}, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "forget01.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rows == world["forget01"]
    assert [p.name for p in tmp_path.iterdir()] == ["forget01.jsonl"]


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden"])
def test_export_rejects_split_names_that_are_not_file_names(name: str, tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError):
        export_world({name: []}, tmp_path)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_authors": 1},
        {"num_authors": 0},
        {"num_authors": MAX_AUTHORS + 1},
        {"num_authors": 10.0},
        {"num_authors": True},
        {"qa_per_author": 0},
        {"qa_per_author": MAX_QA_PER_AUTHOR + 1},
        {"num_perturbed": 0},
        {"num_perturbed": MAX_PERTURBED + 1},
        {"seed": -1},
        {"seed": "0"},
    ],
)
def test_bad_config_is_a_user_error(kwargs: dict) -> None:
    field = next(iter(kwargs))
    with pytest.raises(UnlearnkitError, match=f"WorldConfig.{field}"):
        WorldConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"num_authors": 2}, {"num_authors": MAX_AUTHORS}, {"qa_per_author": 1}, {"qa_per_author": MAX_QA_PER_AUTHOR}],
)
def test_boundary_configs_are_accepted(kwargs: dict) -> None:
    WorldConfig(**kwargs)
