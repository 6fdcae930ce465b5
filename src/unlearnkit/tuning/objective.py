"""What a tuning study optimises: one metric subject to constraints, the trials' feasibility, the Pareto front.

The objective and the constraints are written as for evaluation during training
(:mod:`unlearnkit.evaluation.tracking`): ``--objective forget_quality`` (or ``max:METRIC`` /
``min:METRIC``) and ``--subject-to 'model_utility>=0.95*oracle'``, a bound relative to the retain
oracle's (or the target's) value on the tuned split. A trial is feasible when its metrics (the mean
over its seeds) meet every constraint; only feasible trials can be chosen, the best by the objective,
the earliest trial on a tie.

Optuna sees the same constraints as values that are <= 0 when met (``Trial.set_constraint``), so its
TPE sampler steers away from infeasible settings (constrained TPE).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.tracking import Constraint, Criterion, check_metric_name, parse_criterion

# Optuna reads a constraint as met when its value is <= 0; a strict bound met with equality is off by this much.
STRICT_MARGIN = 1e-12
# The violation recorded when the constrained metric is missing or not finite: clearly infeasible.
MISSING_VIOLATION = 1e9


@dataclass(frozen=True)
class Objective:
    """A metric to maximise (or minimise) subject to constraints, with what the constraints compare with."""

    criterion: Criterion
    # What the objective is traded against when no constraint names it: the benchmark's utility metric.
    utility: str = "model_utility"

    @classmethod
    def parse(cls, objective: str, subject_to: str | None, reported: Sequence[str] | None = None) -> Objective:
        """``--objective`` and ``--subject-to``; every metric named is checked against the catalog (closest names).

        ``reported``: the metrics the benchmark reports (None: the built-in benchmark's, as evaluated during training).
        """
        try:
            criterion = parse_criterion(objective, subject_to or None, reported)
        except UnlearnkitError as error:  # the parser names the option of evaluation during training
            raise UnlearnkitError(str(error).replace("--select-best", "--objective")) from None
        check_metric_name(criterion.metric, "--objective", reported)
        for constraint in criterion.constraints:
            check_metric_name(constraint.metric, f"--subject-to {constraint}", reported)
        utility = "model_utility" if reported is None or "model_utility" in reported else "neighbour_accuracy"
        return cls(criterion, utility)

    @property
    def metric(self) -> str:
        return self.criterion.metric

    @property
    def maximise(self) -> bool:
        return self.criterion.maximise

    @property
    def constraints(self) -> tuple[Constraint, ...]:
        return self.criterion.constraints

    def metrics(self) -> list[str]:
        """Every metric the objective and the constraints read."""
        return list(dict.fromkeys([self.metric, *(constraint.metric for constraint in self.constraints)]))

    def value(self, metrics: Mapping[str, Any]) -> float | None:
        """The objective's metric, or None when it is missing or not finite."""
        value = metrics.get(self.metric)
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    def feasible(self, metrics: Mapping[str, Any], references: Mapping[str, Mapping[str, float]]) -> bool:
        return self.criterion.feasible(metrics, references)

    def violations(self, metrics: Mapping[str, Any], references: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
        """Each constraint's value for Optuna: <= 0 when it holds, else how far the metric is from its bound."""
        return {str(constraint): violation(constraint, metrics, references) for constraint in self.constraints}

    def intermediate(self, metrics: Mapping[str, Any], references: Mapping[str, Mapping[str, float]]) -> float:
        """What an evaluation during training reports to the pruner: the objective if the constraints hold, else NaN.

        A trial none of whose evaluations has met the constraints has no best value, and the median pruner
        prunes it once pruning is active: unlearning rarely gives back the utility it has cost.
        """
        value = self.value(metrics)
        return value if value is not None and self.feasible(metrics, references) else math.nan

    def better(self, first: float, second: float) -> bool:
        return first > second if self.maximise else first < second

    def trade_off(self) -> tuple[str, bool]:
        """The metric traded against the objective, and whether higher is better: the first constraint's metric (better
        the way its bound points), else the benchmark's utility (model utility; neighbour accuracy on real knowledge).
        The trade-off plot's x axis; the tie-break between equal objectives."""
        if self.constraints:
            first = self.constraints[0]
            return first.metric, first.op in (">=", ">")
        return self.utility, True


def violation(constraint: Constraint, metrics: Mapping[str, Any], references: Mapping[str, Mapping[str, float]]) -> float:
    """``constraint``'s distance from its bound: <= 0 exactly when :meth:`Constraint.holds`."""
    value = metrics.get(constraint.metric)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return MISSING_VIOLATION
    bound = constraint.bound(references)
    distance = bound - value if constraint.op in (">=", ">") else value - bound
    if constraint.holds(metrics, references):
        return min(distance, 0.0)
    return max(distance, STRICT_MARGIN)


def mean_metrics(summaries: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The mean of each numeric metric over seeds (the metrics every seed reports); other keys are left out."""
    if not summaries:
        return {}
    names = [name for name, value in summaries[0].items() if isinstance(value, (int, float)) and not isinstance(value, bool)]
    means = {}
    for name in names:
        values = [summary.get(name) for summary in summaries]
        if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values):
            means[name] = float(sum(values) / len(values))
    return means


def choose_best(records: Sequence[Mapping[str, Any]], objective: Objective) -> Mapping[str, Any] | None:
    """The feasible complete trial with the best objective; None when no trial is feasible.

    On equal objectives the better value of the traded metric (:meth:`Objective.trade_off`) wins, then the
    earliest trial: forget quality, a p-value of a few dozen questions, often ties. ``records`` are
    :func:`unlearnkit.tuning.report.trial_records` rows (``state``, ``feasible``, ``value``, ``metrics``, ``number``).
    """
    traded, higher = objective.trade_off()

    def rank(record: Mapping[str, Any]) -> tuple[float, float, int]:
        other = record["metrics"].get(traded)
        other = float(other) if isinstance(other, (int, float)) and math.isfinite(other) else -math.inf
        return (record["value"] if objective.maximise else -record["value"], other if higher else -other, -record["number"])

    candidates = [record for record in records if record["state"] == "complete" and record["feasible"] and record["value"] is not None]
    return max(candidates, key=rank, default=None)


def pareto_front(points: Sequence[tuple[float, float]], maximise: tuple[bool, bool] = (True, True)) -> list[int]:
    """Indices of the points no other point dominates, sorted by their first coordinate.

    A point dominates another when it is at least as good on both coordinates and better on one
    (``maximise`` says which way is better for each). Points with a non-finite coordinate are left out;
    of identical points only the first is kept.
    """
    signs = tuple(1.0 if up else -1.0 for up in maximise)
    oriented = [(index, (signs[0] * x, signs[1] * y)) for index, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front = []
    for index, (x, y) in oriented:
        dominated = any((ox >= x and oy >= y and (ox > x or oy > y)) or ((ox, oy) == (x, y) and other < index)
                        for other, (ox, oy) in oriented if other != index)
        if not dominated:
            front.append(index)
    return sorted(front, key=lambda index: (points[index][0], points[index][1]))
