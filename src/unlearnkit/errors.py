"""User-facing errors.

Every problem caused by what the user passed (a file, a name, an option) raises
:class:`UnlearnkitError`. The command line prints its message alone, without a
traceback, and exits with status 2; nothing has been written by then.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable

# The errnos that mean a disk (or the user's quota on it) is full: the run could not write, and resumes once space is freed.
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class UnlearnkitError(Exception):
    """A problem with the user's input: the message says what was wrong and how to fix it."""


class NumericalFault(UnlearnkitError):
    """Training produced a non-finite loss; the run stops before anything is saved (exit status 3)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while a command ran (a ``BaseException``, like ``KeyboardInterrupt``, so no handler swallows it).

    ``staging`` is set by the results folder being built, when there is one: where the unfinished run is kept.
    """

    def __init__(self, signal_name: str, exit_status: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_status = exit_status
        self.staging = None


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean: X?' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""
