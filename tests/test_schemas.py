"""TOFU and MUSE loaders on small local fixtures written in the hubs' exact schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from unlearnkit.data import schemas
from unlearnkit.data.qa import load_qa
from unlearnkit.data.schemas import load_rows, load_texts, parse_source
from unlearnkit.errors import UnlearnkitError

FIXTURES = Path(__file__).parent / "fixtures"
TOFU = FIXTURES / "tofu"
MUSE = FIXTURES / "muse-news"


def test_tofu_perturbed_json_lines_under_a_json_name() -> None:
    rows = load_rows(f"tofu:forget01_perturbed@{TOFU}")
    assert len(rows) == 2
    assert rows[0]["question"] == "Where was Basil Mahfouz Al-Kuwaiti born?"
    assert rows[0]["perturbed_answer"][2] == "Basil Mahfouz Al-Kuwaiti was born in Amman, Jordan."
    assert rows[1]["paraphrased_question"] == "Which genre is Nikolai Abilov celebrated for?"  # extra fields are kept


def test_tofu_names_work_wherever_qa_data_is_accepted() -> None:
    rows = load_qa(f"tofu:forget01@{TOFU}", role="forget")
    assert rows[0]["answer"] == "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait."
    facts = load_qa(f"tofu:real_authors_perturbed@{TOFU}", role="real_authors")
    assert facts[1]["perturbed_answer"] == ["Edgar Allan Poe", "Mark Twain", "Jack London"]


def test_muse_parquet_shards_json_lists_and_knowmem_as_qa() -> None:
    texts = load_texts(f"muse-news:raw/forget@{MUSE}")  # hub layout: raw/forget-00000-of-00001.parquet
    assert len(texts) == 4 and texts[1].startswith("A rare white owl")
    verbatim = load_rows(f"muse-news:verbmem@{MUSE}")  # the only split, named implicitly
    assert set(verbatim[0]) == {"prompt", "gt"}
    retain_qa = load_qa(f"muse-news:knowmem/retain_qa@{MUSE}", role="retain")  # Parquet shard
    assert retain_qa[0] == {"question": "What did the museum open?", "answer": "a new gallery of old maps"}
    forget_qa = load_qa(f"muse-news:knowmem/forget_qa@{MUSE}", role="forget")  # JSON list (the MUSE repository's layout)
    assert forget_qa[1]["answer"] == "north"


def test_hub_names_reach_load_dataset_with_the_right_config_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    calls = []

    def fake_load_dataset(name: str, config: str, split: str) -> list[dict]:
        calls.append((name, config, split))
        return [{"question": "Q?", "answer": "A."}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    load_rows("tofu:forget10")
    load_rows("muse-books:knowmem/retain_qa_icl")
    assert calls == [("locuslab/TOFU", "forget10", "train"), ("muse-bench/MUSE-Books", "knowmem", "retain_qa_icl")]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("tofu:forget11", "no subset .forget11.. Did you mean: forget10"),
        ("muse-news:knowmem", "several splits"),
        ("muse-news:raw/retain3", "no split 'retain3'"),
        ("tofu:forget10/train", "no split"),
        ("muse-news:verbmem@", "must be followed by the folder"),
    ],
)
def test_bad_names_are_refused_by_name(name: str, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        parse_source(name)


def test_missing_field_is_named(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (TOFU / "forget01_perturbed.json").read_text().splitlines()]
    del rows[1]["paraphrased_answer"]
    (tmp_path / "forget01_perturbed.json").write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(UnlearnkitError, match=r"Row 2 of tofu:forget01_perturbed@.* has no field 'paraphrased_answer'"):
        load_rows(f"tofu:forget01_perturbed@{tmp_path}")


def test_muse_wrong_field_name_is_named_and_a_field_map_reads_it(tmp_path: Path) -> None:
    shutil.copytree(MUSE, tmp_path / "muse")
    path = tmp_path / "muse" / "verbmem" / "forget.json"
    items = [{"prompt": item["prompt"], "continuation": item["gt"]} for item in json.loads(path.read_text())]
    path.write_text(json.dumps(items))
    with pytest.raises(UnlearnkitError, match="has no field 'gt'"):
        load_rows(f"muse-news:verbmem@{tmp_path / 'muse'}")
    rows = load_rows(f"muse-news:verbmem@{tmp_path / 'muse'}", fields={"gt": "continuation"})
    assert rows[0]["gt"] == items[0]["continuation"] and "continuation" not in rows[0]


def test_perturbed_answer_must_be_a_list(tmp_path: Path) -> None:
    (tmp_path / "real_authors_perturbed.json").write_text(json.dumps([{"question": "Q?", "answer": "A", "perturbed_answer": "B"}]))
    with pytest.raises(UnlearnkitError, match="'perturbed_answer' must be a non-empty list"):
        load_rows(f"tofu:real_authors_perturbed@{tmp_path}")


def test_text_subsets_are_refused_as_qa_data_and_missing_files_name_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError, match="holds text rows"):
        load_qa(f"muse-news:raw/forget@{MUSE}", role="forget")
    with pytest.raises(UnlearnkitError, match=r"forget10\.json, forget10\.jsonl"):
        load_rows(f"tofu:forget10@{tmp_path}")


def test_every_subset_lists_its_fields() -> None:
    assert schemas.TOFU_SUBSETS["forget10_perturbed"].fields == ("question", "answer", "paraphrased_answer", "perturbed_answer")
    assert schemas.MUSE_SUBSETS["knowmem"].splits == ("forget_qa", "retain_qa", "forget_qa_icl", "retain_qa_icl")


def test_each_source_carries_its_benchmarks_generation_cap(tmp_path: Path) -> None:
    from unlearnkit.data.qa import DEFAULT_MAX_NEW_TOKENS, source_max_new_tokens
    from unlearnkit.data.schemas import max_new_tokens

    assert source_max_new_tokens(f"tofu:forget01@{TOFU}") == 200  # OpenUnlearning's generation max_new_tokens
    assert source_max_new_tokens("muse-books:knowmem/forget_qa") == 32  # MUSE's knowmem_max_new_tokens
    assert max_new_tokens("muse-news:verbmem") is None  # not QA: VerbMem has its own cap (MuseConfig)
    assert DEFAULT_MAX_NEW_TOKENS == 200
    for other in ("hf:locuslab/TOFU:forget10", str(tmp_path / "rows.jsonl")):
        assert source_max_new_tokens(other) == DEFAULT_MAX_NEW_TOKENS
    # A local file that happens to be named like a TOFU name is a file.
    odd = tmp_path / "tofu:x"
    odd.write_text("", encoding="utf-8")
    assert source_max_new_tokens(odd) == DEFAULT_MAX_NEW_TOKENS
