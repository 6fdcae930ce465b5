"""The study folder: its plan (``tune.json``), its Optuna study (``study.db``, SQLite), and what survives a crash.

The folder holds ``tune.json`` (the plan, see :mod:`unlearnkit.tuning.plan`, and the references the
constraints compare with), ``study.db`` (every trial: parameters, state, values, in-training
evaluations), ``trials/`` (one results folder per trial and seed) and, once the search has run, the
summary files (:mod:`unlearnkit.tuning.report`).

Resuming: a trial left ``RUNNING`` by a process that died (killed, out of memory) is marked failed,
as interrupted, and queued again with the same parameters, so the study runs it again; an
interrupted trial does not count towards ``--trials``. Several worker processes share the study
through SQLite; each asks for its next trial under a file lock, so they never run more trials
than asked for between them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import partial_dir, write_json
from unlearnkit.tuning.plan import TunePlan, differences

logger = logging.getLogger("unlearnkit")

PLAN_FILE = "tune.json"
DATABASE = "study.db"
TRIALS = "trials"
STUDY_NAME = "unlearnkit-tune"
# Seconds a process waits for SQLite's write lock before giving up (trials of parallel workers end at once).
SQLITE_TIMEOUT = 300
# The user attribute of a trial that reruns an interrupted one (its number): the interrupted one is not counted.
RERUN_OF = "rerun_of"


def trial_folder(output: Path, number: int, seed: int) -> Path:
    """The results folder of one trial's run with one seed."""
    return Path(output) / TRIALS / f"trial-{number:04d}-seed{seed}"


def read_plan_file(output: Path) -> dict[str, Any] | None:
    """``tune.json`` of ``output`` (None when there is none); a damaged one is refused."""
    path = Path(output) / PLAN_FILE
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UnlearnkitError(f"{path} is damaged (not JSON); choose another --output.") from None
    if not isinstance(stored, dict) or not isinstance(stored.get("identity"), dict):
        raise UnlearnkitError(f"{path} is not a tuning study's plan; choose another --output.")
    return stored


def check_study_folder(output: Path, plan: TunePlan) -> bool:
    """Whether ``output`` holds this plan's study (resumed); refuse any other folder that is not new or empty."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UnlearnkitError(f"{output} exists and is not a folder; choose another --output.")
    stored = read_plan_file(output)
    if stored is None:
        if output.is_dir() and any(output.iterdir()):
            found = sorted(path.name for path in output.iterdir())[:3]
            raise UnlearnkitError(f"{output} holds files that are not a tuning study ({', '.join(found)}: no {PLAN_FILE}); "
                                  "choose a new --output.")
        return False
    previous, wanted = stored["identity"], _normalised(plan.identity())
    if previous.get("method") != plan.method:
        raise UnlearnkitError(f"{output} holds a study of method {previous.get('method')}, not {plan.method}: choose another "
                              f"--output, or rerun with --method {previous.get('method')} and its settings to resume it.")
    changed = differences(previous, wanted)
    if changed:
        raise UnlearnkitError(f"{output} holds a study with other settings ({'; '.join(changed)}); its trials would not "
                              "compare with these. Rerun with its settings to resume it, or choose another --output.")
    return True


def write_plan(output: Path, plan: TunePlan, references: dict[str, Any], session: dict[str, Any]) -> None:
    """Create or update ``tune.json``: the plan, the references, and one record per run of the command."""
    stored = read_plan_file(output) or {"command": "tune", "identity": _normalised(plan.identity()), "sessions": []}
    stored["references"] = references
    stored["sessions"] = [*stored.get("sessions", []), session]
    write_json(Path(output) / PLAN_FILE, stored)


def _normalised(identity: dict[str, Any]) -> dict[str, Any]:
    """The identity as JSON stores it (tuples read back as lists), so that a stored one compares equal."""
    return json.loads(json.dumps(identity))


def storage(output: Path) -> Any:
    """The study's SQLite storage, waiting for the write lock rather than failing when workers write at once."""
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{Path(output).absolute() / DATABASE}",
                                      engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT}})


def open_study(output: Path, plan: TunePlan, sampler_seed: int) -> Any:
    """Create or load the Optuna study (Akiba et al., "Optuna: A Next-generation Hyperparameter Optimization Framework",
    KDD 2019): direction of the objective; the TPE sampler (Bergstra et al., "Algorithms for Hyper-Parameter
    Optimization", NeurIPS 2011), which reads the trials' constraints as constrained TPE does (Watanabe and Hutter,
    "c-TPE: Tree-structured Parzen Estimator with Inequality Constraints for Expensive Hyperparameter Optimization",
    IJCAI 2023) and ranks running trials as if they had failed (constant liar), so parallel workers spread out; the
    median stopping rule (Golovin et al., "Google Vizier: A Service for Black-Box Optimization", KDD 2017), or none.
    Optuna's defaults otherwise (10 random trials before TPE models the results; pruning once ``prune_after`` trials
    have finished).

    ``sampler_seed`` differs per worker and per run of the command, so that no two of them draw the same
    random settings; a fresh study with one worker is reproducible from the plan's sampler seed.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=plan.prune_after) if plan.prunes else optuna.pruners.NopPruner())
    return optuna.create_study(storage=storage(output), study_name=STUDY_NAME, sampler=sampler, pruner=pruner,
                               direction="maximize" if plan.goal.maximise else "minimize", load_if_exists=True)


def recover_interrupted(study: Any, output: Path) -> list[int]:
    """Mark trials left running by a dead process as failed (interrupted) and queue their parameters again.

    Called only while no worker runs (the study folder's lock is held and the workers are not started
    or have ended). Their unfinished run folders are removed. Returns the trial numbers recovered.
    """
    from optuna.trial import TrialState

    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study.tell(trial.number, state=TrialState.FAIL)
        requeue(study, trial.number, trial.params)
        remove_unfinished(output, trial.number)
        recovered.append(trial.number)
    if recovered:
        logger.warning("trial(s) %s were interrupted; they are marked failed and run again with the same settings",
                       ", ".join(map(str, recovered)))
    return recovered


def requeue(study: Any, number: int, params: dict[str, Any]) -> None:
    """Queue an interrupted trial's parameters again; the new trial records which one it reruns."""
    study.enqueue_trial(params, user_attrs={RERUN_OF: number})


def remove_unfinished(output: Path, number: int) -> None:
    """Remove the unfinished run folders (``.trial-NNNN-seedS.partial``) one trial left."""
    for staging in (Path(output) / TRIALS).glob(f".trial-{number:04d}-seed*.partial"):
        shutil.rmtree(staging, ignore_errors=True)


def rerun_numbers(trials: Any) -> set[int]:
    """The numbers of the trials that were interrupted and queued again (each rerun names the one it replaces)."""
    return {int(trial.user_attrs[RERUN_OF]) for trial in trials if RERUN_OF in trial.user_attrs}


def counted(study: Any) -> int:
    """Trials that count towards ``--trials``: every one but those interrupted (they run again under a new number)."""
    trials = study.get_trials(deepcopy=False)
    replaced = rerun_numbers(trials)
    return sum(1 for trial in trials if trial.number not in replaced)


@contextlib.contextmanager
def asking(output: Path) -> Iterator[None]:
    """One worker at a time counts the trials and asks for the next (a ``flock`` beside the database)."""
    with open(Path(output) / f".{DATABASE}.ask.lock", "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def staging_of(folder: Path) -> Path:
    """Where a trial's run folder is built (kept as ``.NAME.partial`` when its run fails)."""
    return partial_dir(folder)
