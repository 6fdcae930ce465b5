"""Benchmark runner: every method x forget split x seed on the built-in benchmark, and a leaderboard.

Each combination is one ``demo`` results folder, ``DIR/{method}-{split}-seed{seed}``
(see :func:`unlearnkit.runs.unlearn.run_demo`); ``DIR/bench.json`` records the plan and
its settings. Rerunning the same command resumes: a combination whose folder
holds ``summary.json`` is done and skipped, an interrupted one resumes from its
last checkpoint. At the end the leaderboard (``leaderboard.json``, ``.csv``,
``.md``) and the HTML report (``report.html``) are written from the finished
folders, so they can be rebuilt at any time from the results alone.

The aggregation over seeds and the leaderboard's files are the report's
(:mod:`unlearnkit.report.leaderboard`), pure functions of the results folders;
this module runs the combinations and writes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unlearnkit.builtin import BuiltinBenchmark, check_forget_split
from unlearnkit.descriptions import metric_descriptions
from unlearnkit.errors import NumericalFault, UnlearnkitError
from unlearnkit.io import write_json, write_text
from unlearnkit.report.glossary import LEADERBOARD_METRICS, Glossary
from unlearnkit.report.html import write_report
from unlearnkit.report.leaderboard import leaderboard_csv, leaderboard_markdown, leaderboard_rows
from unlearnkit.report.results import BENCH_MANIFEST, load_run
from unlearnkit.runs.folder import check_output_dir
from unlearnkit.runs.inputs import Builtin, RunOptions, resolve_method
from unlearnkit.runs.lock import locks_output
from unlearnkit.runs.unlearn import run_demo

logger = logging.getLogger("unlearnkit")


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
    builtin: Builtin, methods: Sequence[str], splits: Sequence[str], seeds: Sequence[int], overrides: Mapping[str, Any]
) -> list[RunKey]:
    """Every combination, after checking each name and each method's settings (did-you-mean on a typo)."""
    if "seed" in overrides:
        raise UnlearnkitError("Give seeds with --seeds (e.g. --seeds 0,1,2), not --set seed=...")
    for split in splits:
        check_forget_split(split)
    for method in methods:
        for seed in seeds:
            resolve_method(method, {**overrides, "seed": seed}, builtin)
    return [RunKey(method, split, seed) for split in splits for method in methods for seed in seeds]


@locks_output
def run_bench(
    *,
    builtin: Builtin,
    methods: Sequence[str],
    splits: Sequence[str],
    options: RunOptions,
    seeds: Sequence[int] = (0,),
    overrides: Mapping[str, Any] | None = None,
) -> BenchOutcome:
    """Run (or resume) every combination into ``options.output`` and write the leaderboard and the report there."""
    output = Path(options.output)
    overrides = dict(overrides or {})
    plan = plan_runs(builtin, methods, splits, seeds, overrides)
    manifest = _open_bench_folder(output, builtin.config, overrides, plan)
    builtin.prepared(*splits)
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
            run_demo(builtin=builtin, method=resolve_method(key.method, {**overrides, "seed": key.seed}, builtin),
                     forget_split=key.split, options=RunOptions(folder, show_progress=options.show_progress,
                                                                checkpoint_every=options.checkpoint_every))
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
    runs = [load_run(output / name) for name in run_folders if (output / name / "summary.json").is_file()]
    outcome.rows = leaderboard_rows(runs)
    glossary = Glossary(metric_descriptions(LEADERBOARD_METRICS))
    write_json(output / "leaderboard.json", {
        "metrics": {name: {"label": glossary.describe(name).label, "better": glossary.describe(name).better,
                           "definition": glossary.describe(name).definition} for name in LEADERBOARD_METRICS},
        "std": "sample standard deviation over seeds (n - 1); null for one seed",
        "rows": outcome.rows,
        "failed": outcome.failed,
    })
    write_text(output / "leaderboard.csv", leaderboard_csv(outcome.rows))
    write_text(output / "leaderboard.md", leaderboard_markdown(outcome.rows, glossary=glossary))
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
