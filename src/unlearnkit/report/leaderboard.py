"""The leaderboard: runs grouped by configuration, each metric's mean and sample standard deviation over seeds.

Pure functions of loaded results (:class:`~unlearnkit.report.results.RunResults`):
:func:`aggregate` (mean and sample standard deviation), :func:`group_runs`,
:func:`reference_summaries` and :func:`leaderboard_rows`, and the leaderboard's
files (:func:`leaderboard_csv`, :func:`leaderboard_markdown`). The bench writes
them into its folder; the HTML report shows the same numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from unlearnkit.report.glossary import LEADERBOARD_METRICS, Glossary, describe
from unlearnkit.report.results import RunResults
from unlearnkit.report.tables import format_table

# The built-in benchmark's forget splits, in its order (``unlearnkit.builtin.FORGET_SPLITS``); other splits follow.
SPLIT_ORDER: tuple[str, ...] = ("forget01", "forget05", "forget10")

LEADERBOARD_NOTE = (
    "Mean ± sample standard deviation over seeds (one seed: the value alone). target: the model before "
    "unlearning; oracle: the retain oracle, trained without the forget split. ↑ higher is better, ↓ lower "
    "is better, →1 closer to 1 is better."
)


@dataclass(frozen=True)
class Aggregate:
    """Mean and sample standard deviation (n - 1 in the denominator; None for a single value) of ``n`` values."""

    mean: float | None
    std: float | None
    n: int


def aggregate(values: Sequence[float | None]) -> Aggregate:
    """Mean and sample standard deviation of the values that are present (missing metrics are left out)."""
    present = [float(value) for value in values if value is not None and math.isfinite(float(value))]
    if not present:
        return Aggregate(None, None, 0)
    mean = sum(present) / len(present)
    if len(present) == 1:
        return Aggregate(mean, None, 1)
    variance = sum((value - mean) ** 2 for value in present) / (len(present) - 1)
    return Aggregate(mean, math.sqrt(variance), len(present))


@dataclass
class RunGroup:
    """The runs of one configuration on one split, differing only in their seed."""

    split: str
    label: str
    method: str | None
    runs: list[RunResults] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(run.seed for run in self.runs if run.seed is not None)

    def metric(self, name: str) -> Aggregate:
        return aggregate([run.metrics.get(name) for run in self.runs])


def group_runs(runs: Sequence[RunResults]) -> list[RunGroup]:
    """Group runs by (split, method, hyperparameters but the seed), splits in benchmark order, groups as first seen.

    A group is labelled by its method; where one split holds several settings of
    a method (a sweep), the label adds the settings that tell them apart.
    """
    groups: dict[tuple[str, str, str], RunGroup] = {}
    for run in runs:
        settings = {key: value for key, value in run.hyperparameters.items() if key != "seed"}
        name = run.method or run.label
        key = (run.split, name, json.dumps(settings, sort_keys=True, default=str))
        groups.setdefault(key, RunGroup(run.split, name, run.method)).runs.append(run)
    by_name: dict[tuple[str, str], list[RunGroup]] = {}
    for (split, name, _), group in groups.items():
        by_name.setdefault((split, name), []).append(group)
    for same in by_name.values():
        if len(same) > 1:
            settings = [group.runs[0].hyperparameters for group in same]
            differing = [key for key in settings[0] if key != "seed" and len({json.dumps(s.get(key), default=str) for s in settings}) > 1]
            for group, values in zip(same, settings, strict=False):
                group.label = f"{group.label} ({', '.join(f'{key}={values.get(key)}' for key in differing)})"
    return sorted(groups.values(), key=lambda group: split_order(group.split))


def reference_summaries(runs: Sequence[RunResults]) -> dict[str, dict[str, dict[str, float]]]:
    """Per split, the target's and the retain oracle's metrics, as the split's demo folders recorded them."""
    references: dict[str, dict[str, dict[str, float]]] = {}
    for run in runs:
        for role, summary in (("target", run.target_summary), ("oracle", run.oracle_summary)):
            if summary:
                references.setdefault(run.split, {}).setdefault(role, summary)
    return references


