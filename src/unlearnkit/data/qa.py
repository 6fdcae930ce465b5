"""Question/answer data: loading, validation and the prompt format.

Every data source (the built-in benchmark, TOFU from the hub, a user's file)
uses TOFU's field names: ``question``, ``answer``, and for the truth-ratio
metrics ``paraphrased_answer`` and ``perturbed_answer`` (a list of wrong answers).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unlearnkit.data.schemas import is_schema_source, load_qa_rows
from unlearnkit.data.world import split_names
from unlearnkit.errors import UnlearnkitError, did_you_mean

QA_FIELDS = ("question", "answer")
TRUTH_RATIO_FIELDS = ("paraphrased_answer", "perturbed_answer")
FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")
HUB_PREFIX = "hf:"


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


def is_builtin_name(source: str) -> bool:
    """Whether ``source`` can only be a built-in split name: not a path, a hub name or a TOFU/MUSE name."""
    text = str(source)
    return not Path(text).exists() and not text.startswith(HUB_PREFIX) and not is_schema_source(text)


def validate_rows(rows: Sequence[Any], *, required: Sequence[str], where: str) -> None:
    """Check that ``rows`` is a non-empty list of dicts holding every ``required`` field."""
    if len(rows) == 0:
        raise UnlearnkitError(f"The {where} is empty: it needs at least one row with fields {', '.join(required)}.")
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UnlearnkitError(f"Row {index} of the {where} is a {type(row).__name__}, not an object with fields.")
        for field_name in required:
            if field_name not in row or row[field_name] is None:
                present = ", ".join(sorted(row)) or "none"
                raise UnlearnkitError(
                    f"Row {index} of the {where} has no field {field_name!r} (fields present: {present}). "
                    f"Every row needs: {', '.join(required)}."
                )
            value = row[field_name]
            if field_name == "perturbed_answer":
                if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                    raise UnlearnkitError(
                        f"Row {index} of the {where}: field 'perturbed_answer' must be a non-empty list of strings."
                    )
            elif not isinstance(value, str) or not value.strip():
                raise UnlearnkitError(f"Row {index} of the {where}: field {field_name!r} must be a non-empty string.")


def has_fields(rows: Sequence[dict], fields: Sequence[str]) -> bool:
    """True when every row has every field in ``fields``."""
    return all(all(row.get(name) for name in fields) for row in rows)


def _load_file(path: Path, role: str) -> list[dict]:
    if not path.exists():
        # A bare word was probably meant as a built-in split name.
        hint = did_you_mean(str(path), split_names()) if not path.suffix and len(path.parts) == 1 else ""
        raise UnlearnkitError(
            f"The {role} data file {path} does not exist.{hint} Pass a built-in split name, an existing "
            f"{'/'.join(FILE_SUFFIXES)} file, or hf:NAME[:CONFIG][@SPLIT]."
        )
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
                raise UnlearnkitError(f"The {role} data file {path} must hold a list of rows or {{\"data\": [...]}}.")
            return data
        if suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as handle:
                return [_decode_csv_row(row) for row in csv.DictReader(handle)]
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


def _decode_csv_row(row: dict[str, str]) -> dict[str, Any]:
    """CSV has no lists: ``perturbed_answer`` is stored as a JSON list in its cell."""
    decoded: dict[str, Any] = dict(row)
    cell = decoded.get("perturbed_answer")
    if isinstance(cell, str) and cell.strip().startswith("["):
        decoded["perturbed_answer"] = json.loads(cell)
    return decoded


def _load_hub(spec: str, role: str) -> list[dict]:
    """``NAME[:CONFIG][@SPLIT]`` → rows, through ``datasets.load_dataset``."""
    from datasets import load_dataset

    name_config, _, split = spec.partition("@")
    name, _, config = name_config.partition(":")
    try:
        dataset = load_dataset(name, config or None, split=split or "train")
    except Exception as error:  # the hub raises many types; all mean the same to the user
        raise UnlearnkitError(f"Could not load the {role} dataset {spec!r} from the hub: {error}") from None
    return [dict(row) for row in dataset]
