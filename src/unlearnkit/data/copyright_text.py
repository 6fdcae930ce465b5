"""The copyright track's shipped text: public-domain passages a pretrained model has memorised, cut into VerbMem chunks.

The track stands in for a copyrighted book (Eldan & Russinovich, "Who's Harry Potter? Approximate Unlearning in
LLMs", arXiv 2310.02238, 2023) with public-domain text that SmolLM2-135M reproduces verbatim, chosen by measurement
(``benchmarks/select_copyright_text.py``, docs/copyright_track.md). Resources (``data/resources/copyright/``):

* ``candidates.jsonl`` — every candidate passage, one JSON object a line: ``id``, ``work``, ``title``, ``source``
  (edition and public-domain status) and ``text``;
* ``passages.jsonl`` — the selected ones with a ``role``: ``forget`` (unlearned), ``heldout`` (the same work, never
  trained on: does forgetting reach the rest of the work?) or ``keep`` (other works the model must still recite);
* ``anchored_terms.json`` — WHP's dictionary for the forget work ({"term": "generic term"}).

Verbatim memorisation is measured as MUSE's VerbMem (Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation for
Language Models", ICLR 2025) on *chunks*: each passage is cut into consecutive windows of tokens; a window's first
``prefix_tokens`` are the prompt and the rest its true continuation. Methods, which train on (prompt, answer) rows,
take the same chunks as rows under :class:`TextContinuation`: the prompt is the raw text prefix and the loss falls
on its continuation, so unlearning and measurement see the same token sequences.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError

CANDIDATES_FILE = "candidates.jsonl"
PASSAGES_FILE = "passages.jsonl"
ANCHORS_FILE = "anchored_terms.json"
ROLES = ("forget", "heldout", "keep")
PASSAGE_FIELDS = ("id", "work", "title", "source", "text")
# Chunking measured and shipped with (docs/copyright_track.md): 16-token prompts, 8-token continuations. MUSE's
# VerbMem prompts with 32 tokens and scores 128; SmolLM2-135M recites a few words of a famous text and then drifts
# (over 32 tokens no candidate passage reached a mean VerbMem of 0.3), so a short continuation measures what it does
# recite; the passages are 60-330 tokens, and short windows give several chunks per passage.
PREFIX_TOKENS = 16
CONTINUATION_TOKENS = 8


def resource_file(name: str) -> Path:
    """A file of the shipped copyright resources."""
    return Path(str(resources.files("unlearnkit") / "data" / "resources" / "copyright" / name))


def read_passages(path: str | Path, what: str = "copyright passages", roles: bool = False) -> list[dict[str, Any]]:
    """Read and check a passages file (JSON lines); ``roles``: every row also needs a ``role`` of :data:`ROLES`."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UnlearnkitError(f"The {what} file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UnlearnkitError(f"The {what} file {str(path)!r} cannot be read as UTF-8 text: {error}.") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise UnlearnkitError(f"Line {number} of {path} is not valid JSON ({error}).") from None
        needed = (*PASSAGE_FIELDS, "role") if roles else PASSAGE_FIELDS
        missing = [key for key in needed if not isinstance(row, dict) or not isinstance(row.get(key), str) or not row[key].strip()]
        if missing:
            raise UnlearnkitError(f"Line {number} of {path} lacks the text field(s) {', '.join(missing)}; each passage needs "
                                  f"{', '.join(needed)}.")
        if roles and row["role"] not in ROLES:
            raise UnlearnkitError(f"Line {number} of {path} has role {row['role']!r}; use one of {', '.join(ROLES)}.")
        rows.append(row)
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise UnlearnkitError(f"{path} repeats passage ids ({sorted({i for i in ids if ids.count(i) > 1})}); each id must be unique.")
    if not rows:
        raise UnlearnkitError(f"The {what} file {path} holds no passage.")
    return rows


def load_candidates() -> list[dict[str, Any]]:
    """Every candidate passage the selection scores."""
    return read_passages(resource_file(CANDIDATES_FILE), "copyright candidates")


def load_passages() -> list[dict[str, Any]]:
    """The selected passages, each with its role (forget, heldout, keep)."""
    return read_passages(resource_file(PASSAGES_FILE), "copyright passages", roles=True)


def passage_chunks(tokenizer: PreTrainedTokenizerBase, passages: Sequence[dict], prefix_tokens: int = PREFIX_TOKENS,
                   continuation_tokens: int = CONTINUATION_TOKENS) -> list[dict[str, Any]]:
    """VerbMem chunks of each passage: ``{"passage", "work", "chunk", "prompt", "gt"}`` (MUSE's prompt/gt form).

    Consecutive windows of ``prefix_tokens + continuation_tokens`` tokens; a passage's tail shorter than
    ``prefix_tokens + 1`` tokens gives no chunk (:func:`unlearnkit.data.encoding.text_windows`).
    """
    from unlearnkit.data.encoding import text_windows

    chunks = []
    for passage in passages:
        windows = text_windows(tokenizer, [passage["text"]], prefix_tokens, prefix_tokens + continuation_tokens)
        chunks += [{"passage": passage["id"], "work": passage["work"], "chunk": index, "prompt": window["prompt"], "gt": window["gt"]}
                   for index, window in enumerate(windows)]
    return chunks


