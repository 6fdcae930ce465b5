"""The ``unlearnkit`` application: global options, logging, and the exit status of every outcome."""

from __future__ import annotations

import errno
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from unlearnkit.cli.options import Threads
from unlearnkit.errors import NO_SPACE_ERRNOS, Interrupted, NumericalFault, UnlearnkitError

# Help texts are plain text: with Rich markup on, "[INST] ... [/INST]" or "hf:NAME[@SPLIT]" would be read as markup tags
# (a crash, or text silently dropped).
app = typer.Typer(
    help="Machine unlearning for LLMs: methods, trusted metrics and an offline benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
data_app = typer.Typer(help="The built-in benchmark's data.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")

_state: dict[str, Any] = {"progress": True}


def show_progress() -> bool:
    """Whether progress bars and info logs are shown (off with ``--quiet``)."""
    return bool(_state["progress"])


@app.callback()
def _global(
    threads: Threads = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide progress bars and info logs.")] = False,
) -> None:
    from unlearnkit.runtime import default_threads, quiet_libraries, set_threads

    set_threads(threads or default_threads())
    _state["progress"] = not quiet
    _setup_logging(quiet)
    quiet_libraries()


def _setup_logging(quiet: bool) -> None:
    """Info and up always reach a run's log.txt; the console shows them unless --quiet."""
    logger = logging.getLogger("unlearnkit")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, "unlearnkit_console", False)]:
        logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.unlearnkit_console = True  # type: ignore[attr-defined]
    logger.addHandler(console)



# Exit statuses (README, "Reliability"): 0 done; 1 an internal error (a bug: please report the traceback);
# 2 bad input or usage, nothing written; 3 training diverged; 4 results could not be written (disk full,
# I/O error), the unfinished run is kept; 130 / 143 interrupted by SIGINT / SIGTERM, the unfinished run is kept.
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_CANNOT_WRITE = 2, 3, 4
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
NO_SPACE = {*NO_SPACE_ERRNOS, errno.EFBIG}  # a file over the size limit cannot be written either


def main() -> None:
    """Console entry point: every failure the user can fix prints one message (no traceback) and a documented status."""
    previous = _catch_signals()
    try:
        status = app(standalone_mode=False)
    except NumericalFault as error:
        _fail(str(error), EXIT_DIVERGED)
    except UnlearnkitError as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except Interrupted as error:
        _fail(_interrupted_message(error), error.exit_status)
    except KeyboardInterrupt as error:  # before the handlers were installed, or raised by a library
        _fail(_interrupted_message(error), SIGNAL_EXIT[signal.SIGINT])
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        _fail(f"{error.strerror or error} while writing {error.filename or 'the results'}. Free some space and rerun the "
              "same command: an unfinished run resumes from its last intact checkpoint.", EXIT_CANNOT_WRITE)
    except Exception as error:
        # typer ships its own copy of click, whose exceptions are not click's: recognise them by what they carry.
        if not (hasattr(error, "format_message") and hasattr(error, "exit_code")):
            raise
        _usage_error(error)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if isinstance(status, int) and status:  # typer returns the status of a command that exits early
        sys.exit(status)


def _fail(message: str, status: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(status)


def _usage_error(error: Exception) -> None:
    """A usage error (unknown option or command, missing or malformed value): one message and a pointer to --help."""
    context = getattr(error, "ctx", None)
    message = error.format_message()  # type: ignore[attr-defined]
    if type(error).__name__ == "NoArgsIsHelpError":  # a bare command group: its help is the message
        typer.echo(message, err=True)
        sys.exit(EXIT_BAD_INPUT)
    hint = f"\nSee '{context.command_path} --help'." if context is not None else ""
    typer.echo(f"error: {message}{hint}", err=True)
    sys.exit(error.exit_code or EXIT_BAD_INPUT)  # type: ignore[attr-defined]


def _catch_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM raise :class:`Interrupted`, so the run keeps its unfinished state and exits 130 / 143.

    A second signal during that clean-up gets the default behaviour (stop at once).
    """
    previous = {number: signal.getsignal(number) for number in SIGNAL_EXIT}

    def interrupt(number: int, _frame: Any) -> None:
        for each in SIGNAL_EXIT:
            signal.signal(each, signal.default_int_handler if each == signal.SIGINT else signal.SIG_DFL)
        raise Interrupted(signal.Signals(number).name, SIGNAL_EXIT[number])

    try:
        for number in SIGNAL_EXIT:
            signal.signal(number, interrupt)
    except ValueError:  # not the main thread (e.g. called from a worker thread): keep Python's defaults
        return {}
    return previous


def _interrupted_message(error: BaseException) -> str:
    """Where the unfinished run is kept and how to resume it."""
    name = getattr(error, "signal_name", "SIGINT")
    staging = getattr(error, "staging", None)
    if staging is None:
        return f"interrupted by {name} before any results were written; rerun the same command to run it again."
    checkpoints = sorted(Path(staging, "checkpoints").glob("checkpoint-*"))
    how = ("rerun the same command to resume it from its last checkpoint (--resume insists on resuming)"
           if checkpoints else "rerun the same command to run it again")
    return f"interrupted by {name}; the unfinished run is kept in {staging}: {how}, or pass --overwrite to start over."
