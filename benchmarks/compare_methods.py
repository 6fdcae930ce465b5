"""Compare every registered method on the built-in benchmark and write the table to docs.

The methods run through ``unlearnkit bench`` (forget10 by default, the
benchmark's settings for the tiny model, seed 0): one results folder per method
under ``--output``, resumed when rerun. This script only adds the variants and
the table of ``docs/methods.md``.

    python benchmarks/compare_methods.py --output runs/compare [--methods npo,rmu] [--set lora_rank=8] \
        [--variant npo-20ep=npo:num_epochs=20 ...] [--markdown docs/methods.md] [--json docs/methods.json]

``--variant LABEL=METHOD:KEY=VALUE,KEY=VALUE`` adds a tuned run of a method (a
bench of its own under ``--output/variants/LABEL``); variants get their own
table, next to the method's run with the benchmark's settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from unlearnkit.builtin import get_preset
from unlearnkit.methods import METHODS
from unlearnkit.runs.bench import RunKey, run_bench
from unlearnkit.runs.inputs import Builtin, RunOptions
from unlearnkit.runtime import quiet_libraries, set_threads

COLUMNS = ("forget_quality", "model_utility", "forget_probability", "forget_truth_ratio", "forget_rouge_l")


def run_methods(output: Path, methods: list[str], preset: str, split: str, overrides: dict[str, str], cache: Path | None) -> None:
    """``unlearnkit bench`` on ``methods`` (seed 0) into ``output``: resumable, a diverged method is listed and skipped."""
    started = time.perf_counter()
    outcome = run_bench(builtin=Builtin(preset, cache, show_progress=False), methods=methods, splits=[split], overrides=overrides,
                        options=RunOptions(output, show_progress=False))
    for name, error in outcome.failed.items():
        print(f"{name} diverged: {error}", flush=True)
    print(f"{', '.join(methods)}: {time.perf_counter() - started:.1f} s", flush=True)


def run_folder(output: Path, method: str, split: str) -> Path:
    """Where the bench runner puts a method's seed-0 run."""
    return output / RunKey(method, split, 0).folder


def parse_variant(text: str) -> tuple[str, str, dict[str, str]]:
    """``LABEL=METHOD:K=V,K=V`` -> (label, method, settings)."""
    label, _, rest = text.partition("=")
    method, _, settings = rest.partition(":")
    if not label or not method:
        raise SystemExit(f"--variant expects LABEL=METHOD:KEY=VALUE,...; got {text!r}")
    return label, method, dict(item.split("=", 1) for item in settings.split(",") if item)


def collect(runs: list[tuple[str, str, Path]], preset: str, overrides: dict[str, str]) -> list[dict]:
    """Table rows for (label, method, run folder) where the run has finished; the target and oracle first."""
    rows = []
    for label, method, folder in runs:
        if not (folder / "summary.json").is_file():
            continue
        summary = json.loads((folder / "summary.json").read_text())
        timing = json.loads((folder / "timing.json").read_text())
        config = json.loads((folder / "config.json").read_text())
        if not rows:
            for name in ("target", "oracle"):
                rows.append({"model": name, "family": "", **{key: summary[name].get(key) for key in COLUMNS}, "unlearn_seconds": None})
        spec = METHODS.get(method)
        chosen = {**get_preset(preset).overrides_for(method), **overrides}
        settings = {key: config["hyperparameters"][key] for key in chosen}
        rows.append({"model": label, "family": spec.family, **{key: summary["unlearned"].get(key) for key in COLUMNS},
                     "unlearn_seconds": timing["unlearn_seconds"], "settings": settings})
    return rows


def kept_rows(earlier: Path, rows: list[dict]) -> list[dict]:
    """``rows`` with the method rows of the earlier JSON ``earlier`` that ``rows`` lacks, in the earlier order first.

    Refused unless the earlier target and oracle rows equal these (every metric to the last digit): then both
    were evaluated on the same prepared models, and the earlier runs compare with the new ones.
    """
    previous = json.loads(earlier.read_text(encoding="utf-8"))["methods"]
    if not rows:
        raise SystemExit("--keep needs at least one finished run now, to compare the target and oracle rows with.")
    if previous[:2] != rows[:2]:
        raise SystemExit(f"--keep {earlier}: its target/oracle rows differ from this run's, so its runs used other models.")
    present = {row["model"] for row in rows}
    return rows[:2] + [row for row in previous[2:] if row["model"] not in present] + rows[2:]


