"""The subject of a fact and where it sits in the prompt: what causal tracing corrupts and a rank-one edit keys on.

A row names its subject in a field (``subject`` by default; the built-in
benchmark's rows have ``author``, the real-knowledge probes ``entity``). The
subject must occur in the row's question, where its tokens are found.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from unlearnkit.errors import UnlearnkitError

# Fields tried in order when the caller names none: ROME/CounterFact's, the built-in benchmark's, the real-knowledge probes'.
SUBJECT_FIELDS = ("subject", "author", "entity")


def subject_of(row: dict, subject_field: str | None = None, index: int | None = None) -> str:
    """The subject string of ``row``: from ``subject_field`` when given, else the first of :data:`SUBJECT_FIELDS` present.

    The subject must occur (case-sensitively) in the question; a row without one
    gets a message naming the field to add.
    """
    where = f"row {index}" if index is not None else "a row"
    fields = (subject_field,) if subject_field else SUBJECT_FIELDS
    subject = next((row[name] for name in fields if isinstance(row.get(name), str) and row[name].strip()), None)
    if subject is None:
        wanted = f"a {subject_field!r} field" if subject_field else f"one of the fields {', '.join(SUBJECT_FIELDS)}"
        raise UnlearnkitError(
            f"{where} names no subject: it needs {wanted} holding the entity its question is about "
            f"(its fields: {', '.join(sorted(row))}). Add the field, or name the field that has it with subject_field."
        )
    question = row.get("question")
    if not isinstance(question, str) or subject not in question:
        raise UnlearnkitError(
            f"{where}: its subject {subject!r} does not occur in its question {question!r}; localization needs the subject's "
            "tokens in the prompt. Fix the subject field, or leave such rows out."
        )
    return subject


def subject_token_span(tokenizer: PreTrainedTokenizerBase, prompt: str, subject: str) -> tuple[int, int]:
    """Token positions ``[start, end)`` of the last occurrence of ``subject`` in ``prompt``, by character offsets.

    The span covers every token that overlaps the subject's characters, so a
    subject glued to punctuation or split mid-token is still covered.
    """
    start_char = prompt.rfind(subject)
    if start_char < 0:
        raise UnlearnkitError(f"The subject {subject!r} does not occur in the prompt {prompt!r}.")
    end_char = start_char + len(subject)
    encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    offsets: Sequence[tuple[int, int]] = encoded["offset_mapping"]
    positions = [index for index, (begin, finish) in enumerate(offsets) if begin < end_char and finish > start_char]
    if not positions:
        raise UnlearnkitError(f"No token of the prompt {prompt!r} covers the subject {subject!r}.")
    return positions[0], positions[-1] + 1
