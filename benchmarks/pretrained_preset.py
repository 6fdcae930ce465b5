"""Measurements behind the ``smollm2`` preset of the built-in benchmark (docs/pretrained_preset.md).

Two parts, each optional:

* ``--training``: full fine-tuning vs LoRA on the preset's own rows (the first ``--rows`` of its
  training data, in SmolLM2's chat template), each in a fresh process with one torch thread, both at
  once (as ``prepare`` trains the target and the oracle at once on a 2-core machine): answer-token
  accuracy after each epoch and the wall time. This is how the preset's choice of full fine-tuning
  was made.
* ``--prepare``: ``unlearnkit prepare --preset smollm2`` from cold into an empty ``--prepare-cache``:
  its wall and CPU time (run it on otherwise idle cores for the figure the 45-minute budget is about).
* ``--evaluation``: on the prepared preset (``unlearnkit prepare --preset smollm2``), the time to
  evaluate the target and the retain oracle on the benchmark's sets (and the base model's scores
  before any fine-tuning, for comparison), and the discrimination criteria
  the default preset meets too (target forget quality < 0.01, target and oracle model utility within
  5%, oracle forget quality 1).

    python benchmarks/pretrained_preset.py --training --evaluation --markdown docs/pretrained_preset.md \
        --json docs/pretrained_preset.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

PRESET = "smollm2"
# The two ways to fine-tune the base model, at learning rates suited to each (LoRA needs a larger one).
SETTINGS = {"full (lr 1e-4)": {"lora_rank": 0, "learning_rate": 1e-4}, "LoRA r16 (lr 1e-3)": {"lora_rank": 16, "learning_rate": 1e-3}}


def train_once(name: str, rows: int, epochs: int) -> dict:
    """In this process: fine-tune the preset's base model on its first ``rows`` training rows for ``epochs`` epochs."""
    from dataclasses import replace

    from unlearnkit.builtin import get_preset
    from unlearnkit.data.world import generate_world
    from unlearnkit.finetune import finetune
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.pretrained import ensure_converted
    from unlearnkit.runtime import set_threads

    set_threads(1)
    config = get_preset(PRESET)
    folder = ensure_converted(config.base_model)
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    training = replace(config.training, max_epochs=epochs, target_accuracy=1.0, **SETTINGS[name])
    data = generate_world(config.world)["full"][:rows]
    started = time.perf_counter()
    stats = finetune(model, tokenizer, data, training, config.prompt_format, show_progress=False)
    return {"seconds": time.perf_counter() - started, "accuracy_per_epoch": stats["accuracy_history"], "rows": len(data),
            "batch_size": training.batch_size}