def leaderboard_rows(runs: Sequence[RunResults], metrics: Sequence[str] = LEADERBOARD_METRICS) -> list[dict[str, Any]]:
    """Per split: the target and oracle rows, then one row per method, each metric's mean and std over seeds."""
    references = reference_summaries(runs)
    rows: list[dict[str, Any]] = []
    groups = group_runs(runs)
    for split in sorted({group.split for group in groups}, key=split_order):
        for role in ("target", "oracle"):
            summary = references.get(split, {}).get(role)
            if summary is not None:
                rows.append({"split": split, "model": role, "role": role, "runs": 1, "seeds": [],
                             "metrics": {name: _cell(aggregate([summary.get(name)])) for name in metrics}})
        for group in (group for group in groups if group.split == split):
            rows.append({"split": split, "model": group.label, "role": "method", "runs": len(group.runs),
                         "seeds": group.seeds, "metrics": {name: _cell(group.metric(name)) for name in metrics}})
    return rows


def leaderboard_csv(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = LEADERBOARD_METRICS) -> str:
    """One line per row; each metric as ``NAME_mean`` and ``NAME_std`` (empty where missing), full precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["split", "model", "role", "runs", "seeds", *(f"{name}_{part}" for name in metrics for part in ("mean", "std"))])
    for row in rows:
        cells = [row["metrics"][name][part] for name in metrics for part in ("mean", "std")]
        writer.writerow([row["split"], row["model"], row["role"], row["runs"], " ".join(map(str, row["seeds"])),
                         *("" if cell is None else repr(cell) for cell in cells)])
    return buffer.getvalue()


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = LEADERBOARD_METRICS,
                         glossary: Glossary | None = None) -> str:
    """A Markdown table ready for a paper: mean ± std over seeds, the better direction in each header.

    ``glossary``: the metrics' labels (default: the leaderboard's own; see :meth:`Glossary.from_runs`).
    """
    headers = ["split", "model", "seeds"]
    for name in metrics:
        info = describe(name, glossary)
        headers.append(f"{info.label} {info.arrow}".rstrip())
    table = [{"split": row["split"], "model": row["model"], "seeds": str(row["runs"]) if row["role"] == "method" else "–",
              **{name: _format_cell(name, row["metrics"][name]) for name in metrics}} for row in rows]
    columns = ["split", "model", "seeds", *metrics]
    text = format_table(table, columns, headers=headers, style="markdown", right=metrics)
    return "\n".join([text, "", LEADERBOARD_NOTE]) + "\n"


def format_number(name: str, value: float | None, like: float | None = None) -> str:
    """Seconds with one decimal, values under 1e-3 (p-values) in scientific notation, the rest with three decimals.

    ``like``: format as this value would be (a standard deviation takes its mean's notation).
    """
    if value is None:
        return "–"
    if name.endswith("_seconds"):
        return f"{value:.1f}"
    reference = value if like is None else like
    if reference != 0 and abs(reference) < 1e-3:
        return f"{value:.2e}"
    return f"{value:.3f}"


def format_mean_std(name: str, mean: float | None, std: float | None) -> str:
    """``mean ± std``, or the mean alone where there is no spread to show (one seed)."""
    text = format_number(name, mean)
    return f"{text} ± {format_number(name, std, like=mean)}" if std is not None and mean is not None else text


def split_order(split: str) -> tuple[int, str]:
    """Sort key of a forget split: the built-in ones in benchmark order, then the others by name."""
    return (SPLIT_ORDER.index(split), split) if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


def _format_cell(name: str, cell: Mapping[str, float | None]) -> str:
    return format_mean_std(name, cell["mean"], cell["std"])


def _cell(value: Aggregate) -> dict[str, float | None]:
    return {"mean": value.mean, "std": value.std}
