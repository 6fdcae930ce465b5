"""One trial of a study: the drawn settings run on the study's benchmark (one results folder per seed).

Each trial runs the method with the fixed settings and the drawn ones (``demo`` on the built-in
benchmark, ``real-knowledge`` on that one), once per seed, into ``trials/trial-NNNN-seedS``; its
metrics are the mean over the seeds of the
unlearned model's. With pruning, the first seed's run evaluates every ``eval_every`` optimiser steps
and reports each evaluation to Optuna (:class:`PruningReporter`), which may stop the trial there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.tuning.objective import mean_metrics
from unlearnkit.tuning.plan import TunePlan
from unlearnkit.tuning.study import trial_folder

logger = logging.getLogger("unlearnkit")


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study needs: the folder, the plan, the benchmark and the references of the tuned split."""

    output: Path
    plan: TunePlan
    benchmark: Any  # unlearnkit.tuning.benchmarks.BuiltinTuning or RealKnowledgeTuning
    references: Mapping[str, Mapping[str, float]]


class PruningReporter:
    """Reports each evaluation during training to the Optuna trial, and stops the trial when the pruner says so.

    The value reported is the objective when the evaluation meets the constraints, else NaN
    (:meth:`unlearnkit.tuning.objective.Objective.intermediate`). The last evaluation is kept, so that a
    pruned trial still shows where it stood.
    """

    def __init__(self, trial: Any, context: TrialContext) -> None:
        self.trial = trial
        self.objective = context.plan.goal
        self.references = context.references
        self.last: dict[str, Any] | None = None
        self.pruned_at: int | None = None

    def __call__(self, entry: Mapping[str, Any]) -> None:
        import optuna

        metrics = numeric(entry["metrics"])
        self.last = {"step": int(entry["step"]), "epoch": float(entry["epoch"]), "metrics": metrics}
        self.trial.report(self.objective.intermediate(metrics, self.references), int(entry["step"]))
        if self.trial.should_prune():
            self.pruned_at = int(entry["step"])
            raise optuna.TrialPruned(f"pruned at step {entry['step']}")


class _QuietPrunedRun(logging.Filter):
    """A pruned trial's run stops on purpose: drop the results folder's 'run failed' error for it."""

    def __init__(self, reporter: PruningReporter) -> None:
        super().__init__()
        self.reporter = reporter

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.reporter.pruned_at is not None and str(record.msg).startswith("run failed"))


def run_trial(context: TrialContext, trial: Any) -> float:
    """Run ``trial`` (an Optuna trial, asked for already) and return its objective value; records its metrics on it.

    Raises ``optuna.TrialPruned`` when pruned (its constraints set from its last evaluation),
    :class:`UnlearnkitError` when the method refuses the drawn settings or diverges.
    """
    import optuna

    from unlearnkit.errors import UnlearnkitError

    plan, objective = context.plan, context.plan.goal
    trial.set_user_attr("process", os.getpid())
    drawn = {dimension.name: dimension.suggest(trial) for dimension in plan.space}
    logger.info("trial %d: %s", trial.number, describe(drawn))  # drawn here: Optuna samples as the trial asks
    settings = {**plan.fixed, **drawn}
    per_seed = []
    for position, seed in enumerate(plan.seeds):
        reporter = PruningReporter(trial, context) if position == 0 and plan.prunes and plan.eval_every else None
        try:
            per_seed.append(_run_seed(context, trial.number, settings, seed, reporter))
        except optuna.TrialPruned:
            if reporter is not None and reporter.last is not None:
                trial.set_user_attr("last_evaluation", reporter.last)
                _set_constraints(trial, objective.violations(reporter.last["metrics"], context.references))
            raise
    metrics = mean_metrics([numeric(summary) for summary in per_seed])
    trial.set_user_attr("metrics", metrics)
    if len(per_seed) > 1:
        trial.set_user_attr("seed_metrics", {str(seed): numeric(summary) for seed, summary in zip(plan.seeds, per_seed, strict=True)})
    _set_constraints(trial, objective.violations(metrics, context.references))
    value = objective.value(metrics)
    if value is None:
        raise UnlearnkitError(f"the trial's {objective.metric} is missing or not finite; it cannot be ranked.")
    return value


def _run_seed(context: TrialContext, number: int, settings: dict[str, Any], seed: int, reporter: PruningReporter | None) -> dict:
    from unlearnkit.evaluation.tracking import TrackingConfig

    plan, benchmark = context.plan, context.benchmark
    method = benchmark.method(plan.method, {**settings, "seed": seed})
    tracking = TrackingConfig(every=plan.eval_every, max_rows=plan.eval_rows) if plan.eval_every else TrackingConfig()
    quiet = _QuietPrunedRun(reporter) if reporter is not None else None
    if quiet is not None:
        logger.addFilter(quiet)
    try:
        summary = benchmark.run(method, plan.split, trial_folder(context.output, number, seed), tracking=tracking,
                                listeners=[reporter] if reporter is not None else ())
    finally:
        if quiet is not None:
            logger.removeFilter(quiet)
    return summary["unlearned"]


def _set_constraints(trial: Any, violations: Mapping[str, float]) -> None:
    for name, value in violations.items():
        trial.set_constraint(name, value)


def describe(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}" for name, value in params.items())


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric metrics of a summary (not ``not_computed`` or the kept step)."""
    return {name: float(value) for name, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and name != "selected_step"}
