"""Atomic, never-overwriting output helpers.

Results go to a temporary sibling first and are moved into place with
``os.replace`` so that a crash never leaves a half-written file that looks
finished.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def check_output_dir(output: Path, overwrite: bool) -> None:
    """Refuse an output folder that already holds results unless ``overwrite`` is set.

    Checked before any work starts, so a refused run writes nothing.
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UnlearnkitError(f"Output path {output} exists and is not a folder; choose another --output.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UnlearnkitError(
            f"Output folder {output} already holds files (an earlier result?). "
            "Choose a new --output, or pass --overwrite to replace it."
        )
    _check_writable(output.absolute().parent)


def _check_writable(folder: Path) -> None:
    """Fail now, not after hours of training, when results could not be written beside ``folder``."""
    existing = folder
    while not existing.exists():
        existing = existing.parent
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".unlearnkit-probe-"):
            pass
    except OSError as error:
        raise UnlearnkitError(f"Cannot write results under {folder}: {error.strerror or error}. Choose another --output.") from None


def publish_dir(staging: Path, output: Path) -> None:
    """Move a finished staging folder to ``output``, replacing an old one only at the last moment."""
    output = Path(output)
    if output.exists():
        backup = output.with_name(f".{output.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(output, backup)
        os.replace(staging, output)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output)


def partial_dir(output: Path) -> Path:
    """Where a run builds ``output`` before publishing it: a hidden sibling, so the final move is atomic.

    Its name is fixed, so that rerunning an interrupted command finds it and resumes.
    """
    output = Path(output).absolute()
    return output.parent / f".{output.name}.partial"
