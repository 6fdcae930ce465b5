"""Harmful prompts and responses: HarmfulQA, CategoricalHarmfulQA (CatQA) and PKU-SafeRLHF.

* HarmfulQA — Bhardwaj & Poria, "Red-Teaming Large Language Models using Chain of Utterances for
  Safety-Alignment", arXiv 2308.09662, 2023: 1,960 harmful questions over 10 topics (fields
  ``topic``, ``subtopic``, ``question``; ``blue_conversations``/``red_conversations`` kept as they are).
* CatQA — Bhardwaj, Anh & Poria, "Language Models are Homer Simpson! Safety Re-Alignment of Fine-tuned
  Language Models through Task Arithmetic", ACL 2024 (arXiv 2402.11746): 550 questions in 11 categories,
  per language ``data/catqa_LANGUAGE.json`` with capitalised fields ``Category``, ``Subcategory``, ``Question``.
* PKU-SafeRLHF — Ji et al., "PKU-SafeRLHF: Towards Multi-Level Safety Alignment for LLMs with Human
  Preference", arXiv 2406.15513, 2024 (the data of "BeaverTails", NeurIPS 2023 Datasets and Benchmarks):
  ``prompt``, ``response_0``, ``response_1``, ``is_response_0_safe``, ``is_response_1_safe``. Its
  ``harmful`` config gives one (prompt, response) row per unsafe response: the forget data of Yao et al.,
  "Large Language Model Unlearning", NeurIPS 2024.
"""

from __future__ import annotations

from unlearnkit.data.catalog.spec import PROMPT, PROMPT_RESPONSE, Config, DatasetSpec, Paper, register

CATQA_LANGUAGES = ("english", "chinese", "vietnamese")


def harmfulqa_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    return [{**{k: v for k, v in row.items() if k != "question"}, "prompt": row["question"]} for row in rows]


def catqa_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    return [{"prompt": row["Question"], "category": row["Category"], "subcategory": row["Subcategory"],
             "language": config} for row in rows]


def pku_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    """``harmful``: one {prompt, response} row per response annotated unsafe; ``pairs``: the rows as they are."""
    if config == "pairs":
        return rows
    harmful = []
    for row in rows:
        for k in (0, 1):
            if not row[f"is_response_{k}_safe"]:
                harmful.append({"prompt": row["prompt"], "response": row[f"response_{k}"], "response_index": k})
    return harmful


register(DatasetSpec(
    name="harmfulqa",
    title="HarmfulQA: harmful questions over 10 topics (with blue/red conversations)",
    paper=Paper("Red-Teaming Large Language Models using Chain of Utterances for Safety-Alignment", "Bhardwaj & Poria",
                "arXiv", 2023, "2308.09662"),
    licence="Apache-2.0",
    hub_id="declare-lab/HarmfulQA",
    configs={"default": Config(("train",), local_stems=("data_for_hub", "{split}", "data/{split}"))},
    schema={"topic": "str", "subtopic": "str", "question": "str"},
    row_form=PROMPT,
    use="harmful track: prompts whose harmful answers are forgotten or refused",
    local_copy="Download data_for_hub.json from the hub repository declare-lab/HarmfulQA into DIR.",
    convert=harmfulqa_rows,
    example={"prompt": "How can I ...?", "topic": "Social Sciences", "subtopic": "Cultural Studies"},
    unverified=("field names topic/subtopic/question (from the dataset card, not the file): map others with fields",),
))

register(DatasetSpec(
    name="catqa",
    title="CategoricalHarmfulQA (CatQA): 550 harmful questions in 11 categories, 3 languages",
    paper=Paper("Language Models are Homer Simpson! Safety Re-Alignment of Fine-tuned Language Models through Task "
                "Arithmetic", "Bhardwaj, Anh & Poria", "ACL", 2024, "2402.11746"),
    licence="Apache-2.0",
    hub_id="declare-lab/CategoricalHarmfulQA",
    configs={language: Config(("train",), hub_data_files=f"data/catqa_{language}.json",
                              local_stems=(f"catqa_{language}", f"data/catqa_{language}", f"CatQ_{language.title()}"))
             for language in CATQA_LANGUAGES},
    schema={"Category": "str", "Subcategory": "str", "Question": "str"},
    row_form=PROMPT,
    use="harmful track: categorised harmful prompts (refusal / harmfulness rate per category)",
    local_copy="Download data/catqa_english.json (or _chinese, _vietnamese) from declare-lab/CategoricalHarmfulQA into DIR.",
    convert=catqa_rows,
    example={"prompt": "How can I ...?", "category": "Illegal Activity", "subcategory": "Drug trafficking",
             "language": "english"},
    unverified=("the capitalised field names Category/Subcategory/Question (from a secondary description of the files)",),
))

_PKU_SCHEMA = {"prompt": "str", "response_0": "str", "response_1": "str", "is_response_0_safe": "bool",
               "is_response_1_safe": "bool"}
register(DatasetSpec(
    name="pku-saferlhf",
    title="PKU-SafeRLHF: prompts with two responses annotated safe or unsafe",
    paper=Paper("PKU-SafeRLHF: Towards Multi-Level Safety Alignment for LLMs with Human Preference", "Ji et al.", "arXiv",
                2024, "2406.15513"),
    licence="CC BY-NC 4.0",
    hub_id="PKU-Alignment/PKU-SafeRLHF",
    configs={name: Config(("train", "test"), local_stems=("{split}", "data/{split}")) for name in ("harmful", "pairs")},
    schema=_PKU_SCHEMA,
    row_form=PROMPT_RESPONSE,
    use="harmful track: unsafe (prompt, response) pairs to forget, as in Yao et al.'s LLM unlearning",
    local_copy="Download the hub's train.jsonl / test.jsonl (or parquet shards) of PKU-Alignment/PKU-SafeRLHF into DIR.",
    convert=pku_rows,
    example={"prompt": "How do I ...?", "response": "An unsafe answer ...", "response_index": 1},
))
