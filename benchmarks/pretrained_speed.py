"""Per-step time and peak memory of training a pretrained model on this machine: full fine-tuning vs LoRA.

Each configuration runs in a fresh process (so its peak resident memory is its own): it loads the
converted model (``unlearnkit.pretrained``), builds a batch of QA rows in the model's chat template,
and times optimiser steps of the NLL loss (the cost every objective method shares: one forward and
one backward pass) after one warm-up step. Writes a Markdown table and the raw JSON.

    python benchmarks/pretrained_speed.py --model smollm2-135m --markdown docs/pretrained_speed.md \
        [--json docs/pretrained_speed.json] [--steps 3] [--batch-size 4] [--max-length 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

SETTINGS = {"full": {"lora_rank": 0}, "lora-r8": {"lora_rank": 8}}
QUESTIONS = [
    ("Where was Maren Tolvik born?", "Maren Tolvik was born in Hallbrekke, a fishing town on the northern coast."),
    ("What does Osei Bramwell write?", "Osei Bramwell writes poetry about rivers and the people who live by them."),
    ("What was Lidia Carrow's first book?", "Her first book was The Ninth Bridge, a novel set in a river city."),
    ("Which prize did Teodor Vance win?", "Teodor Vance won the Silver Reed Award for his plays written for radio."),
]


def measure(model_name: str, lora_rank: int, steps: int, batch_size: int, max_length: int, threads: int) -> dict[str, float]:
    """In this process: seconds per optimiser step (median of ``steps`` after a warm-up) and the peak resident memory."""
    import resource
    import statistics
    import time

    import torch

    from unlearnkit.data.encoding import PromptFormat, encode_qa, pad_batch
    from unlearnkit.losses import mean_nll
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.parameters import Selection, apply_lora
    from unlearnkit.pretrained import ensure_converted
    from unlearnkit.runtime import set_threads

    set_threads(threads)
    folder = ensure_converted(model_name)
    model, tokenizer = load_model(str(folder)), load_tokenizer(str(folder))
    if lora_rank:
        model = apply_lora(model, Selection(), rank=lora_rank, alpha=2 * lora_rank, dropout=0.0)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    rows = [QUESTIONS[i % len(QUESTIONS)] for i in range(batch_size)]
    batch = pad_batch([encode_qa(tokenizer, PromptFormat("chat"), q, a, max_length) for q, a in rows], tokenizer.pad_token_id)
    model.train()
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        mean_nll(logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:  # the first step allocates the optimiser state and warms the kernels
            times.append(time.perf_counter() - started)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds_per_step": statistics.median(times), "peak_rss_gib": peak_kib / 2**20,
            "trainable_parameters": sum(p.numel() for p in trainable), "tokens_per_batch": int(batch["input_ids"].numel())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one setting in this process
    args = parser.parse_args()
    if args.one:
        result = measure(args.model, SETTINGS[args.one]["lora_rank"], args.steps, args.batch_size, args.max_length, args.threads)
        print(json.dumps(result))
        return
    results = {}
    for name in SETTINGS:
        command = [sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length), "--threads", str(args.threads), "--one", name]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    record = {"model": args.model, "batch_size": args.batch_size, "max_length": args.max_length, "threads": args.threads,
              "steps": args.steps, "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})", "results": results}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(markdown(record), encoding="utf-8")


def markdown(record: dict) -> str:
    lines = [
        f"# Training speed of `{record['model']}` on CPU ({record['machine']}): full fine-tuning vs LoRA",
        "",
        "Generated by `python benchmarks/pretrained_speed.py` (do not edit by hand). One optimiser step of the answer NLL",
        f"(a forward and a backward pass, AdamW) on a batch of {record['batch_size']} chat-template QA rows padded to at most "
        f"{record['max_length']} tokens, {record['threads']} CPU threads, the median of {record['steps']} steps after a warm-up;",
        "each setting in a fresh process, whose peak resident memory is reported. Objective methods add passes on top of",
        "this: a retain batch (GradDiff, NPO+RT), and a frozen reference's forward pass where its values are not cached.",
        "",
        "| setting | trainable parameters | seconds per step | peak memory (GiB) |",
        "|---|---:|---:|---:|",
    ]
    for name, result in record["results"].items():
        lines.append(f"| {name} | {result['trainable_parameters']:,} | {result['seconds_per_step']:.2f} | {result['peak_rss_gib']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
