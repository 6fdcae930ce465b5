"""Relearning and quantization recovery of the robust methods against NPO's, on the built-in benchmark, over seeds.

Each run ``LABEL=METHOD:KEY=VALUE;KEY=VALUE`` (or a bare method name) unlearns the benchmark's forget split with the
benchmark's settings plus its own (``unlearnkit.unlearn``, evaluated), for every seed; each unlearned model is then
audited with ``--attacks`` (``unlearnkit.audit``). Every step writes a results folder under ``--output`` and a
finished one is reused when rerun. The table gives, per run, the mean over seeds (and the range) of forget quality,
model utility, the direct recall, and each attack's recovery, and each recovery relative to the first run's (NPO by
default): the issue's yardstick is relearning recovery at most half of NPO's at equal direct forgetting.

    python benchmarks/robust_relearning.py --output runs/robust [--preset default] [--seeds 0,1,2] \
        [--runs npo,sam_npo,sam-rho0.1=sam_npo:rho=0.1] [--attacks direct,relearning,quantization_4bit] \
        [--json docs/robust_relearning.json] [--markdown docs/robust_relearning.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from compare_wrappers import parse_runs  # the same LABEL=NAME:KEY=VALUE;... run syntax
from unlearnkit import api
from unlearnkit.runtime import quiet_libraries, set_threads

DEFAULT_RUNS = "npo,sam_npo,sam_npo-rho0.1=sam_npo:rho=0.1,me_gd,undo,undo-npo=undo:unlearn_method=npo"
METRICS = ("forget_quality", "model_utility")


def step(folder: Path, run: Any, label: str) -> dict[str, Any]:
    if not (folder / "summary.json").is_file():
        started = time.perf_counter()
        run()
        print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def unlearned_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    """The unlearned model's evaluation summary inside a results folder's summary.json."""
    return summary.get("unlearned", summary)


def mean_range(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--runs", default=DEFAULT_RUNS)
    parser.add_argument("--attacks", default="direct,relearning,quantization_4bit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_libraries()
    common = {"preset": args.preset, "cache": args.cache, "progress": False}
    seeds = [int(seed) for seed in args.seeds.split(",")]
    attacks = args.attacks.split(",")
    rows = []
    for label, method, settings in parse_runs(args.runs):
        per_seed = []
        for seed in seeds:
            folder = args.output / f"{label}-seed{seed}"
            summary = step(folder, lambda folder=folder, method=method, settings=settings, seed=seed: api.unlearn(
                method=method, output=folder, forget=args.split, settings={**settings, "seed": seed}, **common),
                f"unlearn {label} seed {seed}")
            audit_folder = args.output / f"audit-{label}-seed{seed}"
            audit = step(audit_folder, lambda folder=folder, audit_folder=audit_folder: api.audit(
                model=folder, benchmark=args.split, attacks=attacks, output=audit_folder, **common), f"audit {label} seed {seed}")
            recovery = {row["attack"]: row["unlearned"] for row in audit["attacks"] if row.get("unlearned") is not None}
            metrics = unlearned_metrics(summary)
            per_seed.append({"seed": seed, **{name: metrics.get(name) for name in METRICS}, **recovery})
        names = [name for name in (*METRICS, *attacks) if all(run.get(name) is not None for run in per_seed)]
        rows.append({"run": label, "method": method, "settings": settings, "seeds": per_seed,
                     **{name: mean_range([run[name] for run in per_seed]) for name in names}})
    baseline = rows[0]
    for row in rows:
        row["relative_to_" + baseline["run"]] = {
            attack: row[attack]["mean"] / baseline[attack]["mean"]
            for attack in attacks if attack != "direct" and attack in row and baseline.get(attack, {}).get("mean")}
    if args.json:
        args.json.write_text(json.dumps({"preset": args.preset, "split": args.split, "seeds": seeds, "attacks": attacks,
                                         "rows": rows}, indent=2) + "\n", encoding="utf-8")
    text = markdown(rows, attacks, args, seeds)
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")


def cell(value: dict[str, float] | None, scientific: bool = False) -> str:
    if value is None:
        return "–"
    form = "{:.2e}" if scientific else "{:.3f}"
    return f"{form.format(value['mean'])} ({form.format(value['min'])}–{form.format(value['max'])})"


def markdown(rows: list[dict], attacks: list[str], args: argparse.Namespace, seeds: list[int]) -> str:
    baseline = rows[0]["run"]
    header = ["run", "settings", "forget quality", "model utility", *attacks, *(f"{a} / {baseline}" for a in attacks if a != "direct")]
    lines = [f"Preset `{args.preset}`, split `{args.split}`, seeds {', '.join(map(str, seeds))}: mean (min–max); "
             "`benchmarks/robust_relearning.py`.", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        settings = "; ".join(f"{key}={value}" for key, value in row["settings"].items()) or "defaults"
        ratios = row.get("relative_to_" + baseline, {})
        lines.append("| " + " | ".join([row["run"], settings, cell(row.get("forget_quality"), True), cell(row.get("model_utility")),
                                        *(cell(row.get(attack)) for attack in attacks),
                                        *(f"{ratios[a]:.2f}" if a in ratios else "–" for a in attacks if a != "direct")]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
