"""Atomic, never-overwriting output helpers.

Results go to a temporary sibling first and are moved into place with
``os.replace`` so that a crash never leaves a half-written file that looks
finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from unlearnkit.errors import UnlearnkitError

logger = logging.getLogger("unlearnkit")
T = TypeVar("T")


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


# A folder that ``--overwrite`` may replace holds one of these: what unlearnkit writes into every results folder.
RESULTS_MARKERS = ("summary.json", "bench.json", "fusion.json", "export.json", "INCOMPLETE")


def check_output_dir(output: Path, overwrite: bool, inputs: Mapping[str, Any] | None = None) -> None:
    """Refuse an output folder that would destroy anything: an earlier result, an input, or a folder of the user's.

    Checked before any work starts, so a refused run writes nothing:

    * an existing non-empty folder is refused unless ``overwrite``, and even then
      only an earlier results folder (it holds ``summary.json``, ``bench.json`` or
      an unfinished run's marker) may be replaced, never an arbitrary folder;
    * ``inputs`` (role -> path or name) are what the run reads: the output, its
      staging and backup siblings must neither equal, contain nor lie inside any
      of them, after resolving symlinks (see :func:`check_spares_inputs`);
    * the empty path, the current folder, its ancestors and the home folder are never outputs;
    * the parent must be writable.
    """
    if not str(output).strip():
        raise UnlearnkitError("--output is empty; name the results folder to create (e.g. --output runs/my-run).")
    output = Path(output).expanduser()
    resolved = output.resolve()
    protected = {Path.cwd().resolve(), *Path.cwd().resolve().parents, Path.home().resolve()}
    if resolved in protected:
        raise UnlearnkitError(
            f"--output {output} is {'the current folder' if resolved == Path.cwd().resolve() else 'a folder above the current one or the home folder'}; "
            "a run replaces its output folder, so name a new folder for it (e.g. --output runs/my-run)."
        )
    check_spares_inputs({"--output": output}, inputs or {}, results_folder=True)
    if output.exists() and not output.is_dir():
        raise UnlearnkitError(f"Output path {output} exists and is not a folder; choose another --output.")
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise UnlearnkitError(
                f"Output folder {output} already holds files (an earlier result?). "
                "Choose a new --output, or pass --overwrite to replace it."
            )
        if not any((output / marker).exists() for marker in RESULTS_MARKERS):
            raise UnlearnkitError(
                f"Output folder {output} holds files that are not an unlearnkit result; --overwrite replaces only an "
                "earlier results folder. Choose a new --output."
            )
    _check_writable(output.absolute().parent)


def output_siblings(output: Path) -> list[Path]:
    """Every path a run writes for ``output``: the folder, its staging and backup siblings, and its lock file."""
    output = Path(output).expanduser().absolute()
    return [output, partial_dir(output), output.with_name(f".{output.name}.old"), lock_path(output)]


def check_spares_inputs(outputs: Mapping[str, Any], inputs: Mapping[str, Any], results_folder: bool = False) -> None:
    """Refuse any output that equals, contains or lies inside an input, after resolving symlinks.

    ``outputs`` and ``inputs`` map a role (``--output``, ``--model``...) to a path;
    ``None`` and names that are not local paths (hub names, built-in split names)
    are skipped. A results folder (``results_folder``) also owns its hidden
    staging, backup and lock siblings, which are checked the same way.
    """
    local_inputs = {role: Path(path).expanduser().resolve() for role, path in inputs.items() if _is_local(path)}
    for out_role, out_path in outputs.items():
        if out_path is None or not str(out_path).strip():
            continue
        candidates = output_siblings(out_path) if results_folder else [Path(out_path).expanduser()]
        for candidate in candidates:
            written = candidate.resolve()
            for in_role, read in local_inputs.items():
                if written == read:
                    relation = "is"
                elif read.is_relative_to(written):
                    relation = "contains"
                elif written.is_relative_to(read):
                    relation = "lies inside"
                else:
                    continue
                raise UnlearnkitError(
                    f"{out_role} {out_path} {relation} {in_role} {inputs[in_role]}, which this command reads: writing there "
                    f"would destroy it. Choose {out_role} outside every input (with or without --overwrite)."
                )


def _is_local(path: Any) -> bool:
    """Whether ``path`` names something on this machine (hub and built-in names do not exist locally)."""
    if path is None or not str(path).strip():
        return False
    return Path(str(path)).expanduser().exists() or Path(str(path)).is_symlink()


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


def lock_path(output: Path) -> Path:
    """The lock file of ``output``: a hidden sibling, like the staging folder."""
    output = Path(output).expanduser().absolute()
    return output.parent / f".{output.name}.lock"


# The lock files this process holds, with their descriptors (see :func:`output_lock`).
_held_locks: dict[Path, int] = {}


@contextlib.contextmanager
def output_lock(output: Path) -> Iterator[None]:
    """Hold the exclusive right to write ``output`` for the duration of the block.

    Two commands writing one results folder would each delete the other's files,
    so the second is refused, naming the first. The lock is a ``flock`` on the
    hidden file ``.NAME.lock`` beside ``output``, which records the holder's pid,
    host and command: the kernel releases it when its holder dies, so the lock
    of a killed run is taken over (with a message); a lock file recorded by
    another host is never taken over, since its holder cannot be checked from here.
    Re-entrant within one process (the outermost holder releases it); only the
    main process of a multi-process run takes it, the others write into the
    folder the main process owns.
    """
    from unlearnkit import distributed

    path = lock_path(output)
    if path in _held_locks or not distributed.is_main_process():
        yield
        return
    _held_locks[path] = _acquire(path, output)
    try:
        yield
    finally:
        fd = _held_locks.pop(path)
        path.unlink(missing_ok=True)  # unlink before unlocking: a waiter that locked the old file sees it is gone and retries
        os.close(fd)


def locks_output(function: Callable[..., T]) -> Callable[..., T]:
    """Run ``function`` (whose keyword ``output`` names its results folder) under that folder's lock, from its first step.

    Taking the lock before any validation or model loading refuses a second run
    on the same output at once, instead of after its set-up.
    """

    @functools.wraps(function)
    def locked(*args: Any, output: Path, **kwargs: Any) -> T:
        with output_lock(output):
            return function(*args, output=output, **kwargs)

    return locked


def _acquire(path: Path, output: Path) -> int:
    """Lock ``path`` (creating it) and record this process in it; refuse when a live run holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UnlearnkitError(
                f"Another unlearnkit run ({_describe(holder)}) is writing {output}. Wait for it to finish, or choose "
                "another --output."
            ) from None
        if not _same_file(fd, path):  # the holder released and removed it between our open and our lock: retry
            os.close(fd)
            continue
        previous = _read_holder(fd)
        if previous and previous.get("host") not in (None, socket.gethostname()):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise UnlearnkitError(
                f"{path} says that a run on host {previous.get('host')} ({_describe(previous)}) is writing {output}; "
                "its state cannot be checked from this host. If that run is no longer running, delete the lock file "
                "and rerun; otherwise choose another --output."
            )
        if previous:
            logger.warning("taking over the lock of %s left by a run that is no longer running (%s)", output, _describe(previous))
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> dict[str, Any]:
    try:
        data = json.loads(os.pread(fd, 65536, 0).decode("utf-8") or "{}")
    except (ValueError, OSError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: Mapping[str, Any]) -> str:
    if not holder:
        return "unknown holder"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: {holder.get('command')}"
