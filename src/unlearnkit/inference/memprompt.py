"""MemPrompt-style memory of forget requests: a query close to a remembered question gets an instruction in its prompt.

Madaan, Tandon, Clark and Yang, "Memory-assisted prompt editing to improve
GPT-3 after deployment", EMNLP 2022. A memory maps question keys to feedback;
a query retrieves the closest key when the Levenshtein distance between the
processed query and key is below ``min_sim_threshold`` (6 in the authors'
closest-match memory), and the retrieved feedback joins the prompt. No
weights change.

For unlearning, the memory holds one key per forget question and the feedback
"Do not reveal information about <entity>; answer that you do not know."
(the entity from the row's ``entity_field``). Key processing here: lowercase,
punctuation removed, whitespace collapsed. The instruction is inserted after
the prompt's head, before the question, inside the user turn (the paper
appends the feedback after the question; before it, the instruction is read
before the question it governs, and the format's tail still closes the turn).
The retrieval is by string distance only: a paraphrase whose distance reaches
the threshold retrieves nothing, and the audit's rephrase attack shows it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.base import WrapData, register_wrapper, strip_padding
from unlearnkit.inference.prompting import (
    PromptInsertionWrapper,
    check_qa_rows,
    format_from_record,
    format_record,
    question_ids_of,
    question_text,
)
from unlearnkit.settings import check_field_types, require_at_least

MEMORY_FILE = "memprompt_memory.json"
# Character buckets of the edit distance's lower bound (code points modulo this).
CHAR_BUCKETS = 256
ENTITY_SLOT = "{entity}"


@dataclass
class MemPromptConfig:
    min_sim_threshold: int = field(
        default=6,
        metadata={"help": "Retrieve the closest key when its Levenshtein distance to the processed query is below this "
                          "(authors' closest-match memory: 6)."},
    )
    feedback: str = field(
        default="Do not reveal information about {entity}; answer that you do not know.",
        metadata={"help": "Instruction stored for a forget row with an entity; {entity} is replaced by the row's entity field."},
    )
    feedback_without_entity: str = field(
        default="Do not reveal the answer to this question; answer that you do not know.",
        metadata={"help": "Instruction stored for a forget row without the entity field."},
    )
    entity_field: str = field(default="author", metadata={"help": "Row field naming the entity a forget row is about."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(1, min_sim_threshold=self.min_sim_threshold)
        if ENTITY_SLOT not in self.feedback:
            raise UnlearnkitError(f"feedback must hold the slot {ENTITY_SLOT} for the entity's name "
                                  f"(e.g. feedback='Do not reveal information about {ENTITY_SLOT}.').")
        if not self.feedback_without_entity.strip():
            raise UnlearnkitError("feedback_without_entity is empty; give the instruction for rows that name no entity.")
        if not self.entity_field.strip():
            raise UnlearnkitError("entity_field must name a row field (e.g. entity_field=author).")


def process_key(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: how keys and queries are compared."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def char_counts(text: str) -> np.ndarray:
    """Counts of the text's characters in CHAR_BUCKETS buckets (code point modulo the bucket count), shape (CHAR_BUCKETS,).
    Characters sharing a bucket only lower the bound computed from these counts, so it stays a lower bound."""
    counts = np.zeros(CHAR_BUCKETS)
    np.add.at(counts, np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32) % CHAR_BUCKETS, 1.0)
    return counts


def levenshtein(first: str, second: str, limit: int | None = None) -> int:
    """Edit distance (insertions, deletions, substitutions, each 1); with ``limit``, any value >= limit may be returned as
    ``limit`` (the search stops once every entry of a row reaches it)."""
    if len(first) < len(second):
        first, second = second, first
    if limit is not None and len(first) - len(second) >= limit:
        return limit
    previous = list(range(len(second) + 1))
    for i, char in enumerate(first, start=1):
        current = [i]
        for j, other in enumerate(second, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other)))
        if limit is not None and min(current) >= limit:
            return limit
        previous = current
    return previous[-1]


@register_wrapper(
    "memprompt",
    config=MemPromptConfig,
    paper='Madaan, Tandon, Clark and Yang, "Memory-assisted prompt editing to improve GPT-3 after deployment", EMNLP 2022',
    summary="A memory of forget questions; a query within Levenshtein distance < 6 of one gets its 'do not reveal' instruction.",
    family="input",
)
class MemPrompt(PromptInsertionWrapper):
    """A memory of forget requests (Madaan et al., EMNLP 2022), retrieved by edit distance, turned into an instruction."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: MemPromptConfig, fmt: PromptFormat,
                 memory: Sequence[tuple[str, str]]) -> None:
        super().__init__(model, tokenizer, settings, fmt)
        self.memory: list[tuple[str, str]] = []  # (question as asked, feedback)
        self.keys: list[str] = []  # processed keys, one per memory entry
        self._key_counts: np.ndarray | None = None  # (keys, CHAR_BUCKETS) character counts, for the distance's lower bound
        self._instructions: dict[str, list[int]] = {}
        probe = fmt.prompt_text(tokenizer, "\u2063")
        # Plain-style prompts put a space before the question (kept in the question's first token), chat turns put none.
        self._spaced = probe[probe.index("\u2063") - 1:probe.index("\u2063")] == " "
        for question, feedback in memory:
            self.remember(question, feedback)

    def remember(self, question: str, feedback: str) -> None:
        """Add a forget request: queries close to ``question`` get ``feedback`` as an instruction."""
        if not question.strip() or not feedback.strip():
            raise UnlearnkitError("A memory entry needs a question and a feedback text.")
        text = question_text(self.tokenizer, question_ids_of(self.tokenizer, self.fmt, self.layout, question))
        self.memory.append((question, feedback))
        self.keys.append(process_key(text))
        self._key_counts = None
        self._inserted.clear()

    def retrieve(self, query: str) -> dict[str, Any]:
        """The retrieval for a query text: the closest key (first on ties) and whether its distance is below the threshold."""
        processed = process_key(query)
        limit = self.settings.min_sim_threshold
        best, best_distance = None, limit
        if self._key_counts is None:
            self._key_counts = np.stack([char_counts(key) for key in self.keys]) if self.keys else np.zeros((0, CHAR_BUCKETS))
        # Each edit changes the character counts by at most 2 (a substitution: one down, one up), so half the L1 distance of
        # the counts bounds the edit distance from below: keys it puts at the threshold or beyond need no exact distance.
        bounds = np.abs(self._key_counts - char_counts(processed)).sum(axis=1) / 2  # (keys,)
        for index in np.flatnonzero(bounds < limit):
            key = self.keys[index]
            distance = levenshtein(processed, key, limit)
            if distance < best_distance:
                best, best_distance = index, distance
        if best is None:
            return {"retrieved": False, "query": query, "distance": None, "key": None, "feedback": None}
        return {"retrieved": True, "query": query, "distance": best_distance, "key": self.memory[best][0],
                "feedback": self.memory[best][1]}

    def instruction_ids(self, feedback: str) -> list[int]:
        """The feedback's tokens as they sit before the question: after a space in plain prompts, followed by a blank line
        in chat turns."""
        if feedback not in self._instructions:
            text = f" {feedback}" if self._spaced else f"{feedback}\n\n"
            self._instructions[feedback] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return self._instructions[feedback]

    def inserted_ids(self, question_ids: tuple[int, ...]) -> list[int]:
        found = self.retrieve(question_text(self.tokenizer, question_ids))
        return self.instruction_ids(found["feedback"]) if found["retrieved"] else []

    def decisions(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[dict[str, Any]]:
        """Each row's retrieval: retrieved, the query text, the key and its distance, the feedback given (rows that are not
        prompts of the format: retrieved False, query None)."""
        out = []
        for row in strip_padding(input_ids, attention_mask):
            span = self.layout.question_span(row)
            if span is None:
                out.append({"retrieved": False, "query": None, "distance": None, "key": None, "feedback": None})
            else:
                out.append(self.retrieve(question_text(self.tokenizer, row[span[0]:span[1]])))
        return out

    # Building, saving, loading --------------------------------------------------------------------------------------
    @classmethod
    def build(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: WrapData, settings: MemPromptConfig,
              progress: bool = False) -> MemPrompt:
        if not data.forget:
            raise UnlearnkitError("MemPrompt's memory is built from the forget rows; the forget set is empty.")
        check_qa_rows(data.forget, "forget set")
        memory = []
        for row in data.forget:
            entity = row.get(settings.entity_field)
            named = entity is not None and str(entity).strip()
            memory.append((row["question"], settings.feedback.replace(ENTITY_SLOT, str(entity).strip()) if named
                           else settings.feedback_without_entity))
        return cls(model, tokenizer, settings, data.fmt, memory)

    def save_parts(self, folder: Path) -> dict[str, Any]:
        entries = [{"question": question, "feedback": feedback} for question, feedback in self.memory]
        (folder / MEMORY_FILE).write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
        return {"format": format_record(self.fmt), "memory": MEMORY_FILE, "entries": len(entries)}

    @classmethod
    def load_parts(cls, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: MemPromptConfig, folder: Path,
                   parts: Mapping[str, Any]) -> MemPrompt:
        path = folder / str(parts.get("memory", MEMORY_FILE))
        try:
            memory = [(str(entry["question"]), str(entry["feedback"])) for entry in json.loads(path.read_text(encoding="utf-8"))]
            fmt = format_from_record(parts["format"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UnlearnkitError(f"{path} cannot be read as MemPrompt's memory ({error}); build the wrapped model again.") from None
        return cls(model, tokenizer, settings, fmt, memory)
