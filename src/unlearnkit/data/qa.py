"""Question/answer data: loading, validation and the prompt format.

Every data source (the built-in benchmark, TOFU from the hub, a user's file)
uses TOFU's field names: ``question``, ``answer``, and for the truth-ratio
metrics ``paraphrased_answer`` and ``perturbed_answer`` (a list of wrong answers).
"""

from __future__ import annotations

import ast
import csv
import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unlearnkit.data import schemas
from unlearnkit.data.checks import duplicate_questions, normalise
from unlearnkit.data.schemas import is_schema_source, load_qa_rows
from unlearnkit.data.world import split_names
from unlearnkit.errors import UnlearnkitError, did_you_mean

logger = logging.getLogger("unlearnkit")

QA_FIELDS = ("question", "answer")
TRUTH_RATIO_FIELDS = ("paraphrased_answer", "perturbed_answer")
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
HUB_PREFIX = "hf:"
# Greedy tokens generated per question of a user's file or hub dataset: the TOFU/OpenUnlearning value
# (OpenUnlearning configs/generation/default.yaml at d3d7cf9), long enough for TOFU-length answers.
DEFAULT_MAX_NEW_TOKENS = 200

# What a known field must hold wherever a row has it (null counts as absent, except for required fields).
TEXT = "a non-empty string"
TEXT_LIST = "a non-empty list of non-empty strings"
TEXT_OR_LIST = "a non-empty string or a non-empty list of non-empty strings"
FIELD_KINDS: dict[str, str] = {
    "question": TEXT,
    "answer": TEXT,
    "paraphrased_answer": TEXT,  # the truth ratio's correct answer
    "perturbed_answer": TEXT_LIST,  # the truth ratio's wrong answers
    "paraphrased_question": TEXT_OR_LIST,  # the paraphrase attack
    "translated_question": TEXT_OR_LIST,  # the translation attack
    "author": TEXT,  # groups one entity's facts (audit splits, sequential units, WHP's built-in terms)
    "fact": TEXT,  # the built-in translation templates' key
    "value": TEXT,  # exact answer recall in the audit
}
_KIND_HINTS = {TEXT_LIST: ' In a CSV file, write the list as JSON in its cell: ["first", "second"].'}


def load_qa(
    source: str | Path,
    *,
    role: str,
    builtin: Callable[[str], list[dict]] | None = None,
    required: Sequence[str] = QA_FIELDS,
) -> list[dict]:
    """Load and validate QA rows from a built-in split name, a local file or a hub dataset.

    ``source`` forms:
      * a built-in split name (``forget10``), resolved by ``builtin``;
      * a local ``.json`` (a list of rows, or ``{"data": [...]}``), ``.jsonl``, ``.csv`` or ``.parquet`` file;
      * ``hf:NAME[:CONFIG][@SPLIT]``, e.g. ``hf:locuslab/TOFU:forget10@train`` (needs the hub);
      * a TOFU or MUSE QA name, ``tofu:CONFIG[@DIR]`` or ``muse-news:knowmem/SPLIT[@DIR]``
        (see :mod:`unlearnkit.data.schemas`; ``@DIR`` reads a local copy).

    ``role`` (e.g. "forget") names the data in error messages. Raises
    :class:`UnlearnkitError` naming the file, the row and the field at fault.
    """
    text = str(source)
    if is_schema_source(text) and not Path(text).exists():
        rows = load_qa_rows(text, role)
    elif builtin is not None and is_builtin_name(text):
        rows = builtin(text)
    elif text.startswith(HUB_PREFIX):
        rows = _load_hub(text[len(HUB_PREFIX):], role)
    else:
        rows = _load_file(Path(text), role)
    validate_rows(rows, required=required, where=f"{role} data ({text})")
    return rows


