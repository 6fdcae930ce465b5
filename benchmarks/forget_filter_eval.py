"""ForgetFilter on the built-in safety-mix, with a tiny Llama built for it (docs/forget_filter.md).

Usage: python benchmarks/forget_filter_eval.py [--seeds 0,1,2] [--json FILE]

Per seed (the seed of the data, the model's initialisation and the data order):

1. a fresh tiny Llama (hidden 64, 2 layers) with a BPE tokenizer trained on the safety-mix texts is the
   "released" model;
2. ForgetFilter runs on the downstream data D with the safety set (tiny-model settings, below); the ranking's
   AUC against the labels and precision/recall/F1 at the default φ and at other rules are recorded;
3. the released model is fine-tuned on (a) all of D, (b) the filtered D, (c) the oracle-filtered D (the labelled
   unsafe rows removed); each is asked the held-out harmful-style prompts, and the harmfulness judge
   (:mod:`unlearnkit.filtering.judge`, its held-out accuracy reported) counts the harmful answers; task accuracy
   is the mean ROUGE-L recall of the greedy answers to D's task questions.

Tiny-model settings (the paper's are for 7B models): lr 1e-2 for 40 epochs (the tiny model must memorise D
for ROUGE_before to mean anything), safety fine-tune 10 epochs at 2e-3, cosine schedule, 48 new tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.safety_mix import SafetyMixConfig, build_safety_mix
from unlearnkit.evaluation.metrics import rouge_l_recall
from unlearnkit.evaluation.scoring import greedy_answers
from unlearnkit.filtering.forget_filter import (
    ForgetFilterConfig,
    filter_quality,
    flag_unsafe,
    forget_filter,
    ranking_auc,
    train_filtered,
)
from unlearnkit.filtering.judge import builtin_judge
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, train_tokenizer

FMT = PromptFormat("plain")
TINY = TinyModelConfig(vocab_size=1024, hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, max_length=128)
PHIS = (0.1, 0.3, 0.5, 0.7, 0.8)
TOP_FRACTIONS = (0.25,)


def tiny_settings(seed: int) -> ForgetFilterConfig:
    return ForgetFilterConfig(learning_rate=1e-2, epochs=40, safety_epochs=10, safety_learning_rate=2e-3, lr_scheduler="cosine",
                              max_new_tokens=48, max_length=128, seed=seed)


def evaluate(model: torch.nn.Module, tokenizer, mix, judge) -> dict:  # noqa: ANN001 - a benchmark script
    heldout = mix.split("heldout_unsafe")
    answers = greedy_answers(model, tokenizer, FMT, [row["question"] for row in heldout], 48)
    harmful = judge.is_harmful(answers)
    task = [row for row in mix.split("downstream") if row["kind"] == "task"]
    task_answers = greedy_answers(model, tokenizer, FMT, [row["question"] for row in task], 48)
    return {"harmful_share": float(harmful.mean()), "harmful": int(harmful.sum()), "heldout_prompts": len(heldout),
            "task_rouge_l_recall": float(rouge_l_recall(task_answers, [row["answer"] for row in task]).mean()),
            "examples": [{"prompt": row["question"], "answer": text, "harmful": bool(flag)}
                         for row, text, flag in list(zip(heldout, answers, harmful, strict=True))[:4]]}


def run_seed(seed: int, judge) -> dict:  # noqa: ANN001 - a benchmark script
    mix = build_safety_mix(SafetyMixConfig(seed=seed))
    texts = [text for name in ("downstream", "safety", "heldout_unsafe") for row in mix.split(name)
             for text in (row["question"], row["answer"])]
    tokenizer = train_tokenizer(texts, TINY.vocab_size)
    released = build_tiny_model(TINY, tokenizer, seed=seed)
    rows, safe = mix.split("downstream"), mix.split("safety")
    labels = np.array([row["unsafe"] for row in rows])
    config = tiny_settings(seed)
    start = time.time()
    result = forget_filter(released, tokenizer, rows, safe, config, FMT, show_progress=False)
    filter_seconds = time.time() - start
    rules = {f"phi={phi:g}": filter_quality(flag_unsafe(result.scores, phi), labels) for phi in PHIS}
    rules.update({f"top={fraction:g}": filter_quality(flag_unsafe(result.scores, None, fraction), labels) for fraction in TOP_FRACTIONS})
    kinds = sorted({f"{row['kind']}:{row['category']}" for row in rows})
    by_kind = {kind: {"rouge_before": float(result.rouge_before[mask].mean()), "rouge_after": float(result.rouge_after[mask].mean()),
                      "score": float(result.scores[mask].mean())}
               for kind in kinds for mask in [np.array([f"{row['kind']}:{row['category']}" == kind for row in rows])]}
    downstream = {}
    for name, flags in (("all", np.zeros(len(rows), dtype=bool)), ("filtered", result.flags), ("oracle_filtered", labels)):
        model = build_tiny_model(TINY, tokenizer, seed=seed)  # the same released weights each time (same seed)
        stats = train_filtered(model, tokenizer, rows, flags, config, FMT, show_progress=False)
        downstream[name] = {**evaluate(model, tokenizer, mix, judge), "training_examples": stats["examples"]}
        print(f"seed {seed} {name}: {downstream[name]['harmful']}/{downstream[name]['heldout_prompts']} harmful, "
              f"task ROUGE-L {downstream[name]['task_rouge_l_recall']:.3f}", flush=True)
    return {"seed": seed, "auc": ranking_auc(result.scores, labels), "default_rule": config.rule(),
            "flagged": int(result.flags.sum()), "filter": filter_quality(result.flags, labels), "rules": rules, "by_kind": by_kind,
            "training": result.training, "filter_seconds": filter_seconds, "downstream": downstream}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    built = builtin_judge()
    print(f"judge: train accuracy {built.train_accuracy:.3f} ({built.train_rows}), held-out {built.heldout_accuracy:.3f} "
          f"({built.heldout_rows})", flush=True)
    results = []
    for seed in [int(part) for part in args.seeds.split(",")]:
        results.append(run_seed(seed, built.judge))
        last = results[-1]
        print(f"seed {seed}: AUC {last['auc']:.3f}; {last['default_rule']}: {last['filter']}", flush=True)
    report = {"judge": {"train_accuracy": built.train_accuracy, "heldout_accuracy": built.heldout_accuracy,
                        "train_rows": built.train_rows, "heldout_rows": built.heldout_rows},
              "settings": {"tiny_model": TINY.__dict__, "forget_filter": tiny_settings(0).__dict__}, "seeds": results}
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        args.json.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
