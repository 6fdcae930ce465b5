"""Top-k recall of influence attribution on the built-in benchmark, where the truth is known, per estimator.

For each query row of forget10 (the forget authors' facts), every training row of ``full`` is scored by each estimator
(:mod:`unlearnkit.attribution`) on the preset's target model, which was trained on ``full``. Reported per estimator:

* ``copy top-1``: the fraction of queries whose own copy in the training rows ranks first (the one row known to have
  taught that exact answer);
* ``recall@k author``: of the k training rows about the query's author, the fraction among the top k (copy included);
  ``excl. copy``: the same for the author's *other* facts, without the copy;
* ``recall@k fact``: the same with the fact type (birthplace, genre, ...) as the group: rows asking the same question
  about another author;
* chance: what a random ranking scores on average (k / training rows), and the seconds (fit + scores, one thread).

    python benchmarks/influence_recall.py --presets micro --markdown influence_recall.md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ESTIMATORS = ("ekfac", "kfac", "diagonal", "tracin")


def measure(preset: str, cache: Path, estimators: tuple[str, ...], threads: int) -> list[dict]:
    import torch

    from unlearnkit.attribution import scores as attribution
    from unlearnkit.attribution.scores import InfluenceConfig
    from unlearnkit.builtin import PRESETS, prepare
    from unlearnkit.modeling import load_model, load_tokenizer

    torch.set_num_threads(threads)
    bench = prepare(PRESETS[preset], cache, ("forget10",), show_progress=False)
    train, queries = bench.split("full"), bench.split("forget10")
    model, tokenizer = load_model(str(bench.target_dir)), load_tokenizer(str(bench.target_dir))
    model.eval()
    fmt = PRESETS[preset].prompt_format
    results = []
    for estimator in estimators:
        config = InfluenceConfig(max_train_rows=max(len(train), 1))
        modules = attribution.tracked_linears(model, config)
        started = time.perf_counter()
        train_batches = attribution.encode_rows(tokenizer, fmt, train, config, torch.device("cpu"))
        query_batches = attribution.encode_rows(tokenizer, fmt, queries, config, torch.device("cpu"))
        factors = attribution.fit_factors(model, modules, train_batches, estimator, config)
        fitted = time.perf_counter() - started
        scores = attribution.influence_scores(model, modules, query_batches, train_batches, factors)
        seconds = time.perf_counter() - started
        author = attribution.group_recall(scores, queries, train, "author")
        fact = attribution.group_recall(scores, queries, train, "fact")
        copies = attribution.copy_retrieval(scores, queries, train)
        row = {"preset": preset, "estimator": estimator, "queries": len(queries), "train_rows": len(train),
               "copy_top1": copies["top1"] if copies else None, "copy_mean_rank": copies["mean_rank"] if copies else None,
               "recall_author": author["recall_at_k"], "recall_author_excluding_copy": author["recall_at_k_excluding_self"],
               "chance_author": author["chance"], "recall_fact": fact["recall_at_k"], "chance_fact": fact["chance"],
               "seconds_factors": fitted, "seconds_total": seconds}
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def markdown(rows: list[dict]) -> str:
    lines = ["| preset | estimator | queries x train rows | copy top-1 | copy mean rank | recall@k author (chance) | excl. copy | "
             "recall@k fact (chance) | seconds (factors) |", "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['preset']} | {row['estimator']} | {row['queries']} x {row['train_rows']} | {row['copy_top1']:.2f} | "
            f"{row['copy_mean_rank']:.2f} | {row['recall_author']:.3f} ({row['chance_author']:.3f}) | "
            f"{row['recall_author_excluding_copy']:.3f} | {row['recall_fact']:.3f} ({row['chance_fact']:.3f}) | "
            f"{row['seconds_total']:.1f} ({row['seconds_factors']:.1f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default="micro", help="Comma-separated built-in presets (micro, default).")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--cache", type=Path, default=None, help="Benchmark cache (default: a temporary folder).")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--markdown", type=Path, default=None, help="Write the table there too.")
    parser.add_argument("--json", type=Path, default=None, help="Write the raw rows there too.")
    args = parser.parse_args()
    estimators = tuple(name.strip() for name in args.estimators.split(",") if name.strip())
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache or Path(scratch)
        rows = [row for preset in args.presets.split(",") for row in measure(preset.strip(), cache, estimators, args.threads)]
    table = markdown(rows)
    print(table)
    if args.markdown:
        args.markdown.write_text(table, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