def chunk_rows(chunks: Sequence[dict]) -> list[dict[str, str]]:
    """Chunks as the (question, answer) rows methods train on; ``author`` groups a work's rows (WHP, per-author splits)."""
    return [{"question": chunk["prompt"], "answer": chunk["gt"], "author": chunk["work"]} for chunk in chunks]


@dataclass(frozen=True)
class TextContinuation(PromptFormat):
    """Raw text: the prompt is a text prefix as it is, the answer its continuation; no template, no EOS.

    The prompt is tokenised as a VerbMem prompt is (with the tokenizer's special tokens), the continuation on its
    own without them, so a (prompt, answer) row is the token sequence VerbMem prompts with and scores. No EOS closes
    the answer: the text goes on after a chunk, and an unlearning loss on EOS would only teach the model to stop.
    """

    style: str = "plain"

    def uses_chat(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        return False

    def check(self, tokenizer: PreTrainedTokenizerBase) -> None:
        return None

    def record(self) -> dict[str, str | None]:
        return {"prompt_format": "text-continuation", "system_prompt": None, "date_string": None}

    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        return question

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        return tokenizer(question, add_special_tokens=True)["input_ids"]

    def qa_ids_many(self, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        answers = self.answer_ids_many(tokenizer, [answer for _, answer in pairs])
        return [(self.prompt_ids(tokenizer, question), ids) for (question, _), ids in zip(pairs, answers, strict=True)]

    def answer_ids_many(self, tokenizer: PreTrainedTokenizerBase, answers: Sequence[str],
                        questions: Sequence[str] | None = None) -> list[list[int]]:
        if not answers:
            return []
        return [list(ids) for ids in tokenizer(list(answers), add_special_tokens=False)["input_ids"]]


TEXT_CONTINUATION = TextContinuation()


# --- The built-in analogue: fictitious "books" a tiny model memorises ------------------------------------------------
# Each work has its own characters and place, so a work's text is unpredictable without having read it; WHP's
# dictionary for the forget work (ANALOGUE_ANCHORS_FILE) maps these names to generic ones.
ANALOGUE_ANCHORS_FILE = "analogue_anchored_terms.json"
ANALOGUE_WORKS: dict[str, dict[str, Any]] = {
    "the-lantern-of-greywater": {"people": ("Orla Quenby", "Tobin Ashgrove"), "place": "Greywater Hollow"},
    "the-salt-road": {"people": ("Mira Holt", "Dunstan Pell"), "place": "Saltmere"},
    "the-clockmakers-winter": {"people": ("Edda Frayne", "Lucan Birch"), "place": "Ostwick"},
}
ANALOGUE_FORGET_WORK = "the-lantern-of-greywater"
_THINGS = ("lantern", "map", "key", "boat", "bell", "letter", "coat", "clock", "garden", "bridge", "ring", "drum")
_ADJECTIVES = ("old", "red", "broken", "quiet", "golden", "heavy", "small", "bright", "cold", "green")
_SENTENCES = (
    "{a} walked to {place} at dawn and found the {adj} {thing} by the {thing2}.",
    "{b} said that the {thing} had been lost for {n} years.",
    "They carried the {adj} {thing} across {place} until the rain stopped.",
    "In the evening {a} wrote to {b} about the {thing} and the {adj} {thing2}.",
    "Nobody in {place} knew why {b} kept the {thing2} under the {thing}.",
    "{a} laughed, and {b} hid the {adj} {thing} behind the {thing2}.",
)


@dataclass(frozen=True)
class AnalogueConfig:
    """Sizes of the built-in analogue's fictitious works (see :func:`analogue_passages`)."""

    forget_passages: int = 4
    keep_passages: int = 2
    retain_passages: int = 2
    sentences: int = 3
    seed: int = 0


def analogue_passages(config: AnalogueConfig = AnalogueConfig()) -> tuple[list[dict[str, Any]], list[str]]:
    """The analogue's passages with roles, and its retain texts (other passages of the keep works, never evaluated).

    The forget work's passages alternate forget / heldout; each keep work gives ``keep_passages`` evaluated passages
    and ``retain_passages`` retain texts. Sentences are drawn from templates with a seeded generator.
    """
    import random

    rng = random.Random(f"copyright-analogue:{config.seed}")
    passages, retain = [], []
    for work, cast in ANALOGUE_WORKS.items():
        forget_work = work == ANALOGUE_FORGET_WORK
        count = config.forget_passages if forget_work else config.keep_passages + config.retain_passages
        for index in range(count):
            first, second = rng.sample(cast["people"], 2)
            text = " ".join(rng.choice(_SENTENCES).format(
                a=first, b=second, place=cast["place"], thing=rng.choice(_THINGS), thing2=rng.choice(_THINGS),
                adj=rng.choice(_ADJECTIVES), n=rng.randint(2, 40)) for _ in range(config.sentences))
            if forget_work:
                role = "forget" if index % 2 == 0 else "heldout"
            elif index < config.keep_passages:
                role = "keep"
            else:
                retain.append(text)
                continue
            passages.append({"id": f"{work}-{index}", "work": work, "title": work.replace("-", " ").title(),
                             "source": "generated (built-in analogue)", "text": text, "role": role})
    return passages, retain
