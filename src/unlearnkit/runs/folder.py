"""The results-folder contract: every command writes one folder, atomically, under a lock, never over an input.

* :func:`check_output_dir` refuses, before any work, an output that would destroy
  anything (an input, an earlier result without ``--overwrite``, a folder of the user's);
* :func:`results_folder` builds the folder in its hidden staging sibling
  (``.NAME.partial``) under the output's lock (:mod:`unlearnkit.runs.lock`),
  marks it unfinished, resumes an interrupted run of the same settings, and
  publishes it with :func:`unlearnkit.io.publish_dir`, the one atomic publish;
* :func:`write` writes a results file from the main process only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from unlearnkit import distributed
from unlearnkit.errors import Interrupted, UnlearnkitError
from unlearnkit.io import backup_dir, partial_dir, publish_dir, write_json, write_text
from unlearnkit.runs.lock import lock_path, output_lock
from unlearnkit.training import disk_full_error

logger = logging.getLogger("unlearnkit")

RUN_IDENTITY = "run-identity.json"
INCOMPLETE_MARKER = "INCOMPLETE"
CHECKPOINTS = "checkpoints"


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
            f"--output {output} is "
            f"{'the current folder' if resolved == Path.cwd().resolve() else 'a folder above the current one or the home folder'}; "
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
    return [output, partial_dir(output), backup_dir(output), lock_path(output)]


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


@contextlib.contextmanager
def results_folder(
    output: Path,
    overwrite: bool,
    identity: Mapping[str, Any] | None = None,
    resume: bool = False,
    inputs: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield the staging folder of ``output``; it becomes ``output`` only if the block finishes.

    The block runs under the output's lock (:func:`unlearnkit.io.output_lock`),
    so a second command on the same ``output`` is refused instead of deleting
    this one's files. The staging folder (``.NAME.partial`` beside ``output``)
    holds an ``INCOMPLETE`` marker while the run is unfinished, and keeps it,
    saying why, when the run fails or is interrupted, so that an unfinished run
    never looks finished. A staging folder left by an interrupted run with the
    same ``identity`` (the resolved configuration) is reused, and its last
    intact checkpoint resumes the run; one with another identity is refused
    unless ``overwrite``, except a run that failed, which is replaced. The
    output is checked against ``inputs`` (see :func:`unlearnkit.io.check_output_dir`).

    With several processes (``accelerate launch``) every process gets the same
    folder (the Trainer's checkpoints need it), but only the main process
    creates, marks and publishes it; the others wait for it at barriers.
    """
    with output_lock(output):
        check_output_dir(output, overwrite, inputs)
        staging = partial_dir(output)
        resuming = _reusable_staging(staging, identity, overwrite)
        if resume and not resuming:
            raise UnlearnkitError(f"--resume: no interrupted run of this command was found at {staging}.")
        main = distributed.is_main_process()
        distributed.barrier()  # every process has read the old state before the main process changes it
        handler = None
        if main:
            if staging.exists() and not resuming:
                shutil.rmtree(staging)
            staging.mkdir(parents=True, exist_ok=True)
            write_text(staging / INCOMPLETE_MARKER, "running\n")
            if identity is not None:
                write_text(staging / RUN_IDENTITY, json.dumps(identity, sort_keys=True, default=str))
            handler = logging.FileHandler(staging / "log.txt", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        distributed.barrier()
        if resuming:
            logger.info("resuming the interrupted run kept in %s", staging)
        try:
            yield staging
        except BaseException as error:
            interrupted = isinstance(error, (KeyboardInterrupt, Interrupted))
            if main:
                reason = "interrupted" if interrupted else "failed"
                with contextlib.suppress(OSError):  # on a full disk the marker may not fit: the original error matters
                    write_text(staging / INCOMPLETE_MARKER, f"{reason}: {type(error).__name__}: {error}\n")
            if interrupted:
                error.staging = staging  # the command line says where the unfinished run is and how to resume it
                raise
            logger.error("run failed; the unfinished run is kept in %s", staging)
            full = disk_full_error(error, staging) if isinstance(error, Exception) else None
            if full is not None and not isinstance(error, OSError):
                raise full from error  # safetensors and torch report a full disk in their own words
            raise
        finally:
            if handler is not None:
                logger.removeHandler(handler)
                handler.close()
        distributed.barrier()  # all processes are done with the folder (checkpoints included)
        if main:
            shutil.rmtree(staging / CHECKPOINTS, ignore_errors=True)
            for name in (RUN_IDENTITY, INCOMPLETE_MARKER):
                (staging / name).unlink(missing_ok=True)
            publish_dir(staging, output)
            logger.info("results written to %s", output)
        distributed.barrier()  # no process returns before the results are in place


def _reusable_staging(staging: Path, identity: Mapping[str, Any] | None, overwrite: bool) -> bool:
    """Whether the staging folder left by an earlier run of this command is resumed (else it is replaced).

    A run with the same identity resumes; one with other settings is refused
    (``--overwrite`` discards it) unless it failed, since a failed run holds
    nothing to resume that would not fail again: it is replaced, with a message.
    """
    if not staging.exists() or identity is None or overwrite:
        return False
    stored = staging / RUN_IDENTITY
    previous = stored.read_text(encoding="utf-8") if stored.exists() else None
    if previous == json.dumps(identity, sort_keys=True, default=str):
        return True
    marker = staging / INCOMPLETE_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").startswith("failed"):
        logger.warning("replacing the failed run kept in %s", staging)
        return False
    raise UnlearnkitError(
        f"An interrupted run with other settings is kept in {staging}. Rerun it with its own settings to "
        "resume it, or pass --overwrite to discard it."
    )


def write(path: Path, data: Any) -> None:
    """Write a results file: the main process does, the others computed the same values and write nothing."""
    if distributed.is_main_process():
        write_json(path, data)


def with_reasons(summary: dict[str, Any], reasons: dict[str, str]) -> dict[str, Any]:
    """A summary as results folders hold it: the metrics, then ``not_computed`` (metric -> why) when something is missing."""
    return {**summary, "not_computed": reasons} if reasons else dict(summary)
