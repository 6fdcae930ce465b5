"""Benchmark runner: every method x forget split x seed on the built-in benchmark, and a leaderboard.

Each combination is one ``demo`` results folder, ``DIR/{method}-{split}-seed{seed}``
(see :func:`unlearnkit.jobs.run_demo`); ``DIR/bench.json`` records the plan and
its settings. Rerunning the same command resumes: a combination whose folder
holds ``summary.json`` is done and skipped, an interrupted one resumes from its
last checkpoint. At the end the leaderboard (``leaderboard.json``, ``.csv``,
``.md``) and the HTML report (``report.html``) are written from the finished
folders, so they can be rebuilt at any time from the results alone.

The aggregation is pure: :func:`aggregate` (mean and sample standard deviation
over seeds), :func:`group_runs` and :func:`leaderboard_rows`, used by the
report too.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.benchmark import FORGET_SPLITS, BuiltinBenchmark, check_forget_split, prepare
from unlearnkit.errors import NumericalFault, UnlearnkitError
from unlearnkit.io import check_output_dir, locks_output, write_json, write_text
from unlearnkit.jobs import run_demo
from unlearnkit.report.glossary import LEADERBOARD_METRICS, describe
from unlearnkit.report.results import BENCH_MANIFEST, RunResults, load_run
from unlearnkit.unlearn import resolve_method

logger = logging.getLogger("unlearnkit")

LEADERBOARD_NOTE = (
    "Mean ± sample standard deviation over seeds (one seed: the value alone). target: the model before "
    "unlearning; oracle: the retain oracle, trained without the forget split. ↑ higher is better, ↓ lower "
    "is better, →1 closer to 1 is better."
)


# ---------------------------------------------------------------------------------------------
# Aggregation over seeds (pure)


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
    return sorted(groups.values(), key=lambda group: _split_order(group.split))


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
    for split in sorted({group.split for group in groups}, key=_split_order):
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


def leaderboard_markdown(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str] = LEADERBOARD_METRICS) -> str:
    """A Markdown table ready for a paper: mean ± std over seeds, the better direction in each header."""
    header = ["split", "model", "seeds", *(f"{describe(name).label} {describe(name).arrow}" for name in metrics)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * len(metrics)]
    for row in rows:
        cells = [_format_cell(name, row["metrics"][name]) for name in metrics]
        seeds = str(row["runs"]) if row["role"] == "method" else "–"
        lines.append("| " + " | ".join([row["split"], row["model"], seeds, *cells]) + " |")
    return "\n".join([*lines, "", LEADERBOARD_NOTE]) + "\n"


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


def _format_cell(name: str, cell: Mapping[str, float | None]) -> str:
    return format_mean_std(name, cell["mean"], cell["std"])


def _cell(value: Aggregate) -> dict[str, float | None]:
    return {"mean": value.mean, "std": value.std}


def _split_order(split: str) -> tuple[int, str]:
    return (FORGET_SPLITS.index(split), split) if split in FORGET_SPLITS else (len(FORGET_SPLITS), split)


# ---------------------------------------------------------------------------------------------
# The plan and the runner


@dataclass(frozen=True)
class RunKey:
    method: str
    split: str
    seed: int

    @property
    def folder(self) -> str:
        return f"{self.method}-{self.split}-seed{self.seed}"


@dataclass
class BenchOutcome:
    output: Path
    rows: list[dict[str, Any]]
    ran: list[RunKey]
    skipped: list[RunKey]
    failed: dict[str, str]  # run folder -> error
    report: Path | None


def parse_list(text: str, option: str) -> list[str]:
    """``"a, b,a"`` -> ``["a", "b"]``: comma-separated names, order kept, duplicates dropped."""
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not names:
        raise UnlearnkitError(f"{option} needs at least one name (comma-separated), got {text!r}.")
    return names


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in parse_list(text, "--seeds"):
        try:
            seeds.append(int(part))
        except ValueError:
            raise UnlearnkitError(f"--seeds takes comma-separated integers (e.g. 0,1,2), got {part!r}.") from None
    return seeds


def plan_runs(
    config: BuiltinBenchmark, methods: Sequence[str], splits: Sequence[str], seeds: Sequence[int], overrides: Mapping[str, Any]
) -> list[RunKey]:
    """Every combination, after checking each name and each method's settings (did-you-mean on a typo)."""
    if "seed" in overrides:
        raise UnlearnkitError("Give seeds with --seeds (e.g. --seeds 0,1,2), not --set seed=...")
    for split in splits:
        check_forget_split(split)
    for method in methods:
        for seed in seeds:
            resolve_method(method, {**config.overrides_for(method), **overrides, "seed": seed})
    return [RunKey(method, split, seed) for split in splits for method in methods for seed in seeds]


