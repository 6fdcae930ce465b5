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

Every metric named must be one of the catalog's that the evaluation reports during
training (:func:`trackable_metrics`), and, once the evaluation data is known, one
that this data yields (:func:`reportable_metrics`): a criterion on a metric that is
never reported would silently keep the last weights.

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
from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.evaluation.catalog import metric_catalog
from unlearnkit.evaluation.evaluator import EVAL_SPLITS, MEMBERSHIP_SPLITS, EvalConfig, evaluate, has_truth_fields, truth_fields
from unlearnkit.evaluation.metrics import MODEL_UTILITY_COMPONENTS
from unlearnkit.evaluation.mia import MEMBER_SIGN
from unlearnkit.settings import check_field_types

logger = logging.getLogger("unlearnkit")

CURVE_FILE = "eval_curve.json"

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
REFERENCES = ("oracle", "target")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# METRIC OP VALUE, VALUE a number or F*oracle / F*target (F a number).
_CONSTRAINT = re.compile(
    r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|>|<)\s*"
    rf"(?:(?P<factor>{_NUMBER})\s*\*\s*(?P<reference>oracle|target)"
    rf"|(?P<value>{_NUMBER}))\s*$"
)
# Looser shapes, only to say precisely what is wrong with a constraint the pattern above refuses.
_LOOSE_CONSTRAINT = re.compile(r"^\s*(?P<metric>[^<>=!\s]*)\s*(?P<op>[<>=!]+)\s*(?P<rest>.*?)\s*$")
_LOOSE_REFERENCE = re.compile(rf"^(?P<factor>{_NUMBER})\s*\*\s*(?P<reference>\S+)$")
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
                f"--subject-to: cannot read {part.strip()!r}{_constraint_fault(part)} Write METRIC OP VALUE with OP one of "
                ">=, <=, >, < and VALUE a number, F*oracle or F*target; separate constraints by commas, e.g. "
                "'model_utility>=0.9*oracle'."
            )
        number = float(match["factor"] or match["value"])
        if not math.isfinite(number):  # e.g. 1e999: a bound no value can meet, or that every value meets
            raise UnlearnkitError(f"--subject-to {part.strip()!r}: {match['factor'] or match['value']} is not a finite number.")
        if match["reference"]:
            constraints.append(Constraint(match["metric"], match["op"], factor=number, reference=match["reference"]))
        else:
            constraints.append(Constraint(match["metric"], match["op"], value=number))
    return tuple(constraints)


def _constraint_fault(part: str) -> str:
    """What is wrong with a constraint the strict pattern refused, as the end of a sentence ('.' when unclear)."""
    loose = _LOOSE_CONSTRAINT.match(part)
    if not loose:
        return ": it has no operator."
    if not _METRIC_NAME.match(loose["metric"]):
        return f": {loose['metric']!r} is not a metric name." if loose["metric"] else ": the metric name is missing."
    if loose["op"] not in _OPERATORS:
        return f": {loose['op']!r} is not an operator."
    reference = _LOOSE_REFERENCE.match(loose["rest"])
    if reference and reference["reference"] not in REFERENCES:
        return f": {reference['reference']!r} is not a reference (oracle or target).{did_you_mean(reference['reference'], REFERENCES)}"
    return f": {loose['rest']!r} is not a number, F*oracle or F*target." if loose["rest"] else ": the value is missing."


def parse_objective(text: str, reported: Sequence[str] | None = None) -> tuple[str, bool]:
    """``"forget_quality"`` / ``"max:METRIC"`` / ``"min:METRIC"`` → (metric, maximise); ``reported`` as for
    :func:`check_metric_name`."""
    direction, _, name = text.strip().rpartition(":")
    direction, name = direction.strip(), name.strip()
    if direction not in ("", "max", "min") or not _METRIC_NAME.match(name):
        raise UnlearnkitError(f"--select-best: cannot read {text!r}; write METRIC, max:METRIC or min:METRIC (e.g. forget_quality).")
    if direction:
        return name, direction == "max"
    catalog = metric_catalog()
    if name not in catalog:
        check_metric_name(name, "--select-best", reported)  # unknown: refused with the closest names
    better = catalog.get(name).direction
    if better not in ("higher", "lower"):
        raise UnlearnkitError(
            f"--select-best {name}: say which way is better, max:{name} or min:{name}"
            + (f" (its best value is {better})." if better else ".")
        )
    return name, better == "higher"


