"""Which training rows a deletion request is about, and which rows are their neighbours.

A row is about the entity when any of its text fields holds one of the entity's names (the name and its aliases)
as whole words, ignoring case and spacing: "Ann Lee" matches "ANN  LEE was born" and "Ann Lee's novels", not
"Annabel Leeds". Matching is exact on purpose: a deletion request must be reproducible and explainable row by row,
and aliases (a maiden name, a pen name, initials) are the requester's to give.

The neighbours are the rows that are not about the entity but closest to its rows in wording (TF-IDF cosine of
each row's text with the entity's rows taken together): facts about related people and places, which unlearning
is likeliest to damage and a request must show it kept.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from difflib import get_close_matches

from unlearnkit.errors import UnlearnkitError

# Shorter names match inside too much ordinary text ("Al", "Jo" as initials are given with a surname instead).
MIN_NAME_CHARACTERS = 3
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_name(name: str) -> str:
    """``name`` as matched: Unicode-normalised (NFKC), case-folded, inner spacing collapsed."""
    return " ".join(unicodedata.normalize("NFKC", name).casefold().split())


def check_names(entity: str, aliases: Sequence[str] = ()) -> list[str]:
    """The request's names, normalised and de-duplicated (the entity first); a blank or too short one is refused."""
    names: list[str] = []
    for role, name in [("--entity", entity), *(("--alias", alias) for alias in aliases)]:
        normal = normalize_name(name) if isinstance(name, str) else ""
        if not _WORD.search(normal) or len(normal) < MIN_NAME_CHARACTERS:
            raise UnlearnkitError(f"{role} {name!r} is too short to name an entity (at least {MIN_NAME_CHARACTERS} characters with "
                                  "a letter or digit): give the full name, e.g. --entity \"Ann Lee\".")
        if normal not in names:
            names.append(normal)
    return names


def name_pattern(names: Sequence[str]) -> re.Pattern[str]:
    """One pattern matching any of ``names`` (normalised) as whole words, in any case and spacing."""
    alternatives = [r"\s+".join(re.escape(word) for word in name.split()) for name in sorted(names, key=len, reverse=True)]
    return re.compile(r"(?<!\w)(?:" + "|".join(alternatives) + r")(?!\w)", re.IGNORECASE | re.UNICODE)


def row_text(row: Mapping) -> str:
    """Every text a row holds (strings, and strings inside lists), joined: a name anywhere in the row counts."""
    parts: list[str] = []
    for value in row.values():
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, (list, tuple)):
            parts.extend(item for item in value if isinstance(item, str))
    return "\n".join(unicodedata.normalize("NFKC", part) for part in parts)


def matching_rows(rows: Sequence[Mapping], names: Sequence[str]) -> list[int]:
    """Indices of the rows about the entity: any of its ``names`` (from :func:`check_names`) in any text field."""
    pattern = name_pattern(names)
    # Case-folded text, as the names are: "STRASSE" and "Straße" are the same name.
    return [index for index, row in enumerate(rows) if pattern.search(row_text(row).casefold())]


def check_share(matched: int, total: int, names: Sequence[str], rows: Sequence[Mapping], max_share: float) -> None:
    """Refuse a request that matches no row (naming close names the corpus holds) or more than ``max_share`` of them."""
    shown = " / ".join(repr(name) for name in names)
    if matched == 0:
        close = close_names(rows, names[0])
        hint = f" Names in the corpus close to it: {', '.join(close)}." if close else ""
        raise UnlearnkitError(f"No row of the corpus ({total} rows) mentions {shown}.{hint} Check the spelling, or give the names "
                              "the corpus uses with --alias (repeatable).")
    if matched > max_share * total:
        raise UnlearnkitError(
            f"{shown} matches {matched} of the corpus's {total} rows ({matched / total:.0%}), more than --max-share {max_share:g}: "
            "a name that common would forget much of what the model knows. Give the full name (or a more specific alias), "
            "or raise --max-share if the corpus really is mostly about this entity.")


def close_names(rows: Sequence[Mapping], name: str, limit: int = 3) -> list[str]:
    """Capitalised word sequences of the corpus (as long as ``name``) closest to it: the spellings the corpus uses."""
    length = len(name.split())
    candidates: set[str] = set()
    for row in rows:
        words = re.findall(r"[^\W\d_][\w'-]*", row_text(row))
        for start in range(len(words) - length + 1):
            span = words[start:start + length]
            if all(word[:1].isupper() for word in span):
                candidates.add(" ".join(span))
    by_normal = {normalize_name(candidate): candidate for candidate in sorted(candidates)}
    return [by_normal[found] for found in get_close_matches(normalize_name(name), list(by_normal), n=limit, cutoff=0.6)]


# --------------------------------------------------------------------------------------------- neighbours


def words(text: str, stop: set[str]) -> list[str]:
    """Lower-cased words of ``text``, without the ``stop`` words (the request's names: every forget row shares them)."""
    return [word for word in _WORD.findall(text.casefold()) if word not in stop]


def inverse_frequencies(documents: Sequence[list[str]]) -> dict[str, float]:
    """Smoothed inverse document frequency of each word: ln((1 + n) / (1 + df)) + 1, for n documents."""
    count = len(documents)
    frequency = Counter(word for document in documents for word in set(document))
    return {word: math.log((1 + count) / (1 + df)) + 1 for word, df in frequency.items()}


def tfidf_vector(document: Sequence[str], idf: Mapping[str, float]) -> dict[str, float]:
    """A document's TF-IDF vector (tf = word count; words ``idf`` lacks are dropped), L2-normalised ({} when empty)."""
    weights = {word: tf * idf[word] for word, tf in Counter(document).items() if word in idf}
    norm = math.sqrt(sum(weight * weight for weight in weights.values()))
    return {word: weight / norm for word, weight in weights.items()} if norm else {}


def cosine(first: Mapping[str, float], second: Mapping[str, float]) -> float:
    """Cosine of two L2-normalised sparse vectors: their dot product."""
    small, large = (first, second) if len(first) <= len(second) else (second, first)
    return sum(weight * large.get(word, 0.0) for word, weight in small.items())


def neighbour_rows(rows: Sequence[Mapping], forget: Sequence[int], excluded: Sequence[int], names: Sequence[str], count: int) -> list[int]:
    """The ``count`` rows outside ``forget`` and ``excluded`` closest to the forget rows, most similar first.

    Similarity: the TF-IDF cosine (over the whole corpus, the request's names left out) between a row's text and
    the forget rows' texts taken as one document. Ties keep corpus order, so the choice is reproducible.
    """
    stop = {word for name in names for word in name.split()}
    documents = [words(row_text(row), stop) for row in rows]
    forget_set = set(forget)
    idf = inverse_frequencies(documents)
    entity = tfidf_vector([word for index in forget for word in documents[index]], idf)
    skip = forget_set | set(excluded)
    scored = [(-cosine(tfidf_vector(documents[index], idf), entity), index) for index in range(len(rows)) if index not in skip]
    return [index for _, index in sorted(scored)[:count]]
