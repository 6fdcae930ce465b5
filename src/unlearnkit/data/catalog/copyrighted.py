"""Copyrighted text in the Harry Potter setting: a user's own book, as passages to forget or VerbMem prompts.

Eldan & Russinovich, "Who's Harry Potter? Approximate Unlearning in LLMs", arXiv 2310.02238, 2023,
unlearn a book the user holds (it cannot be redistributed, so the catalog has no copy of any). ``@PATH``
is a UTF-8 ``.txt`` file or a folder of them (read in name order). Configs:

* ``passages`` — ``{text}`` rows: paragraphs (split at blank lines) joined until each passage has at least
  :data:`PASSAGE_WORDS` words, the unit fine-tuned on or forgotten;
* ``verbmem`` — ``{prompt, gt}`` rows for verbatim memorisation (MUSE's VerbMem form): the first
  :data:`PROMPT_WORDS` words of each passage and the :data:`CONTINUATION_WORDS` that follow.

WHP's anchored-term dictionary uses :mod:`unlearnkit.data.anchors`'s format, a JSON object
``{"term": "generic term"}``: :func:`anchored_terms` reads ``anchored_terms.json`` beside the text.
"""

from __future__ import annotations

import re
from pathlib import Path

from unlearnkit.data.anchors import load_anchored_terms
from unlearnkit.data.catalog.spec import CONTINUATION, TEXT, Config, DatasetSpec, Paper, register
from unlearnkit.errors import UnlearnkitError

# Counted in words, not tokens: the loader runs before any tokenizer is chosen (docs/datasets.md).
PASSAGE_WORDS = 256
PROMPT_WORDS = 32
CONTINUATION_WORDS = 128
TERMS_FILE = "anchored_terms.json"


def read_text(path: Path, config: str, split: str) -> list[dict]:
    files = [path] if path.is_file() else sorted(path.glob("*.txt"))
    if not files:
        raise UnlearnkitError(f"{path} holds no .txt file: pass your text as a UTF-8 .txt file or a folder of them.")
    passages: list[dict] = []
    for file in files:
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UnlearnkitError(f"{file} is not UTF-8 text ({error}); convert it, e.g. `iconv -t UTF-8`.") from None
        passages += [{"text": passage, "source_file": file.name} for passage in split_passages(text)]
    if not passages:
        raise UnlearnkitError(f"{path} holds no text (only blank lines).")
    return passages


def split_passages(text: str, min_words: int = PASSAGE_WORDS) -> list[str]:
    """Paragraphs (blank-line separated) joined in order until each passage has ``min_words`` words; the rest is the last."""
    passages, current, count = [], [], 0
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text)):
        if not paragraph:
            continue
        current.append(paragraph)
        count += len(paragraph.split())
        if count >= min_words:
            passages.append("\n\n".join(current))
            current, count = [], 0
    if current:
        passages.append("\n\n".join(current))
    return passages


def verbmem_row(passage: str) -> dict | None:
    """The passage's first PROMPT_WORDS words and the CONTINUATION_WORDS after them; None when it has no continuation."""
    words = passage.split()
    if len(words) <= PROMPT_WORDS:
        return None
    return {"prompt": " ".join(words[:PROMPT_WORDS]), "gt": " ".join(words[PROMPT_WORDS:PROMPT_WORDS + CONTINUATION_WORDS])}




def anchored_terms(path: str | Path) -> dict[str, str] | None:
    """WHP's dictionary for the text at ``path``: ``anchored_terms.json`` in the folder (or beside the file), else None."""
    path = Path(path)
    terms = (path if path.is_dir() else path.parent) / TERMS_FILE
    return load_anchored_terms(terms) if terms.is_file() else None


def copyrighted_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    """Passages as they are, or (``verbmem``) one prompt/continuation row per passage long enough to have both."""
    if config != "verbmem":
        return rows
    converted = [row for row in (verbmem_row(passage["text"]) for passage in rows) if row is not None]
    if not converted:
        raise UnlearnkitError(f"No passage of {where} has more than {PROMPT_WORDS} words: VerbMem needs a prompt and a continuation.")
    return converted


register(DatasetSpec(
    name="copyrighted",
    title="Copyrighted text you hold (Harry Potter style), with WHP's anchored-term dictionary",
    paper=Paper("Who's Harry Potter? Approximate Unlearning in LLMs", "Eldan & Russinovich", "arXiv", 2023, "2310.02238"),
    licence="yours to check: the text is the user's own copy",
    hub_id=None,
    configs={"passages": Config(("forget",)), "verbmem": Config(("forget",))},
    schema={"text": "str"},
    row_form=f"{TEXT} (passages) or {CONTINUATION} (verbmem)",
    use="copyright track: passages to forget (WHP, gradient methods) and VerbMem prompts to test verbatim recall",
    local_copy=f"Pass a UTF-8 .txt file or a folder of them as @PATH; put WHP's dictionary as {TERMS_FILE} beside it "
               '({"Hogwarts": "Mystic Academy", ...}).',
    convert=copyrighted_rows,
    example={"text": "A passage of at least 256 words ...", "source_file": "book.txt"},
    read_local=read_text,
))
