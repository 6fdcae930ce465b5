"""``tune``: search a method's hyperparameters with Optuna, then re-check the choice held out.

On the built-in benchmark (a split is a forget split, constraints relative to the retain oracle) or on
the real-knowledge benchmark (a split is a set of forget entities, no oracle): :mod:`unlearnkit.tuning.benchmarks`.
The study folder (``--output``) holds ``tune.json`` (the plan), ``study.db`` (the Optuna study, SQLite),
``trials/trial-NNNN-seedS/`` (one results folder per trial and seed), ``holdout/`` (the chosen
setting's runs on the held-out split) and the summary: ``trials.json``, ``best.json``, ``tradeoff.png``,
``report.md`` and ``report.html`` (:mod:`unlearnkit.tuning.report`). Rerunning the same command resumes
the study (``--trials`` is its total); with other settings it is refused.

Every input is checked before the first write: the method and its settings, each search dimension
against the method's configuration and the benchmark's data, the objective and constraints against the
metrics the benchmark reports, the counts, and the folder (new, empty, or this plan's study).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unlearnkit import __version__
from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs.lock import locks_output
from unlearnkit.settings import check_seed
from unlearnkit.tuning.benchmarks import DEFAULT_GOALS, BuiltinTuning, quiet
from unlearnkit.tuning.objective import Objective, mean_metrics
from unlearnkit.tuning.plan import PRUNERS, TunePlan, check_counts, reported_metrics
from unlearnkit.tuning.real_knowledge import RealKnowledgeTuning
from unlearnkit.tuning.report import best_summary, split_result, trial_records, write_summary
from unlearnkit.tuning.space import check_space, default_space, parse_space
from unlearnkit.tuning.study import check_study_folder, counted, open_study, recover_interrupted, trial_folder, write_plan
from unlearnkit.tuning.trial import TrialContext, numeric
from unlearnkit.tuning.worker import run_workers, work, worker_seed

logger = logging.getLogger("unlearnkit")

HOLDOUT = "holdout"


@dataclass(frozen=True)
class TuneOptions:
    """How many trials, in how many processes, each with how many threads; what to show and to keep."""

    trials: int = 20
    jobs: int = 1
    threads: int | None = None
    show_progress: bool = True
    keep_models: bool = False


@dataclass(frozen=True)
class TuneOutcome:
    output: Path
    best: dict[str, Any]
    records: list[dict[str, Any]]
    ran: int


def resolve_tune(
    *,
    benchmark: BuiltinTuning | RealKnowledgeTuning,
    method: str,
    split: str | None = None,
    holdout: str | None = None,
    space: Sequence[str] | None = None,
    objective: str | None = None,
    subject_to: str | None = None,
    fixed: Mapping[str, str] | None = None,
    seeds: Sequence[int] = (0,),
    eval_every: int | None = None,
    eval_rows: int = 0,
    pruner: str | None = None,
    prune_after: int = 5,
    sampler_seed: int = 0,
) -> tuple[TunePlan, str | None]:
    """The study's plan and held-out split from what the user named; everything checked that needs no model.

    None for ``split``, ``objective``, ``subject_to`` or ``pruner``: the benchmark's default
    (:data:`unlearnkit.tuning.benchmarks.DEFAULT_GOALS`; no pruning where the benchmark cannot evaluate
    during training).
    """
    from unlearnkit.methods import METHODS

    spec = METHODS.get(method)
    split = benchmark.check_split(split if split is not None else benchmark.default_split())
    held_out = benchmark.holdout_split(split, holdout)
    default_objective, default_constraints = DEFAULT_GOALS[benchmark.name]
    objective = default_objective if objective is None else objective
    subject_to = default_constraints if subject_to is None else subject_to
    fixed = {str(key): str(value) for key, value in (fixed or {}).items()}
    if "seed" in fixed:
        raise UnlearnkitError("Give seeds with --seeds (e.g. --seeds 0,1,2), not --set seed=...: each trial runs every seed.")
    if not seeds:
        raise UnlearnkitError("--seeds needs at least one seed (e.g. --seeds 0).")
    for seed in seeds:
        check_seed("--seeds", seed)
    if pruner is not None and pruner not in PRUNERS:
        raise UnlearnkitError(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}.")
    if not benchmark.prunes and (pruner == "median" or eval_every):
        raise UnlearnkitError(f"{benchmark.describe()} evaluates every probe after unlearning only (an evaluation costs as much "
                              "as a trial's unlearning): leave out --pruner and --eval-every, or pass --pruner none.")
    pruner = ("median" if benchmark.prunes else "none") if pruner is None else pruner

    def build(overrides: Mapping[str, Any]) -> Any:
        with quiet():  # a range end may draw a configuration's warnings; the trials that use it will say them
            return benchmark.method(method, overrides).config

    base = benchmark.method(method, fixed).config  # the fixed settings are checked here
    dimensions = parse_space(space) if space else default_space(method, base, fixed, build)
    check_space(method, dimensions, fixed, build)
    for constraint in Objective.parse(objective, subject_to, reported_metrics(benchmark.preset)).constraints:
        if constraint.reference and constraint.reference not in benchmark.reference_models:
            constraint.bound({})  # refused: this benchmark has no such model (e.g. no retain oracle for real knowledge)
    if not spec.trainer.uses_optimizer and pruner != "none":
        logger.warning("%s takes no optimiser steps, so there is nothing to evaluate during training: no pruning.", method)
        pruner, eval_every = "none", 0
    if eval_every is None:
        eval_every = benchmark.auto_eval_every(split, base) if pruner != "none" else 0
    if pruner != "none" and eval_every == 0:
        raise UnlearnkitError("--pruner median prunes on the evaluations during training: give --eval-every N (N > 0), "
                              "leave it out to evaluate about four times per trial, or pass --pruner none.")
    plan = TunePlan(method=method, preset=benchmark.preset, cache_key=benchmark.cache_key(), split=split, space=tuple(dimensions),
                    objective=objective, subject_to=subject_to or "", fixed=fixed, seeds=tuple(seeds), eval_every=eval_every,
                    eval_rows=eval_rows, pruner=pruner, prune_after=prune_after, sampler_seed=sampler_seed,
                    base_settings=asdict(base), inputs=benchmark.inputs())
    # Read back as tune.json holds it, so that every process (and every resumed run) samples the very same space.
    return TunePlan.from_identity(json.loads(json.dumps(plan.identity()))), held_out


@locks_output
def run_tune(*, plan: TunePlan, holdout: str | None, benchmark: BuiltinTuning | RealKnowledgeTuning, output: Path,
             options: TuneOptions = TuneOptions()) -> TuneOutcome:
    """Run (or resume) the study into ``output``, re-evaluate the best feasible setting on ``holdout``, write the summary."""
    output = Path(output)
    check_counts(options.trials, options.jobs, plan.prune_after, plan.eval_every, plan.eval_rows)
    benchmark.check_outputs(output, plan.fixed)
    check_study_folder(output, plan)
    benchmark.check_data(plan)
    references = benchmark.references(plan.split)
    for constraint in plan.goal.constraints:
        constraint.bound(references)  # a bound relative to a model this benchmark lacks is refused here
    if holdout:
        benchmark.prepare_holdout(holdout)  # before the search: a failure here costs no trial
    threads = options.threads or _current_threads()
    write_plan(output, plan, references, {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "trials": options.trials,
                                          "jobs": options.jobs, "threads": threads, "holdout_split": holdout,
                                          "unlearnkit": __version__})
    context = TrialContext(output, plan, benchmark, references)
    study = open_study(output, plan, plan.sampler_seed)
    recover_interrupted(study, output)
    existing, finished = len(study.trials), _finished(study)
    statuses = _search(context, study, options, existing, threads)
    if options.jobs > 1:
        recover_interrupted(study, output)  # a worker that died left its trial running: queued for the next run
    records = trial_records(study.get_trials(), plan, references)
    best = best_summary(records, plan, references, None, benchmark.rerun_command)
    if best.get("chosen") is not None:
        best["holdout"] = run_holdout(context, best, holdout, output) if holdout else {"note": "skipped (--holdout-split none)"}
    write_summary(output, plan, references, records, best, benchmark.describe())
    if not options.keep_models:
        drop_models(output, records, best.get("chosen"), plan)
    failed = [f"worker {index} (exit status {status})" for index, status in enumerate(statuses, start=1) if status != 0]
    if failed:
        raise RuntimeError(f"{', '.join(failed)} stopped before the study ended; the summary covers the trials done. "
                           "Rerun the same command to resume the study.")
    return TuneOutcome(output, best, records, _finished(study) - finished)


def _search(context: TrialContext, study: Any, options: TuneOptions, existing: int, threads: int) -> list[int]:
    """Run the trials still to run, here (one job) or in worker processes; returns the workers' exit statuses."""
    from optuna.trial import TrialState

    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    remaining = max(options.trials - counted(study), 0) + waiting
    if remaining == 0:
        logger.info("the study holds %d trial(s) already; nothing to run", existing)
        return []
    jobs = min(options.jobs, remaining)
    seed = context.plan.sampler_seed
    logger.info("running %d trial(s) of %s on %s in %d process(es)", remaining, context.plan.method, context.plan.split, jobs)
    if jobs == 1:
        from unlearnkit.runtime import set_threads

        set_threads(threads)
        work(context, options.trials, worker_seed(seed, existing, 0))
        return []
    seeds = [worker_seed(seed, existing, index) for index in range(jobs)]
    return run_workers(context.output, context.benchmark.cache, options.trials, seeds, threads, quiet=not options.show_progress)


