"""One writer per results folder: an exclusive lock beside it, held from a command's first step to its last."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from unlearnkit.errors import UnlearnkitError

logger = logging.getLogger("unlearnkit")
T = TypeVar("T")


def lock_path(output: Path) -> Path:
    """The lock file of ``output``: a hidden sibling, like the staging folder."""
    output = Path(output).expanduser().absolute()
    return output.parent / f".{output.name}.lock"


# The lock files this process holds, with their descriptors and the folders made for them (see :func:`output_lock`).
_held_locks: dict[Path, tuple[int, list[Path]]] = {}


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
    made = _make_parents(path.parent, output)
    try:
        _held_locks[path] = (_acquire(path, output), made)
    except BaseException:
        _remove_if_empty(made)
        raise
    try:
        yield
    finally:
        fd, made = _held_locks.pop(path)
        path.unlink(missing_ok=True)  # unlink before unlocking: a waiter that locked the old file sees it is gone and retries
        os.close(fd)
        # A refused or failed command leaves nothing behind, not even the empty folders made for its lock.
        _remove_if_empty(made)


def locks_output(function: Callable[..., T]) -> Callable[..., T]:
    """Run ``function`` under the lock of its results folder (keyword ``output``, or ``options.output``), from its first step.

    Taking the lock before any validation or model loading refuses a second run
    on the same output at once, instead of after its set-up.
    """

    @functools.wraps(function)
    def locked(*args: Any, **kwargs: Any) -> T:
        output = kwargs["output"] if "output" in kwargs else kwargs["options"].output
        with output_lock(output):
            return function(*args, **kwargs)

    return locked


def _make_parents(folder: Path, output: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, deepest first."""
    missing = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_if_empty(missing)
        raise _unwritable(output, error) from None
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while they are empty; a folder holding results stays."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _unwritable(output: Path, error: OSError) -> UnlearnkitError:
    return UnlearnkitError(f"Cannot write results under {output}: {error.strerror or error}. Choose another --output.")


def _acquire(path: Path, output: Path) -> int:
    """Lock ``path`` (creating it) and record this process in it; refuse when a live run holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _unwritable(output, error) from None
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
