"""E2URec vs NPO vs retraining on the built-in recommendation data, at a somewhat larger size than the tests.

One ``unlearnkit recommend`` run per seed (the default settings: 30 users, 20% forgotten, K = 3, a hidden-32
one-layer Llama; the tests' micro run has 10 users, K = 2, hidden 16) into ``--output/seed-N``; the JSON gathers,
per seed and averaged over seeds, each model's test AUC/ACC/log-loss, its D_f metrics, its symmetrised KL ("JSD")
and L2 to the retrained oracle on D_f and on the test set, and its seconds. Every number is of a tiny model trained
from scratch on synthetic data.

    OMP_NUM_THREADS=1 python benchmarks/e2urec_compare.py --output runs/e2urec --json runs/e2urec/compare.json \
        [--seeds 0,1] [--set unlearn_epochs=20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from unlearnkit.runs.recommend import MODELS, SUMMARY_FILE, resolve_recommend, run_recommend
from unlearnkit.runtime import quiet_libraries, set_threads

KEYS = ("auc", "acc", "log_loss", "confidence", "jsd_to_oracle", "l2_to_oracle")


def parse_sets(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        key, _, setting = value.partition("=")
        pairs[key.strip()] = setting.strip()
    return pairs


def row_of(summary: dict) -> dict:
    """The numbers the comparison reads from one run's summary."""
    return {name: {"test": {key: summary["models"][name]["test"][key] for key in KEYS},
                   "forget": {key: summary["models"][name]["forget"][key] for key in KEYS},
                   "seconds": summary["models"][name]["seconds"]} for name in MODELS}


def mean_of(rows: list[dict]) -> dict:
    def mean(values: list) -> float | None:
        kept = [value for value in values if value is not None]
        return statistics.fmean(kept) if kept else None

    return {name: {part: {key: mean([row[name][part][key] for row in rows]) for key in KEYS} for part in ("test", "forget")}
            | {"seconds": mean([row[name]["seconds"] for row in rows])} for name in MODELS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, required=True, help="Folder for the runs (one per seed); a finished run is reused.")
    parser.add_argument("--json", type=Path, required=True, help="Where to write the comparison.")
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds (data, weights and unlearning share each).")
    parser.add_argument("--set", action="append", default=[], help="recommend setting KEY=VALUE (repeatable).")
    args = parser.parse_args()
    set_threads(1)
    quiet_libraries()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    overrides = parse_sets(args.set)
    runs = {}
    for seed in seeds:
        folder = args.output / f"seed-{seed}"
        if not (folder / SUMMARY_FILE).is_file():
            started = time.perf_counter()
            inputs = resolve_recommend({**overrides, "data_seed": seed, "seed": seed, "unlearn_seed": seed})
            run_recommend(inputs=inputs, output=folder, show_progress=False)
            print(f"seed {seed}: {time.perf_counter() - started:.1f} s", flush=True)
        summary = json.loads((folder / SUMMARY_FILE).read_text())
        runs[seed] = {"models": row_of(summary), "forget_distance_to_oracle": summary["forget_distance_to_oracle"],
                      "e2urec_moves_toward_oracle": summary["e2urec_moves_toward_oracle"], "seconds": summary["seconds"],
                      "parameters": summary["parameters"], "rows": summary["rows"]}
    result = {"note": "tiny model (a Llama trained from scratch; the recommend defaults unless settings say otherwise) on "
                      "synthetic recommendation data",
              "settings": overrides, "seeds": seeds, "runs": {str(seed): run for seed, run in runs.items()},
              "mean": mean_of([run["models"] for run in runs.values()])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for name, entry in result["mean"].items():
        test, forget = entry["test"], entry["forget"]
        print(f"{name:10s} test AUC {test['auc'] or float('nan'):.3f} ACC {test['acc']:.3f} | D_f AUC {forget['auc'] or float('nan'):.3f} "
              f"conf {forget['confidence']:.3f} JSD {forget['jsd_to_oracle']:.4f} L2 {forget['l2_to_oracle']:.4f} | "
              f"{entry['seconds']:.1f} s")


if __name__ == "__main__":
    main()
