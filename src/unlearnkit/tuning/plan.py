"""The plan of a tuning study: what is searched, on what, for what; written to ``tune.json`` and compared on resume.

Everything that decides which trials the study runs and how they are judged is the study's
identity (:meth:`TunePlan.identity`): a rerun on the same folder with the same identity resumes
the study, one with another identity is refused. The number of trials, the parallel jobs, the
threads and the held-out split may change between runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.tuning.objective import Objective
from unlearnkit.tuning.space import Dimension, dimensions_json, parse_space

PRUNERS = ("median", "none")
# Which forget split the chosen setting is re-evaluated on when the study names none (--holdout-split auto).
DEFAULT_HOLDOUT = {"forget10": "forget05", "forget05": "forget10", "forget01": "forget05"}
NO_HOLDOUT = "none"


@dataclass(frozen=True)
class TunePlan:
    """A study's resolved settings (see the module docstring for what may change on resume)."""

    method: str
    preset: str
    cache_key: str
    split: str
    space: tuple[Dimension, ...]
    objective: str
    subject_to: str
    fixed: dict[str, str] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    eval_every: int = 0
    eval_rows: int = 0
    pruner: str = "median"
    prune_after: int = 5
    sampler_seed: int = 0
    # The method's settings before the search (the benchmark's, the fixed ones and the defaults), for the record.
    base_settings: dict[str, Any] = field(default_factory=dict)
    # What the real-knowledge benchmark reads (model, probes, corpora, text; None: shipped); empty for the built-in one.
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def goal(self) -> Objective:
        return Objective.parse(self.objective, self.subject_to, reported_metrics(self.preset))

    @property
    def prunes(self) -> bool:
        return self.pruner != "none"

    def identity(self) -> dict[str, Any]:
        return {
            "method": self.method, "preset": self.preset, "cache_key": self.cache_key, "split": self.split,
            "space": dimensions_json(self.space), "objective": self.objective, "subject_to": self.subject_to,
            "fixed": dict(sorted(self.fixed.items())), "seeds": list(self.seeds), "eval_every": self.eval_every,
            "eval_rows": self.eval_rows, "pruner": self.pruner, "prune_after": self.prune_after,
            "sampler_seed": self.sampler_seed, "base_settings": _json_safe(self.base_settings),
            # Only where there are some: a built-in study written before the field existed resumes unchanged.
            **({"inputs": dict(self.inputs)} if self.inputs else {}),
        }

    @classmethod
    def from_identity(cls, identity: dict[str, Any]) -> TunePlan:
        values = dict(identity)
        values["space"] = parse_space(values["space"])
        values["seeds"] = tuple(values["seeds"])
        return cls(**values)


def reported_metrics(preset: str) -> list[str] | None:
    """The metrics a study on ``preset`` can name: the real-knowledge benchmark's; None (the built-in ones) otherwise."""
    from unlearnkit.tuning.benchmarks import REAL_KNOWLEDGE

    if preset != REAL_KNOWLEDGE:
        return None
    from unlearnkit.evaluation.real_knowledge import summary_keys

    return summary_keys()


def differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The identity keys on which two plans differ, as ``key: stored -> wanted``."""
    return [f"{key}: {stored.get(key)!r} -> {wanted.get(key)!r}" for key in wanted if stored.get(key) != wanted.get(key)]


def holdout_split(split: str, holdout: str | None) -> str | None:
    """The held-out split: ``auto``/None the default for ``split``, ``none`` no held-out run, else the one named."""
    from unlearnkit.builtin import check_forget_split

    if holdout in (None, "auto"):
        return DEFAULT_HOLDOUT[split]
    if holdout == NO_HOLDOUT:
        return None
    check_forget_split(holdout)
    if holdout == split:
        raise UnlearnkitError(f"--holdout-split {holdout} is the split the study tunes on: the held-out check needs another "
                              f"forget split (e.g. {DEFAULT_HOLDOUT[split]}), or --holdout-split none to skip it.")
    return holdout


def check_counts(trials: Any, jobs: Any, prune_after: Any, eval_every: Any, eval_rows: Any) -> None:
    """Whole numbers in range, for the command line's options and the Python API alike."""
    for name, value, least in (("--trials", trials, 1), ("--jobs", jobs, 1), ("--prune-after", prune_after, 0),
                               ("--eval-rows", eval_rows, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UnlearnkitError(f"{name} must be a whole number, {least} or more; got {value!r}.")
    if eval_every is not None and (isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0):
        raise UnlearnkitError(f"--eval-every must be a whole number, 0 or more; got {eval_every!r}.")


def _json_safe(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings as JSON keeps them (a non-finite float would not round-trip as equal)."""
    return {key: (str(value) if isinstance(value, float) and not math.isfinite(value) else value) for key, value in settings.items()}
