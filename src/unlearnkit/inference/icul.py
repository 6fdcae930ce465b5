"""In-context unlearning (ICUL): forget examples with wrong answers and correctly answered context examples before each query.

Pawelczyk, Neel and Lakkaraju, "In-Context Unlearning: Language Models as Few
Shot Unlearners", ICML 2024. The prompt is

    [forget question][flipped answer]  [x_1][y_1] ... [x_s][y_s]  [query]

with the forget point given a *flipped* label and ``s`` correctly labelled
training points (the paper: s in {2, 4, 6}, temperature 0). No weight changes.

For QA rows the "flipped label" is a wrong answer to the same question: the
row's ``perturbed_answer`` when it has one (the first, when a list), else
another forget row's answer. A deployment does not know its queries in
advance, so the forget examples of a query are the ``forget_examples`` forget
rows whose questions are most similar to it (cosine of hashed character
n-gram counts), and its ``s`` context examples are retain rows drawn at
random, seeded by the query's tokens (the same query always gets the same
prompt, so decoding step by step sees one fixed context).
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.base import (
    WrapData,
    register_wrapper,
)
from unlearnkit.inference.prompting import (
    PromptInsertionWrapper,
    char_ngram_features,
    check_qa_rows,
    format_from_record,
    format_record,
    question_ids_of,
    question_text,
    turn_blocks,
)
from unlearnkit.settings import check_choice, check_field_types, check_seed, require_at_least

EXAMPLES_FILE = "icul_examples.json"
# Hashed character n-grams for question similarity: 2**12 buckets of 3- and 4-grams are plenty for short questions.
SIMILARITY_DIMS = 4096
SIMILARITY_NGRAMS = (3, 4)


# --- ICUL ------------------------------------------------------------------------------------------------------------


@dataclass
class ICULConfig:
    context_examples: int = field(
        default=2,
        metadata={"help": "s: correctly answered retain examples after the forget examples (paper: 2, 4 or 6; 2, the shortest "
                          "prompt, since each example adds a whole question and answer to every query)."},
    )
    forget_examples: int = field(
        default=1,
        metadata={"help": "Forget rows placed before each query with a wrong answer: those whose questions are most similar "
                          "to the query (paper: the one point to unlearn)."},
    )
    flipped_answer: str = field(
        default="perturbed",
        metadata={"help": "The wrong answer of a forget example: 'perturbed' (the row's perturbed_answer, else another forget "
                          "row's answer) or 'other' (always another forget row's answer)."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the context examples' draw (combined with each query's tokens)."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(0, context_examples=self.context_examples)
        require_at_least(1, forget_examples=self.forget_examples)
        check_choice("flipped_answer", self.flipped_answer, ("perturbed", "other"))
        check_seed("seed", self.seed)


def flipped_answers(forget: Sequence[dict], retain: Sequence[dict], how: str) -> list[str]:
    """A wrong answer for each forget row: its ``perturbed_answer`` (first of a list) when ``how`` is 'perturbed' and the
    row has one, else the next forget row's answer (cyclically; a retain answer when the forget set has one row)."""
    answers = []
    for index, row in enumerate(forget):
        perturbed = row.get("perturbed_answer")
        if isinstance(perturbed, list):
            perturbed = next((text for text in perturbed if isinstance(text, str) and text.strip()), None)
        if how == "perturbed" and isinstance(perturbed, str) and perturbed.strip():
            answers.append(perturbed)
            continue
        others = [other["answer"] for other in (*forget[index + 1:], *forget[:index]) if other["answer"] != row["answer"]]
        others += [other["answer"] for other in retain if other["answer"] != row["answer"]]
        if not others:
            raise UnlearnkitError("ICUL needs a wrong answer for each forget row: give the rows a 'perturbed_answer', or at least "
                                  "two forget rows with different answers.")
        answers.append(others[0])
    return answers



