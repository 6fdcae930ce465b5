"""Does localization inform unlearning? Located layers (or neurons) vs as many random ones vs all layers, at equal forget strength.

Hase et al., "Does Localization Inform Editing? Surprising Differences in Causality-Based Localization vs.
Knowledge Editing in Language Models", NeurIPS 2023, found that where causal tracing locates a fact barely
predicts where editing it works. This script asks the same of unlearning on the built-in benchmark:

1. run each localizer (default ``causal_trace``, ``saliency``, ``depn``) on the forget split of the benchmark's target;
2. unlearn with one method (default GradDiff) restricted to (a) the located selection, (b) as many random
   ones (one draw per seed: the located layers replaced by as many layers drawn at random, those outside the
   located ones first; for a neuron-level selection, each located parameter moved to its drawn layer and as
   many of its neurons drawn at random), (c) all layers (whole parameters of the located modules in every
   layer); only the choice of layers or neurons differs between the three;
3. each run stops at the first check where the forget set's answer probability (mean over rows of exp(-mean
   answer-token NLL), one batched forward pass over the forget rows) has fallen to ``--forget-fraction`` of the
   target's: the conditions are compared at equal forget strength. Checks are at most ``--check-every`` steps
   and an eighth of the steps done apart, and closer as the threshold nears (the next check comes at half the
   steps a straight line through the last two checks' log probabilities predicts, at least one); the forget
   probability each run stopped at is recorded next to the threshold;
4. what is compared is the utility kept: the TOFU evaluation of each stopped model on the benchmark's sets
   (retain answer probability, model utility, forget quality against the retain oracle).

The learning rate is constant (no warm-up, no decay) so that where a run stops does not depend on
``--max-epochs``, which only caps a run that never reaches the threshold (``reached: no``).

    python benchmarks/localization_vs_random.py [--preset default] [--method graddiff]
        [--localizer causal_trace --localizer saliency --localizer depn] [--set LOCALIZER.KEY=VALUE]
        [--seeds 0,1,2] [--json docs/localization_vs_random.json] [--markdown docs/localization_vs_random.md]

A conclusion drawn on the tiny models is a tiny-model conclusion; the JSON records the model it ran on.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.localization import Localization, LocatedSelection, model_signature
from unlearnkit.localization.base import save_localization
from unlearnkit.parameters import decoder_layers

DEFAULT_LOCALIZERS = ("causal_trace", "saliency", "depn")
# The headline numbers of the TOFU evaluation kept per condition (the evaluator's summary keys).
KEPT_METRICS = ("forget_probability", "retain_probability", "model_utility", "forget_quality", "retain_rouge_l",
                "real_authors_probability", "world_facts_probability")


def answer_probability(model: torch.nn.Module, tokenizer: Any, fmt: PromptFormat, rows: list[dict]) -> float:
    """Mean over rows of exp(-mean NLL of the answer tokens given the question): TOFU's length-normalised probability.

    Batched (padded batches of 64 rows sorted by length, the evaluation's own scoring), in eval mode.
    """
    from unlearnkit.evaluation.scoring import answer_avg_nll

    was_training = model.training
    model.eval()
    try:
        avg_nll = answer_avg_nll(model, tokenizer, fmt, [(row["question"], row["answer"]) for row in rows])
    finally:
        model.train(was_training)
    return float(np.mean(np.exp(-avg_nll)))


def next_check_gap(history: list[tuple[int, float]], threshold: float, every: int) -> int:
    """Steps until the next check: at most ``every`` and at most an eighth of the steps done so far (at least 1), so a run
    overshoots the threshold by an eighth of its length at most; sooner, half the steps a straight line through the last
    two checks' log probabilities predicts to reach ``threshold``."""
    step = history[-1][0] if history else 0
    cap = max(1, min(every, step // 8))
    if len(history) < 2:
        return cap
    (step_a, prob_a), (step_b, prob_b) = history[-2], history[-1]
    slope = (math.log(max(prob_b, 1e-300)) - math.log(max(prob_a, 1e-300))) / max(step_b - step_a, 1)
    if slope >= 0:
        return cap  # not falling: no prediction
    predicted = (math.log(threshold) - math.log(max(prob_b, 1e-300))) / slope
    return max(1, min(cap, int(predicted // 2)))


class StopAtForgetProbability(TrainerCallback):
    """Stop training at the first check where the forget probability is at or under ``threshold``.

    Every condition thus ends at the same forget strength; ``history`` holds every (step, forget probability) checked.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, fmt: PromptFormat, rows: list[dict], threshold: float,
                 every: int = 8, start: float | None = None) -> None:
        self.model, self.tokenizer, self.fmt, self.rows, self.threshold, self.every = model, tokenizer, fmt, rows, threshold, every
        self.history: list[tuple[int, float]] = [] if start is None else [(0, start)]
        self.next_check = next_check_gap(self.history, threshold, every)
        self.steps = 0
        self.forget_probability = float("nan") if start is None else start

    def check(self, step: int) -> None:
        self.steps = step
        self.forget_probability = answer_probability(self.model, self.tokenizer, self.fmt, self.rows)
        self.history.append((step, self.forget_probability))
        self.next_check = step + next_check_gap(self.history, self.threshold, self.every)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if state.global_step >= self.next_check:
            self.check(state.global_step)
            if self.forget_probability <= self.threshold:
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if not self.history or self.history[-1][0] != state.global_step:
            self.check(state.global_step)  # the cap was reached between checks: record where the run ended
        return control


def random_layers(count: int, depth: int, located: tuple[int, ...], seed: int) -> tuple[int, ...]:
    """``count`` layers drawn at random, those outside ``located`` first (all of them when the model is too shallow)."""
    rng = random.Random(seed)
    others = [layer for layer in range(depth) if layer not in located]
    rng.shuffle(others)
    rest = list(located)
    rng.shuffle(rest)
    return tuple(sorted((others + rest)[:count]))


def _moved(name: str, prefix: str, mapping: dict[int, int]) -> str:
    """``name`` (``<prefix>.<layer>.rest``) in the layer ``mapping`` sends its layer to."""
    head = f"{prefix}."
    if not name.startswith(head):
        return name
    layer, rest = name[len(head):].split(".", 1)
    return f"{head}{mapping.get(int(layer), int(layer))}.{rest}"


def random_selection(selection: LocatedSelection, model: torch.nn.Module, seed: int) -> LocatedSelection:
    """The random counterpart of ``selection``: as many layers drawn by :func:`random_layers` (the located layers,
    in order, sent to the drawn ones in order), the same modules; for neurons, each located parameter moved to its
    layer's drawn layer and as many of its rows/columns drawn uniformly at random."""
    if selection.weight_masks:
        raise ValueError("A weight-level selection has no random counterpart here; localize with granularity=neuron.")
    prefix, layers = decoder_layers(model)
    depth = len(layers)
    located = selection.layers if selection.layers is not None else tuple(range(depth))
    drawn = random_layers(len(located), depth, located, seed)
    mapping = dict(zip(sorted(located), drawn, strict=True))
    shapes = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    rng = random.Random(seed)
    neurons: dict[str, dict[str, tuple[int, ...]]] = {"rows": {}, "columns": {}}
    for kind, dim, chosen in (("rows", 0, selection.rows), ("columns", 1, selection.columns)):
        for name in sorted(chosen):
            target = _moved(name, prefix, mapping)
            neurons[kind][target] = tuple(sorted(rng.sample(range(shapes[target][dim]), len(chosen[name]))))
    return LocatedSelection(layers=drawn, target_modules=selection.target_modules, rows=neurons["rows"], columns=neurons["columns"])


def selection_size(selection: LocatedSelection, model: torch.nn.Module) -> int:
    """Weights a localized run may change under ``selection``."""
    from unlearnkit.localization.base import selected_parameters

    parameters = dict(model.named_parameters())
    names = selected_parameters(model, selection)
    if not selection.has_neurons:
        return sum(parameters[name].numel() for name in names)
    total = 0
    for name in names:
        shape = parameters[name].shape
        rows, columns = len(selection.rows.get(name, ())), len(selection.columns.get(name, ()))
        total += rows * shape[1] + columns * shape[0] - rows * columns
    return total


def describe(selection: LocatedSelection) -> dict[str, Any]:
    return {"layers": list(selection.layers) if selection.layers is not None else None,
            "modules": list(selection.target_modules) if selection.target_modules is not None else None,
            "neurons": sum(len(v) for v in selection.rows.values()) + sum(len(v) for v in selection.columns.values())}


def run(preset: str, cache: Path | None, method: str, localizers: dict[str, dict[str, str]], seeds: list[int],
        forget_fraction: float, max_epochs: float, max_rows: int | None, check_every: int = 8,
        method_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    from unlearnkit.api import localize
    from unlearnkit.builtin import EVAL_CONFIG
    from unlearnkit.evaluation.evaluator import evaluate, load_reference
    from unlearnkit.localization import load_localization
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.runs.inputs import Builtin, resolve_method
    from unlearnkit.unlearning import unlearn

    began_all = time.perf_counter()
    builtin = Builtin(preset, cache, show_progress=False)
    bench = builtin.prepared("forget10")
    fmt = builtin.prompt_format
    forget, retain = bench.split("forget10"), bench.split(bench.retain_split("forget10"))
    splits = {name: rows for name, rows in bench.eval_splits("forget10").items() if name != "holdout"}
    reference = load_reference(bench.reference_path("forget10"))
    tokenizer = load_tokenizer(bench.target_dir)
    target = load_model(bench.target_dir)
    depth = len(decoder_layers(target)[1])
    signature = model_signature(target)

    def utility(model: torch.nn.Module) -> dict[str, float]:
        summary = evaluate(model, tokenizer, splits, fmt, EVAL_CONFIG, reference).summary
        return {key: float(summary[key]) for key in KEPT_METRICS if key in summary}

    start_forget = answer_probability(target, tokenizer, fmt, forget)
    threshold = forget_fraction * start_forget
    before = {**utility(target), "checked_forget_probability": start_forget}
    settings_used = {"num_epochs": max_epochs, "lr_scheduler": "constant", "warmup_ratio": 0.0, **(method_settings or {})}
    done: dict[str, dict[str, Any]] = {}  # the same selection and seed trains once (e.g. "all layers" of two localizers)
    localizations = []
    with tempfile.TemporaryDirectory() as scratch:
        def train(selection: LocatedSelection, seed: int) -> dict[str, Any]:
            key = json.dumps([selection.to_json(), seed], sort_keys=True)
            if key in done:
                return {**done[key], "shared": True}
            folder = Path(scratch) / f"selection-{len(done)}"
            save_localization(Localization("benchmark", {}, {}, selection, signature), folder)
            model = load_model(bench.target_dir)
            config = resolve_method(method, {**settings_used, "seed": seed, "localize": str(folder)}, builtin).config
            stopper = StopAtForgetProbability(model, tokenizer, fmt, forget, threshold, every=check_every, start=start_forget)
            began = time.perf_counter()
            unlearned = unlearn(model, tokenizer, method, forget, retain, config, fmt, show_progress=False, callbacks=[stopper]).model
            train_seconds = time.perf_counter() - began
            result = {**describe(selection), "weights": selection_size(selection, model), "seed": seed, "steps": stopper.steps,
                      "reached": stopper.forget_probability <= threshold, "stopped_forget_probability": stopper.forget_probability,
                      "checks": len(stopper.history) - 1, **utility(unlearned), "train_seconds": round(train_seconds, 1)}
            done[key] = result
            return result

        for localizer, localizer_settings in localizers.items():
            started = time.perf_counter()
            folder = Path(scratch) / f"localization-{localizer}"
            localize(model="builtin", data="forget10", localizer=localizer, output=folder, settings=localizer_settings,
                     max_rows=max_rows, preset=preset, cache=cache, progress=False)
            located = load_localization(folder).selection
            localize_seconds = time.perf_counter() - started
            every_layer = LocatedSelection(layers=tuple(range(depth)), target_modules=located.target_modules)
            conditions = [("located", located, seeds[0] if seeds else 0)]
            conditions += [(f"random (seed {seed})", random_selection(located, target, seed), seed) for seed in seeds]
            conditions += [("all layers", every_layer, seeds[0] if seeds else 0)]
            results = [{"condition": name, **train(selection, seed)} for name, selection, seed in conditions]
            localizations.append({"localizer": localizer, "settings": localizer_settings, "located": describe(located),
                                  "neuron_level": located.has_neurons, "localize_seconds": round(localize_seconds, 1),
                                  "results": results})
    return {"preset": preset, "model": f"{preset} preset target ({depth} decoder layers, "
                                       f"{sum(p.numel() for p in target.parameters())} parameters)", "depth": depth,
            "method": method, "method_settings": {**builtin.config.overrides_for(method), **settings_used}, "max_rows": max_rows,
            "forget_rows": len(forget), "forget_fraction": forget_fraction, "threshold": threshold, "check_every": check_every,
            "seeds": seeds, "before": before, "localizations": localizations,
            "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "machine": f"{os.cpu_count()} CPU cores ({platform.machine()})", "torch": torch.__version__,
            "wall_seconds": round(time.perf_counter() - began_all, 1)}


def spread(values: list[float], digits: int = 4) -> str:
    """``mean ± sd`` of ``values`` (the value alone when there is one)."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def markdown_table(outcome: dict[str, Any]) -> str:
    """Per localizer and condition: where, how many weights, steps, forget probability reached, and the utility kept."""
    head = ("| localizer | condition | layers | neurons | weights trained | steps | reached | forget prob (stopped) | "
            "retain prob | model utility | forget quality | train s |")
    before = outcome["before"]
    lines = [head, "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|",
             f"| – | target (before) | – | – | – | 0 | – | {before['checked_forget_probability']:.4f} | "
             f"{before['retain_probability']:.4f} | "
             f"{before['model_utility']:.4f} | {before['forget_quality']:.3g} | – |"]
    for block in outcome["localizations"]:
        for row in block["results"]:
            lines.append(f"| {block['localizer']} | {row['condition']} | {','.join(map(str, row['layers']))} | {row['neurons'] or '–'} "
                         f"| {row['weights']} | {row['steps']} | {'yes' if row['reached'] else 'no'} | "
                         f"{row['stopped_forget_probability']:.4f} | {row['retain_probability']:.4f} | {row['model_utility']:.4f} | "
                         f"{row['forget_quality']:.3g} | {row['train_seconds']}{' (shared)' if row.get('shared') else ''} |")
    return "\n".join(lines) + "\n"


def summary_table(outcome: dict[str, Any]) -> str:
    """Per localizer: located vs random (mean ± sd over the draws) vs all layers, on steps and the retain probability kept."""
    lines = ["| localizer | selection | located: steps / retain prob / utility | random: steps / retain prob / utility (mean ± sd) "
             "| all layers: steps / retain prob / utility |", "|---|---|---|---|---|"]
    for block in outcome["localizations"]:
        by = {"located": [], "random": [], "all": []}
        for row in block["results"]:
            by["random" if row["condition"].startswith("random") else "all" if row["condition"] == "all layers" else "located"].append(row)
        cells = []
        for rows in by.values():
            missed = sum(not r["reached"] for r in rows)
            steps = spread([float(r["steps"]) for r in rows], 1) + (f" ({missed} of {len(rows)} not reached)" if missed else "")
            cells.append(f"{steps} / {spread([r['retain_probability'] for r in rows])} / {spread([r['model_utility'] for r in rows])}")
        located = block["located"]
        where = f"layers {located['layers']}, {', '.join(located['modules'] or ['all modules'])}"
        where += f", {located['neurons']} neurons" if block["neuron_level"] else ""
        lines.append(f"| {block['localizer']} | {where} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _groups(block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """(located, random draws, all layers) rows of one localizer's block."""
    rows = block["results"]
    return rows[0], [row for row in rows if row["condition"].startswith("random")], rows[-1]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def reading(outcome: dict[str, Any]) -> list[str]:
    """What each localizer's numbers say, in words computed from them (labelled with the model they come from)."""
    label = f"On the {outcome['model']} (a tiny-model result)" if outcome["preset"] != "smollm2" else f"On the {outcome['model']}"
    depth = outcome["depth"]
    stopped = [row["stopped_forget_probability"] for block in outcome["localizations"] for row in block["results"] if row["reached"]]
    paragraphs = []
    if stopped:
        paragraphs.append(f"The runs that reached the forget level stopped at forget probability {min(stopped):.4f} to "
                          f"{max(stopped):.4f} (level {outcome['threshold']:.4f}): the checks between steps let a fast-falling run "
                          "overshoot it, by this much at most.")
    for block in outcome["localizations"]:
        located, draws, every = _groups(block)
        name = f"**{block['localizer']}**"
        where = f"layer(s) {located['layers']}" + (f", {located['neurons']} neurons" if block["neuron_level"] else "")
        distinct = sorted({tuple(row["layers"]) for row in draws})
        if block["neuron_level"]:
            meaning = (f"random = as many neurons per parameter ({located['neurons']} in all), drawn uniformly, in the drawn layers "
                       f"{', '.join(str(list(layers)) for layers in distinct)}")
            if distinct == [tuple(located["layers"])]:
                meaning += " (the located layers themselves: they are all the layers the selection can move to, so only the neurons differ)"
        else:
            meaning = (f"random = {len(located['layers'])} of the {depth} layers drawn at random: "
                       f"{', '.join(str(list(layers)) for layers in distinct)}")
            if len(distinct) == 1 and len(draws) > 1:
                meaning += (f"; with {depth} layers every draw is the same, so the seeds differ only in the order of the training "
                            "data, and the comparison is the located layer against the other one, not against a random sample of layers")
        text = [f"{name} (located {where}): {meaning}."]
        reached = [row for row in draws if row["reached"]]
        status = (f"located reached the forget level in {located['steps']} steps" if located["reached"]
                  else f"located did not reach the forget level within {located['steps']} steps (forget probability "
                       f"{located['stopped_forget_probability']:.4f})")
        status += f"; random: {len(reached)} of {len(draws)} draws reached it"
        if reached:
            status += f" (steps {spread([float(row['steps']) for row in reached], 1)})"
        missed = [row for row in draws if not row["reached"]]
        if missed:
            status += (f", {'the others' if reached else 'all'} stopped at the cap of {max(row['steps'] for row in missed)} steps "
                       "at forget probability "
                       f"{spread([row['stopped_forget_probability'] for row in missed])}")
        status += f"; all layers: {every['steps']} steps" + ("" if every["reached"] else " (not reached)")
        status += " (the same run as an earlier localizer's: same modules)" if every.get("shared") else ""
        text.append(status + ".")
        if located["reached"] and len(reached) == len(draws) and draws:
            text.append(f"They stopped at forget probability {located['stopped_forget_probability']:.4f} (located) vs "
                        f"{spread([row['stopped_forget_probability'] for row in draws])} (random) and "
                        f"{every['stopped_forget_probability']:.4f} (all layers): a run that stopped further under the level "
                        "forgot more, which costs utility, so read a difference no larger than that one's effect with care.")
            for key, word in (("retain_probability", "retain probability"), ("model_utility", "model utility")):
                mean, sd = _mean_sd([row[key] for row in draws])
                difference = located[key] - mean
                beyond = abs(difference) > 2 * sd
                text.append(f"At equal forget strength, located keeps {word} {located[key]:.4f} vs random {mean:.4f} ± {sd:.4f} "
                            f"(difference {difference:+.4f}, {'beyond' if beyond else 'within'} twice the draws' spread) and all layers "
                            f"{every[key]:.4f}.")
        elif located["reached"] and draws:
            text.append(f"The random {'neurons' if block['neuron_level'] else 'layers'} did not all reach the forget level, so "
                        "their utility is kept at a weaker forget strength and is not compared; what differs is whether and how fast "
                        "the method can unlearn there at this learning rate. Located keeps retain probability "
                        f"{located['retain_probability']:.4f} and model utility {located['model_utility']:.4f}; all layers "
                        f"{every['retain_probability']:.4f} and {every['model_utility']:.4f}.")
        paragraphs.append(" ".join(text))
    if depth <= 2:
        same_layers = [block["localizer"] for block in outcome["localizations"] if block["neuron_level"]
                       and all(row["layers"] == block["results"][0]["layers"] for row in _groups(block)[1])]
        neurons = (f"; {', '.join(same_layers)} drew its random neurons in its own located layers, so its comparison tests the "
                   "choice of neurons and not of a layer, the most informative one on this model" if same_layers else "")
        paragraphs.append(
            f"With {depth} decoder layers the layer-level question shrinks to which of {depth} layers: a located-vs-random-layer "
            "difference here says which layer of this model the method unlearns through best, not whether localization informs "
            f"unlearning in general{neurons}. The deeper test is a run on the smollm2 preset's target (30 layers, 135M parameters), "
            "when one is recorded in this report.")
    return [f"{label}:", *paragraphs]


def run_section(outcome: dict[str, Any], number: int) -> list[str]:
    """One run's section: its settings, the summary and per-run tables, and what they say."""
    before = outcome["before"]
    settings = ", ".join(f"{key}={value}" for key, value in outcome["method_settings"].items())
    localizers = "; ".join(f"`{block['localizer']}` ({', '.join(f'{k}={v}' for k, v in block['settings'].items()) or 'defaults'}, "
                           f"{block['localize_seconds']} s)" for block in outcome["localizations"])
    rows = f"the first {outcome['max_rows']}" if outcome["max_rows"] else "all the"
    return [
        f"## Run {number}: {outcome['method']}, learning rate {outcome['method_settings'].get('learning_rate')}",
        "",
        f"Generated by `{outcome.get('command', 'python benchmarks/localization_vs_random.py')}`.",
        "",
        f"* model: {outcome['model']}; forget set: forget10 ({outcome['forget_rows']} rows), retain set: its retain split;",
        f"* method: `{outcome['method']}` with {settings} (on top of the preset's own settings; a constant learning "
        "rate, so that where a run stops does not depend on the epoch cap);",
        f"* localizers, each on {rows} forget rows "
        f"(seconds to localize in brackets): {localizers};",
        f"* forget level: {outcome['forget_fraction']} × the target's forget probability "
        f"({before['checked_forget_probability']:.4f}) = {outcome['threshold']:.4f}, measured on all forget rows in one batched "
        f"pass, checked at most every {outcome['check_every']} steps and every eighth of the steps done (every step for the "
        "first 16), and closer as the level nears (next check at half the steps a straight line through the last two checks "
        "predicts, at least 1); `forget prob (stopped)` is the value at the stop;",
        f"* random draws: seeds {', '.join(map(str, outcome['seeds']))} (the first also seeds the located and all-layer runs); "
        "\"all layers\" trains the located modules whole, in every layer; a run identical to an earlier one is not repeated "
        "(`(shared)`);",
        f"* {outcome['threads']} torch thread(s), {outcome['machine']}, torch {outcome['torch']}; the whole run took "
        f"{outcome['wall_seconds']} s wall on cores shared with another long benchmark (times are upper bounds).",
        "",
        f"### Summary of run {number} (steps / retain probability / model utility)",
        "",
        summary_table(outcome),
        f"### All conditions of run {number}",
        "",
        markdown_table(outcome),
        f"### What run {number} shows",
        "",
        *[line + "\n" for line in reading(outcome)],
    ]


def markdown_report(runs: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The whole report: what is asked, then one section per run (settings, tables, reading)."""
    runs = [runs] if isinstance(runs, dict) else runs
    lines = [
        "# Does localization inform unlearning? Located vs random vs all layers",
        "",
        "Generated by `benchmarks/localization_vs_random.py` (do not edit by hand; the numbers are also in "
        "`localization_vs_random.json`). Each run below is one invocation with `--add-to docs/localization_vs_random.json "
        "--markdown docs/localization_vs_random.md`.",
        "",
        "Hase et al., \"Does Localization Inform Editing? Surprising Differences in Causality-Based Localization vs. Knowledge "
        "Editing in Language Models\", NeurIPS 2023, found that where causal tracing locates a fact barely predicts where an edit "
        "of it succeeds. This asks the same of unlearning: for each localizer, one method unlearns forget10 restricted to the "
        "located selection, to as many random layers (or neurons) and to all layers, each run stopping at the first check where "
        "the forget set's answer probability has fallen to the same level; then the utility each kept is compared: the TOFU "
        "evaluation of each stopped model on the benchmark's forget10 evaluation sets (retain answer probability, model "
        "utility, forget quality against the retain oracle).",
        "",
    ]
    for number, outcome in enumerate(runs, start=1):
        lines += run_section(outcome, number)
    lines += [
        "Caveats: the comparison is at matched forget probability on the forget set itself, not at matched robustness to "
        "extraction attacks (`unlearnkit audit` can be run on each condition's model); one method, one forget level.",
        "",
    ]
    return "\n".join(lines)


def added_run(path: Path, outcome: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs recorded in ``path`` (``{"runs": [...]}``) with ``outcome`` added, replacing one with the same settings."""
    runs = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else []
    same = ("preset", "method", "method_settings", "forget_fraction")
    runs = [run for run in runs if any(run.get(key) != outcome.get(key) for key in same)]
    return [*runs, outcome]


def parse_localizers(names: list[str], sets: list[str]) -> dict[str, dict[str, str]]:
    """``--localizer`` names (default: causal_trace, saliency, depn) with their ``--set LOCALIZER.KEY=VALUE`` settings."""
    chosen: dict[str, dict[str, str]] = {name: {} for name in (names or DEFAULT_LOCALIZERS)}
    for pair in sets:
        scoped, value = pair.split("=", 1)
        localizer, key = scoped.split(".", 1)
        if localizer not in chosen:
            raise SystemExit(f"--set {pair}: {localizer!r} is not one of the localizers run ({', '.join(chosen)}).")
        chosen[localizer][key] = value
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--method", default="graddiff")
    parser.add_argument("--method-set", dest="method_sets", action="append", default=[], help="Method setting KEY=VALUE.")
    parser.add_argument("--localizer", dest="localizers", action="append", default=[], help="Localizer run (repeatable).")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="Localizer setting LOCALIZER.KEY=VALUE.")
    parser.add_argument("--max-rows", type=int, default=None, help="Localize on the first N forget rows.")
    parser.add_argument("--seeds", default="0,1,2", help="Random draws (the first also seeds the located and all-layer runs).")
    parser.add_argument("--forget-fraction", type=float, default=0.5, help="Stop at this fraction of the target's forget probability.")
    parser.add_argument("--max-epochs", type=float, default=20.0)
    parser.add_argument("--check-every", type=int, default=8, help="Steps between forget-probability checks, at most.")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--add-to", type=Path, default=None,
                        help="Add this run to the runs recorded in this JSON file, replacing one with the same settings.")
    parser.add_argument("--markdown", type=Path, default=None, help="Write the report (every run of --add-to, else this one) here.")
    parser.add_argument("--render", type=Path, default=None, nargs="+",
                        help="Run nothing: write --markdown (and --add-to) from these earlier --json / --add-to files.")
    args = parser.parse_args(argv)
    if args.render is not None:
        runs = []
        for path in args.render:
            data = json.loads(path.read_text(encoding="utf-8"))
            runs += data.get("runs", [data])
        if args.add_to is not None:
            args.add_to.write_text(json.dumps({"runs": runs}, indent=2) + "\n", encoding="utf-8")
        if args.markdown is not None:
            args.markdown.write_text(markdown_report(runs), encoding="utf-8")
        return 0
    outcome = run(args.preset, args.cache, args.method, parse_localizers(args.localizers, args.sets),
                  [int(s) for s in args.seeds.split(",") if s.strip()], args.forget_fraction, args.max_epochs, args.max_rows,
                  args.check_every, dict(pair.split("=", 1) for pair in args.method_sets))
    outcome["command"] = "python benchmarks/localization_vs_random.py " + " ".join(argv if argv is not None else sys.argv[1:])
    sys.stdout.write(summary_table(outcome) + "\n" + markdown_table(outcome))
    if args.json is not None:
        args.json.write_text(json.dumps(outcome, indent=2) + "\n", encoding="utf-8")
    runs = [outcome]
    if args.add_to is not None:
        runs = added_run(args.add_to, outcome)
        args.add_to.write_text(json.dumps({"runs": runs}, indent=2) + "\n", encoding="utf-8")
    if args.markdown is not None:
        args.markdown.write_text(markdown_report(runs), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
