"""Row checks shared by the catalog's loaders: required fields, their types, and multiple-choice answers.

Every message names the row (counted from 1), the file or hub split it came from, and the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unlearnkit.data.catalog.spec import TYPE_WORDS
from unlearnkit.errors import UnlearnkitError

_MISSING = object()


def check_rows(rows: Sequence[Any], schema: Mapping[str, str], optional: Mapping[str, str],
               fields: Mapping[str, str], where: str) -> list[dict]:
    """Check every row and rename the file's field names to the schema's (``fields``: schema name -> file name).

    Names may be dotted for nested fields (``prompt.text``). A required field that is missing or of the
    wrong type, or an optional one of the wrong type, raises :class:`UnlearnkitError`.
    """
    known = {**schema, **optional}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise UnlearnkitError(f"The field mapping for {where} names unknown field(s) {unknown}; "
                              f"its fields are {', '.join(known)}.")
    if not rows:
        raise UnlearnkitError(f"{where} holds no rows; it needs rows with fields {', '.join(schema)}.")
    checked = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UnlearnkitError(f"Row {index} of {where} is a {type(row).__name__}, not an object with fields.")
        out = {key: value for key, value in row.items() if key not in {fields[name].split(".")[0] for name in fields}}
        for name, kind in known.items():
            source_name = fields.get(name, name)
            value = get_path(row, source_name)
            if value is _MISSING or (value is None and name not in schema):
                if name in schema:
                    present = ", ".join(sorted(map(str, row))) or "none"
                    raise UnlearnkitError(f"Row {index} of {where} has no field {source_name!r} (fields present: {present}). "
                                          f"Fix the file, or map the field: fields={{{name!r}: 'its name in your file'}}.")
                continue
            if not is_kind(value, kind):
                raise UnlearnkitError(f"Row {index} of {where}: field {source_name!r} must be {TYPE_WORDS[kind]}, "
                                      f"not {_shown(value)}.")
            set_path(out, name, value)
        checked.append(out)
    return checked


def check_answer_index(row: Mapping[str, Any], index: int, where: str, *, choices: str = "choices", answer: str = "answer") -> None:
    """A multiple-choice row's answer must be an integer index into its (non-empty) choices."""
    options, value = row[choices], row[answer]
    if not options:
        raise UnlearnkitError(f"Row {index} of {where}: field {choices!r} is empty; a multiple-choice row needs choices.")
    if not is_kind(value, "int"):
        raise UnlearnkitError(f"Row {index} of {where}: field {answer!r} must be an integer index into {choices!r}, "
                              f"not {_shown(value)}.")
    if not 0 <= value < len(options):
        raise UnlearnkitError(f"Row {index} of {where}: answer index {value} is out of range; "
                              f"it has {len(options)} choices, so the index must be 0 to {len(options) - 1}.")


def check_allowed(row: Mapping[str, Any], name: str, allowed: Sequence[str], index: int, where: str) -> None:
    if row[name] not in allowed:
        raise UnlearnkitError(f"Row {index} of {where}: field {name!r} is {row[name]!r}; it must be one of {', '.join(allowed)}.")


def is_kind(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str) and bool(value.strip())
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "float?":
        return value is None or (isinstance(value, int | float) and not isinstance(value, bool))
    if kind == "list[str]":
        return isinstance(value, list | tuple) and all(isinstance(item, str) for item in value)
    if kind == "list[int]":
        return isinstance(value, list | tuple) and all(isinstance(item, int) and not isinstance(item, bool) for item in value)
    if kind == "object":
        return isinstance(value, dict)
    raise ValueError(f"unknown field type {kind!r}")


def get_path(row: Mapping[str, Any], dotted: str) -> Any:
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def set_path(row: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        child = row.get(part)
        row[part] = child = dict(child) if isinstance(child, dict) else {}
        row = child
    row[last] = value


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"