@register_wrapper(
    "icul",
    config=ICULConfig,
    paper='Pawelczyk, Neel and Lakkaraju, "In-Context Unlearning: Language Models as Few Shot Unlearners", ICML 2024',
    summary="Prompt = the most similar forget questions with wrong answers, s correctly answered retain examples, then the query.",
    family="input",
    needs_retain=True,
)
class ICUL(PromptInsertionWrapper):
    """In-context unlearning (Pawelczyk et al., ICML 2024) for QA rows, inserted after the prompt's head."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        settings: ICULConfig,
        fmt: PromptFormat,
        forget: Sequence[tuple[str, str]],
        context: Sequence[tuple[str, str]],
    ) -> None:
        super().__init__(model, tokenizer, settings, fmt)
        self.forget_pairs = list(forget)  # (question, wrong answer)
        self.context_pairs = list(context)  # (question, right answer)
        self.forget_blocks = turn_blocks(tokenizer, fmt, self.layout, self.forget_pairs)
        self.context_blocks = turn_blocks(tokenizer, fmt, self.layout, self.context_pairs)
        texts = [question_text(tokenizer, question_ids_of(tokenizer, fmt, self.layout, q)) for q, _ in self.forget_pairs]
        self.forget_features = char_ngram_features(texts, SIMILARITY_DIMS, SIMILARITY_NGRAMS)  # (F, dims)

    def chosen_examples(self, question_ids: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """(forget rows, context rows) placed before the query ``question_ids``: the most similar forget rows, most similar
        first (ties: the earlier row), and ``s`` retain rows drawn with a seed made of the setting and the query's tokens."""
        query = char_ngram_features([question_text(self.tokenizer, question_ids)], SIMILARITY_DIMS, SIMILARITY_NGRAMS)[0]
        similarity = (self.forget_features @ query).tolist()  # (F,) cosine similarities
        count = min(self.settings.forget_examples, len(self.forget_pairs))
        forget = sorted(range(len(similarity)), key=lambda i: (-similarity[i], i))[:count]
        draw = random.Random(self.settings.seed * 2**32 + zlib.crc32(json.dumps(list(question_ids)).encode()))
        context = draw.sample(range(len(self.context_pairs)), min(self.settings.context_examples, len(self.context_pairs)))
        return forget, context

    def inserted_ids(self, question_ids: tuple[int, ...]) -> list[int]:
        forget, context = self.chosen_examples(question_ids)
        return [token for i in forget for token in self.forget_blocks[i]] + [token for i in context for token in self.context_blocks[i]]

    # Building, saving, loading --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: WrapData, settings: ICULConfig,
              progress: bool = False) -> ICUL:
        if not data.forget:
            raise UnlearnkitError("ICUL needs forget rows to place in the prompt; the forget set is empty.")
        check_qa_rows(data.forget, "forget set")
        check_qa_rows(data.retain, "retain set")
        if settings.context_examples and len(data.retain) < settings.context_examples:
            raise UnlearnkitError(f"ICUL places context_examples={settings.context_examples} retain examples before each query, "
                                  f"and the retain set has {len(data.retain)} rows: give a larger retain set, or lower "
                                  "context_examples.")
        wrong = flipped_answers(data.forget, data.retain, settings.flipped_answer)
        forget = [(row["question"], answer) for row, answer in zip(data.forget, wrong, strict=True)]
        context = [(row["question"], row["answer"]) for row in data.retain] if settings.context_examples else []
        return cls(model, tokenizer, settings, data.fmt, forget, context)

    def save_parts(self, folder: Path) -> dict[str, Any]:
        examples = {"forget": [list(pair) for pair in self.forget_pairs], "context": [list(pair) for pair in self.context_pairs]}
        (folder / EXAMPLES_FILE).write_text(json.dumps(examples, indent=1) + "\n", encoding="utf-8")
        return {"format": format_record(self.fmt), "examples": EXAMPLES_FILE, "forget_rows": len(self.forget_pairs),
                "context_rows": len(self.context_pairs)}

    @classmethod
    def load_parts(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: ICULConfig, folder: Path,
                   parts: Mapping[str, Any]) -> ICUL:
        path = folder / str(parts.get("examples", EXAMPLES_FILE))
        try:
            examples = json.loads(path.read_text(encoding="utf-8"))
            forget = [(str(q), str(a)) for q, a in examples["forget"]]
            context = [(str(q), str(a)) for q, a in examples["context"]]
            fmt = format_from_record(parts["format"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UnlearnkitError(f"{path} cannot be read as ICUL's examples ({error}); build the wrapped model again.") from None
        return cls(model, tokenizer, settings, fmt, forget, context)

