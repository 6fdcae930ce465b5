"""``influence``: rank training rows by their influence on each query row's answer, into one results folder.

Results folder (documented in docs/influence.md):

* ``summary.json``: per query its top-k training rows (index, score, question); with a grouping field (``author``),
  the top-k recall of the query's own entity;
* ``per_sample.json``: per query the top-k, and the whole score row when the matrix is small (``FULL_MATRIX_LIMIT``);
* ``scores.safetensors``: the whole score matrix ``scores`` (queries x training rows), always;
* ``factors/``: the fitted curvature (:mod:`unlearnkit.attribution.factors`), reusable with ``--factors``;
* ``config.json``, ``log.txt``: the resolved configuration, versions and digests; the log.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unlearnkit.attribution.scores import (
    ESTIMATORS,
    InfluenceConfig,
    check_estimator,
    check_settings_fit,
    resolve_group_field,
)
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.inputs import Builtin, DataChoice, ModelChoice, RunOptions
from unlearnkit.runs.lock import locks_output
from unlearnkit.settings import build_config

logger = logging.getLogger("unlearnkit")

SUMMARY_FILE = "summary.json"
PER_SAMPLE_FILE = "per_sample.json"
SCORES_FILE = "scores.safetensors"
FACTORS_DIR = "factors"
# per_sample.json lists every score when the matrix has at most this many entries (scores.safetensors always has them).
FULL_MATRIX_LIMIT = 200_000


@dataclass(frozen=True)
class InfluenceInputs:
    """Everything ``influence`` works on, resolved."""

    model: ModelChoice
    query: DataChoice
    train: DataChoice
    estimator: str
    config: InfluenceConfig
    top_k: int
    factors: Path | None
    group_field: str | None


def resolve_settings(estimator: str, overrides: Mapping[str, Any]) -> InfluenceConfig:
    """The estimator (did-you-mean on a typo) and its settings from ``--set`` values, checked together."""
    check_estimator(estimator)
    config = build_config(InfluenceConfig, dict(overrides), what="influence setting")
    check_settings_fit(estimator, config)
    return config


def _check_answers(rows: list[dict], what: str) -> None:
    for index, row in enumerate(rows, start=1):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UnlearnkitError(f"Row {index} of the {what} has no {key}: influence is measured on each row's answer loss, "
                                      f"so every row needs a non-empty question and answer.")


def resolve_influence(
    *, model: str, query: str, train: str, estimator: str, config: InfluenceConfig, top_k: int, factors: str | Path | None,
    builtin: Builtin, prompt_format: PromptFormat = PromptFormat(),
) -> InfluenceInputs:
    """Resolve ``influence``'s inputs: data first (a bad row fails before any model loads), then the factors' manifest, then the model."""
    from unlearnkit.attribution.factors import check_manifest, read_manifest
    from unlearnkit.runs.inputs import resolve_data, resolve_model

    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UnlearnkitError(f"--top-k must be a whole number, 1 or more; got {top_k!r}.")
    queries = resolve_data(query, "query", builtin, required=("question", "answer"))
    _check_answers(queries.rows, f"query data ({query})")
    training = resolve_data(train, "training", builtin, required=("question", "answer"))
    _check_answers(training.rows, f"training data ({train})")
    if len(training.rows) > config.max_train_rows:
        raise UnlearnkitError(
            f"The training data ({train}) has {len(training.rows)} rows, more than max_train_rows={config.max_train_rows}: each "
            f"row costs a forward and backward pass per pass over the data, and the score matrix grows with it. Pass "
            f"--set max_train_rows={len(training.rows)} to score them all, or sample rows into a file (e.g. "
            f"`shuf -n {config.max_train_rows} train.jsonl > sample.jsonl`) and pass that as --train.")
    group_field = resolve_group_field(queries.rows, training.rows, config.group_field)
    if factors is not None:
        check_manifest(read_manifest(factors), factors, estimator=estimator, config=config)
    return InfluenceInputs(resolve_model(model, prompt_format, builtin), queries, training, estimator, config, top_k,
                           Path(factors) if factors is not None else None, group_field)


def estimate_run_memory(inputs: InfluenceInputs, shapes: Mapping[str, tuple[int, int]], train_batches: list,
                        query_batches: list) -> dict[str, int]:
    """The run's memory estimate (:mod:`unlearnkit.attribution.memory`), refused above ``memory_limit_gb`` before any pass."""
    from unlearnkit.attribution import memory

    query_tokens, _ = memory.batch_tokens(query_batches)
    _, largest = memory.batch_tokens([*train_batches, *query_batches])
    parts = memory.estimate_bytes(inputs.estimator, shapes, query_tokens=query_tokens, queries=len(inputs.query.rows),
                                  train_rows=len(inputs.train.rows), largest_batch_tokens=largest,
                                  largest_batch_rows=inputs.config.batch_size)
    memory.check_memory(parts, inputs.config.memory_limit_gb, queries=len(inputs.query.rows), train_rows=len(inputs.train.rows))
    return parts


