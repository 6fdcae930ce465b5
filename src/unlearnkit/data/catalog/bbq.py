"""BBQ: the Bias Benchmark for QA, with the metadata its bias score needs.

Parrish et al., "BBQ: A Hand-Built Bias Benchmark for Question Answering", Findings of ACL 2022
(arXiv 2110.08193). The original repository (nyu-mll/BBQ) ships one JSON Lines file per category,
``data/CATEGORY.jsonl``; each row holds ``context``, ``question``, three answers ``ans0..ans2``,
the correct ``label`` (0-2), ``context_condition`` (ambig/disambig), ``question_polarity``
(neg/nonneg), ``answer_info`` ({ansK: [text, group]}) and ``additional_metadata`` (with
``stereotyped_groups``). Checked against data/Physical_appearance.jsonl of the repository.
"""

from __future__ import annotations

from unlearnkit.data.catalog.checks import check_allowed, check_answer_index
from unlearnkit.data.catalog.spec import BBQ_ROW, Config, DatasetSpec, Paper, register
from unlearnkit.errors import UnlearnkitError

CATEGORIES = ("Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance", "Race_ethnicity",
              "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation")
ANSWERS = ("ans0", "ans1", "ans2")


def bbq_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    """BBQ rows as multiple choice (choices = ans0..ans2, answer = label) plus the bias-score metadata."""
    converted = []
    for index, row in enumerate(rows, start=1):
        out = {
            "context": row["context"], "question": row["question"], "choices": [row[a] for a in ANSWERS],
            "answer": row["label"], "context_condition": row["context_condition"],
            "question_polarity": row["question_polarity"], "category": row["category"], "answer_info": row["answer_info"],
            "stereotyped_groups": row["additional_metadata"]["stereotyped_groups"],
            "additional_metadata": row["additional_metadata"], "example_id": row["example_id"],
            "question_index": row["question_index"],
        }
        check_answer_index(out, index, where, answer="answer")
        check_allowed(out, "context_condition", ("ambig", "disambig"), index, where)
        check_allowed(out, "question_polarity", ("neg", "nonneg"), index, where)
        for answer in ANSWERS:
            info = out["answer_info"].get(answer)
            if not (isinstance(info, list) and len(info) == 2 and all(isinstance(part, str) for part in info)):
                raise UnlearnkitError(f"Row {index} of {where}: answer_info[{answer!r}] must be [answer text, group], "
                                      f"not {info!r}.")
        converted.append(out)
    return converted


register(DatasetSpec(
    name="bbq",
    title="BBQ, the Bias Benchmark for QA (11 categories)",
    paper=Paper("BBQ: A Hand-Built Bias Benchmark for Question Answering", "Parrish et al.", "Findings of ACL", 2022,
                "2110.08193"),
    licence="CC BY 4.0",
    hub_id=None,
    configs={name.lower(): Config(("test",), local_stems=(name, f"data/{name}")) for name in CATEGORIES},
    schema={"example_id": "int", "question_index": "str", "question_polarity": "str", "context_condition": "str",
            "category": "str", "answer_info": "object", "additional_metadata": "object",
            "additional_metadata.stereotyped_groups": "list[str]", "context": "str", "question": "str",
            "ans0": "str", "ans1": "str", "ans2": "str", "label": "int"},
    row_form=BBQ_ROW,
    use="bias track: accuracy and bias scores in ambiguous and disambiguated contexts",
    local_copy="Clone or download the BBQ repository (nyu-mll/BBQ) and pass its data folder (or the repository) as @DIR; "
               "it holds CATEGORY.jsonl files such as Age.jsonl. BBQ has no official hub copy.",
    convert=bbq_rows,
    example={"context": "...", "question": "Who ...?", "choices": ["Unknown", "The slim guy", "The fat guy"], "answer": 0,
             "context_condition": "ambig", "question_polarity": "neg", "category": "Physical_appearance",
             "answer_info": {"ans0": ["Unknown", "unknown"], "ans1": ["slim", "nonObese"], "ans2": ["fat", "obese"]},
             "stereotyped_groups": ["obese"]},
))