@locks_output
def run_bench(
    *,
    output: Path,
    config: BuiltinBenchmark,
    methods: Sequence[str],
    splits: Sequence[str],
    seeds: Sequence[int] = (0,),
    overrides: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
    show_progress: bool = True,
    checkpoint_every: int = 50,
) -> BenchOutcome:
    """Run (or resume) every combination into ``output`` and write the leaderboard and the report there."""
    output = Path(output)
    overrides = dict(overrides or {})
    plan = plan_runs(config, methods, splits, seeds, overrides)
    manifest = _open_bench_folder(output, config, overrides, plan)
    prepare(config, cache_dir, tuple(splits), show_progress)
    ran: list[RunKey] = []
    skipped: list[RunKey] = []
    failed: dict[str, str] = {}
    for position, key in enumerate(plan, start=1):
        folder = output / key.folder
        if (folder / "summary.json").is_file():
            logger.info("[%d/%d] %s: done already, skipped", position, len(plan), key.folder)
            skipped.append(key)
            continue
        logger.info("[%d/%d] %s ...", position, len(plan), key.folder)
        try:
            run_demo(output=folder, config=config, method=key.method, forget_split=key.split,
                     overrides={**overrides, "seed": key.seed}, cache_dir=cache_dir, show_progress=show_progress,
                     checkpoint_every=checkpoint_every)
        except NumericalFault as error:
            # One diverged method must not cost the others' results; it is listed and the run exits with status 3.
            logger.error("%s diverged: %s", key.folder, error)
            failed[key.folder] = str(error)
            continue
        ran.append(key)
    outcome = BenchOutcome(output, [], ran, skipped, failed, None)
    return write_bench_results(output, manifest["runs"], outcome)


def write_bench_results(output: Path, run_folders: Sequence[str], outcome: BenchOutcome) -> BenchOutcome:
    """Write the leaderboard files and the report from the finished run folders of ``output``."""
    from unlearnkit.report.html import write_report  # the report groups runs with this module's functions

    runs = [load_run(output / name) for name in run_folders if (output / name / "summary.json").is_file()]
    outcome.rows = leaderboard_rows(runs)
    write_json(output / "leaderboard.json", {
        "metrics": {name: {"label": describe(name).label, "better": describe(name).better,
                           "definition": describe(name).definition} for name in LEADERBOARD_METRICS},
        "std": "sample standard deviation over seeds (n - 1); null for one seed",
        "rows": outcome.rows,
        "failed": outcome.failed,
    })
    write_text(output / "leaderboard.csv", leaderboard_csv(outcome.rows))
    write_text(output / "leaderboard.md", leaderboard_markdown(outcome.rows))
    if runs:
        outcome.report = write_report(runs, output / "report.html", title=f"Benchmark {output.name}")
    return outcome


def _open_bench_folder(output: Path, config: BuiltinBenchmark, overrides: Mapping[str, Any], plan: Sequence[RunKey]) -> dict[str, Any]:
    """Create ``output`` with its manifest, or reopen the one an earlier bench with the same settings left."""
    settings = {"benchmark": asdict(config), "cache_key": config.cache_key(),
                "overrides": {key: str(value) for key, value in overrides.items()}}
    manifest_path = output / BENCH_MANIFEST
    if output.exists() and not output.is_dir():
        raise UnlearnkitError(f"{output} exists and is not a folder; choose another --output.")
    runs = [key.folder for key in plan]
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UnlearnkitError(f"{manifest_path} is damaged (not JSON); choose another --output.") from None
        if previous.get("cache_key") != settings["cache_key"] or previous.get("overrides") != settings["overrides"]:
            raise UnlearnkitError(
                f"{output} holds a benchmark run with other settings (preset/benchmark {previous.get('cache_key')}, "
                f"--set {previous.get('overrides')}); its results would not compare with these. Choose another --output."
            )
        runs = list(dict.fromkeys([*previous.get("runs", []), *runs]))
    elif output.is_dir() and any(output.iterdir()):
        raise UnlearnkitError(f"{output} already holds files that are not a benchmark run; choose a new --output.")
    else:
        check_output_dir(output, overwrite=False)  # fails now, not after training, where nothing can be written
    manifest = {"command": "bench", **settings, "runs": runs}
    write_json(manifest_path, manifest)
    return manifest
