"""Load test of `unlearnkit serve` on loopback: requests/s and p50/p95 latency, every answer checked.

The model is served from a background thread (:func:`unlearnkit.serving.serving`),
as the command serves it, on a free loopback port. ``--clients`` threads, each
with its own official ``openai`` client (one keep-alive connection), send
``--requests`` greedy chat requests in total, each a distinct question of the
built-in micro benchmark (cycled when more requests than questions). Before the
load, each question's single-request answer is computed directly
(:func:`unlearnkit.evaluation.scoring.greedy_answers`, one question per batch);
under load every response must equal it (a lost request or a mixed-up answer is
counted, and fails the run). Each ``--batch-sizes`` value is one run, so the
gain of batching concurrent requests shows against batches of one.

    python benchmarks/serve_load.py [--model micro] [--clients 8] [--requests 256] [--batch-sizes 1,8] [--output FILE]

``--model micro`` is the micro built-in benchmark's target (prepared in the cache
on first use); any other value is what ``unlearnkit serve --model`` takes (a
folder, a wrapped-model folder, a pretrained name such as smollm2-135m).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (linear interpolation between order statistics)."""
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def load_target(model: str, prompt_format: str) -> tuple[Any, Any, Any, str, list[str]]:
    """(model, tokenizer, prompt format, source, questions): the micro benchmark's questions, whatever the model."""
    from unlearnkit.builtin import PRESETS, prepare
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.inference.base import WrappedModel
    from unlearnkit.inference.loading import load_any_model
    from unlearnkit.modeling import load_tokenizer
    from unlearnkit.runs.inputs import model_source

    bench = prepare(PRESETS["micro"], None, ("forget10",), show_progress=False)
    questions = [row["question"] for split in ("forget10", "retain90") for row in bench.split(split)]
    source = str(bench.target_dir) if model == "micro" else model_source(model)
    fmt = PromptFormat("plain") if model == "micro" else PromptFormat(prompt_format)
    loaded = load_any_model(source)
    tokenizer = loaded.tokenizer if isinstance(loaded, WrappedModel) else load_tokenizer(source)
    return loaded, tokenizer, fmt, source, questions


def run_load(url: str, name: str, questions: list[str], clients: int, requests: int, max_tokens: int) -> dict[str, Any]:
    """``requests`` chat requests from ``clients`` threads; per request (question index, answer text or error, latency s)."""
    from openai import OpenAI

    jobs = list(range(requests))
    lock = threading.Lock()
    results: list[tuple[int, str | None, str | None, float]] = []

    def client_loop() -> None:
        client = OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        while True:
            with lock:
                if not jobs:
                    return
                index = jobs.pop(0)
            question = questions[index % len(questions)]
            started = time.perf_counter()
            try:
                response = client.chat.completions.create(model=name, messages=[{"role": "user", "content": question}],
                                                          temperature=0, max_tokens=max_tokens)
                text, error = response.choices[0].message.content, None
                tokens = response.usage.completion_tokens
            except Exception as exception:  # noqa: BLE001 - every failure is counted, none stops the load
                text, error, tokens = None, f"{type(exception).__name__}: {exception}", 0
            with lock:
                results.append((index, text, error, time.perf_counter() - started, tokens))

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall_s": time.perf_counter() - started, "results": sorted(results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="micro", help="'micro' (the micro built-in target) or what `serve --model` takes.")
    parser.add_argument("--prompt-format", default="auto", help="Prompt format of a model other than micro (default auto).")
    parser.add_argument("--clients", type=int, default=8, help="Concurrent clients (each one request at a time).")
    parser.add_argument("--requests", type=int, default=256, help="Requests in total per run.")
    parser.add_argument("--max-tokens", type=int, default=48, help="max_tokens of each request (micro answers end before 48).")
    parser.add_argument("--batch-sizes", default="1,8", help="Comma-separated server --batch-size values, one run each.")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads.")
    parser.add_argument("--output", type=Path, default=Path("runs/serve_load.json"), help="Results JSON.")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from unlearnkit.evaluation.scoring import greedy_answers
    from unlearnkit.runtime import quiet_libraries, set_threads
    from unlearnkit.serving import REQUESTS_FILE, ServeSettings, serving

    set_threads(args.threads)
    quiet_libraries()
    model, tokenizer, fmt, source, questions = load_target(args.model, args.prompt_format)
    asked = questions[:min(len(questions), args.requests)]
    started = time.perf_counter()
    alone = greedy_answers(model, tokenizer, fmt, asked, args.max_tokens, batch_size=1)  # the single-request answers
    alone_s = time.perf_counter() - started
    print(f"{len(asked)} single-request answers computed directly in {alone_s:.1f}s", file=sys.stderr)
    runs = []
    for batch_size in [int(value) for value in args.batch_sizes.split(",")]:
        with tempfile.TemporaryDirectory() as folder:
            settings = ServeSettings(name="load", port=0, batch_size=batch_size, max_queue=max(args.clients, 1))
            with serving(model, tokenizer, output=Path(folder) / "log", settings=settings, fmt=fmt, source=source) as url:
                outcome = run_load(url, "load", asked, args.clients, args.requests, args.max_tokens)
            lines = [json.loads(line) for line in (Path(folder) / "log" / REQUESTS_FILE).read_text().splitlines()]
        results = outcome["results"]
        latencies = [latency for _, _, error, latency, _ in results if error is None]
        mismatched = [index for index, text, error, _, _ in results
                      if error is None and text.strip() != alone[index % len(asked)]]
        errors = [error for _, _, error, _, _ in results if error is not None]
        run = {"batch_size": batch_size, "requests": args.requests, "answered": len(latencies),
               "lost": args.requests - len(results), "errors": len(errors), "mismatched": len(mismatched),
               "wall_s": round(outcome["wall_s"], 3), "requests_per_s": round(len(latencies) / outcome["wall_s"], 2),
               "completion_tokens_per_s": round(sum(tokens for *_, tokens in results) / outcome["wall_s"], 1),
               "latency_p50_s": round(percentile(latencies, 0.5), 4), "latency_p95_s": round(percentile(latencies, 0.95), 4),
               "latency_mean_s": round(statistics.fmean(latencies), 4),
               "mean_batch": round(statistics.fmean(line["batch_size"] for line in lines if line["status"] == 200), 2),
               "logged": len(lines), "first_errors": errors[:3], "first_mismatches": mismatched[:5]}
        runs.append(run)
        print(json.dumps({key: value for key, value in run.items() if not key.startswith("first_")}), file=sys.stderr)
    record = {"model": args.model, "source": source, "prompt_format": fmt.style, "clients": args.clients,
              "requests": args.requests, "distinct_questions": len(asked), "max_tokens": args.max_tokens, "threads": args.threads,
              "cpu_count": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
              "single_request_answers_s": round(alone_s, 2), "runs": runs}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print("\n| batch size | requests/s | completion tokens/s | p50 s | p95 s | mean batch | lost | errors | mismatched |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in runs:
        print(f"| {run['batch_size']} | {run['requests_per_s']} | {run['completion_tokens_per_s']} | {run['latency_p50_s']} | "
              f"{run['latency_p95_s']} | {run['mean_batch']} | {run['lost']} | {run['errors']} | {run['mismatched']} |")
    print(f"\nResults: {args.output}")
    if any(run["lost"] or run["errors"] or run["mismatched"] for run in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
