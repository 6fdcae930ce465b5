"""Does localization inform unlearning? Located layers vs as many random layers vs all layers, at equal forget strength.

Hase et al., "Does Localization Inform Editing? Surprising Differences in Causality-Based Localization vs.
Knowledge Editing in Language Models", NeurIPS 2023, found that where causal tracing locates a fact barely
predicts where editing it works. This script asks the same of unlearning on the built-in benchmark:

1. run a localizer (default ``causal_trace``) on the forget split of the benchmark's target;
2. unlearn with one method (default GradDiff) restricted to (a) the located layers, (b) the same number of
   layers drawn at random (one draw per seed, other layers first), (c) all layers; always the localization's
   modules (e.g. the MLP output projection), so that only the choice of layers differs;
3. each run stops as soon as the forget set's answer probability (mean over rows of exp(-mean answer-token NLL))
   falls to ``--forget-fraction`` of the target's (checked after every optimiser step), so the three are
   compared at equal forget strength; what is compared is the retain probability kept (same measure on the
   retain split's rows).

    python benchmarks/localization_vs_random.py [--preset default] [--method graddiff] [--localizer causal_trace]
        [--seeds 0,1,2] [--json docs/localization_vs_random.json]

A conclusion drawn on the tiny models is a tiny-model conclusion; the JSON records the model it ran on.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.parameters import decoder_layers


def answer_probability(model: torch.nn.Module, tokenizer: Any, fmt: PromptFormat, rows: list[dict]) -> float:
    """Mean over rows of exp(-mean NLL of the answer tokens given the question): TOFU's length-normalised probability."""
    was_training = model.training
    model.eval()
    values = []
    with torch.no_grad():
        for row in rows:
            prompt, answer = fmt.qa_ids(tokenizer, row["question"], row["answer"])
            ids = torch.tensor([prompt + answer])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]  # (|answer|, V): the positions predicting the answer
            nll = torch.nn.functional.cross_entropy(logits.float(), torch.tensor(answer), reduction="mean")
            values.append(math.exp(-float(nll)))
    model.train(was_training)
    return sum(values) / len(values)


class StopAtForgetProbability(TrainerCallback):
    """Stop training once the forget probability falls to ``threshold``: every condition ends at the same forget strength."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, fmt: PromptFormat, rows: list[dict], threshold: float) -> None:
        self.model, self.tokenizer, self.fmt, self.rows, self.threshold = model, tokenizer, fmt, rows, threshold
        self.steps = 0
        self.forget_probability = float("nan")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        self.steps = state.global_step
        self.forget_probability = answer_probability(self.model, self.tokenizer, self.fmt, self.rows)
        if self.forget_probability <= self.threshold:
            control.should_training_stop = True
        return control


def random_layers(count: int, depth: int, located: tuple[int, ...], seed: int) -> tuple[int, ...]:
    """``count`` layers drawn at random, those outside ``located`` first (all of them when the model is too shallow)."""
    rng = random.Random(seed)
    others = [layer for layer in range(depth) if layer not in located]
    rng.shuffle(others)
    rest = list(located)
    rng.shuffle(rest)
    return tuple(sorted((others + rest)[:count]))


def run(preset: str, cache: Path | None, method: str, localizer: str, seeds: list[int], forget_fraction: float,
        max_epochs: float, localizer_settings: dict[str, str], max_rows: int | None) -> dict[str, Any]:
    from unlearnkit.api import localize
    from unlearnkit.localization import load_localization
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.runs.inputs import Builtin, resolve_method
    from unlearnkit.unlearning import unlearn

    builtin = Builtin(preset, cache, show_progress=False)
    bench = builtin.prepared("forget10")
    fmt = builtin.prompt_format
    forget, retain = bench.split("forget10"), bench.split(bench.retain_split("forget10"))
    retain_eval = retain[:: max(1, len(retain) // 40)][:40]  # 40 evenly spaced retain rows for the measure
    tokenizer = load_tokenizer(bench.target_dir)
    target = load_model(bench.target_dir)
    depth = len(decoder_layers(target)[1])
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "localization"
        localize(model="builtin", data="forget10", localizer=localizer, output=folder, settings=localizer_settings,
                 max_rows=max_rows, preset=preset, cache=cache, progress=False)
        selection = load_localization(folder).selection
    localize_seconds = time.perf_counter() - started
    located = selection.layers if selection.layers is not None else tuple(range(depth))
    modules = ",".join(selection.target_modules) if selection.target_modules else None
    before = {"forget_probability": answer_probability(target, tokenizer, fmt, forget),
              "retain_probability": answer_probability(target, tokenizer, fmt, retain_eval)}
    threshold = forget_fraction * before["forget_probability"]
    conditions = [("located", located, None)] + [(f"random (seed {seed})", random_layers(len(located), depth, located, seed), seed)
                                                 for seed in seeds] + [("all layers", tuple(range(depth)), None)]
    results = []
    for name, layers, seed in conditions:
        model = load_model(bench.target_dir)
        settings = {"num_epochs": max_epochs, "layers": ",".join(map(str, layers)), "seed": seed or 0,
                    **({"target_modules": modules} if modules else {})}
        config = resolve_method(method, settings, builtin).config
        stopper = StopAtForgetProbability(model, tokenizer, fmt, forget, threshold)
        began = time.perf_counter()
        unlearned = unlearn(model, tokenizer, method, forget, retain, config, fmt, show_progress=False, callbacks=[stopper]).model
        results.append({"condition": name, "layers": list(layers), "steps": stopper.steps,
                        "reached": stopper.forget_probability <= threshold,
                        "forget_probability": answer_probability(unlearned, tokenizer, fmt, forget),
                        "retain_probability": answer_probability(unlearned, tokenizer, fmt, retain_eval),
                        "seconds": round(time.perf_counter() - began, 1)})
    return {"preset": preset, "model": f"{preset} preset target ({depth} decoder layers)", "method": method, "localizer": localizer,
            "localizer_settings": localizer_settings, "max_rows": max_rows, "modules": modules, "forget_fraction": forget_fraction,
            "threshold": threshold, "max_epochs": max_epochs, "before": before, "localize_seconds": round(localize_seconds, 1),
            "results": results}


def markdown_table(outcome: dict[str, Any]) -> str:
    lines = ["| condition | layers | steps | reached | forget probability | retain probability |", "|---|---|---|---|---|---|",
             f"| target (before) | – | 0 | – | {outcome['before']['forget_probability']:.4f} | "
             f"{outcome['before']['retain_probability']:.4f} |"]
    for row in outcome["results"]:
        lines.append(f"| {row['condition']} | {','.join(map(str, row['layers']))} | {row['steps']} | {'yes' if row['reached'] else 'no'} "
                     f"| {row['forget_probability']:.4f} | {row['retain_probability']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--method", default="graddiff")
    parser.add_argument("--localizer", default="causal_trace")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="Localizer setting KEY=VALUE.")
    parser.add_argument("--max-rows", type=int, default=None, help="Localize on the first N forget rows.")
    parser.add_argument("--seeds", default="0,1,2", help="Random-layer draws.")
    parser.add_argument("--forget-fraction", type=float, default=0.5, help="Stop at this fraction of the target's forget probability.")
    parser.add_argument("--max-epochs", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    settings = dict(pair.split("=", 1) for pair in args.sets)
    outcome = run(args.preset, args.cache, args.method, args.localizer, [int(s) for s in args.seeds.split(",") if s.strip()],
                  args.forget_fraction, args.max_epochs, settings, args.max_rows)
    sys.stdout.write(markdown_table(outcome))
    if args.json is not None:
        args.json.write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
