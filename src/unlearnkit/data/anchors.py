"""Anchored-term dictionaries for Who's Harry Potter: idiosyncratic terms mapped to generic ones.

Eldan & Russinovich ("Who's Harry Potter? Approximate Unlearning in LLMs",
arXiv 2310.02238, 2023) ask GPT-4 for a dictionary of the target text's
idiosyncratic terms ("Hogwarts" -> "Mystic Academy") and translate the text
with it, so that the baseline model's predictions on the translated text show
what a model that never knew the target would say.

This module holds the dictionary side, with no model involved:

* :func:`load_anchored_terms` reads a user's dictionary, a JSON object
  ``{"term": "generic term", ...}``;
* :func:`builtin_anchored_terms` generates one for the built-in benchmark,
  whose idiosyncratic terms are its fictitious author names;
* :func:`translate` applies a dictionary to a text.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from unlearnkit.errors import UnlearnkitError

# Plain, common names. None of them can be a coined word of the built-in world
# (those are onset + vowel + middle + ending, see ``world.py``), and none is one
# of its vocabulary words (trades such as "baker" or "cooper" are left out), so
# a generic name never names another author or echoes a fact value.
GENERIC_FIRST_NAMES = (
    "John", "Mary", "James", "Edith", "Robert", "Emily", "Michael", "Alice", "William", "Nancy",
    "David", "Betty", "Thomas", "Irene", "Richard", "Sarah", "Joseph", "Ruth", "Charles", "Anne",
)  # fmt: skip
GENERIC_SURNAMES = (
    "Smith", "Jones", "Brown", "Taylor", "Wilson", "Clark", "Walker", "Wright", "Green", "Hall",
    "Allen", "Young", "King", "Scott", "Hill", "Moore", "Ward", "Evans", "Adams", "Lewis",
)  # fmt: skip

_WORD = re.compile(r"[\w'-]+")


def load_anchored_terms(path: str | Path) -> dict[str, str]:
    """Read a dictionary file: a JSON object whose keys and values are non-empty strings.

    Raises :class:`UnlearnkitError` naming the ``anchored_terms`` option when the
    file is missing, is not JSON, or is not such an object.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnlearnkitError(
            f"anchored_terms file {str(path)!r} does not exist. Pass the path of a JSON object "
            '{"term": "generic term", ...}, "builtin" for the built-in benchmark, or none.'
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise UnlearnkitError(f"anchored_terms file {str(path)!r} cannot be read as UTF-8 text: {error}.") from None
    try:
        terms = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnlearnkitError(f"anchored_terms file {str(path)!r} is not valid JSON ({error}).") from None
    return check_anchored_terms(terms, str(path))


def check_anchored_terms(terms: object, source: str) -> dict[str, str]:
    """Return ``terms`` as a dict if it maps non-empty strings to strings; else name ``anchored_terms`` in the error."""
    if not isinstance(terms, dict):
        raise UnlearnkitError(
            f"anchored_terms file {source!r} must hold a JSON object {{\"term\": \"generic term\", ...}}, "
            f"not a {type(terms).__name__}."
        )
    bad = [key for key, value in terms.items() if not key.strip() or not isinstance(value, str)]
    if bad:
        raise UnlearnkitError(
            f"anchored_terms file {source!r} must map non-empty terms to strings; "
            f"{len(bad)} entr{'y does' if len(bad) == 1 else 'ies do'} not (e.g. {bad[0]!r}: {terms[bad[0]]!r})."
        )
    return dict(terms)


def translate(text: str, terms: Mapping[str, str]) -> str:
    """Replace every whole-word occurrence of a dictionary term in ``text`` by its generic term.

    Longer terms win over terms they contain ("Velna Dorrick" before "Dorrick"),
    and a replaced span is never scanned again, so a generic term that happens
    to be another key is left alone.
    """
    if not terms:
        return text
    alternatives = "|".join(re.escape(term) for term in sorted(terms, key=len, reverse=True))
    # Look-arounds instead of \b: a term may itself start or end with punctuation.
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
    return pattern.sub(lambda match: terms[match.group(0)], text)


def _words(rows: Iterable[dict]) -> set[str]:
    """Lower-cased words of every string field of ``rows`` (names, values, questions, answers)."""
    words: set[str] = set()
    for row in rows:
        for value in row.values():
            texts = value if isinstance(value, list) else [value]
            for text in texts:
                if isinstance(text, str):
                    words.update(word.lower() for word in _WORD.findall(text))
    return words


def builtin_anchored_terms(forget_rows: Sequence[dict], avoid_rows: Sequence[dict] = ()) -> dict[str, str]:
    """A dictionary for the built-in benchmark: each forget author's name -> a plain generic name.

    For every distinct ``author`` of ``forget_rows`` (in order of first
    appearance) the dictionary maps the full name to a generic full name
    ("Velna Dorrick" -> "Mary Hall") and the surname alone to the generic
    surname ("Dorrick" -> "Hall"). The generic name is drawn with a
    ``random.Random`` seeded by the author's name, from the combinations of
    :data:`GENERIC_FIRST_NAMES` and :data:`GENERIC_SURNAMES` that no earlier
    author got and whose words appear in no row given (``forget_rows`` and
    ``avoid_rows``): the same rows always give the same dictionary, and an
    author's generic name depends on the authors before it only when two
    draws collide. A surname shared by two forget authors is left out (it would
    be ambiguous alone); the built-in world's names are unique, so this does
    not happen there.

    Raises :class:`UnlearnkitError` naming ``anchored_terms`` when the rows have
    no ``author`` field, or when there are more authors than free generic names.
    """
    if any("author" not in row for row in forget_rows):
        raise UnlearnkitError(
            "anchored_terms='builtin' needs an 'author' field in every forget row (the built-in splits have it); "
            "for other data pass a JSON dictionary file as anchored_terms."
        )
    authors = list(dict.fromkeys(row["author"] for row in forget_rows))
    used = _words(forget_rows) | _words(avoid_rows)
    firsts = [name for name in GENERIC_FIRST_NAMES if name.lower() not in used]
    surnames = [name for name in GENERIC_SURNAMES if name.lower() not in used]
    free = [(first, surname) for first in firsts for surname in surnames]
    surname_counts: dict[str, int] = {}
    for author in authors:
        surname = author.split()[-1]
        surname_counts[surname] = surname_counts.get(surname, 0) + 1

    terms: dict[str, str] = {}
    taken_surnames: set[str] = set()
    for author in authors:
        # Prefer a generic surname no other author got, so "surname alone" stays unambiguous in the translation too.
        candidates = [pair for pair in free if pair[1] not in taken_surnames] or free
        if not candidates:
            raise UnlearnkitError(
                f"anchored_terms='builtin' has {len(GENERIC_FIRST_NAMES) * len(GENERIC_SURNAMES)} generic names for "
                f"{len(authors)} forget authors and ran out; pass a JSON dictionary file as anchored_terms instead."
            )
        first, surname = random.Random(f"anchored-terms:{author}").choice(candidates)
        free.remove((first, surname))
        taken_surnames.add(surname)
        terms[author] = f"{first} {surname}"
        parts = author.split()
        if len(parts) > 1 and surname_counts[parts[-1]] == 1:
            terms[parts[-1]] = surname
    return terms