def markdown(rows: list[dict], preset: str, split: str, overrides: dict[str, str], variant_rows: list[dict], threads: int = 1) -> str:
    config = get_preset(preset)
    changed = (f"batch size for the pretrained {config.base_model}" if config.base_model
               else "learning rate and batch size for the tiny model")
    threads_text = "one CPU thread" if threads == 1 else f"{threads} CPU threads"
    lines = [
        "# Methods compared on the built-in benchmark",
        "",
        f"Generated by `python benchmarks/compare_methods.py` (preset `{preset}`, {split}, seed 0, {threads_text} per run"
        + (f", extra settings {overrides}" if overrides else "") + "). Each method uses its defaults (the authors' values)",
        f"except the benchmark's {changed} and the per-method settings listed.",
        "Forget quality: KS-test p-value against the retain oracle (higher is better, 1 = indistinguishable).",
        "Model utility: harmonic mean of nine retain/real-authors/world-facts scores (higher is better).",
        "`MU/oracle` is model utility relative to the retain oracle's. Forget probability: mean p(answer) on the forget set.",
        "Unlearning time is the training alone (evaluation excluded), on 2 CPU cores shared with other runs: "
        "compare orders of magnitude only.",
        "",
        *table(rows),
    ]
    settings = [f"- `{row['model']}`: {', '.join(f'{k}={v}' for k, v in row['settings'].items())}"
                for row in rows if row.get("settings")]
    if settings:
        lines += ["", "Settings used per method (benchmark overrides of the authors' defaults):", "", *settings]
    if variant_rows:
        lines += ["", "## Tuned variants", "",
                  "The same benchmark with the settings listed changed (on top of the benchmark's), to see what moves forget quality.",
                  "", *table(variant_rows), ""]
        lines += [f"- `{row['model']}`: {', '.join(f'{k}={v}' for k, v in row['settings'].items())}" for row in variant_rows
                  if row.get("family")]
    everything = rows + [row for row in variant_rows if row.get("family")]
    oracle_utility = next(row["model_utility"] for row in rows if row["model"] == "oracle")
    best = [row for row in everything if row.get("family") and row["model_utility"] >= 0.95 * oracle_utility]
    lines += ["", "Runs keeping model utility >= 0.95x the oracle's, by forget quality: "
              + (", ".join(f"{row['model']} ({_number(row['forget_quality'])})"
                           for row in sorted(best, key=lambda r: -r["forget_quality"])) or "none") + "."]
    lines += ["", "The other unlearning targets (private data, harmful behaviour, hazardous knowledge, copyrighted text) and the "
              "bias/toxicity side effects have their own headline measures: each method's row per track is in [tracks.md](tracks.md)."]
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> list[str]:
    oracle_utility = next(row["model_utility"] for row in rows if row["model"] == "oracle")
    lines = [
        "| model | family | forget quality | model utility | MU/oracle | forget prob. "
        "| forget truth ratio | forget ROUGE-L | unlearn time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = row["model_utility"] / oracle_utility if row["model_utility"] is not None else None
        time_cell = f"{row['unlearn_seconds']:.1f}" if row["unlearn_seconds"] is not None else ""
        lines.append(
            f"| {row['model']} | {row['family']} | {_number(row['forget_quality'])} | {_number(row['model_utility'])} | "
            f"{_number(ratio)} | {_number(row['forget_probability'])} | {_number(row['forget_truth_ratio'])} | "
            f"{_number(row['forget_rouge_l'])} | {time_cell} |"
        )
    return lines


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="Folder with one results folder per method (resumable).")
    parser.add_argument("--methods", default="", help="Comma-separated methods (default: every registered method).")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE applied to every method.")
    parser.add_argument("--variant", dest="variants", action="append", default=[], help="LABEL=METHOD:KEY=VALUE,... a tuned run.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--collect-only", action="store_true", help="Only build the table from the folders present.")
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, default=None,
                        help="An earlier --json of the same preset and split: its method rows are kept for the methods not "
                             "collected now, provided its target and oracle rows equal this run's (the same prepared models).")
    options = parser.parse_args()
    set_threads(options.threads)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING)
    methods = [name.strip() for name in options.methods.split(",") if name.strip()] or METHODS.names()
    overrides = dict(item.split("=", 1) for item in options.sets)
    variants = [parse_variant(text) for text in options.variants]
    if not options.collect_only:
        run_methods(options.output, methods, options.preset, options.split, overrides, options.cache)
        for label, method, settings in variants:
            run_methods(options.output / "variants" / label, [method], options.preset, options.split, {**overrides, **settings},
                        options.cache)
    rows = collect([(method, method, run_folder(options.output, method, options.split)) for method in methods], options.preset,
                   overrides)
    if options.keep is not None:
        rows = kept_rows(options.keep, rows)
    variant_rows = [row for label, method, settings in variants
                    for row in collect([(label, method, run_folder(options.output / "variants" / label, method, options.split))],
                                       options.preset, {**overrides, **settings})
                    if row.get("family")]
    if variant_rows:
        variant_rows = rows[:2] + variant_rows  # the target and oracle rows frame the variants too
    text = markdown(rows, options.preset, options.split, overrides, variant_rows, options.threads)
    if options.json:
        options.json.write_text(json.dumps({"methods": rows, "variants": variant_rows}, indent=2) + "\n", encoding="utf-8")
    if options.markdown:
        options.markdown.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