def _finished(study: Any) -> int:
    """Trials that ran to an end (complete, pruned or failed): the difference is what a run of the command ran."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def run_holdout(context: TrialContext, best: Mapping[str, Any], split: str, output: Path) -> dict[str, Any]:
    """The chosen setting run on the held-out ``split`` (each seed), beside that split's target (and oracle).

    A run already in ``holdout/`` (an earlier run of the command chose the same trial) is reused.
    """
    plan, number, benchmark = context.plan, best["chosen"], context.benchmark
    per_seed, folders, summary = [], [], {}
    logger.info("re-evaluating trial %d's setting on the held-out split %s", number, split)
    for seed in plan.seeds:
        folder = Path(output) / HOLDOUT / trial_folder(Path(), number, seed).name
        folders.append(str(Path(HOLDOUT) / folder.name))
        try:
            if (folder / "summary.json").is_file():
                summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            else:
                summary = benchmark.run(benchmark.method(plan.method, {**best["settings"], "seed": seed}), split, folder)
        except UnlearnkitError as error:  # diverged on this split: say so, keep the study's results
            return {"split": split, "note": f"the run on {split} failed: {error}", "folders": folders}
        per_seed.append(numeric(summary["unlearned"]))
    references = {role: numeric(summary[role]) for role in ("target", "oracle") if role in summary}
    result = split_result(split, mean_metrics(per_seed), references, plan.goal)
    result.update(benchmark.holdout_details(plan.split, split))
    result["folders"] = folders
    return result


def drop_models(output: Path, records: Sequence[Mapping[str, Any]], chosen: int | None, plan: TunePlan) -> None:
    """Remove the saved model of every trial but the chosen one (their metrics and logs stay)."""
    for record in records:
        if record["state"] != "complete" or record["number"] == chosen:
            continue
        for seed in plan.seeds:
            shutil.rmtree(trial_folder(output, record["number"], seed) / "model", ignore_errors=True)


def _current_threads() -> int:
    import torch

    return torch.get_num_threads()
