"""Evaluation during training: a Trainer callback that evaluates every N steps, keeps the best weights and early-stops.

Every ``every`` optimiser steps (and once more at the end, and once before the
first step as the baseline) the model being trained is evaluated with
:func:`unlearnkit.evaluation.evaluator.evaluate` on the given splits, optionally
on an evenly spaced subset of each split's rows (``max_rows``) for speed; with
a subset, the oracle reference is cut to the same forget questions so that
forget quality stays a like-for-like KS test (on fewer samples), and metrics
that need the oracle's statistics of the whole sets are left out.

The best evaluation is chosen by a :class:`Criterion`: an objective (a metric to
maximise or minimise) subject to constraints, written as

* objective: ``METRIC``, ``max:METRIC`` or ``min:METRIC`` (without a prefix the
  direction is the metric's own: higher is better for forget_quality and
  model_utility, lower for forget_probability and forget_rouge_l; a metric with
  another direction needs the prefix);
* constraints: comma-separated ``METRIC OP VALUE`` with OP one of ``>= <= > <``
  and VALUE a number, ``F*oracle`` (F times the retain oracle's value of that
  metric) or ``F*target`` (F times the value before unlearning, the step-0
  evaluation); e.g. ``model_utility>=0.9*oracle,forget_rouge_l<=0.5``.

Only evaluations after training started (step > 0) can be chosen; the step-0
baseline is recorded in the curve. Early stopping ends training after
``patience`` evaluations in a row that did not give a new best. At the end the
best evaluation's weights are put back into the model: a CPU copy of the
trainable parameters (under LoRA: the adapter's) is kept at each new best, so
no checkpoint is written. When no evaluation met the constraints, the last
weights are kept and the selection says so.

The evaluated model is the model as trained, before the method's ``finalize``
step: for methods whose final model is computed after training (e.g. the task
vector's negation) the tracked curve describes the training run, not the final model.
"""

from __future__ import annotations

import logging
import math
import operator
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate

logger = logging.getLogger("unlearnkit")

CURVE_FILE = "eval_curve.json"

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
# METRIC OP VALUE, VALUE a number or F*oracle / F*target (F a number).
_CONSTRAINT = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    r"(?:(?P<factor>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*\*\s*(?P<reference>oracle|target)"
    r"|(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?))\s*$"
)
_METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound`` with ``bound = value`` or ``factor * <reference's value of metric>``."""

    metric: str
    op: str
    value: float | None = None
    factor: float | None = None
    reference: str | None = None  # "oracle" or "target"

    def bound(self, references: Mapping[str, Mapping[str, float]]) -> float:
        if self.reference is None:
            return float(self.value)  # type: ignore[arg-type]
        values = references.get(self.reference)
        if not values or self.metric not in values:
            raise UnlearnkitError(
                f"--subject-to {self}: the {self.reference}'s {self.metric} is not known here"
                + (" (the oracle's metrics are known on the built-in benchmark)" if self.reference == "oracle" else "")
                + "; use an absolute bound, e.g. " + f"{self.metric}{self.op}0.5."
            )
        return float(self.factor) * float(values[self.metric])  # type: ignore[arg-type]

    def holds(self, metrics: Mapping[str, float], references: Mapping[str, Mapping[str, float]]) -> bool:
        value = metrics.get(self.metric)
        return value is not None and math.isfinite(value) and _OPERATORS[self.op](value, self.bound(references))

    def __str__(self) -> str:
        bound = f"{self.factor:g}*{self.reference}" if self.reference else f"{self.value:g}"
        return f"{self.metric}{self.op}{bound}"


