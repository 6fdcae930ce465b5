"""``tune``: search a method's hyperparameters on the built-in benchmark with Optuna, then re-check the choice held out.

The study folder (``--output``) holds ``tune.json`` (the plan), ``study.db`` (the Optuna study, SQLite),
``trials/trial-NNNN-seedS/`` (one ``demo`` results folder per trial and seed), ``holdout/`` (the chosen
setting's runs on the held-out split) and the summary: ``trials.json``, ``best.json``, ``tradeoff.png``,
``report.md`` and ``report.html`` (:mod:`unlearnkit.tuning.report`). Rerunning the same command resumes
the study (``--trials`` is its total); with other settings it is refused.

Every input is checked before the first write: the method and its settings, each search dimension
against the method's configuration and the benchmark's data, the objective and constraints against the
metrics the benchmark reports, the counts, and the folder (new, empty, or this plan's study).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unlearnkit import __version__
from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs.inputs import Builtin, check_outputs, resolve_method
from unlearnkit.runs.lock import locks_output
from unlearnkit.settings import check_seed
from unlearnkit.tuning.objective import Objective, mean_metrics
from unlearnkit.tuning.plan import PRUNERS, TunePlan, check_counts, holdout_split
from unlearnkit.tuning.report import best_summary, split_result, trial_records, write_summary
from unlearnkit.tuning.space import check_space, default_space, parse_space
from unlearnkit.tuning.study import check_study_folder, counted, open_study, recover_interrupted, trial_folder, write_plan
from unlearnkit.tuning.trial import TrialContext, numeric
from unlearnkit.tuning.worker import run_workers, work, worker_seed

logger = logging.getLogger("unlearnkit")

HOLDOUT = "holdout"
# Evaluations during training per trial when --eval-every is left to choose (at the method's settings before the search).
AUTO_EVALUATIONS = 4


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
    builtin: Builtin,
    method: str,
    split: str = "forget10",
    holdout: str | None = None,
    space: Sequence[str] | None = None,
    objective: str = "forget_quality",
    subject_to: str | None = "model_utility>=0.95*oracle",
    fixed: Mapping[str, str] | None = None,
    seeds: Sequence[int] = (0,),
    eval_every: int | None = None,
    eval_rows: int = 0,
    pruner: str = "median",
    prune_after: int = 5,
    sampler_seed: int = 0,
) -> tuple[TunePlan, str | None]:
    """The study's plan and held-out split from what the user named; everything checked that needs no data."""
    from unlearnkit.builtin import check_forget_split
    from unlearnkit.methods import METHODS

    spec = METHODS.get(method)
    check_forget_split(split)
    held_out = holdout_split(split, holdout)
    fixed = {str(key): str(value) for key, value in (fixed or {}).items()}
    if "seed" in fixed:
        raise UnlearnkitError("Give seeds with --seeds (e.g. --seeds 0,1,2), not --set seed=...: each trial runs every seed.")
    if not seeds:
        raise UnlearnkitError("--seeds needs at least one seed (e.g. --seeds 0).")
    for seed in seeds:
        check_seed("--seeds", seed)
    if pruner not in PRUNERS:
        raise UnlearnkitError(f"--pruner must be one of {', '.join(PRUNERS)}; got {pruner!r}.")

    def build(overrides: Mapping[str, Any]) -> Any:
        with _quiet():  # a range end may draw a configuration's warnings; the trials that use it will say them
            return resolve_method(method, overrides, builtin).config

    base = resolve_method(method, fixed, builtin).config  # the fixed settings are checked here
    dimensions = parse_space(space) if space else default_space(method, base, fixed, build)
    check_space(method, dimensions, fixed, build)
    Objective.parse(objective, subject_to)
    if not spec.trainer.uses_optimizer and pruner != "none":
        logger.warning("%s takes no optimiser steps, so there is nothing to evaluate during training: no pruning.", method)
        pruner, eval_every = "none", 0
    if eval_every is None:
        eval_every = auto_eval_every(builtin, split, base) if pruner != "none" else 0
    if pruner != "none" and eval_every == 0:
        raise UnlearnkitError("--pruner median prunes on the evaluations during training: give --eval-every N (N > 0), "
                              "leave it out to evaluate about four times per trial, or pass --pruner none.")
    plan = TunePlan(method=method, preset=builtin.preset, cache_key=builtin.config.cache_key(), split=split, space=tuple(dimensions),
                    objective=objective, subject_to=subject_to or "", fixed=fixed, seeds=tuple(seeds), eval_every=eval_every,
                    eval_rows=eval_rows, pruner=pruner, prune_after=prune_after, sampler_seed=sampler_seed,
                    base_settings=asdict(base))
    # Read back as tune.json holds it, so that every process (and every resumed run) samples the very same space.
    return TunePlan.from_identity(json.loads(json.dumps(plan.identity()))), held_out


