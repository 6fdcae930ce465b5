"""Read results folders back for reports: what each holds, checked, and whether several can be compared.

A report reads results files only (``config.json``, ``summary.json``,
``per_sample.json``, ``training_log.json``, ``eval_curve.json``, ``timing.json``), so it works on
folders written by any version of the commands that keeps that contract:

* a ``demo`` folder holds the target's, the retain oracle's and the unlearned
  model's results (``summary.json`` keyed by ``target``/``oracle``/``unlearned``);
* an ``unlearn`` or ``eval`` folder holds one model's results (a flat ``summary.json``);
* a ``bench`` folder (``bench.json``) holds one demo folder per combination and
  stands for its finished ones.

Runs compare only when they were measured on the same benchmark (data, target
and retain oracles): :func:`benchmark_identity` names it, and :func:`load_runs`
refuses a mix.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError

BENCH_MANIFEST = "bench.json"
REFERENCE_FILE = "forget_reference.json"
# Where a run trained on a localization keeps its manifest and heat maps (unlearnkit.runs.localize.RUN_COPY).
LOCALIZATION_COPY = "localization"
# The built-in benchmark's cache folder: ``builtin-`` + the 16-hex-digit hash of its configuration.
_BUILTIN_FOLDER = re.compile(r"builtin-[0-9a-f]{16}")
# Keys of the Trainer's log that are bookkeeping, not a loss term or a tracked metric.
_LOG_BOOKKEEPING = {"epoch", "step", "learning_rate", "grad_norm", "total_flos"}


@dataclass
class RunResults:
    """One evaluated model of a results folder, with what is known of how it was made."""

    path: Path
    label: str
    command: str  # "demo", "unlearn" or "eval"
    method: str | None
    split: str
    seed: int | None
    benchmark: str
    config: dict[str, Any]
    summary: dict[str, float]
    per_sample: dict[str, list[dict[str, Any]]]
    training_log: list[dict[str, Any]] = field(default_factory=list)
    # Evaluations during training (``--eval-every``): {"step", "epoch", "metrics"} per evaluation.
    eval_curve: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)
    target_summary: dict[str, float] | None = None
    oracle_summary: dict[str, float] | None = None
    target_per_sample: dict[str, list[dict[str, Any]]] | None = None
    oracle_truth_ratios: list[float] | None = None
    # Headline metrics the run could not compute, with the reason its summary.json records (metric -> why).
    not_computed: dict[str, str] = field(default_factory=dict)
    # A run trained on a localization (--localize): its heat maps as copied into the run's localization/ (file name, PNG).
    localization_maps: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def localization(self) -> dict[str, Any] | None:
        """The localization the run trained on, as its config.json records it (path, digest, localizer, selection)."""
        record = self.config.get("localization")
        return record if isinstance(record, dict) else None

    def missing(self, metric: str) -> str:
        """Why ``metric`` is not in this run's summary: the recorded reason, else what is known."""
        if metric in self.not_computed:
            return str(self.not_computed[metric])
        return "not in its summary.json (written by an older unlearnkit, or not evaluated)"

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.config.get("hyperparameters") or {})

    @property
    def metrics(self) -> dict[str, float]:
        """The summary plus the unlearning time, as the leaderboard and the report show them."""
        values = dict(self.summary)
        if "unlearn_seconds" in self.timing:
            values["unlearn_seconds"] = float(self.timing["unlearn_seconds"])
        return values

    def truth_ratios(self) -> list[float]:
        """The evaluated model's per-sample forget truth ratios R (empty when the forget data had no perturbed answers)."""
        return _truth_ratios(self.per_sample)

    def training_steps(self) -> list[dict[str, Any]]:
        """The per-step lines of the training log (the Trainer's closing summary line left out)."""
        return [line for line in self.training_log if "loss" in line and "step" in line]

    def training_terms(self) -> list[str]:
        """The loss terms and tracked metrics the training log records, ``loss`` first."""
        names: list[str] = []
        for line in self.training_steps():
            for key, value in line.items():
                if key not in _LOG_BOOKKEEPING and key not in names and isinstance(value, (int, float)):
                    names.append(key)
        return sorted(names, key=lambda name: (name != "loss", name))