def source_max_new_tokens(source: str | Path) -> int:
    """The generation cap of a data source that is not a built-in split: its benchmark's for ``tofu:``/``muse-...:knowmem``
    names (:func:`unlearnkit.data.schemas.max_new_tokens`), else :data:`DEFAULT_MAX_NEW_TOKENS`."""
    text = str(source)
    if is_schema_source(text) and not Path(text).exists():
        return schemas.max_new_tokens(text) or DEFAULT_MAX_NEW_TOKENS
    return DEFAULT_MAX_NEW_TOKENS


def is_builtin_name(source: str) -> bool:
    """Whether ``source`` can only be a built-in split name: not a path, a hub name or a TOFU/MUSE name."""
    text = str(source)
    return not Path(text).exists() and not text.startswith(HUB_PREFIX) and not is_schema_source(text)


def validate_rows(rows: Sequence[Any], *, required: Sequence[str], where: str) -> None:
    """Check every row, not only the first: a list of dicts holding each ``required`` field, and every known field
    (:data:`FIELD_KINDS`) that a row holds of the right type.

    Also refuses truth-ratio fields given on some rows only (:func:`has_fields` would otherwise decide from
    part of the data), and warns about repeated questions and perturbed-answer lists of different lengths.
    ``where`` (e.g. "forget data (rows.jsonl)") names the data in messages, with the row number and the field.
    """
    if len(rows) == 0:
        raise UnlearnkitError(f"The {where} is empty: it needs at least one row with fields {', '.join(required)}.")
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UnlearnkitError(f"Row {index} of the {where} is a {type(row).__name__}, not an object with fields.")
        for field_name in required:
            if field_name not in row:
                present = ", ".join(sorted(map(str, row))) or "none"
                raise UnlearnkitError(
                    f"Row {index} of the {where} has no field {field_name!r} (fields present: {present}). "
                    f"Every row needs: {', '.join(required)}."
                )
            if row[field_name] is None:
                raise UnlearnkitError(
                    f"Row {index} of the {where}: field {field_name!r} is null (empty). Every row needs a value for: "
                    f"{', '.join(required)}; give it {FIELD_KINDS.get(field_name, 'a value')}, or remove the row."
                )
        for field_name, kind in {**dict.fromkeys(required, TEXT), **FIELD_KINDS}.items():
            value = row.get(field_name)
            if value is not None and not _is_kind(value, kind):
                raise UnlearnkitError(
                    f"Row {index} of the {where}: field {field_name!r} must be {kind}, got {_describe(value)}.{_KIND_HINTS.get(kind, '')}"
                )
    for field_name in TRUTH_RATIO_FIELDS:
        _check_all_or_none(rows, field_name, where)
    _warn_duplicate_questions(rows, where)
    _warn_uneven_perturbed(rows, where)


def has_fields(rows: Sequence[dict], fields: Sequence[str], where: str = "data") -> bool:
    """True when every row has every field in ``fields`` (a non-null, non-empty value); False when some field is on no row.

    A field given on some rows and not others is an error naming them: deciding from part of the
    data would silently leave a metric out, or compute it on some rows only.
    """
    for name in fields:
        _check_all_or_none(rows, name, where)
    return all(all(_given(row.get(name)) for name in fields) for row in rows)


def _is_kind(value: Any, kind: str) -> bool:
    def text(item: Any) -> bool:
        return isinstance(item, str) and bool(item.strip())

    def texts(item: Any) -> bool:
        return isinstance(item, list) and bool(item) and all(text(part) for part in item)

    if kind == TEXT:
        return text(value)
    if kind == TEXT_LIST:
        return texts(value)
    return text(value) or texts(value)


def _describe(value: Any) -> str:
    """A short picture of a wrong value for a message: its type, and the value when it is short."""
    shown = repr(value)
    return f"{type(value).__name__} {shown}" if len(shown) <= 40 else f"a {type(value).__name__}"


def _given(value: Any) -> bool:
    """Whether a field holds a value (None, '' and [] count as absent, as a missing field does)."""
    return value is not None and not (isinstance(value, (str, list)) and not value)


