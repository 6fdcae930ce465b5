"""What a study tunes on: the built-in benchmark (with a retain oracle) or the real-knowledge one (without).

Both give the study the same few things: the method's configuration under the benchmark's settings, the
splits it tunes and holds out on, the reference metrics its constraints compare with (the target's, and
the retain oracle's where one exists), the checks of the objective's metrics and of the search space
against the data, and one run of the method on a split into a results folder.

* :class:`BuiltinTuning`: the built-in benchmark's presets; a split is a forget split (``forget10``).
* :class:`unlearnkit.tuning.real_knowledge.RealKnowledgeTuning`: the real-knowledge benchmark (docs/real_knowledge.md); a split is a set of
  forget entities (``"Albert Einstein,Paris"``), the held-out check unlearns the others, so that the
  chosen setting is judged on entities it was not chosen on. No oracle exists: the default objective is
  forget accuracy subject to neighbour accuracy (and general perplexity) relative to the model before
  unlearning.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError

logger = logging.getLogger("unlearnkit")

BUILTIN = "builtin"
REAL_KNOWLEDGE = "real-knowledge"
BENCHMARKS = (BUILTIN, REAL_KNOWLEDGE)
# The objective and constraints a study uses when the user names none, per benchmark.
DEFAULT_GOALS = {
    BUILTIN: ("forget_quality", "model_utility>=0.95*oracle"),
    # RWKU's trade-off: forget the targets while the neighbours stay answered and the prose stays fluent.
    REAL_KNOWLEDGE: ("forget_accuracy", "neighbour_accuracy>=0.9*target,general_perplexity<=1.2*target"),
}
# Evaluations during training per trial when --eval-every is left to choose (at the method's settings before the search).
AUTO_EVALUATIONS = 4


@dataclass
class BuiltinTuning:
    """The built-in benchmark (``--preset``) as a study's ground: forget splits, a retain oracle per split."""

    builtin: Any  # unlearnkit.runs.inputs.Builtin
    name = BUILTIN
    prunes = True
    reference_models = ("target", "oracle")

    @property
    def preset(self) -> str:
        return self.builtin.preset

    @property
    def cache(self) -> Path | None:
        return self.builtin.cache

    def cache_key(self) -> str:
        return self.builtin.config.cache_key()

    def inputs(self) -> dict[str, Any]:
        return {}

    def describe(self) -> str:
        return f"the built-in benchmark (preset {self.preset})"

    def default_split(self) -> str:
        return "forget10"

    def check_split(self, split: str) -> str:
        from unlearnkit.builtin import check_forget_split

        check_forget_split(split)
        return split

    def holdout_split(self, split: str, holdout: str | None) -> str | None:
        from unlearnkit.tuning.plan import holdout_split

        return holdout_split(split, holdout)

    def method(self, name: str, overrides: Mapping[str, Any]) -> Any:
        from unlearnkit.runs.inputs import resolve_method

        return resolve_method(name, overrides, self.builtin)

    def check_outputs(self, output: Path, fixed: Mapping[str, str]) -> None:
        from unlearnkit.runs.inputs import check_outputs

        check_outputs(None, False, builtin=self.builtin, files={"--output": output}, localize=fixed.get("localize"))

    def auto_eval_every(self, split: str, config: Any) -> int:
        """A quarter of the optimiser steps the method takes at its settings before the search (at least 1)."""
        from unlearnkit.data.world import forget_sizes

        world = self.builtin.config.world
        rows = forget_sizes(world.num_authors)[int(split[-2:])] * world.qa_per_author
        steps_per_epoch = math.ceil(math.ceil(rows / config.batch_size) / config.gradient_accumulation_steps)
        return max(1, math.ceil(config.num_epochs * steps_per_epoch) // AUTO_EVALUATIONS)

    def references(self, split: str) -> dict[str, dict[str, float]]:
        """The target's and the retain oracle's metrics on ``split`` (cached evaluations): what constraints compare with."""
        from unlearnkit.builtin import EVAL_CONFIG
        from unlearnkit.runs.unlearn import evaluation_cache
        from unlearnkit.tuning.trial import numeric

        bench = self.builtin.prepared(split)
        return {"target": numeric(evaluation_cache(bench, "target", bench.target_dir, split, EVAL_CONFIG).summary),
                "oracle": numeric(evaluation_cache(bench, "oracle", bench.oracle_dir(split), split, EVAL_CONFIG).summary)}

    def check_data(self, plan: Any) -> None:
        """Every range end and choice fits the method's data checks; every metric named is reported on this split
        (during training too, with pruning)."""
        from unlearnkit.builtin import EVAL_CONFIG
        from unlearnkit.evaluation.evaluator import load_reference
        from unlearnkit.evaluation.tracking import reportable_metrics, subset_reference, subset_rows

        bench = self.builtin.prepared(plan.split)
        check_space_data(self, plan, bench.split(plan.split), bench.split(bench.retain_split(plan.split)))
        splits, reference = bench.eval_splits(plan.split), load_reference(bench.reference_path(plan.split))
        reported = reportable_metrics(splits, EVAL_CONFIG, reference)
        if plan.prunes and plan.eval_rows:
            subsets = {name: subset_rows(rows, plan.eval_rows) for name, rows in splits.items()}
            reported &= reportable_metrics(subsets, EVAL_CONFIG, subset_reference(reference, subsets["forget"]))
        check_reported(plan, reported, " by the evaluations during training on --eval-rows rows" if plan.eval_rows else "")

    def prepare_holdout(self, split: str) -> None:
        """The held-out split's oracle, trained now when the cache lacks it (before the search: a failure costs no trial)."""
        bench = self.builtin.prepared()
        if not bench.oracle_dir(split).exists():
            logger.warning("the cache holds no retain oracle for the held-out split %s%s: training it now, once, as `unlearnkit "
                           "prepare` would (--holdout-split none skips the held-out check)", split,
                           "" if split in self.builtin.config.forget_splits else
                           f" (preset {self.preset} prepares only {', '.join(self.builtin.config.forget_splits)})")
        self.builtin.prepared(split)

    def run(self, method: Any, split: str, folder: Path, tracking: Any = None, listeners: Sequence[Any] = ()) -> dict[str, Any]:
        """One ``demo`` run into ``folder``; returns its summary (``target``, ``oracle``, ``unlearned``)."""
        from unlearnkit.evaluation.tracking import TrackingConfig
        from unlearnkit.runs.inputs import RunOptions
        from unlearnkit.runs.unlearn import run_demo

        return run_demo(builtin=self.builtin, method=method, forget_split=split, options=RunOptions(folder, show_progress=False),
                        tracking=tracking or TrackingConfig(), listeners=listeners)

    def holdout_details(self, tuned: str, held: str) -> dict[str, Any]:
        """How much of the held-out split's forget set the study saw: the built-in splits are nested, as TOFU's."""
        bench = self.builtin.prepared()
        seen = {row["question"] for row in bench.split(tuned)}
        questions = [row["question"] for row in bench.split(held)]
        overlap = sum(question in seen for question in questions) / len(questions)
        if overlap:
            logger.warning("%.0f%% of the forget questions of the held-out split %s are in %s, the split tuned on (the built-in "
                           "splits are nested, as TOFU's): the held-out check changes the forget set's size, retain set and oracle, "
                           "not its every question.", 100 * overlap, held, tuned)
        return {"forget_overlap": overlap}

    def rerun_command(self, plan: Any, settings: Mapping[str, Any]) -> str:
        """The ``unlearnkit demo`` command that reruns ``settings`` (first seed) on the tuned split."""
        from unlearnkit.tuning.report import demo_command

        return demo_command(plan, settings)


def set_options(settings: Mapping[str, Any]) -> list[str]:
    """``--set NAME=VALUE`` for each setting (a float in full precision)."""
    parts: list[str] = []
    for name, value in settings.items():
        parts += ["--set", f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}"]
    return parts


def check_space_data(benchmark: Any, plan: Any, forget: Sequence[dict], retain: Sequence[dict]) -> None:
    """Every range end and choice of the space passes the method's checks of its configuration against the data."""
    from unlearnkit.unlearning import check_method_inputs

    for dimension in plan.space:
        for value in dimension.values_to_check():
            with quiet():
                config = benchmark.method(plan.method, {**plan.fixed, dimension.name: value}).config
            try:
                check_method_inputs(plan.method, config, forget, retain)
            except UnlearnkitError as error:
                raise UnlearnkitError(f"--space {dimension}: {plan.method} cannot run {dimension.name}={value}: {error}") from None


def check_reported(plan: Any, reported: set[str], how: str) -> None:
    for metric in plan.goal.metrics():
        if metric not in reported:
            raise UnlearnkitError(f"{metric} is not reported on {plan.split} of this benchmark{how}; the objective and "
                                  f"constraints can use: {', '.join(sorted(reported))}.")


def tuning_benchmark(benchmark: str, *, preset: str = "default", cache: Path | None = None, show_progress: bool = False,
                     inputs: Mapping[str, Any] | None = None) -> Any:
    """The study's ground from what the user named (``--benchmark``, ``--preset``, the real-knowledge inputs):
    a :class:`BuiltinTuning` or a :class:`unlearnkit.tuning.real_knowledge.RealKnowledgeTuning`."""
    from unlearnkit.runs.inputs import Builtin
    from unlearnkit.tuning.real_knowledge import RealKnowledgeTuning

    if benchmark == REAL_KNOWLEDGE:
        if preset != "default":
            raise UnlearnkitError(f"--preset {preset} names a built-in benchmark; the real-knowledge benchmark takes --model "
                                  "and its data files instead. Leave out --preset, or use --benchmark builtin.")
        return RealKnowledgeTuning.from_inputs(inputs or {}, cache)
    if benchmark != BUILTIN:
        from unlearnkit.errors import did_you_mean

        raise UnlearnkitError(f"--benchmark must be one of {', '.join(BENCHMARKS)}; got {benchmark!r}."
                              + did_you_mean(benchmark, BENCHMARKS))
    given = {key: value for key, value in (inputs or {}).items() if value is not None}
    if given:
        options = ", ".join(f"--{key.replace('_', '-')}" for key in given)
        raise UnlearnkitError(f"{options} belong(s) to --benchmark real-knowledge; the built-in benchmark has its own model "
                              "and data (--preset).")
    return BuiltinTuning(Builtin(preset, cache, show_progress))


def plan_benchmark(plan: Any, cache: Path | None, show_progress: bool = False) -> Any:
    """The ground of a stored study (a worker process, a resumed run)."""
    from unlearnkit.tuning.real_knowledge import RealKnowledgeTuning

    if plan.preset == REAL_KNOWLEDGE:
        return RealKnowledgeTuning.from_inputs(plan.inputs, cache)
    return tuning_benchmark(BUILTIN, preset=plan.preset, cache=cache, show_progress=show_progress)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Hold back unlearnkit's warnings for the duration of the block (errors still show)."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
