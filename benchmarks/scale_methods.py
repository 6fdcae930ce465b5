"""Per-step time and peak memory of every unlearning method on a model of a given size.

The model is a randomly initialised Llama-architecture model built locally from
``LlamaConfig`` (default about 100M parameters), the data random words of a
word-level vocabulary (one token each, so every sequence has exactly
``--seq-len`` tokens); nothing is downloaded. Each method runs through the
library's own ``unlearn()`` in full and LoRA form, with and without gradient
checkpointing, and with and without reference caching where the method has it.

Every configuration runs in a fresh process (forked after the imports on CPU,
spawned on CUDA): its peak memory is its own. On CUDA
the peak is ``torch.cuda.max_memory_allocated`` (the whole run: weights included);
on CPU it is the process's peak resident memory (``ru_maxrss``) minus its resident
memory just before the model was built (after the imports). Time per step is the
median over ``--steps`` optimiser steps after one warm-up step, timed by a Trainer
callback; one-off work before the first step (WHP's reinforcement, the reference
cache) is in ``setup_seconds``.

    python benchmarks/scale_methods.py [--methods npo,graddiff] [--params 100 | --hidden 768 --layers 8]
        [--seq-len 64] [--batch-size 2] [--steps 1] [--threads 1] [--output docs/scale.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

LORA_RANK = 8
HEAD_DIM = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=None, help="Comma-separated method names (default: every registered method).")
    parser.add_argument("--params", type=float, default=100.0, help="Target size in millions of parameters; sets --layers unless given.")
    parser.add_argument("--hidden", type=int, default=768, help="Hidden size (intermediate: 8/3 of it, heads of 64 units).")
    parser.add_argument("--layers", type=int, default=None, help="Decoder layers (default: as many as --params allows, at least 1).")
    parser.add_argument("--vocab", type=int, default=32000, help="Vocabulary size (Llama 2: 32000).")
    parser.add_argument("--seq-len", type=int, default=64, help="Tokens per sequence (question + answer).")
    parser.add_argument("--batch-size", type=int, default=2, help="Forget examples per step (each paired with a retain example).")
    parser.add_argument("--steps", type=int, default=1, help="Timed optimiser steps after the warm-up step.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument("--output", type=Path, default=Path("docs/scale.md"), help="Markdown table; the JSON goes next to it.")
    return parser.parse_args(argv)


def model_shape(options: argparse.Namespace) -> dict[str, int]:
    hidden = options.hidden
    intermediate = (8 * hidden // 3 + 63) // 64 * 64
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    embeddings = 2 * options.vocab * hidden  # input embeddings and the (untied) output head
    layers = options.layers or max(1, round((options.params * 1e6 - embeddings) / per_layer))
    return {"hidden": hidden, "intermediate": intermediate, "layers": layers, "vocab": options.vocab, "heads": max(1, hidden // HEAD_DIM)}


def configurations(methods: list[str]) -> list[dict[str, Any]]:
    from unlearnkit.methods import METHODS

    runs = []
    for method in methods:
        spec = METHODS.get(method)
        caching = [False, True] if any(f == "cache_reference" for f in spec.config.__dataclass_fields__) else [None]
        for form in ("full", "lora") if spec.trainer.supports_lora else ("full",):
            for checkpointing in (False, True):
                runs += [{"method": method, "form": form, "gradient_checkpointing": checkpointing, "cache_reference": cache}
                         for cache in caching]
    return runs


# --- one configuration (in its own process) --------------------------------------------------------


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def word_tokenizer(vocab: int):
    """A word-level tokenizer: ``w0 ... w{n}`` and the prompt words are one token each."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<s>", "</s>", "Question:", "Answer:"]
    words = {token: index for index, token in enumerate(specials + [f"w{i}" for i in range(vocab - len(specials))])}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def random_rows(count: int, seq_len: int, vocab: int, seed: int) -> list[dict[str, Any]]:
    """QA rows of random words: prompt words + question + answer + EOS = ``seq_len`` tokens."""
    import random

    rng = random.Random(seed)
    words = lambda n: " ".join(f"w{rng.randrange(vocab - 6)}" for _ in range(n))  # noqa: E731 - a one-line helper, local to this function
    question_len = max(1, (seq_len - 3) // 2)
    answer_len = max(1, seq_len - 3 - question_len)
    return [{"question": words(question_len), "answer": words(answer_len), "perturbed_answer": [words(answer_len)]} for _ in range(count)]


def run_one(run: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.methods import METHODS
    from unlearnkit.settings import build_config
    from unlearnkit.unlearning import unlearn

    torch.set_num_threads(options.threads)
    cuda = torch.cuda.is_available()
    rss_before = _rss_bytes()
    shape = model_shape(options)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=shape["vocab"], hidden_size=shape["hidden"], intermediate_size=shape["intermediate"], num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"], max_position_embeddings=options.seq_len + 16,
        pad_token_id=1, bos_token_id=2, eos_token_id=3,
    )
    model = LlamaForCausalLM(config)
    if cuda:
        model.to("cuda")
    parameters = sum(p.numel() for p in model.parameters())
    steps = options.steps + 1  # the first is the warm-up
    forget = random_rows(steps * options.batch_size, options.seq_len, shape["vocab"], seed=1)
    retain = random_rows(max(16, steps * options.batch_size), options.seq_len, shape["vocab"], seed=2)
    overrides: dict[str, Any] = {
        "num_epochs": 1, "batch_size": options.batch_size, "max_length": options.seq_len + 8, "warmup_ratio": 0.0,
        "learning_rate": 1e-5, "gradient_checkpointing": run["gradient_checkpointing"],
        "lora_rank": LORA_RANK if run["form"] == "lora" else 0,
    }
    if run["cache_reference"] is not None:
        overrides["cache_reference"] = run["cache_reference"]
    if run["method"] == "rmu":
        overrides["layer"] = min(7, shape["layers"] - 1)  # the authors' layer 7, or the last one of a shallower model
    method_config = build_config(METHODS.get(run["method"]).config, overrides)

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.durations: list[float] = []
            self.first_step_at: float | None = None

        def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
            if cuda:
                torch.cuda.synchronize()
            self.started = time.perf_counter()
            self.first_step_at = self.first_step_at or self.started

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer callback signature
            if cuda:
                torch.cuda.synchronize()
            self.durations.append(time.perf_counter() - self.started)

    timer = StepTimer()
    started = time.perf_counter()
    unlearn(model, word_tokenizer(shape["vocab"]), run["method"], forget, retain, method_config, PromptFormat("plain"), show_progress=False,
            callbacks=[timer])
    total = time.perf_counter() - started
    if len(timer.durations) < 2:
        raise SystemExit(f"{run['method']}: only {len(timer.durations)} step(s) ran; need a warm-up and at least one timed step.")
    if cuda:
        peak = torch.cuda.max_memory_allocated()
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before  # ru_maxrss: KiB on Linux
    return {
        **run,
        "parameters": parameters,
        "seconds_per_step": statistics.median(timer.durations[1:]),
        "warmup_step_seconds": timer.durations[0],
        "setup_seconds": (timer.first_step_at or started) - started,
        "total_seconds": total,
        "peak_memory_mib": peak / 2**20,
    }


# --- the table -------------------------------------------------------------------------------------------


def machine_description(threads: int) -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
        memory = "torch.cuda.max_memory_allocated (whole run, weights included)"
    else:
        device = platform.processor() or platform.machine()
        try:
            names = [line.split(":", 1)[1].strip()
                     for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
            device = f"{names[0]} ({len(names)} logical CPUs)" if names else device
        except OSError:
            pass
        memory = "peak RSS of the run's process minus its RSS before the model was built (CPU)"
    return {"device": device, "threads": threads, "torch": torch.__version__, "python": platform.python_version(), "memory_measure": memory}


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    plain = {(r["method"], r["form"], r["gradient_checkpointing"], r["cache_reference"]): r for r in rows}
    ratios = [
        (row["method"], row["peak_memory_mib"] / plain[(row["method"], "full", False, row["cache_reference"])]["peak_memory_mib"])
        for row in rows if row["form"] == "lora" and not row["gradient_checkpointing"] and row["cache_reference"] in (None, True)
    ]
    if ratios:
        values = [ratio for _, ratio in ratios]
        lines.append(
            f"- LoRA (rank {LORA_RANK}) peak memory as % of full fine-tuning (no checkpointing): "
            f"median {100 * statistics.median(values):.0f}%, "
            f"range {100 * min(values):.0f}%–{100 * max(values):.0f}% over {len(values)} methods."
        )
    for form in ("full", "lora"):
        npo, graddiff = plain.get(("npo", form, False, True)), plain.get(("graddiff", form, False, None))
        if npo and graddiff:
            lines.append(
                f"- NPO with cached reference vs gradient difference ({form}): "
                f"{npo['seconds_per_step']:.2f} vs {graddiff['seconds_per_step']:.2f} s/step, "
                f"{npo['peak_memory_mib']:.0f} vs {graddiff['peak_memory_mib']:.0f} MiB peak."
            )
    return lines


def write_report(path: Path, meta: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    from unlearnkit.io import write_json, write_text

    plain = {(r["method"], r["form"], r["gradient_checkpointing"], r["cache_reference"]): r for r in rows}
    shape = meta["model"]
    lines = [
        "# Method scaling: time per step and peak memory",
        "",
        "Generated by `benchmarks/scale_methods.py`; the numbers are in `" + path.with_suffix(".json").name + "` too.",
        "",
        f"- Machine: {meta['machine']['device']}; {meta['machine']['threads']} thread(s); "
        f"torch {meta['machine']['torch']}, Python {meta['machine']['python']}.",
        f"- Model: random Llama, {shape['parameters'] / 1e6:.1f}M parameters (hidden {shape['hidden']}, {shape['layers']} layers, "
        f"intermediate {shape['intermediate']}, vocabulary {shape['vocab']}); LoRA rank {LORA_RANK} on every linear layer but the head.",
        f"- Data: batch {meta['batch_size']} forget (+ {meta['batch_size']} retain) sequences of {meta['seq_len']} tokens; "
        f"time per step: median of {meta['steps']} step(s) after one warm-up step.",
        f"- Peak memory: {meta['machine']['memory_measure']}.",
        f"- Whole run: {meta['wall_seconds'] / 60:.1f} min. Timings on a shared machine are noisy (other jobs ran on its cores).",
        "",
        *summary_lines(rows),
        "",
        "| method | form | grad ckpt | ref cache | s/step | peak MiB | peak vs full | setup s |",
        "|---|---|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        full = plain.get((row["method"], "full", row["gradient_checkpointing"], row["cache_reference"]))
        relative = f"{100 * row['peak_memory_mib'] / full['peak_memory_mib']:.0f}%" if full else ""
        cache = {None: "–", True: "on", False: "off"}[row["cache_reference"]]
        lines.append(
            f"| {row['method']} | {row['form']} | {'on' if row['gradient_checkpointing'] else 'off'} | {cache} | "
            f"{row['seconds_per_step']:.2f} | {row['peak_memory_mib']:.0f} | {relative} | {row['setup_seconds']:.1f} |"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, "\n".join(lines) + "\n")
    write_json(path.with_suffix(".json"), {**meta, "rows": rows})


def _measure(run: dict[str, Any], options: argparse.Namespace, connection: Any) -> None:
    """The body of one configuration's process: its result (or error text) goes back through ``connection``."""
    try:
        connection.send(run_one(run, options))
    except BaseException as error:  # noqa: BLE001 - reported by the parent, with the configuration
        connection.send(f"{type(error).__name__}: {error}")
    finally:
        connection.close()


def measure_in_fresh_process(run: dict[str, Any], options: argparse.Namespace) -> dict[str, Any]:
    """Run one configuration in a new process: forked on CPU (the imports are done once, in the parent), spawned on CUDA."""
    import multiprocessing

    import torch

    context = multiprocessing.get_context("spawn" if torch.cuda.is_available() else "fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_measure, args=(run, options, sender))
    process.start()
    sender.close()
    try:
        result = receiver.recv()
    except EOFError:  # the process died without a word (e.g. killed for memory)
        result = None
    process.join()
    if not isinstance(result, dict):
        raise SystemExit(f"{run} failed (exit code {process.exitcode}): {result}")
    return result


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(options.threads)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    import torch

    import unlearnkit.unlearning  # noqa: F401 - imported once here, inherited by every forked run
    from unlearnkit.methods import METHODS

    torch.set_num_threads(options.threads)
    methods = options.methods.split(",") if options.methods else list(METHODS.names())
    for method in methods:
        METHODS.get(method)  # an unknown name fails now, with the known ones
    started = time.perf_counter()
    rows = []
    for run in configurations(methods):
        row = measure_in_fresh_process(run, options)
        rows.append(row)
        print(f"{run['method']:>18} {run['form']:>4} ckpt={run['gradient_checkpointing']!s:5} cache={run['cache_reference']!s:5} "
              f"{row['seconds_per_step']:7.2f} s/step {row['peak_memory_mib']:8.0f} MiB", flush=True)
    shape = model_shape(options)
    meta = {
        "machine": machine_description(options.threads),
        "model": {**shape, "parameters": rows[0]["parameters"] if rows else 0},
        "batch_size": options.batch_size, "seq_len": options.seq_len, "steps": options.steps, "lora_rank": LORA_RANK,
        "wall_seconds": time.perf_counter() - started,
    }
    write_report(options.output, meta, rows)
    print(f"wrote {options.output} and {options.output.with_suffix('.json')} ({meta['wall_seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