def _check_all_or_none(rows: Sequence[dict], name: str, where: str) -> None:
    lacking = [index for index, row in enumerate(rows, start=1) if not _given(row.get(name))]
    if 0 < len(lacking) < len(rows):
        shown = ", ".join(map(str, lacking[:10])) + (", ..." if len(lacking) > 10 else "")
        raise UnlearnkitError(
            f"The {where} has {name!r} on some rows but not on row(s) {shown} ({len(lacking)} of {len(rows)} lack it, "
            "or hold null). The metrics that read it (the truth ratio, for paraphrased_answer and perturbed_answer) need "
            f"it on every row or on none: deciding from part of the rows would skip or distort them. Give every row "
            f"a {name}, or remove it from all rows."
        )


def _warn_duplicate_questions(rows: Sequence[dict], where: str) -> None:
    """Repeated questions weigh one fact several times in training and in every mean; usually a data-preparation slip."""
    for finding in duplicate_questions(rows, where):
        again = finding.rows[0]
        key = normalise(rows[again - 1]["question"])
        first = next(index for index, row in enumerate(rows, start=1)
                     if isinstance(row.get("question"), str) and normalise(row["question"]) == key)
        logger.warning("The %s repeats %d question(s), compared ignoring case and spacing (e.g. row %d repeats row %d: %r); "
                       "each copy counts as a separate example.", where, len(finding.rows), again, first, rows[first - 1]["question"])


def _warn_uneven_perturbed(rows: Sequence[dict], where: str) -> None:
    """The truth ratio uses as many perturbed answers per row as the shortest list has: say so when lists differ."""
    lengths = {len(row["perturbed_answer"]) for row in rows if isinstance(row.get("perturbed_answer"), list)}
    if len(lengths) > 1:
        logger.warning("The %s has perturbed_answer lists of %d to %d answers; the truth ratio uses the first %d of each row.",
                       where, min(lengths), max(lengths), min(lengths))


def _load_file(path: Path, role: str) -> list[dict]:
    if not path.exists():
        raise UnlearnkitError(_missing_file_message(path, role))
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                return [json.loads(line) for line in handle if line.strip()]
        if suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("data"), list):
                return data["data"]
            if not isinstance(data, list):
                raise UnlearnkitError(f"The {role} data file {path} must hold a list of rows or {{\"data\": [...]}} (from pandas: "
                                      "DataFrame.to_json(path, orient=\"records\")).")
            return data
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                return _read_csv(handle, f"{role} data file {path}")
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path).to_pylist()
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error, OSError, ValueError) as error:
        if isinstance(error, UnlearnkitError):
            raise
        raise UnlearnkitError(f"Could not parse the {role} data file {path}: {error}") from None
    raise UnlearnkitError(
        f"The {role} data file {path} has an unsupported suffix {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}."
    )


def _missing_file_message(path: Path, role: str) -> str:
    """Why ``path`` was read as a file and what to pass instead; a bare word is compared with the built-in split names."""
    forms = f"an existing {'/'.join(FILE_SUFFIXES)} file, hf:NAME[:CONFIG][@SPLIT], or a tofu:/muse- name"
    name = str(path)
    if path.suffix or len(path.parts) != 1:
        return f"The {role} data file {path} does not exist. Pass {forms}."
    if name in split_names():
        # Where built-in split names are accepted they never reach here: this slot reads the user's own data.
        return (f"{name!r} is a built-in benchmark split, but here the {role} data is read from a file, and no file {name} "
                f"exists. To work on the built-in benchmark, pass --benchmark with its forget split "
                f"(e.g. --benchmark forget10) instead of the data files; to use the split as data of your own, write the "
                f"splits to files with `unlearnkit data export --output DIR` and pass DIR/{name}.jsonl.")
    hint = did_you_mean(name, split_names())
    builtin = "a built-in split name (where the command takes one), " if hint else ""
    return f"The {role} data file {path} does not exist.{hint} Pass {builtin}{forms}."


