"""Atomic writes: a file, or a whole folder built in a hidden staging sibling.

Files go to a temporary sibling first and are moved into place with
``os.replace``, and folders are built beside their destination and renamed into
place (:func:`publish_dir`), so that a crash never leaves a half-written file or
folder that looks finished. The results-folder contract built on these (locks,
input checks, resuming) is :mod:`unlearnkit.runs.folder`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any


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


def publish_dir(staging: Path, output: Path) -> None:
    """Move a finished staging folder to ``output``, replacing an old one only at the last moment."""
    output = Path(output)
    if output.exists():
        backup = backup_dir(output)
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(output, backup)
        os.replace(staging, output)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output)


def backup_dir(output: Path) -> Path:
    """Where :func:`publish_dir` moves the old ``output`` for the instant of the swap: a hidden sibling."""
    return Path(output).with_name(f".{Path(output).name}.old")


def partial_dir(output: Path) -> Path:
    """Where a run builds ``output`` before publishing it: a hidden sibling, so the final move is atomic.

    Its name is fixed, so that rerunning an interrupted command finds it and resumes.
    """
    output = Path(output).absolute()
    return output.parent / f".{output.name}.partial"


