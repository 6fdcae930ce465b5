"""GA, GradDiff and NPO with AdamW vs SOUL's Sophia (``optimizer=soul``) at equal steps, on the built-in benchmark.

Each (optimizer, learning rate) is one ``unlearnkit bench`` over the methods (forget10 by default, seed 0) in a folder
of its own under ``--output``, resumed when rerun. Every other setting is the benchmark's for the tiny model (lr 5e-4,
batch 32, 5 epochs: the same number of optimiser steps for both optimisers). SOUL runs at the benchmark's AdamW
learning rate, as SOUL's own TOFU configs do for GradDiff (5e-6 for both), and at each ``--soul-lr`` given.

    OMP_NUM_THREADS=1 python benchmarks/soul_vs_adamw.py --output runs/soul [--preset default] [--soul-lr 1e-4] \
        [--markdown docs/soul.md --json docs/soul.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from unlearnkit.builtin import get_preset
from unlearnkit.methods import METHODS as METHOD_REGISTRY
from unlearnkit.runs.bench import RunKey, run_bench
from unlearnkit.runs.inputs import Builtin, RunOptions
from unlearnkit.runtime import quiet_libraries, set_threads

METHODS = ("ga", "graddiff", "npo")
READING = "## Reading (by hand)"
# A pretrained preset's table lives between these markers, so the tiny model's regeneration keeps it and vice versa.
PRETRAINED_BEGIN, PRETRAINED_END = "<!-- soul: pretrained preset -->", "<!-- /soul: pretrained preset -->"
COLUMNS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_probability", "forget_rouge_l")


def benchmark_lr(preset: str) -> float:
    """The learning rate the benchmark unlearns at: its override (the tiny presets) or the methods' own default."""
    return get_preset(preset).overrides_for("ga").get("learning_rate", METHOD_REGISTRY.get("ga").config().learning_rate)


def variants(preset: str, soul_lrs: list[float]) -> list[tuple[str, dict[str, object]]]:
    """(label, settings over the benchmark's): AdamW and SOUL at the benchmark's lr, then SOUL at each extra lr."""
    base_lr = benchmark_lr(preset)
    chosen = [("adamw", {}), (f"soul-lr{base_lr:g}", {"optimizer": "soul"})]
    return chosen + [(f"soul-lr{lr:g}", {"optimizer": "soul", "learning_rate": lr}) for lr in soul_lrs if lr != base_lr]


def run(output: Path, preset: str, split: str, methods: list[str], label: str, settings: dict[str, object], cache: Path | None) -> None:
    started = time.perf_counter()
    outcome = run_bench(builtin=Builtin(preset, cache, show_progress=False), methods=methods, splits=[split], overrides=settings,
                        options=RunOptions(output / label, show_progress=False))
    for name, error in outcome.failed.items():
        print(f"{label} {name} diverged: {error}", flush=True)
    print(f"{label}: {time.perf_counter() - started:.1f} s", flush=True)


def collect(output: Path, preset: str, split: str, methods: list[str], chosen: list[tuple[str, dict[str, object]]]) -> dict:
    rows: list[dict] = []
    reference: dict[str, dict] = {}
    for label, _ in chosen:
        for method in methods:
            folder = output / label / RunKey(method, split, 0).folder
            if not (folder / "summary.json").is_file():
                continue
            summary = json.loads((folder / "summary.json").read_text())
            timing = json.loads((folder / "timing.json").read_text())
            config = json.loads((folder / "config.json").read_text())["hyperparameters"]
            reference = reference or {name: {key: summary[name].get(key) for key in COLUMNS} for name in ("target", "oracle")}
            rows.append({"method": method, "optimizer": config["optimizer"], "label": label,
                         "learning_rate": config["learning_rate"], "num_epochs": config["num_epochs"],
                         "batch_size": config["batch_size"], "weight_decay": config["weight_decay"],
                         **{key: summary["unlearned"].get(key) for key in COLUMNS},
                         "unlearn_seconds": timing["unlearn_seconds"]})
    return {"preset": preset, "split": split, "reference": reference, "runs": rows}


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"