def expand_folders(paths: Sequence[Path]) -> list[Path]:
    """The run folders behind ``paths``: a bench folder stands for its finished runs, any other folder for itself."""
    folders: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            raise UnlearnkitError(f"{path}: no such folder. Pass results folders written by demo, bench, unlearn or eval.")
        if (path / BENCH_MANIFEST).is_file():
            # The manifest lists the runs in the order the bench planned them; folders it does not list follow.
            manifest = read_json(path / BENCH_MANIFEST)
            planned = manifest.get("runs", []) if isinstance(manifest, dict) else []
            names = list(dict.fromkeys([*planned, *sorted(child.name for child in path.iterdir())]))
            runs = [path / name for name in names if (path / name / "summary.json").is_file()]
            if not runs:
                raise UnlearnkitError(f"{path}: this bench folder holds no finished run yet; run `unlearnkit bench` to completion first.")
            folders.extend(runs)
        else:
            folders.append(path)
    # A run named twice (e.g. a bench folder and one of its runs) is shown once.
    unique: dict[Path, Path] = {}
    for folder in folders:
        unique.setdefault(folder.resolve(), folder)
    return list(unique.values())


def load_runs(paths: Sequence[Path]) -> list[RunResults]:
    """Load every run behind ``paths`` and check that they were measured on one benchmark."""
    runs = [load_run(folder) for folder in expand_folders(paths)]
    check_compatible(runs)
    attach_targets(runs)
    return runs


def attach_targets(runs: Sequence[RunResults]) -> None:
    """Give an ``unlearn`` run the per-sample results of an ``eval`` folder of the model it started from, when the report has one.

    A demo folder holds its target's results itself; an unlearn folder does not, so its
    example generations would otherwise have no "before" to compare with.
    """
    evaluations = {_resolved(run.config.get("model")): run for run in runs if run.command == "eval" and run.config.get("model")}
    for run in runs:
        if run.command == "unlearn" and run.target_per_sample is None:
            target = evaluations.get(_resolved(run.config.get("model")))
            if target is not None:
                run.target_per_sample = target.per_sample


def _resolved(path: Any) -> str:
    return str(Path(str(path)).expanduser().resolve()) if path else ""


