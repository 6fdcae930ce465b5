"""Cost and recall of influence attribution on a prepared built-in benchmark: EK-FAC factor time and peak memory over the
MLPs of every decoder layer, the score pass, and top-k recall per estimator.

The benchmark cache is only read (never prepared here): prepare it first (``unlearnkit prepare --preset smollm2``).
Queries: one split (default forget01, one forget author's questions); training rows: ``full``, on which the preset's
target model was trained. Memory is the process's resident set (model included), sampled every 0.1 s, per phase.

* EK-FAC is fitted alone (its time and peak are the issue's factor cost); K-FAC's factors are read off EK-FAC's fit
  (the same eigenbases; Λ = e_S e_Aᵀ, what fitting ``kfac`` computes with the same seed); the diagonal Fisher is fitted
  in its own pass;
* the four estimators are then scored in one pass over the training rows (each batch's forward and backward shared),
  with each estimator's own compute timed apart.

    flock LOCK python benchmarks/influence_cost.py --preset smollm2 --cache CACHE --threads 2 --json docs/influence_cost_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unlearnkit.attribution.scores import Factors

GB = 1e9


def resident_bytes() -> int:
    with open("/proc/self/status", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@contextmanager
def phase(record: dict, name: str):
    """Time a phase and sample its peak resident memory."""
    peak = [resident_bytes()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.1):
            peak[0] = max(peak[0], resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    before = peak[0]
    started = time.perf_counter()
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        record[name] = {"seconds": round(time.perf_counter() - started, 1), "rss_before_gb": round(before / GB, 2),
                        "rss_peak_gb": round(max(peak[0], resident_bytes()) / GB, 2)}
        print(json.dumps({name: record[name]}), flush=True)


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()]


def kfac_from_ekfac(ekfac: Factors, damping: float | None) -> Factors:
    """K-FAC's factors from EK-FAC's fit: the same bases, Λ = e_S e_Aᵀ (Martens & Grosse 2015)."""
    import torch

    from unlearnkit.attribution.scores import Factors, layer_damping

    tensors = {name: {**{role: layer[role] for role in ("q_activation", "eig_activation", "q_gradient", "eig_gradient")},
                      "eigenvalues": torch.outer(layer["eig_gradient"].double(), layer["eig_activation"].double()).float()}
               for name, layer in ekfac.tensors.items()}
    return Factors("kfac", tensors, layer_damping("kfac", tensors, damping), ekfac.rows, ekfac.tokens)


def measure(preset: str, cache: Path, query_split: str, threads: int, train_limit: int | None, estimators: tuple[str, ...]) -> dict:
    import torch

    from unlearnkit.attribution import memory
    from unlearnkit.attribution import scores as attribution
    from unlearnkit.attribution.scores import InfluenceConfig
    from unlearnkit.builtin import PRESETS, PreparedBenchmark, benchmark_root
    from unlearnkit.modeling import load_model, load_tokenizer

    torch.set_num_threads(threads)
    config = PRESETS[preset]
    bench = PreparedBenchmark(benchmark_root(config, cache), config)  # read only: prepare() would write into the cache
    train, queries = bench.split("full"), bench.split(query_split)
    train = train[:train_limit] if train_limit else train
    record: dict = {"preset": preset, "queries": f"{query_split} ({len(queries)} rows)", "train_rows": len(train), "threads": threads,
                    "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs", "torch": torch.__version__,
                    "load_average_start": load_average()}
    with phase(record, "load_model"):
        model, tokenizer = load_model(str(bench.target_dir)), load_tokenizer(str(bench.target_dir))
        model.eval()
    settings = InfluenceConfig(max_train_rows=max(len(train), 1))
    modules = attribution.tracked_linears(model, settings)
    shapes = {name: attribution.layer_shape(module) for name, module in modules.items()}
    record["tracked"] = {"layers": len(modules), "weights": sum(o * i for o, i in shapes.values())}
    train_batches = attribution.encode_rows(tokenizer, config.prompt_format, train, settings, torch.device("cpu"))
    query_batches = attribution.encode_rows(tokenizer, config.prompt_format, queries, settings, torch.device("cpu"))
    record["train_tokens_padded"], _ = memory.batch_tokens(train_batches)
    query_tokens, _ = memory.batch_tokens(query_batches)
    _, largest = memory.batch_tokens([*train_batches, *query_batches])
    record["memory_estimate_gb"] = {
        estimator: round(memory.estimate_bytes(estimator, shapes, query_tokens=query_tokens, queries=len(queries), train_rows=len(train),
                                               largest_batch_tokens=largest, largest_batch_rows=settings.batch_size)["total"] / GB, 2)
        for estimator in attribution.ESTIMATORS}

    factor_sets = {}
    with phase(record, "fit_ekfac"):
        factor_sets["ekfac"] = attribution.fit_factors(model, modules, train_batches, "ekfac", settings)
    if "kfac" in estimators:
        factor_sets["kfac"] = kfac_from_ekfac(factor_sets["ekfac"], settings.damping)
    if "diagonal" in estimators:
        with phase(record, "fit_diagonal"):
            factor_sets["diagonal"] = attribution.fit_factors(model, modules, train_batches, "diagonal", settings)
    if "tracin" in estimators:
        factor_sets["tracin"] = attribution.fit_factors(model, modules, train_batches, "tracin", settings)
    factor_sets = {key: value for key, value in factor_sets.items() if key in estimators}
    own: dict[str, float] = {}
    with phase(record, "score_" + "_".join(factor_sets)):
        scores = attribution.scores_by_estimator(model, modules, query_batches, train_batches, factor_sets, seconds=own)
    record["score_compute_seconds_per_estimator"] = {key: round(value, 1) for key, value in own.items()}
    record["recall"] = {}
    for estimator, matrix in scores.items():
        author = attribution.group_recall(matrix, queries, train, "author")
        fact = attribution.group_recall(matrix, queries, train, "fact")
        copies = attribution.copy_retrieval(matrix, queries, train)
        record["recall"][estimator] = {
            "copy_top1": copies["top1"] if copies else None, "copy_mean_rank": copies["mean_rank"] if copies else None,
            "recall_author": author["recall_at_k"], "recall_author_excluding_copy": author["recall_at_k_excluding_self"],
            "chance_author": author["chance"], "recall_fact": fact["recall_at_k"], "chance_fact": fact["chance"]}
    record["load_average_end"] = load_average()
    return record


def markdown(record: dict) -> str:
    lines = ["| estimator | copy top-1 | copy mean rank | recall@k author (chance) | excl. copy | recall@k fact (chance) | "
             "own score compute s |", "|---|---|---|---|---|---|---|"]
    for estimator, row in record["recall"].items():
        if row["copy_top1"] is None or row["recall_author"] is None:
            lines.append(f"| {estimator} | (no query's author among the training rows) | | | | | |")
            continue
        lines.append(f"| {estimator} | {row['copy_top1']:.2f} | {row['copy_mean_rank']:.2f} | {row['recall_author']:.3f} "
                     f"({row['chance_author']:.3f}) | {row['recall_author_excluding_copy']:.3f} | {row['recall_fact']:.3f} "
                     f"({row['chance_fact']:.3f}) | {record['score_compute_seconds_per_estimator'][estimator]:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="smollm2")
    parser.add_argument("--cache", type=Path, default=None, help="The prepared benchmark cache (default: unlearnkit's).")
    parser.add_argument("--queries", default="forget01", help="The query split (default: one forget author's questions).")
    parser.add_argument("--train-limit", type=int, default=None, help="Use only the first N training rows (a quick check).")
    parser.add_argument("--estimators", default="ekfac,kfac,diagonal,tracin", help="Those to score (EK-FAC is always fitted).")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--json", type=Path, default=None, help="Write the record there too.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")  # the fit's phases, as they end
    record = measure(args.preset, args.cache, args.queries, args.threads, args.train_limit,
                     tuple(name.strip() for name in args.estimators.split(",") if name.strip()))
    print(json.dumps(record, indent=2))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(markdown(record))


if __name__ == "__main__":
    main()