def measure_training(rows: int, epochs: int) -> dict:
    """Both settings at once, each in its own process (one thread each)."""
    processes = {name: subprocess.Popen([sys.executable, __file__, "--one", name, "--rows", str(rows), "--epochs", str(epochs)],
                                        stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                 for name in SETTINGS}
    results = {}
    for name, process in processes.items():
        out, _ = process.communicate()
        if process.returncode:
            raise SystemExit(f"{name} failed (exit {process.returncode})")
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    return results


def measure_evaluation() -> dict:
    """Evaluation time of the prepared target and oracle, and the discrimination criteria."""
    from unlearnkit.builtin import EVAL_CONFIG, evaluate_cached_model, get_preset, prepare
    from unlearnkit.evaluation.evaluator import load_reference
    from unlearnkit.io import write_json
    from unlearnkit.pretrained import ensure_converted
    from unlearnkit.runs.unlearn import evaluation_cache_path

    config = get_preset(PRESET)
    bench = prepare(config, show_progress=False)
    split = config.forget_splits[-1]
    reference = load_reference(bench.reference_path(split))
    rows = {}
    # The base model before any fine-tuning: what it knew of the utility sets to begin with.
    models = (("base", ensure_converted(config.base_model)), ("target", bench.target_dir), ("oracle", bench.oracle_dir(split)))
    for role, folder in models:
        started = time.perf_counter()
        result = evaluate_cached_model(bench, folder, split, reference)
        seconds = time.perf_counter() - started
        training = {"epochs": 0, "answer_accuracy": None}
        if role != "base":
            # The same evaluation `demo` caches: store it there, so that the first demo does not evaluate again.
            write_json(evaluation_cache_path(bench, role, split, EVAL_CONFIG), {"summary": result.summary, "per_sample": result.per_sample})
            training = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        rows[role] = {"evaluation_seconds": seconds, **{key: value for key, value in result.summary.items()
                                                        if isinstance(value, float)},
                      "epochs": training["epochs"], "answer_accuracy": training["answer_accuracy"]}
        print(role, rows[role], flush=True)
    target, oracle = rows["target"], rows["oracle"]
    criteria = {
        "target forget quality < 0.01": target["forget_quality"] < 0.01,
        "target and oracle model utility within 5%":
            abs(target["model_utility"] - oracle["model_utility"]) <= 0.05 * oracle["model_utility"],
        "oracle forget quality 1": oracle["forget_quality"] == 1.0,
    }
    sizes = {name: len(rows_) for name, rows_ in bench.eval_splits(split).items()}
    return {"split": split, "models": rows, "criteria": criteria, "evaluation_rows": sizes}


def measure_prepare(cache: Path) -> dict:
    """``unlearnkit prepare --preset smollm2`` from cold into ``cache`` (which must not hold it): wall and CPU time."""
    import resource
    import tempfile

    if cache.exists() and any(cache.iterdir()):
        raise SystemExit(f"--prepare-cache {cache} is not empty: prepare must start from cold to be timed.")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        process = subprocess.run([sys.executable, "-m", "unlearnkit", "prepare", "--preset", PRESET, "--cache", str(cache)],
                                 stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise SystemExit(f"prepare failed with exit status {process.returncode}")
    load = os.getloadavg()
    return {"wall_seconds": wall, "cpu_seconds": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "load_average_at_end": [round(value, 2) for value in load]}


def markdown(record: dict) -> str:
    lines = [f"# The `{PRESET}` preset: measurements ({record['machine']})", "",
             "Generated by `python benchmarks/pretrained_preset.py` (do not edit by hand).", ""]
    if "training" in record:
        first = next(iter(record["training"].values()))
        lines += ["## Full fine-tuning vs LoRA", "",
                  f"SmolLM2-135M-Instruct fine-tuned on the preset's first {first['rows']} training rows (chat template, batch "
                  f"{first['batch_size']}), both settings at once, one torch thread each. Answer-token accuracy after each epoch:", "",
                  "| setting | " + " | ".join(f"epoch {i + 1}" for i in range(len(first["accuracy_per_epoch"]))) + " | wall time (s) |",
                  "|---|" + "---:|" * (len(first["accuracy_per_epoch"]) + 1)]
        for name, result in record["training"].items():
            lines.append(f"| {name} | " + " | ".join(f"{value:.3f}" for value in result["accuracy_per_epoch"])
                         + f" | {result['seconds']:.0f} |")
        lines += ["", record["training_note"], ""] if record.get("training_note") else [""]
    if "prepare" in record:
        prepare = record["prepare"]
        lines += ["## Preparing the preset", "",
                  f"`unlearnkit prepare --preset {PRESET}` from cold: {prepare['wall_seconds'] / 60:.1f} minutes wall time, "
                  f"{prepare['cpu_seconds'] / 60:.1f} minutes of CPU time (the target and the oracle train in two processes at once"
                  + (f"; load average at the end {', '.join(map(str, prepare['load_average_at_end']))}"
                     if prepare.get("load_average_at_end") else "") + ").", "",
                  *([prepare["note"], ""] if prepare.get("note") else [])]
    sections = [("Target and retain oracle", record["evaluation"])] if "evaluation" in record else []
    rejected = record.get("evaluation_rejected", [])
    sections += [("Configurations measured and rejected" if index == 0 else "", evaluation) for index, evaluation in enumerate(rejected)]
    for heading, evaluation in sections:
        sizes = ", ".join(f"{name} {size}" for name, size in evaluation["evaluation_rows"].items())
        lines += [*([f"## {heading}", ""] if heading else []), *([evaluation["note"], ""] if evaluation.get("note") else []),
                  f"Evaluated on {evaluation['split']} (rows: {sizes}), forget quality against the oracle's reference.", "",
                  "| model | epochs | answer-token accuracy | forget quality | model utility | forget ROUGE-L | retain ROUGE-L |"
                  " real-authors ROUGE-L | world-facts ROUGE-L | evaluation time (s) |", "|---|" + "---:|" * 9]
        for role, row in evaluation["models"].items():
            accuracy = f"{row['answer_accuracy']:.3f}" if row.get("answer_accuracy") is not None else "–"
            lines.append(f"| {role} | {row['epochs']} | {accuracy} | {row['forget_quality']:.3g} | "
                         f"{row['model_utility']:.3f} | {row['forget_rouge_l']:.3f} | {row['retain_rouge_l']:.3f} | "
                         f"{row['real_authors_rouge_l']:.3f} | {row['world_facts_rouge_l']:.3f} | {row['evaluation_seconds']:.0f} |")
        lines += ["", "Discrimination criteria:", ""]
        lines += [f"- {name}: {'met' if met else 'NOT met'}" for name, met in evaluation["criteria"].items()]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--training", action="store_true", help="Measure full fine-tuning vs LoRA.")
    parser.add_argument("--evaluation", action="store_true", help="Measure the prepared target and oracle.")
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="Torch threads for --evaluation.")
    parser.add_argument("--note", default="", help="A sentence on the conditions of the --training measurement (e.g. other load).")
    parser.add_argument("--prepare", action="store_true", help="Time `unlearnkit prepare` from cold into --prepare-cache.")
    parser.add_argument("--prepare-cache", type=Path, default=None, help="An empty folder for --prepare (kept afterwards).")
    parser.add_argument("--evaluation-note", default="", help="A sentence on the conditions of the --evaluation measurement.")
    parser.add_argument("--prepare-note", default="", help="A sentence on the conditions of the --prepare measurement.")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: one training setting in this process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(train_once(args.one, args.rows, args.epochs)))
        return
    record: dict = {"preset": PRESET, "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})"}
    if args.json and args.json.exists():  # keep the part not measured this time
        record = {**json.loads(args.json.read_text(encoding="utf-8")), **record}
    if args.training:
        record["training"] = measure_training(args.rows, args.epochs)
        record["training_note"] = args.note
    if args.prepare:
        if args.prepare_cache is None:
            raise SystemExit("--prepare needs --prepare-cache: an empty folder to prepare into.")
        record["prepare"] = {**measure_prepare(args.prepare_cache), "note": args.prepare_note}
    if args.evaluation:
        from unlearnkit.runtime import set_threads

        set_threads(args.threads)
        record["evaluation"] = measure_evaluation()
        record["evaluation"]["note"] = args.evaluation_note
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(markdown(record), encoding="utf-8")


if __name__ == "__main__":
    main()
