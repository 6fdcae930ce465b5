"""A real ``unlearnkit tune --benchmark real-knowledge`` study, against the method's untuned settings, tuned and held out.

Runs (or resumes) one study in ``--study`` (the method's default search space unless ``--space`` is given; forget
accuracy subject to neighbour accuracy >= 0.9x and general perplexity <= 1.2x the model's before unlearning; tuned
on the first half of the forget entities, held out on the others), then the method at the benchmark's settings
before any search on both entity splits (``--untuned DIR``/SPLIT), and writes the chosen setting's metrics beside
the untuned ones and the model's before unlearning, per split, with every trial's settings and outcome.

    OMP_NUM_THREADS=1 python benchmarks/tune_real_knowledge.py --study runs/tune-rk-npo --untuned runs/untuned-rk-npo \
        [--method npo] [--trials 12] [--json docs/tune_real_knowledge.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from unlearnkit.api import tune
from unlearnkit.runtime import quiet_libraries, set_threads
from unlearnkit.tuning.real_knowledge import RealKnowledgeTuning

COLUMNS = ("forget_accuracy", "neighbour_accuracy", "forget_qa_accuracy", "forget_cloze_accuracy", "forget_mcq_accuracy",
           "neighbour_qa_accuracy", "neighbour_cloze_accuracy", "neighbour_mcq_accuracy", "general_perplexity",
           "generation_distinct_2")


def untuned(folder: Path, method: str, split: str) -> dict:
    """The method at the benchmark's settings (no search) unlearning ``split``'s entities; reused when present."""
    if not (folder / "summary.json").is_file():
        ground = RealKnowledgeTuning()
        ground.run(ground.method(method, {}), split, folder)
    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def collect(study: Path, untuned_root: Path, method: str, seconds: float) -> dict:
    best = json.loads((study / "best.json").read_text(encoding="utf-8"))
    trials = json.loads((study / "trials.json").read_text(encoding="utf-8"))["trials"]
    result = {"method": method, "benchmark": "real-knowledge", "objective": best["objective"], "trials": best["trials"],
              "chosen": best["chosen"], "settings": best.get("settings"), "command": best.get("command"),
              "tune_call_seconds": round(seconds, 1), "trial_seconds": round(sum(t["seconds"] or 0 for t in trials), 1), "splits": {},
              "per_trial": [{"number": t["number"], "state": t["state"], "settings": t["settings"],
                             **{key: t["metrics"].get(key) for key in COLUMNS}, "feasible": t["feasible"],
                             "seconds": t["seconds"]} for t in trials]}
    for part in ("tuned", "holdout"):
        chosen = best.get(part)
        if not isinstance(chosen, dict) or "metrics" not in chosen:
            continue
        folder = study / chosen["folders"][0] if part == "holdout" else study / next(
            t for t in trials if t["number"] == best["chosen"])["folders"][0]
        run = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        baseline = untuned(untuned_root / chosen["split"].replace(",", "+").replace(" ", "_"), method, chosen["split"])
        result["splits"][chosen["split"]] = {
            "role": "tuned on" if part == "tuned" else "held out",
            "chosen": {key: run["unlearned"].get(key) for key in COLUMNS},
            "untuned": {key: baseline["unlearned"].get(key) for key in COLUMNS},
            "target": {key: run["target"].get(key) for key in COLUMNS},
            "chosen_meets_constraints": chosen["meets_constraints"],
            "bounds": chosen["bounds"],
        }
    return result


def markdown(result: dict) -> list[str]:
    shown = ("forget_accuracy", "neighbour_accuracy", "forget_qa_accuracy", "forget_cloze_accuracy", "forget_mcq_accuracy",
             "general_perplexity")
    lines = [f"Objective: {result['objective']}. Trials: " + ", ".join(f"{count} {state}" for state, count in result["trials"].items())
             + f". Chosen: trial {result['chosen']}" + (": " + ", ".join(f"`{k}={v}`" for k, v in result["settings"].items())
                                                       if result.get("settings") else "") + ".", "",
             "| entities | model | " + " | ".join(shown) + " |", "|---|---|" + "---:|" * len(shown)]
    for split, values in result["splits"].items():
        for model in ("chosen", "untuned", "target"):
            lines.append(f"| {split} ({values['role']}) | {model} | "
                         + " | ".join("" if values[model][key] is None else f"{values[model][key]:.3f}" for key in shown) + " |")
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, required=True)
    parser.add_argument("--untuned", type=Path, required=True, help="Folder for the untuned runs (one per entity split).")
    parser.add_argument("--method", default="npo")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--space", action="append", default=None, help="NAME=KIND:ARGS (repeatable; default: the method's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--markdown", type=Path, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("unlearnkit").setLevel(logging.INFO)
    started = time.perf_counter()
    tune(method=args.method, output=args.study, benchmark="real-knowledge", trials=args.trials, space=args.space,
         threads=args.threads, progress=False)
    result = collect(args.study, args.untuned, args.method, time.perf_counter() - started)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text("\n".join(markdown(result)), encoding="utf-8")


if __name__ == "__main__":
    main()
