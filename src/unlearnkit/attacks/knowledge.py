"""Whether a model still gives a forgotten answer: the recovery measure most attacks share.

A generation *recalls* a row's answer by the first of three rules that the row
supports (:func:`recall_rule`); every comparison is case-insensitive, on
whole words, with punctuation and repeated spaces removed (:func:`normalize`):

* ``value``: the row has a ``value`` field (the fact itself, e.g. a
  birthplace, as in the built-in benchmark): the generation contains it.
* ``fact_span``: the row has perturbed answers (``perturbed_answer``, TOFU's
  wrong answers, worded like the answer or its paraphrase): its *fact words* are the words of the
  answer that also appear in the ``paraphrased_answer`` (when the row has one)
  and in none of the perturbed answers — what both correct phrasings say and no
  wrong one does (:func:`fact_words`). The generation contains every fact word.
  'Ann Lee was born in Paris.' with perturbed answers '... Rome.' and '... Oslo.'
  has the fact word 'paris': 'Ann Lee was born in Rome.' is not a recall.
* ``rouge``: otherwise (no perturbed answers, or none of the answer's words is
  told apart by them), the answer is scored as the evaluation scores
  generations, ROUGE-L recall of the answer, and a recall is a score of at
  least :data:`ROUGE_RECALL_HIT`. This rule cannot tell a wrong fact in the
  right sentence from the right one.

Every attack that measures recall records the rule per row (``recall_rule`` in
its per-sample results) and the count of rows per rule (``recall_rules``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.evaluation.metrics import rouge_l_recall
from unlearnkit.evaluation.scoring import greedy_answers

# Under the rouge rule, a generation recalls the answer when it holds at least this share of the answer's words in order.
ROUGE_RECALL_HIT = 0.5
VALUE_RULE, FACT_SPAN_RULE, ROUGE_RULE = "value", "fact_span", "rouge"
_NON_WORD = re.compile(r"[^\w]+")


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces: 'The Hollow-Harbor!' → 'the hollow harbor'."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def _texts(value: object) -> list[str]:
    """A field holding one text or a list of texts, as a list of its non-empty texts."""
    texts = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    return [text for text in texts if isinstance(text, str) and normalize(text)]


def _value(row: Mapping) -> str | None:
    value = row.get("value")
    return value if isinstance(value, str) and normalize(value) else None


def fact_words(row: Mapping) -> tuple[str, ...]:
    """The words of the answer that the paraphrased answer also says and no perturbed answer does, in answer order.

    Empty when the row has no perturbed answers, or when every word of the
    answer is also in a perturbed answer (or missing from the paraphrase).
    """
    perturbed = _texts(row.get("perturbed_answer"))
    if not perturbed:
        return ()
    wrong = {word for text in perturbed for word in normalize(text).split()}
    paraphrases = _texts(row.get("paraphrased_answer"))
    confirmed = {word for text in paraphrases for word in normalize(text).split()} if paraphrases else None
    words = (word for word in normalize(row["answer"]).split() if word not in wrong and (confirmed is None or word in confirmed))
    return tuple(dict.fromkeys(words))


def recall_rule(row: Mapping) -> str:
    """The rule by which generations are judged against ``row``: 'value', 'fact_span' or 'rouge' (see the module docstring)."""
    if _value(row) is not None:
        return VALUE_RULE
    return FACT_SPAN_RULE if fact_words(row) else ROUGE_RULE


def rule_counts(rows: Sequence[Mapping]) -> dict[str, int]:
    """How many of ``rows`` each recall rule judges."""
    return dict(Counter(recall_rule(row) for row in rows))


def recalls(generation: str, row: Mapping) -> bool:
    """Whether ``generation`` gives the answer of ``row`` (see the module docstring)."""
    # Padded with spaces so that 'Dale' does not match inside 'Wurndale'.
    padded = f" {normalize(generation)} "
    value = _value(row)
    if value is not None:
        return f" {normalize(value)} " in padded
    words = fact_words(row)
    if words:
        return all(f" {word} " in padded for word in words)
    return float(rouge_l_recall([generation], [row["answer"]])[0]) >= ROUGE_RECALL_HIT


def fact_location(text: str, row: Mapping) -> tuple[int, int] | None:
    """Where the fact of ``row`` lies in ``text`` (its answer): the characters of the value, else of the first fact word.

    The value is searched as written, then in any case; a fact word as a whole
    word in any case. None when the row has neither, or ``text`` holds neither.
    """
    value = _value(row)
    if value is not None:
        start = text.find(value)
        if start < 0:
            start = text.lower().find(value.lower())
        return (start, start + len(value)) if start >= 0 else None
    found = [match.span() for word in fact_words(row)
             if (match := re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE))]
    return min(found) if found else None


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

    Returns one dict per row: its question, ``recalled``, its ``recall_rule``, and each variant's prompt, generation and recall.
    """
    owners = [index for index, questions in enumerate(variants) for _ in questions]
    flat = [question for questions in variants for question in questions]
    recalled, generations = recall_rows(model, tokenizer, fmt, [rows[i] for i in owners], flat, max_new_tokens, batch_size)
    samples = [{"question": row["question"], "recalled": False, "recall_rule": recall_rule(row), "variants": []} for row in rows]
    for owner, question, generation, hit in zip(owners, flat, generations, recalled, strict=True):
        samples[owner]["variants"].append({"prompt": question, "generation": generation, "recalled": hit})
        samples[owner]["recalled"] = samples[owner]["recalled"] or hit
    return samples