def parse_criterion(select_best: str, subject_to: str | None = None, reported: Sequence[str] | None = None) -> Criterion:
    metric, maximise = parse_objective(select_best, reported)
    return Criterion(metric, maximise, parse_constraints(subject_to))


@dataclass(frozen=True)
class TrackingConfig:
    """Settings of evaluation during training (all off by default)."""

    every: int = field(default=0, metadata={"help": "Evaluate every N optimiser steps (0: no evaluation during training)."})
    select_best: str | None = field(
        default=None,
        metadata={"help": "METRIC, max:METRIC or min:METRIC: keep the weights of the best evaluation."},
    )
    subject_to: str | None = field(
        default=None,
        metadata={"help": "Comma-separated constraints on the best evaluation, e.g. 'model_utility>=0.9*oracle'."},
    )
    patience: int = field(default=0, metadata={"help": "Stop after this many evaluations without a new best (0: never stop early)."})
    max_rows: int = field(default=0, metadata={"help": "Evaluate on at most this many evenly spaced rows per split (0: all)."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.every < 0 or self.patience < 0 or self.max_rows < 0:
            raise UnlearnkitError("--eval-every, --patience and --eval-rows must be 0 or more.")
        if self.every == 0 and (self.select_best or self.subject_to or self.patience or self.max_rows):
            raise UnlearnkitError("--select-best, --subject-to, --patience and --eval-rows need --eval-every N (N > 0).")
        if (self.subject_to or self.patience) and not self.select_best:
            raise UnlearnkitError("--subject-to and --patience need --select-best METRIC (what makes an evaluation the best).")
        criterion = self.criterion()  # a malformed criterion fails here, before any training
        if criterion is not None:
            check_metric_name(criterion.metric, "--select-best")
            for constraint in criterion.constraints:
                check_metric_name(constraint.metric, f"--subject-to {constraint}")

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def criterion(self) -> Criterion | None:
        return parse_criterion(self.select_best, self.subject_to) if self.select_best else None


def trackable_metrics() -> tuple[str, ...]:
    """The catalog's metrics that :func:`~unlearnkit.evaluation.evaluator.evaluate` can report during training.

    Others in the catalog (MUSE's VerbMem/KnowMem, Jang et al.'s MA and EL) come from other
    commands: a criterion on one of them would never find a value, and the selection would
    silently keep the last weights.
    """
    per_split = [f"{split}_{name}" for split in EVAL_SPLITS if split not in MEMBERSHIP_SPLITS
                 for name in ("probability", "rouge_l", "truth_ratio")]
    membership = [f"mia_{attack}_auc" for attack in MEMBER_SIGN]
    memorization = [f"{split}_{name}" for split in ("forget", "holdout") for name in ("exact_memorization", "extraction_strength")]
    names = {*per_split, "forget_quality", "model_utility", *membership, *memorization, "privleak"}
    return tuple(name for name in metric_catalog().names() if name in names)


def check_metric_name(name: str, option: str, reported: Sequence[str] | None = None) -> None:
    """``name`` is a catalog metric the evaluation during training reports (or one of ``reported``, the metrics
    another benchmark reports); otherwise the closest ones."""
    known = tuple(reported) if reported is not None else trackable_metrics()
    where = "the benchmark reports" if reported is not None else "evaluated during training"
    if name in known:
        return
    if name in metric_catalog():
        raise UnlearnkitError(
            f"{option}: {name} is not among the metrics {where} (it comes from another command). Use one of: {', '.join(known)}."
        )
    raise UnlearnkitError(
        f"{option}: unknown metric {name!r}.{did_you_mean(name, known)} Metrics {where}: "
        f"{', '.join(known)} (`unlearnkit metrics` describes them)."
    )


def reportable_metrics(
    splits: Mapping[str, Sequence[dict]], eval_config: EvalConfig, oracle_reference: Mapping[str, Any] | None
) -> set[str]:
    """The summary keys :func:`evaluate` reports for these splits and reference (mirrors its rules; tested against it)."""
    reported: set[str] = set()
    for split, rows in splits.items():
        if not rows or split in MEMBERSHIP_SPLITS:
            continue
        reported |= {f"{split}_rouge_l", f"{split}_probability"}
        if has_truth_fields(split, rows):
            reported.add(f"{split}_truth_ratio")
    if oracle_reference is not None and "forget_truth_ratio" in reported:
        reported.add("forget_quality")
    if all(name in reported for name in MODEL_UTILITY_COMPONENTS):
        reported.add("model_utility")
    if splits.get("forget") and splits.get("holdout"):
        membership = (oracle_reference or {}).get("membership") or {}
        attacks = [attack for attack in MEMBER_SIGN
                   if (attack != "gradnorm" or eval_config.gradient_norm)
                   and (attack != "reference" or ("forget_nll" in membership and "holdout_nll" in membership))]
        reported |= {f"mia_{attack}_auc" for attack in attacks}
        reported |= {f"{split}_{name}" for split in ("forget", "holdout") for name in ("exact_memorization", "extraction_strength")}
        if (membership.get("auc") or {}).get("min_k") is not None:
            reported.add("privleak")
    return reported


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
        raise UnlearnkitError(f"The oracle reference has no value for the forget question {missing[0]!r}; "
                              "pass the reference of this forget set.")
    chosen = [position[row["question"]] for row in forget_rows]
    # Only the per-question truth ratios are cut; other stored statistics (e.g. the oracle's membership scores of
    # the whole forget and holdout sets) do not fit a subset, so the metrics built on them are left out.
    return {"split": reference.get("split"), "metric": reference.get("metric"),
            "questions": [questions[i] for i in chosen], "truth_ratio": [reference["truth_ratio"][i] for i in chosen]}


class EvalTracker(TrainerCallback):
    """Evaluate during training, record the curve, keep the best trainable weights, early-stop, restore at the end.

    ``references`` holds known summaries a constraint may compare with, e.g.
    ``{"oracle": oracle_summary}``; ``target`` (the step-0 evaluation) is added here.
    ``listeners`` are called with each evaluation's curve entry taken while training goes on (not the step-0
    baseline, not the last step's); one may raise to stop the run.
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
        listeners: Sequence[Callable[[dict[str, Any]], None]] = (),
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
        # Called with each evaluation taken before the last step (its curve entry); one may raise to stop the run,
        # as a hyperparameter search pruning an unpromising trial does (unlearnkit.tuning).
        self.listeners = tuple(listeners)
        self.references: dict[str, Mapping[str, float]] = dict(references or {})
        if self.criterion is not None:
            self._check_reported(reportable_metrics(self.splits, eval_config, self.oracle_reference))
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

    def _check_reported(self, reported: set[str]) -> None:
        """Refuse a criterion on a metric this data never yields: the selection would silently keep the last weights."""
        named = [("--select-best", self.criterion.metric)] + [(f"--subject-to {c}", c.metric) for c in self.criterion.constraints]
        for option, metric in named:
            if metric not in reported:
                raise UnlearnkitError(
                    f"{option}: the evaluation during training reports no {metric} with this data (it needs "
                    f"{_metric_needs(metric)}). It reports: {', '.join(sorted(reported)) or 'nothing'}."
                )

    # -- Trainer hooks ---------------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if not self.curve:
            entry = self._evaluate(model, state)
            if state.global_step == 0:  # a resumed run's first evaluation is its baseline, not the model before unlearning
                self.references["target"] = entry["metrics"]

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if state.global_step % self.config.every == 0:
            self._evaluate_and_select(model, state, control)
            if state.global_step < state.max_steps and not control.should_training_stop:
                for listener in self.listeners:
                    listener(self.curve[-1])

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
            logger.info("early stopping at step %d: %d evaluation(s) without a better %s", entry["step"], self._since_best,
                        self.criterion.metric)
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


def _metric_needs(metric: str) -> str:
    """What the data must hold for ``metric`` to be reported, for the message refusing it."""
    truth = "paraphrased_answer and perturbed_answer"
    if metric == "forget_quality":
        return f"the retain oracle's reference and forget rows with {truth}"
    if metric == "model_utility":
        return f"retain rows with {truth}, and real_authors and world_facts rows with perturbed_answer"
    if metric in ("privleak", "mia_reference_auc"):
        return "a holdout set and a retain oracle reference that stores membership statistics"
    if metric == "mia_gradnorm_auc":
        return "a holdout set and the gradient-norm attack switched on"
    if metric.startswith(("mia_", "holdout_")) or metric.endswith(("_exact_memorization", "_extraction_strength")):
        return "a forget and a holdout set"
    split = next((name for name in EVAL_SPLITS if metric.startswith(f"{name}_")), "its")
    return f"{split} rows with {' and '.join(truth_fields(split))}" if metric.endswith("_truth_ratio") else f"a {split} set"


def _trainable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters being trained (under LoRA: the adapter's); the only ones a restore needs."""
    return [(name, parameter) for name, parameter in model.named_parameters() if parameter.requires_grad]
