"""Atomic writes: a file, or a whole folder built in a hidden staging sibling.

Files go to a temporary sibling first and are moved into place with
``os.replace``, and folders are built beside their destination and renamed into
place (:func:`publish_dir`), so that a crash never leaves a half-written file or
folder that looks finished. What they write gets the permissions of any file the
user creates (0644 under the usual umask 022), never a temporary file's private
0600. The results-folder contract built on these (locks, input checks, resuming)
is :mod:`unlearnkit.runs.folder`.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a unique sibling, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the same folder keeps os.replace an atomic rename; open(..., "x") creates it with the
    # umask's permissions, where tempfile.mkstemp's would be private (0600) and surprise whoever shares the results.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def publish_dir(staging: Path, output: Path) -> None:
    """Move a finished staging folder to ``output``, replacing an old one only at the last moment.

    Its files first get the umask's permissions (:func:`share_like_user_files`).
    """
    output = Path(output)
    share_like_user_files(staging)
    if output.exists():
        backup = backup_dir(output)
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(output, backup)
        os.replace(staging, output)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, output)


def user_file_mode() -> int:
    """The permissions a new file gets in this process: 0o666 less the umask (0644 under the usual 022)."""
    # Python has no way to read the umask without setting it: set it and put it back at once.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def share_like_user_files(folder: Path) -> None:
    """Give every file under ``folder`` the umask's permissions, as if the user had created it.

    Libraries that save weights write through private temporary files (safetensors leaves ``model.safetensors``
    at 0600): a results folder or model should be readable by whoever may read the user's other files.
    Only regular files are changed; symbolic links are not followed.
    """
    mode = user_file_mode()
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root, name)
            info = path.lstat()
            if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) != mode:
                path.chmod(mode)


def backup_dir(output: Path) -> Path:
    """Where :func:`publish_dir` moves the old ``output`` for the instant of the swap: a hidden sibling."""
    return Path(output).with_name(f".{Path(output).name}.old")


def partial_dir(output: Path) -> Path:
    """Where a run builds ``output`` before publishing it: a hidden sibling, so the final move is atomic.

    Its name is fixed, so that rerunning an interrupted command finds it and resumes.
    """
    output = Path(output).absolute()
    return output.parent / f".{output.name}.partial"


