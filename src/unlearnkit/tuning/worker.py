"""Running trials: the loop every worker runs, in the command's own process (``--jobs 1``) or in ``--jobs`` processes.

Parallel workers are separate processes (``python -m unlearnkit.tuning.worker STUDY_FOLDER ...``, started by
:func:`run_workers`), each with its own threads, sharing the study through its SQLite database. A worker
asks for trials until the study holds as many as asked for; each trial's outcome is told to the study
as it ends: complete (with its objective value and constraints), pruned, or failed (the method refused
the drawn settings, or training diverged: the study goes on). An interrupted trial is queued again.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unlearnkit.tuning.study import asking, counted, open_study, read_plan_file, remove_unfinished, requeue
from unlearnkit.tuning.trial import TrialContext, run_trial

logger = logging.getLogger("unlearnkit")
# Seconds the workers get to record their interrupted trials before they are stopped.
STOP_GRACE_SECONDS = 30


def work(context: TrialContext, trials: int, sampler_seed: int, parent: int | None = None) -> int:
    """Run trials of the study until it holds ``trials`` of them (queued reruns first); returns how many ran here.

    ``parent``: the process that started this worker; when it is gone, the worker stops between trials.
    """
    from optuna.trial import TrialState

    study = open_study(context.output, context.plan, sampler_seed)
    ran = 0
    while parent is None or os.getppid() == parent:
        with asking(context.output):
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not waiting and counted(study) >= trials:
                break
            trial = study.ask()
        run_one(context, study, trial)
        ran += 1
    return ran


def run_one(context: TrialContext, study: Any, trial: Any) -> None:
    """Run one asked-for trial and tell the study how it ended."""
    import optuna
    from optuna.trial import TrialState

    from unlearnkit.errors import Interrupted, UnlearnkitError

    number, objective = trial.number, context.plan.goal
    started = time.perf_counter()
    try:
        value = run_trial(context, trial)
    except optuna.TrialPruned as pruned:
        remove_unfinished(context.output, number)
        study.tell(trial, state=TrialState.PRUNED)
        logger.info("trial %d %s", number, pruned)
    except (KeyboardInterrupt, Interrupted) as error:
        trial.set_user_attr("interrupted", True)
        study.tell(trial, state=TrialState.FAIL)
        requeue(study, number, trial.params)
        remove_unfinished(context.output, number)
        error.staging = None  # the trial's unfinished run is gone: the study resumes by rerunning the command
        raise
    except UnlearnkitError as error:  # the drawn settings are refused, or training diverged: the study goes on
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        logger.warning("trial %d failed: %s", number, error)
    except Exception as error:
        trial.set_user_attr("error", f"{type(error).__name__}: {error}")
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        frozen = study.tell(trial, value)
        met = all(value <= 0 for value in frozen.constraints.values())
        logger.info("trial %d: %s=%.4g, %s (%.0f s)", number, objective.metric, value,
                    "meets the constraints" if met else "breaks a constraint", time.perf_counter() - started)


def load_context(output: Path, cache: Path | None, show_progress: bool = False) -> TrialContext:
    """The context of the study in ``output``, read back from its ``tune.json`` (in a worker process)."""
    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.tuning.benchmarks import plan_benchmark
    from unlearnkit.tuning.plan import TunePlan

    stored = read_plan_file(output)
    if stored is None:
        raise UnlearnkitError(f"{output} holds no tuning study.")
    plan = TunePlan.from_identity(stored["identity"])
    return TrialContext(Path(output), plan, plan_benchmark(plan, cache, show_progress), stored["references"])


def worker_seed(sampler_seed: int, existing: int, index: int) -> int:
    """The sampler seed of worker ``index`` in a run of the command that found ``existing`` trials in the study."""
    return sampler_seed + 1000 * existing + index


def run_workers(output: Path, cache: Path | None, trials: int, seeds: Sequence[int], threads: int, quiet: bool) -> list[int]:
    """Run one worker process per sampler seed and wait for them all; returns their exit statuses.

    On an interruption, the workers get :data:`STOP_GRACE_SECONDS` to record their trials, then are stopped.
    """
    processes = []
    for index, seed in enumerate(seeds, start=1):
        command = [sys.executable, "-m", "unlearnkit.tuning.worker", str(Path(output).absolute()), "--trials", str(trials),
                   "--sampler-seed", str(seed), "--threads", str(threads), "--parent", str(os.getpid()),
                   "--label", f"worker {index}", *(["--cache", str(cache)] if cache is not None else []),
                   *(["--quiet"] if quiet else [])]
        processes.append(subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}))
    try:
        return [process.wait() for process in processes]
    except BaseException:
        _stop(processes)
        raise


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    """Let interrupted workers record their trials, then end those still running (only the processes started here)."""
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _end_with_parent() -> None:
    """On Linux, the kernel sends SIGTERM to this worker when the process that started it dies."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):  # another C library: the parent check between trials remains
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def main(argv: Sequence[str] | None = None) -> int:
    """A worker process: run trials of the study in OUTPUT until it holds --trials of them."""
    from unlearnkit.errors import Interrupted
    from unlearnkit.runtime import quiet_libraries, set_threads

    parser = argparse.ArgumentParser(prog="python -m unlearnkit.tuning.worker", description=main.__doc__)
    parser.add_argument("output", type=Path)
    parser.add_argument("--trials", type=int, required=True)
    parser.add_argument("--sampler-seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parent", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--label", default="worker")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    _end_with_parent()
    set_threads(args.threads)
    quiet_libraries()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if args.quiet else logging.INFO)
    console.setFormatter(logging.Formatter(f"[{args.label}] %(message)s"))
    logger.addHandler(console)

    def interrupt(number: int, _frame: Any) -> None:
        for each in (signal.SIGINT, signal.SIGTERM):  # the terminal's Ctrl-C and the parent's relay must not cut the clean-up
            signal.signal(each, signal.SIG_IGN)
        raise Interrupted(signal.Signals(number).name, 128 + number)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, interrupt)
    try:
        work(load_context(args.output, args.cache), args.trials, args.sampler_seed, args.parent)
    except Interrupted as error:
        return error.exit_status
    return 0


if __name__ == "__main__":
    sys.exit(main())