# Leading CSV columns without a name are row indexes, as pandas' DataFrame.to_csv writes one by default ("" for its
# header; a file read and written again gains one more, "Unnamed: 0"); they are no field of the data.
_INDEX_HEADER = re.compile(r"|Unnamed: \d+")
# Fields that may hold a list, and so a list in a CSV cell (as JSON, or as the Python repr pandas writes).
_LIST_FIELDS = tuple(name for name, kind in FIELD_KINDS.items() if kind in (TEXT_LIST, TEXT_OR_LIST))
_LIST_OPENING = re.compile(r"\[\s*([\"']|\]$)")


def _read_csv(handle: Any, where: str) -> list[dict[str, Any]]:
    reader = csv.reader(handle)
    header = next(reader, [])
    skip = 0
    while skip < len(header) and _INDEX_HEADER.fullmatch(header[skip].strip()):
        skip += 1
    names = header[skip:]
    rows = []
    for index, cells in enumerate(reader, start=1):
        if not cells:
            continue  # csv.DictReader skips blank lines too
        if len(cells) - skip > len(names):
            raise UnlearnkitError(f"Row {index} of the {where} (line {reader.line_num}) has {len(cells) - skip} cells but the "
                                  f"header names {len(names)} columns: quote cells that contain commas.")
        values = cells[skip:] + [""] * (len(names) - len(cells) + skip)
        rows.append(_decode_csv_row(dict(zip(names, values, strict=True)), index, where))
    return rows


def _decode_csv_row(row: dict[str, str], index: int, where: str) -> dict[str, Any]:
    """CSV has no lists: a list field's cell holds its list as JSON (``["a", "b"]``) or as pandas writes it (``['a', 'b']``).

    CSV has no null either: an empty cell outside question/answer is read as null, which an optional field
    treats as absent (as a missing key in JSON) and a required one reports as null.
    """
    decoded: dict[str, Any] = {key: None if key not in QA_FIELDS and value == "" else value for key, value in row.items()}
    for name in _LIST_FIELDS:
        cell = decoded.get(name)
        if not isinstance(cell, str):
            continue
        text = cell.strip()
        # A field that may be a single text reads a list only from a cell that opens like one ("[INST] ..." stays text).
        if text.startswith("[") if FIELD_KINDS[name] == TEXT_LIST else _LIST_OPENING.match(text):
            parsed = _parse_list_cell(text)
            if parsed is None:
                raise UnlearnkitError(
                    f"Row {index} of the {where}, column {name!r}: the cell {_shorten(cell)} is not a list of texts. Write "
                    f'the list as JSON in its cell, ["first", "second"] (a Python list of strings, as pandas writes it, works too).'
                )
            decoded[name] = parsed
    return decoded


def _shorten(text: str) -> str:
    return repr(text) if len(text) <= 60 else repr(text[:57] + "...")


def _parse_list_cell(text: str) -> list[str] | None:
    """A list of strings written as JSON or as a Python list literal; None when the cell is neither.

    The Python form is read by :func:`ast.literal_eval` only after checking that the cell is a list of
    string literals and nothing else: no other expression is ever evaluated.
    """
    try:
        value = json.loads(text)
    except ValueError:
        try:
            tree = ast.parse(text, mode="eval")
        except (SyntaxError, ValueError, RecursionError):  # RecursionError: absurdly deep brackets
            return None
        node = tree.body
        if not (isinstance(node, ast.List) and all(isinstance(item, ast.Constant) and isinstance(item.value, str)
                                                  for item in node.elts)):
            return None
        value = ast.literal_eval(node)
    return value if isinstance(value, list) and all(isinstance(item, str) for item in value) else None


def _load_hub(spec: str, role: str) -> list[dict]:
    """``NAME[:CONFIG][@SPLIT]`` → rows, through ``datasets.load_dataset``."""
    from datasets import load_dataset

    name_config, _, split = spec.partition("@")
    name, _, config = name_config.partition(":")
    try:
        dataset = load_dataset(name, config or None, split=split or "train")
    except Exception as error:  # noqa: BLE001 - the hub raises many types; all mean the same to the user
        raise UnlearnkitError(f"Could not load the {role} dataset {spec!r} from the hub: {error}") from None
    return [dict(row) for row in dataset]