@dataclass(frozen=True)
class Criterion:
    """Maximise (or minimise) ``metric`` among the evaluations that meet every constraint."""

    metric: str
    maximise: bool = True
    constraints: tuple[Constraint, ...] = ()

    def score(self, metrics: Mapping[str, float]) -> float | None:
        """The value to maximise, or None when the metric is missing or not finite."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return None
        return float(value) if self.maximise else -float(value)

    def feasible(self, metrics: Mapping[str, float], references: Mapping[str, Mapping[str, float]]) -> bool:
        return all(constraint.holds(metrics, references) for constraint in self.constraints)

    def needs(self) -> set[str]:
        """The references (``oracle``/``target``) the constraints compare with."""
        return {constraint.reference for constraint in self.constraints if constraint.reference}

    def __str__(self) -> str:
        text = f"{'max' if self.maximise else 'min'}:{self.metric}"
        return text + (f" subject to {', '.join(map(str, self.constraints))}" if self.constraints else "")


def parse_constraints(text: str | None) -> tuple[Constraint, ...]:
    """``"model_utility>=0.9*oracle, forget_rouge_l<0.4"`` → constraints; an empty text → none."""
    constraints = []
    for part in (text or "").split(","):
        if not part.strip():
            continue
        match = _CONSTRAINT.match(part)
        if not match:
            raise UnlearnkitError(
                f"--subject-to: cannot read {part.strip()!r}. Write METRIC OP VALUE with OP one of >=, <=, >, < and VALUE "
                "a number, F*oracle or F*target; separate constraints by commas, e.g. 'model_utility>=0.9*oracle'."
            )
        if match["reference"]:
            constraints.append(Constraint(match["metric"], match["op"], factor=float(match["factor"]), reference=match["reference"]))
        else:
            constraints.append(Constraint(match["metric"], match["op"], value=float(match["value"])))
    return tuple(constraints)


def parse_objective(text: str) -> tuple[str, bool]:
    """``"forget_quality"`` / ``"max:METRIC"`` / ``"min:METRIC"`` → (metric, maximise)."""
    from unlearnkit.report.glossary import METRICS

    direction, _, name = text.strip().rpartition(":")
    name = name.strip()
    if direction not in ("", "max", "min") or not _METRIC_NAME.match(name):
        raise UnlearnkitError(f"--select-best: cannot read {text!r}; write METRIC, max:METRIC or min:METRIC (e.g. forget_quality).")
    if direction:
        return name, direction == "max"
    better = METRICS[name].better if name in METRICS else None
    if better not in ("higher", "lower"):
        raise UnlearnkitError(
            f"--select-best {name}: say which way is better, max:{name} or min:{name}"
            + (f" (its best value is {better})." if better else ".")
        )
    return name, better == "higher"


def parse_criterion(select_best: str, subject_to: str | None = None) -> Criterion:
    metric, maximise = parse_objective(select_best)
    return Criterion(metric, maximise, parse_constraints(subject_to))


@dataclass(frozen=True)
class TrackingConfig:
    """Settings of evaluation during training (all off by default)."""

    every: int = field(default=0, metadata={"help": "Evaluate every N optimiser steps (0: no evaluation during training)."})
    select_best: str | None = field(default=None, metadata={"help": "METRIC, max:METRIC or min:METRIC: keep the weights of the best evaluation."})
    subject_to: str | None = field(default=None, metadata={"help": "Comma-separated constraints on the best evaluation, e.g. 'model_utility>=0.9*oracle'."})
    patience: int = field(default=0, metadata={"help": "Stop after this many evaluations without a new best (0: never stop early)."})
    max_rows: int = field(default=0, metadata={"help": "Evaluate on at most this many evenly spaced rows per split (0: all)."})

    def __post_init__(self) -> None:
        if self.every < 0 or self.patience < 0 or self.max_rows < 0:
            raise UnlearnkitError("--eval-every, --patience and --eval-rows must be 0 or more.")
        if self.every == 0 and (self.select_best or self.subject_to or self.patience or self.max_rows):
            raise UnlearnkitError("--select-best, --subject-to, --patience and --eval-rows need --eval-every N (N > 0).")
        if (self.subject_to or self.patience) and not self.select_best:
            raise UnlearnkitError("--subject-to and --patience need --select-best METRIC (what makes an evaluation the best).")
        self.criterion()  # a malformed criterion fails here, before any training

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def criterion(self) -> Criterion | None:
        return parse_criterion(self.select_best, self.subject_to) if self.select_best else None


def subset_rows(rows: Sequence[dict], max_rows: int) -> list[dict]:
    """At most ``max_rows`` evenly spaced rows (all rows when ``max_rows`` is 0)."""
    if max_rows <= 0 or len(rows) <= max_rows:
        return list(rows)
    step = len(rows) / max_rows
    return [rows[int(index * step)] for index in range(max_rows)]


def subset_reference(reference: Mapping[str, Any] | None, forget_rows: Sequence[dict]) -> dict[str, Any] | None:
    """The oracle reference restricted to ``forget_rows`` (matched by question), in their order."""
    if reference is None:
        return None
    questions = reference.get("questions")
    if questions is None:
        raise UnlearnkitError("--eval-rows needs an oracle reference that lists its questions; evaluate on all rows instead.")
    position = {question: index for index, question in enumerate(questions)}
    missing = [row["question"] for row in forget_rows if row["question"] not in position]
    if missing:
        raise UnlearnkitError(f"The oracle reference has no value for the forget question {missing[0]!r}; pass the reference of this forget set.")
    chosen = [position[row["question"]] for row in forget_rows]
    # Only the per-question truth ratios are cut; other stored statistics (e.g. the oracle's membership scores of
    # the whole forget and holdout sets) do not fit a subset, so the metrics built on them are left out.
    return {"split": reference.get("split"), "metric": reference.get("metric"),
            "questions": [questions[i] for i in chosen], "truth_ratio": [reference["truth_ratio"][i] for i in chosen]}


class EvalTracker(TrainerCallback):
    """Evaluate during training, record the curve, keep the best trainable weights, early-stop, restore at the end.

    ``references`` holds known summaries a constraint may compare with, e.g.
    ``{"oracle": oracle_summary}``; ``target`` (the step-0 evaluation) is added here.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        splits: Mapping[str, Sequence[dict]],
        config: TrackingConfig,
        fmt: PromptFormat = PromptFormat(),
        eval_config: EvalConfig = EvalConfig(),
        oracle_reference: Mapping[str, Any] | None = None,
        references: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        if not config.enabled:
            raise UnlearnkitError("EvalTracker needs TrackingConfig.every > 0.")
        self.tokenizer = tokenizer
        self.config = config
        self.fmt = fmt
        self.eval_config = eval_config
        self.splits = {name: subset_rows(rows, config.max_rows) for name, rows in splits.items() if rows}
        if not self.splits:
            raise UnlearnkitError("--eval-every needs evaluation data; it evaluates on the same sets as the final evaluation.")
        self.oracle_reference = (
            subset_reference(oracle_reference, self.splits["forget"]) if oracle_reference is not None and "forget" in self.splits
            and config.max_rows else oracle_reference
        )
        self.criterion = config.criterion()
        self.references: dict[str, Mapping[str, float]] = dict(references or {})
        if self.criterion and "oracle" in self.criterion.needs():
            # Fails now, before training, when the oracle's values are not known.
            for constraint in self.criterion.constraints:
                if constraint.reference == "oracle":
                    constraint.bound(self.references)
        self.curve: list[dict[str, Any]] = []
        self.best_index: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped_early = False
        self._since_best = 0

    # -- Trainer hooks ---------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if not self.curve:
            entry = self._evaluate(model, state)
            if state.global_step == 0:  # a resumed run's first evaluation is its baseline, not the model before unlearning
                self.references["target"] = entry["metrics"]

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if state.global_step % self.config.every == 0:
            self._evaluate_and_select(model, state, control)

    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if not self.curve or self.curve[-1]["step"] != state.global_step:
            self._evaluate_and_select(model, state, control)
        if self.best_state is not None:
            self._restore(model)

    # -- work ------------------------------------------------------------------------------------------------------

    def _evaluate(self, model: PreTrainedModel, state) -> dict[str, Any]:  # noqa: ANN001 - TrainerState
        started = time.perf_counter()
        was_training = model.training
        result = evaluate(model, self.tokenizer, self.splits, self.fmt, self.eval_config, self.oracle_reference)
        model.train(was_training)  # evaluate() leaves the model in eval mode; training goes on in train mode
        entry = {
            "step": int(state.global_step),
            "epoch": float(state.epoch or 0.0),
            "metrics": dict(result.summary),
            "eval_seconds": round(time.perf_counter() - started, 3),
        }
        self.curve.append(entry)
        shown = ", ".join(f"{name}={value:.4g}" for name, value in entry["metrics"].items()
                          if name in ("forget_quality", "model_utility") or (self.criterion and name == self.criterion.metric))
        logger.info("evaluation at step %d: %s", entry["step"], shown)
        return entry

    def _evaluate_and_select(self, model: PreTrainedModel, state, control) -> None:  # noqa: ANN001 - Trainer types
        entry = self._evaluate(model, state)
        if self.criterion is None:
            return
        score = self.criterion.score(entry["metrics"])
        improved = score is not None and self.criterion.feasible(entry["metrics"], self.references) and (
            self.best_index is None or score > self.criterion.score(self.curve[self.best_index]["metrics"])
        )
        if improved:
            self.best_index = len(self.curve) - 1
            self.best_state = {name: parameter.detach().to("cpu", copy=True) for name, parameter in _trainable(model)}
            self._since_best = 0
            return
        self._since_best += 1
        if self.config.patience and self._since_best >= self.config.patience and not control.should_training_stop:
            logger.info("early stopping at step %d: %d evaluation(s) without a better %s", entry["step"], self._since_best, self.criterion.metric)
            self.stopped_early = True
            control.should_training_stop = True

    @torch.no_grad()
    def _restore(self, model: PreTrainedModel) -> None:
        parameters = dict(_trainable(model))
        for name, value in self.best_state.items():  # type: ignore[union-attr]
            parameters[name].copy_(value.to(parameters[name].device))
        logger.info("restored the weights of step %d (the best by %s)", self.selected_step, self.criterion)

    # -- results ---------------------------------------------------------------------------------------------------

    @property
    def selected_step(self) -> int | None:
        return self.curve[self.best_index]["step"] if self.best_index is not None else None

    def selection(self) -> dict[str, Any]:
        """What was chosen and why, for config.json."""
        chosen = self.curve[self.best_index] if self.best_index is not None else None
        return {
            "every": self.config.every,
            "max_rows": self.config.max_rows,
            "patience": self.config.patience,
            "criterion": str(self.criterion) if self.criterion else None,
            "evaluations": len(self.curve),
            "stopped_early": self.stopped_early,
            "selected_step": chosen["step"] if chosen else None,
            "selected_epoch": chosen["epoch"] if chosen else None,
            "selected_metrics": chosen["metrics"] if chosen else None,
            "note": None if chosen or self.criterion is None else "no evaluation met the constraints: the last weights are kept",
        }


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters being trained (under LoRA: the adapter's); the only ones a restore needs."""
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