def check_compatible(runs: Sequence[RunResults]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.benchmark != first.benchmark:
            raise UnlearnkitError(
                f"{run.path} was measured on another benchmark ({run.benchmark}) than {first.path} ({first.benchmark}): "
                "their forget quality and utility are not comparable. Make one report per benchmark."
            )


def load_run(folder: Path, label: str | None = None) -> RunResults:
    """Read one results folder; a folder without results fails with the reason. ``label`` names it in the report."""
    folder = Path(folder)
    if not (folder / "summary.json").is_file():
        raise UnlearnkitError(
            f"{folder}: no summary.json, so no results to report. Pass a finished results folder of demo, bench, "
            "unlearn or eval (an interrupted run stays in its hidden .NAME.partial folder until it finishes)."
        )
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    summary = read_json(folder / "summary.json")
    per_sample = read_json(folder / "per_sample.json") if (folder / "per_sample.json").is_file() else {}
    for name, content in (("config.json", config), ("summary.json", summary), ("per_sample.json", per_sample)):
        if not isinstance(content, dict):
            raise UnlearnkitError(f"{folder / name} does not hold a JSON object; the results folder is damaged.")
    command = str(config.get("command") or ("demo" if "unlearned" in summary else "unlearn"))
    run = RunResults(
        path=folder, label=label or folder.name, command=command, method=config.get("method"),
        split=_split_name(config), seed=(config.get("hyperparameters") or {}).get("seed"),
        benchmark=benchmark_identity(config, per_sample), config=config, summary={}, per_sample={},
    )
    if isinstance(summary.get("unlearned"), dict):  # a demo folder: three models evaluated on the same sets
        run.summary = _metrics(summary["unlearned"])
        run.target_summary = _metrics(summary.get("target") or {})
        run.oracle_summary = _metrics(summary.get("oracle") or {})
        run.per_sample = per_sample.get("unlearned") or {}
        run.target_per_sample = per_sample.get("target")
        oracle_ratios = _truth_ratios(per_sample.get("oracle") or {})
        run.oracle_truth_ratios = oracle_ratios or None
    else:
        run.summary = _metrics(summary)
        run.not_computed = summary["not_computed"] if isinstance(summary.get("not_computed"), dict) else {}
        run.per_sample = per_sample if all(isinstance(rows, list) for rows in per_sample.values()) else {}
        run.oracle_truth_ratios = _reference_ratios(config, run.split)
    if not any(key.startswith("forget_") or key == "model_utility" for key in run.summary):
        raise UnlearnkitError(
            f"{folder}: summary.json holds no evaluation metrics (forget_*, model_utility); a finetune folder, or an "
            "unlearn run with --no-eval? Evaluate its model with `unlearnkit eval` and report that folder."
        )
    if (folder / "training_log.json").is_file():
        log = read_json(folder / "training_log.json")
        run.training_log = log if isinstance(log, list) else []
    if (folder / "eval_curve.json").is_file():
        curve = read_json(folder / "eval_curve.json")
        run.eval_curve = [entry for entry in curve if isinstance(entry, dict) and isinstance(entry.get("metrics"), dict)
                          and isinstance(entry.get("step"), int)] if isinstance(curve, list) else []
    if (folder / "timing.json").is_file():
        run.timing = read_json(folder / "timing.json")
    if run.localization is not None:
        run.localization_maps = [(path.name, path.read_bytes()) for path in sorted((folder / LOCALIZATION_COPY).glob("*.png"))]
    return run


def benchmark_identity(config: dict[str, Any], per_sample: dict[str, Any]) -> str:
    """A name for the data, target and oracles a run was measured on.

    Built-in benchmark runs are named by their cache folder (``builtin-`` + the
    hash of the benchmark's configuration): the ``cache`` a demo or ``eval
    --benchmark`` records, or the cache holding the model when the forget data was
    a built-in split. Runs on other data are named by a digest of the forget
    questions and answers they were scored on (in any order), whatever command
    wrote the folder: a target's or oracle's ``eval`` folder compares with the
    ``unlearn`` runs on the same forget data, and never with runs on other data.
    """
    builtin_split = _is_split_name(config.get("forget")) or _is_split_name(config.get("forget_split"))
    for candidate, applies in ((config.get("cache"), True), (config.get("model"), builtin_split)):
        for part in Path(str(candidate or "")).parts if applies else ():
            if _BUILTIN_FOLDER.fullmatch(part):
                return part
    rows = per_sample.get("forget") or (per_sample.get("unlearned") or {}).get("forget") or []
    pairs = sorted({(str(row.get("question")), str(row.get("answer"))) for row in rows if isinstance(row, dict)})
    if pairs:
        digest = hashlib.sha256(json.dumps(pairs, ensure_ascii=False).encode("utf-8")).hexdigest()
    else:
        digest = (config.get("sha256") or {}).get("forget_rows") or "unknown"
    return f"forget data {digest[:12]}"


def _is_split_name(source: Any) -> bool:
    """Whether a recorded ``--forget`` source is a bare built-in split name (``forget10``), not a file or a dataset name."""
    return isinstance(source, str) and bool(re.fullmatch(r"[A-Za-z_]+[0-9]*", source))


def _split_name(config: dict[str, Any]) -> str:
    name = config.get("forget_split") or config.get("benchmark") or config.get("forget") or "forget"
    return name if isinstance(name, str) and not ("/" in name or "." in name) else Path(str(name)).stem


def _metrics(summary: dict[str, Any]) -> dict[str, float]:
    return {key: float(value) for key, value in summary.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def _truth_ratios(per_sample: dict[str, Any]) -> list[float]:
    rows = per_sample.get("forget") or []
    return [float(row["truth_ratio"]) for row in rows if isinstance(row, dict) and "truth_ratio" in row]


def _reference_ratios(config: dict[str, Any], split: str) -> list[float] | None:
    """The retain oracle's per-sample forget R of an unlearn/eval run, where its reference file can be found."""
    candidates = [config.get("oracle_reference")]
    for source in (config.get("cache"), config.get("model")):
        parts = Path(str(source or "")).parts
        for index, part in enumerate(parts):
            if _BUILTIN_FOLDER.fullmatch(part):
                candidates.append(str(Path(*parts[: index + 1]) / f"oracle-{split}" / REFERENCE_FILE))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            try:
                reference = json.loads(Path(candidate).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(reference, dict) and isinstance(reference.get("truth_ratio"), list):
                return [float(value) for value in reference["truth_ratio"]]
    return None


def read_json(path: Path) -> Any:
    """The JSON content of a results file; a damaged one fails with the reason."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnlearnkitError(f"{path} is not valid JSON ({error}); the results folder is damaged.") from None
