"""Whether a model still gives a forgotten answer: the recovery measure most attacks share.

A generation *recalls* a row's answer when it contains the row's ``value``
(the fact itself, e.g. a birthplace), compared case-insensitively with
punctuation and repeated spaces removed. Rows without a ``value`` field fall
back to ROUGE-L recall of the whole answer at or above :data:`ROUGE_RECALL_HIT`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.evaluation.metrics import rouge_l_recall
from unlearnkit.evaluation.scoring import greedy_answers

# Without a value field, a generation recalls the answer when it holds at least this share of its words in order.
ROUGE_RECALL_HIT = 0.5
_NON_WORD = re.compile(r"[^\w]+")


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces: 'The Hollow-Harbor!' → 'the hollow harbor'."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def recalls(generation: str, row: Mapping) -> bool:
    """Whether ``generation`` gives the answer of ``row`` (see the module docstring)."""
    value = row.get("value")
    if isinstance(value, str) and normalize(value):
        # Padded with spaces so that 'Dale' does not match inside 'Wurndale'.
        return f" {normalize(value)} " in f" {normalize(generation)} "
    return float(rouge_l_recall([generation], [row["answer"]])[0]) >= ROUGE_RECALL_HIT


def recall_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[Mapping],
    questions: Sequence[str],
    max_new_tokens: int,
    batch_size: int,
) -> tuple[list[bool], list[str]]:
    """Greedy answers to ``questions`` (one per row, possibly rewritten by an attack) and whether each recalls its row."""
    generations = greedy_answers(model, tokenizer, fmt, questions, max_new_tokens, batch_size)
    return [recalls(text, row) for text, row in zip(generations, rows, strict=True)], generations


def recall_rate(recalled: Sequence[bool]) -> float:
    """Share of rows recalled (0 for no rows)."""
    return sum(recalled) / len(recalled) if recalled else 0.0


def recall_any(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[Mapping],
    variants: Sequence[Sequence[str]],
    max_new_tokens: int,
    batch_size: int,
) -> list[dict]:
    """Ask every variant of each row's question; a row is recalled when any variant recalls it (the attacker's best try).

    Returns one dict per row: its question, ``recalled``, and each variant's prompt, generation and recall.
    """
    owners = [index for index, questions in enumerate(variants) for _ in questions]
    flat = [question for questions in variants for question in questions]
    recalled, generations = recall_rows(model, tokenizer, fmt, [rows[i] for i in owners], flat, max_new_tokens, batch_size)
    samples = [{"question": row["question"], "recalled": False, "variants": []} for row in rows]
    for owner, question, generation, hit in zip(owners, flat, generations, recalled, strict=True):
        samples[owner]["variants"].append({"prompt": question, "generation": generation, "recalled": hit})
        samples[owner]["recalled"] = samples[owner]["recalled"] or hit
    return samples