def auto_eval_every(builtin: Builtin, split: str, config: Any) -> int:
    """A quarter of the optimiser steps the method takes at its settings before the search (at least 1)."""
    from unlearnkit.data.world import forget_sizes

    world = builtin.config.world
    rows = forget_sizes(world.num_authors)[int(split[-2:])] * world.qa_per_author
    steps_per_epoch = math.ceil(math.ceil(rows / config.batch_size) / config.gradient_accumulation_steps)
    return max(1, math.ceil(config.num_epochs * steps_per_epoch) // AUTO_EVALUATIONS)


@locks_output
def run_tune(*, plan: TunePlan, holdout: str | None, builtin: Builtin, output: Path, options: TuneOptions = TuneOptions()) -> TuneOutcome:
    """Run (or resume) the study into ``output``, re-evaluate the best feasible setting on ``holdout``, write the summary."""
    output = Path(output)
    check_counts(options.trials, options.jobs, plan.prune_after, plan.eval_every, plan.eval_rows)
    check_outputs(None, False, builtin=builtin, files={"--output": output}, localize=plan.fixed.get("localize"))
    check_study_folder(output, plan)
    bench = builtin.prepared(plan.split)
    references = split_references(bench, plan.split)
    check_data(plan, builtin, bench, references)
    if holdout:
        if not bench.oracle_dir(holdout).exists():
            logger.warning("the cache holds no retain oracle for the held-out split %s%s: training it now, once, as `unlearnkit "
                           "prepare` would (--holdout-split none skips the held-out check)", holdout,
                           "" if holdout in builtin.config.forget_splits else
                           f" (preset {plan.preset} prepares only {', '.join(builtin.config.forget_splits)})")
        builtin.prepared(holdout)  # before the search: a failure here costs no trial
    threads = options.threads or _current_threads()
    write_plan(output, plan, references, {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "trials": options.trials,
                                          "jobs": options.jobs, "threads": threads, "holdout_split": holdout,
                                          "unlearnkit": __version__})
    context = TrialContext(output, plan, builtin, references)
    study = open_study(output, plan, plan.sampler_seed)
    recover_interrupted(study, output)
    existing, finished = len(study.trials), _finished(study)
    statuses = _search(context, study, options, existing, threads)
    if options.jobs > 1:
        recover_interrupted(study, output)  # a worker that died left its trial running: queued for the next run
    records = trial_records(study.get_trials(), plan, references)
    best = best_summary(records, plan, references, None)
    if best.get("chosen") is not None:
        best["holdout"] = run_holdout(context, best, holdout, output) if holdout else {"note": "skipped (--holdout-split none)"}
    write_summary(output, plan, references, records, best)
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
    return run_workers(context.output, context.builtin.cache, options.trials, [worker_seed(seed, existing, index) for index in range(jobs)],
                       threads, quiet=not options.show_progress)


def _finished(study: Any) -> int:
    """Trials that ran to an end (complete, pruned or failed): the difference is what a run of the command ran."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))


def split_references(bench: Any, split: str) -> dict[str, dict[str, float]]:
    """The target's and the retain oracle's metrics on ``split`` (cached evaluations): what constraints compare with."""
    from unlearnkit.builtin import EVAL_CONFIG
    from unlearnkit.runs.unlearn import evaluation_cache

    return {"target": numeric(evaluation_cache(bench, "target", bench.target_dir, split, EVAL_CONFIG).summary),
            "oracle": numeric(evaluation_cache(bench, "oracle", bench.oracle_dir(split), split, EVAL_CONFIG).summary)}


def check_data(plan: TunePlan, builtin: Builtin, bench: Any, references: Mapping[str, Mapping[str, float]]) -> None:
    """What needs the benchmark's data: every range end and choice fits the method's data checks; every metric named is
    reported on this split (during training too, with pruning); every bound can be computed."""
    from unlearnkit.builtin import EVAL_CONFIG
    from unlearnkit.evaluation.evaluator import load_reference
    from unlearnkit.evaluation.tracking import reportable_metrics, subset_reference, subset_rows
    from unlearnkit.unlearning import check_method_inputs

    forget, retain = bench.split(plan.split), bench.split(bench.retain_split(plan.split))
    for dimension in plan.space:
        for value in dimension.values_to_check():
            with _quiet():
                config = resolve_method(plan.method, {**plan.fixed, dimension.name: value}, builtin).config
            try:
                check_method_inputs(plan.method, config, forget, retain)
            except UnlearnkitError as error:
                raise UnlearnkitError(f"--space {dimension}: {plan.method} cannot run {dimension.name}={value}: {error}") from None
    goal = plan.goal
    splits, reference = bench.eval_splits(plan.split), load_reference(bench.reference_path(plan.split))
    reported = reportable_metrics(splits, EVAL_CONFIG, reference)
    if plan.prunes and plan.eval_rows:
        subsets = {name: subset_rows(rows, plan.eval_rows) for name, rows in splits.items()}
        reported &= reportable_metrics(subsets, EVAL_CONFIG, subset_reference(reference, subsets["forget"]))
    for metric in goal.metrics():
        if metric not in reported:
            raise UnlearnkitError(f"{metric} is not reported on {plan.split} of this benchmark"
                                  + (" by the evaluations during training on --eval-rows rows" if plan.eval_rows else "")
                                  + f"; the objective and constraints can use: {', '.join(sorted(reported))}.")
    for constraint in goal.constraints:
        constraint.bound(references)


def run_holdout(context: TrialContext, best: Mapping[str, Any], split: str, output: Path) -> dict[str, Any]:
    """The chosen setting run on the held-out ``split`` (each seed), beside that split's oracle and target.

    A run already in ``holdout/`` (an earlier run of the command chose the same trial) is reused.
    """
    from unlearnkit.runs.inputs import RunOptions
    from unlearnkit.runs.unlearn import run_demo

    plan, number = context.plan, best["chosen"]
    per_seed, folders, summary = [], [], {}
    logger.info("re-evaluating trial %d's setting on the held-out split %s", number, split)
    for seed in plan.seeds:
        folder = Path(output) / HOLDOUT / trial_folder(Path(), number, seed).name
        folders.append(str(Path(HOLDOUT) / folder.name))
        try:
            if (folder / "summary.json").is_file():
                summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
            else:
                method = resolve_method(plan.method, {**best["settings"], "seed": seed}, context.builtin)
                summary = run_demo(builtin=context.builtin, method=method, forget_split=split,
                                   options=RunOptions(folder, show_progress=False))
        except UnlearnkitError as error:  # diverged on this split: say so, keep the study's results
            return {"split": split, "note": f"the run on {split} failed: {error}", "folders": folders}
        per_seed.append(numeric(summary["unlearned"]))
    references = {"target": numeric(summary["target"]), "oracle": numeric(summary["oracle"])}
    result = split_result(split, mean_metrics(per_seed), references, plan.goal)
    bench = context.builtin.prepared()
    tuned = {row["question"] for row in bench.split(plan.split)}
    held = [row["question"] for row in bench.split(split)]
    result["forget_overlap"] = sum(question in tuned for question in held) / len(held)
    if result["forget_overlap"]:
        logger.warning("%.0f%% of the forget questions of the held-out split %s are in %s, the split tuned on (the built-in "
                       "splits are nested, as TOFU's): the held-out check changes the forget set's size, retain set and oracle, "
                       "not its every question.", 100 * result["forget_overlap"], split, plan.split)
    result["folders"] = folders
    return result


def drop_models(output: Path, records: Sequence[Mapping[str, Any]], chosen: int | None, plan: TunePlan) -> None:
    """Remove the saved model of every trial but the chosen one (their metrics and logs stay)."""
    for record in records:
        if record["state"] != "complete" or record["number"] == chosen:
            continue
        for seed in plan.seeds:
            shutil.rmtree(trial_folder(output, record["number"], seed) / "model", ignore_errors=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Hold back unlearnkit's warnings for the duration of the block (errors still show)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _current_threads() -> int:
    import torch

    return torch.get_num_threads()
