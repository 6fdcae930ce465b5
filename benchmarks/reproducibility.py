"""Does the same seed give the same weights? Fine-tune the same model on the same rows in fresh processes, with
one thread and with two, and compare the weights' SHA-256.

    python benchmarks/reproducibility.py [--model smollm2-135m] [--rows 32] [--threads 1,1,2] [--json FILE]

Each run is a separate process (as two preparations are), fine-tuning with the smollm2 preset's recipe kind
(LoRA r16 merged at the end) for one epoch on the first ``--rows`` rows of the built-in data, seed 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def one_run(model: str, rows: int, threads: int, output: Path) -> None:
    import torch

    torch.set_num_threads(threads)
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.data.world import WorldConfig, generate_world
    from unlearnkit.finetune import FinetuneConfig, finetune
    from unlearnkit.modeling import load_model, load_tokenizer, save_model

    network, tokenizer = load_model(model), load_tokenizer(model)
    data = generate_world(WorldConfig(num_authors=10, qa_per_author=8))["full"][:rows]
    config = FinetuneConfig(learning_rate=1e-3, max_epochs=1, batch_size=8, target_accuracy=1.0, seed=0, lora_rank=16)
    finetune(network, tokenizer, data, config, PromptFormat("auto"), show_progress=False)
    save_model(network, tokenizer, output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--threads", default="1,1,2")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", nargs=3, metavar=("THREADS", "OUTPUT", "UNUSED"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        one_run(args.model, args.rows, int(args.one[0]), Path(args.one[1]))
        return
    from unlearnkit.provenance import weights_sha256

    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for index, threads in enumerate(int(t) for t in args.threads.split(",")):
            output = Path(scratch) / f"run{index}"
            started = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--model", args.model, "--rows", str(args.rows), "--one", str(threads),
                            str(output), "-"], check=True, env={**__import__("os").environ, "OMP_NUM_THREADS": str(threads)})
            results.append({"threads": threads, "sha256": weights_sha256(output), "seconds": round(time.perf_counter() - started, 1)})
            print(results[-1], flush=True)
    report = {"model": args.model, "rows": args.rows, "runs": results,
              "same_threads_identical": len({r["sha256"] for r in results if r["threads"] == results[0]["threads"]}) == 1,
              "thread_counts_identical": len({r["sha256"] for r in results}) == 1}
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