def table(result: dict) -> list[str]:
    lines = ["| method | optimizer | lr | forget quality | model utility | forget truth ratio | forget prob. | forget ROUGE-L "
             "| unlearn time (s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, values in result["reference"].items():
        lines.append(f"| {name} |  |  | {' | '.join(_number(values[key]) for key in COLUMNS)} |  |")
    for row in sorted(result["runs"], key=lambda r: (METHODS.index(r["method"]) if r["method"] in METHODS else 99, r["label"])):
        lines.append(f"| {row['method']} | {row['optimizer']} | {row['learning_rate']:g} | "
                     f"{' | '.join(_number(row[key]) for key in COLUMNS)} | {row['unlearn_seconds']:.1f} |")
    return lines


def step_settings(result: dict) -> str:
    """The epochs and batch size every run of ``result`` shared (so both optimisers took the same steps)."""
    runs = result["runs"]
    return f"num_epochs={runs[0]['num_epochs']:g}, batch_size={runs[0]['batch_size']}" if runs else ""


def markdown(result: dict, threads: int) -> str:
    """docs/soul.md: what SOUL is here, how it was checked against the paper's code, and the measured table."""
    steps = step_settings(result)
    return "\n".join([
        "# SOUL: Sophia as an unlearning optimiser (`optimizer=soul`)",
        "",
        "Jia et al., \"SOUL: Unlocking the Power of Second-Order Optimization for LLM Unlearning\", EMNLP 2024, run any",
        "unlearning loss with Sophia (Liu et al., ICLR 2024). In unlearnkit it is an optimiser choice of every method",
        "that trains (`--set optimizer=soul`), implemented in `src/unlearnkit/optimizers.py` (`SoulSophia`). Per parameter,",
        "with the Trainer's (clipped) gradient g:",
        "",
        "    h <- beta2 h + (1 - beta2) g*g          (every soul_hessian_interval steps, from step 1)",
        "    m <- beta1 m + (1 - beta1) g",
        "    theta <- theta (1 - lr wd) - lr sign(m) min(|m| / (rho bs h + eps), 1)",
        "",
        "| setting | default | source |",
        "|---|---|---|",
        "| `soul_rho` | 0.04 | SOUL `configs/TOFU/SO_*.json` (`rho`; the argument parser's own default is 0.03) |",
        "| `soul_batch_size` (bs) | 5120 | SOUL `src/optim/sophia.py`, `step(bs=5120)` (the Trainer calls `step()` without it) |",
        "| `soul_beta1`, `soul_beta2` | 0.9, 0.95 | SOUL `configs/TOFU/SO_*.json` (`betas_low`, `betas_high`) |",
        "| eps | 1e-15 | SOUL `src/optim/sophia.py` (a constant, not a setting) |",
        "| `soul_hessian_interval` | 1 | SOUL's code refreshes h at every `step()` from the gradient; Sophia's paper uses k = 10 |",
        "| `weight_decay` | unlearnkit's 0.01 | SOUL's TOFU configs use 0.1 (for both optimisers): `--set weight_decay=0.1` |",
        "| learning rate, schedule | the run's | SOUL's TOFU configs: lr 5e-6 (GradDiff, same as its AdamW run) / 1e-5 (PO), "
        "Trainer's default linear schedule |",
        "",
        "## Fidelity notes",
        "",
        "- Checked against the released code (`OPTML-Group/SOUL`, `src/optim/sophia.py`, `src/optim/__init__.py`,",
        "  `src/model/unlearn.py`, `configs/TOFU/`). The Hessian estimate is the squared gradient of the unlearning loss",
        "  itself (no label sampling, no separate Hessian pass), refreshed at every step: hence `soul_hessian_interval=1`.",
        "  With k > 1, h is refreshed at steps 1, 1 + k, 1 + 2k, ... and kept in between (Sophia's schedule).",
        "- **One deliberate difference.** The released `step()` updates the momentum twice per step (`update_exp_avg()`, then",
        "  again inside the per-tensor update). Two EMA steps with the same gradient are exactly one EMA with coefficient",
        "  beta1^2, so the code runs beta1 = 0.81 in effect. unlearnkit follows the paper's single EMA; `--set soul_beta1=0.81`",
        "  reproduces the released code's update exactly.",
        "- Parameter groups as SOUL's `create_sophia_optimizer` and the Trainer: trainable parameters only (LoRA: the",
        "  adapters), no weight decay on biases and norm weights. The Trainer's gradient clipping (`max_grad_norm`) and lr",
        "  scheduler apply, as in SOUL, where the Trainer also clips before `step()` and builds the scheduler.",
        "- Localization masks: entries outside a mask get a zero gradient, so m = h = 0 there and SOUL takes no step; the",
        "  decoupled weight decay would still move them, and the write-back after each optimiser step restores them",
        "  (tested: bit-identical). Checkpoints save `exp_avg`, `hessian` and `step` in `optimizer.pt`; a resumed run ends",
        "  bit-identical to the uninterrupted one (tested, with `soul_hessian_interval=2` so that the refresh phase matters).",
        "- Not covered: DeepSpeed (it builds its own optimiser from its config), sparse gradients (refused).",
        "",
        "## GA, GradDiff and NPO with AdamW vs SOUL (tiny model)",
        "",
        f"Generated by `python benchmarks/soul_vs_adamw.py` (preset `{result['preset']}`, {result['split']}, seed 0, "
        f"{threads} CPU thread(s) per run). **Measured on the built-in tiny model** "
        + ("(0.26M parameters, trained from scratch)" if result["preset"] == "default" else f"(preset `{result['preset']}`)")
        + ": a conclusion about this model only, not about 7B models.",
        f"Both optimisers take the same number of steps ({steps}, the benchmark's settings) and the benchmark's",
        f"weight decay; AdamW runs at the benchmark's tuned lr {benchmark_lr(result['preset']):g}. SOUL runs at that same lr (as SOUL's",
        "own TOFU configs do for GradDiff: 5e-6 for both optimisers) and at any other lr listed.",
        "Forget quality: KS-test p-value against the retain oracle (higher is better). Model utility: harmonic mean of the",
        "retain/real-authors/world-facts scores. Forget truth ratio: TOFU's truth ratio on the forget set (the oracle's value",
        "is the goal). Unlearning time: the training alone, on 2 CPU cores shared with other jobs (orders of magnitude only).",
        "",
        *table(result),
        "",
    ])


def pretrained_section(result: dict, threads: int) -> str:
    """The table on a pretrained preset, between the markers (the tiny-model notes above are not repeated)."""
    steps = step_settings(result)
    return "\n".join([
        PRETRAINED_BEGIN,
        f"## AdamW vs SOUL on a pretrained model (preset `{result['preset']}`)",
        "",
        f"Generated by `python benchmarks/soul_vs_adamw.py --preset {result['preset']}` ({result['split']}, seed 0, {threads} CPU "
        f"thread(s) per run): {get_preset(result['preset']).description}. Both optimisers take the same steps ({steps}) at "
        f"the methods' own learning rate {benchmark_lr(result['preset']):g} (the authors' class) and the benchmark's other "
        "settings; columns as above.",
        "",
        *table(result),
        PRETRAINED_END,
        "",
    ])


def compose(earlier: str, tiny: str | None, pretrained: str | None) -> str:
    """docs/soul.md from the earlier text: the tiny-model part, the pretrained section, then the hand-written reading."""
    def cut(text: str, begin: str, end: str) -> str:
        return text[text.index(begin):text.index(end) + len(end)] + "\n" if begin in text and end in text else ""

    reading = earlier[earlier.index(READING):] if READING in earlier else ""
    if tiny is None:
        tiny = earlier[:earlier.index(PRETRAINED_BEGIN)] if PRETRAINED_BEGIN in earlier else earlier[:len(earlier) - len(reading)]
    if pretrained is None:
        pretrained = cut(earlier, PRETRAINED_BEGIN, PRETRAINED_END)
    return "\n".join(part.rstrip("\n") + "\n" for part in (tiny, pretrained, reading) if part.strip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True, help="Folder with one bench folder per optimiser (resumable).")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--soul-lr", dest="soul_lrs", type=float, action="append", default=[],
                        help="Another learning rate to run SOUL at (besides the benchmark's AdamW one).")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--markdown", type=Path, help="Write docs/soul.md: the notes and the table (a section from READING on is kept).")
    parser.add_argument("--json", type=Path)
    options = parser.parse_args()
    set_threads(options.threads)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING)
    methods = [name.strip() for name in options.methods.split(",") if name.strip()]
    chosen = variants(options.preset, options.soul_lrs)
    if not options.collect_only:
        for label, settings in chosen:
            run(options.output, options.preset, options.split, methods, label, settings, options.cache)
    result = collect(options.output, options.preset, options.split, methods, chosen)
    pretrained = get_preset(options.preset).base_model is not None
    text = pretrained_section(result, options.threads) if pretrained else markdown(result, options.threads)
    if options.json:
        options.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if options.markdown:
        # The hand-written reading (from READING on) and the other kind of preset's table survive a regeneration.
        earlier = options.markdown.read_text(encoding="utf-8") if options.markdown.is_file() else ""
        options.markdown.write_text(compose(earlier, None if pretrained else text, text if pretrained else None), encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