@locks_output
def run_influence(*, inputs: InfluenceInputs, options: RunOptions) -> dict[str, Any]:
    """Fit (or reuse) the factors, score every (query, training row) pair and write the results folder; returns the summary.

    Everything is computed before the folder is created, so a refusal (factors from another model) writes nothing.
    """
    import torch
    from safetensors.torch import save_file

    from unlearnkit.attribution import factors as cache
    from unlearnkit.attribution import scores as attribution
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.provenance import environment, rows_sha256, weights_sha256

    model, config = inputs.model, inputs.config
    read = {"MODEL": model.source, "--query": inputs.query.source, "--train": inputs.train.source, "--factors": inputs.factors}
    check_output_dir(options.output, options.overwrite, read)
    network = load_model(model.source, options.trust_remote_code)
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.check(tokenizer)
    network.eval()
    modules = attribution.tracked_linears(network, config)
    shapes = {name: attribution.layer_shape(module) for name, module in modules.items()}
    signature = cache.model_signature(network, model.source)
    train_digest = rows_sha256(inputs.train.rows)

    started = time.perf_counter()
    device = next(network.parameters()).device
    train_batches = attribution.encode_rows(tokenizer, model.fmt, inputs.train.rows, config, device)
    query_batches = attribution.encode_rows(tokenizer, model.fmt, inputs.query.rows, config, device)
    memory_estimate = estimate_run_memory(inputs, shapes, train_batches, query_batches)
    if inputs.factors is not None:
        manifest = cache.read_manifest(inputs.factors)
        cache.check_manifest(manifest, inputs.factors, estimator=inputs.estimator, config=config, signature=signature, layer_shapes=shapes)
        fitted = cache.load_factors(inputs.factors, config)
        reused = {"path": str(inputs.factors), "same_train_rows": manifest.get("train_rows_sha256") == train_digest}
        if not reused["same_train_rows"]:
            logger.warning("the factors in %s were fitted on other training rows; the curvature is reused as an estimate", inputs.factors)
    else:
        fitted = attribution.fit_factors(network, modules, train_batches, inputs.estimator, config)
        reused = None
    fit_seconds = time.perf_counter() - started
    scores = attribution.influence_scores(network, modules, query_batches, train_batches, fitted, normalize=config.normalize)
    seconds = time.perf_counter() - started

    top_k = min(inputs.top_k, len(inputs.train.rows))
    tops = attribution.top_rows(scores, top_k)
    recall = attribution.group_recall(scores, inputs.query.rows, inputs.train.rows, inputs.group_field) if inputs.group_field else None
    summary: dict[str, Any] = {
        "estimator": inputs.estimator,
        "queries": len(inputs.query.rows),
        "train_rows": len(inputs.train.rows),
        "top_k": top_k,
        "layers": list(modules),
        "damping": fitted.damping,
        "factors_reused": reused is not None,
        "seconds": {"factors": round(fit_seconds, 3), "total": round(seconds, 3)},
        "memory_estimate_gb": {name: round(value / 1e9, 6) for name, value in memory_estimate.items()},
        "top": [{"query": index, "question": row["question"], "rows": [
            {**entry, "question": inputs.train.rows[entry["index"]]["question"]} for entry in top]}
            for index, (row, top) in enumerate(zip(inputs.query.rows, tops, strict=True))],
    }
    copies = attribution.copy_retrieval(scores, inputs.query.rows, inputs.train.rows)
    if copies is not None:
        summary["copy_retrieval"] = {inputs.estimator: copies}
    if recall is not None:
        summary["recall"] = {inputs.estimator: {key: value for key, value in recall.items() if key != "per_query"}}
    full = scores.numel() <= FULL_MATRIX_LIMIT
    per_sample = [{"query": index, "top": top, **({"scores": scores[index].tolist()} if full else {}),
                   **({"recall": recall["per_query"][index]} if recall is not None else {})} for index, top in enumerate(tops)]
    run_config = {
        "command": "influence", "model": model.source, "query": inputs.query.source, "train": inputs.train.source,
        "estimator": inputs.estimator, "settings": asdict(config), "top_k": inputs.top_k, "group_field": inputs.group_field,
        "factors": reused, "score": "grad_query^T (G + damping I)^-1 grad_train over the MLP linear layers; summed answer NLL per row; "
                                    "higher: training on the row lowers the query's loss",
        **model.fmt.record(), "environment": environment(),
        "sha256": {"query_rows": rows_sha256(inputs.query.rows), "train_rows": train_digest,
                   "source_model": weights_sha256(model.source), "shapes": signature["shapes_sha256"]},
    }
    with results_folder(options.output, options.overwrite) as folder:
        logger.info("influence (%s) of %d training row(s) on %d query row(s) through %d layer(s): %.1f s (factors %s, %.1f s)",
                    inputs.estimator, len(inputs.train.rows), len(inputs.query.rows), len(modules), seconds,
                    "reused" if reused else "fitted", fit_seconds)
        if recall is not None:
            logger.info("top-k recall of the query's %s: %s (chance %s)", recall["field"], recall["recall_at_k"], recall["chance"])
        if reused is not None:
            shutil.copytree(cache.factors_folder(inputs.factors), folder / FACTORS_DIR)
        else:
            cache.save_factors(fitted, folder / FACTORS_DIR, config=config, signature=signature, rows_sha256=train_digest,
                               layer_shapes=shapes)
        save_file({"scores": scores.to(torch.float32).contiguous()}, str(folder / SCORES_FILE))
        write(folder / "config.json", run_config)
        write(folder / PER_SAMPLE_FILE, per_sample)
        write(folder / SUMMARY_FILE, summary)
    return summary


__all__ = ["ESTIMATORS", "InfluenceInputs", "resolve_influence", "resolve_settings", "run_influence"]
