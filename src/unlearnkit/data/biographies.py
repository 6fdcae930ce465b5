"""The built-in authors' facts as short biographies: the verbatim text behind VerbMem.

MUSE measures verbatim memorization on text the model was trained on. Every
QA answer of the built-in world states one fact as a full sentence ("Xan Brick
was born in Tovik."), so an author's biography is the answers of that author's
rows, in the world's fact order, joined with spaces: deterministic. The
built-in target and oracles are trained on the biographies of their authors
(:func:`training_texts`) besides the QA pairs, as MUSE's models are trained on
the corpus whose QA they answer. Biographies of forget authors are VerbMem's
forget texts; those of the holdout authors (never trained on) are unseen texts
of the same form.

A biography is longer than a tiny model's context (the default tiny model
holds 128 tokens), so :func:`biography_passages` packs whole sentences into
passages of at most ``max_tokens`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from unlearnkit.data.qa import validate_rows
from unlearnkit.errors import UnlearnkitError


@dataclass(frozen=True)
class Biography:
    """One author's facts, one sentence each, in the world's fact order."""

    author: str
    sentences: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def author_biographies(rows: Sequence[dict]) -> list[Biography]:
    """One biography per author of ``rows`` (fields ``author`` and ``answer``), authors in first-seen order."""
    validate_rows(rows, required=("author", "answer"), where="biography rows")
    sentences: dict[str, list[str]] = {}
    for row in rows:
        sentences.setdefault(row["author"], []).append(row["answer"].strip())
    return [Biography(author, tuple(lines)) for author, lines in sentences.items()]


def biography_passages(
    biographies: Sequence[Biography], tokenizer: PreTrainedTokenizerBase, max_tokens: int
) -> list[dict[str, str]]:
    """Each biography as passages ``{"author", "text"}`` of whole sentences, at most ``max_tokens`` tokens each.

    Sentences are packed greedily in order; a passage is closed when the next
    sentence would overflow it. A single sentence longer than ``max_tokens`` is
    cut to its first ``max_tokens`` tokens. Token counts exclude special tokens.
    """
    if max_tokens < 2:
        raise UnlearnkitError(f"Biography passages need at least 2 tokens, got max_tokens={max_tokens}.")
    passages = []
    for biography in biographies:
        current: list[str] = []
        for sentence in biography.sentences:
            candidate = " ".join([*current, sentence])
            if current and _count(tokenizer, candidate) > max_tokens:
                passages.append({"author": biography.author, "text": " ".join(current)})
                current = [sentence]
            else:
                current.append(sentence)
            if len(current) == 1 and _count(tokenizer, sentence) > max_tokens:
                ids = tokenizer(sentence, add_special_tokens=False)["input_ids"][:max_tokens]
                passages.append({"author": biography.author, "text": tokenizer.decode(ids, skip_special_tokens=True)})
                current = []
        if current:
            passages.append({"author": biography.author, "text": " ".join(current)})
    return passages


def _count(tokenizer: PreTrainedTokenizerBase, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


# Tokens per training passage: close to a QA pair's length (~30 tokens), so that batches mixing the two
# waste little compute on padding (128-token passages made the built-in benchmark's training 4x slower).
PASSAGE_TOKENS = 48


def training_texts(rows: Sequence[dict], tokenizer: PreTrainedTokenizerBase, max_tokens: int = PASSAGE_TOKENS) -> list[dict[str, str]]:
    """The biography passages (``max_tokens`` each) of the authors of ``rows`` as ``{"text"}`` training rows.

    The same passages are VerbMem's texts on the built-in benchmark, so a prefix
    VerbMem gives the model is the start of a sequence it was trained on.
    """
    return [{"text": passage["text"]} for passage in biography_passages(author_biographies(rows), tokenizer, max_tokens)]
