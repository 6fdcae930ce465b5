"""What an influence run holds in memory beyond the model, estimated before it starts, and the refusal when it is too much.

The estimate counts the attribution's own tensors (:mod:`unlearnkit.attribution.scores`), at their largest:

* fitting (``ekfac``/``kfac``): the float32 sums of A and S (``4 (d_in'² + d_out²)`` bytes per layer), then the float32
  eigenbases and Λ with EK-FAC's float32 sum of squares; ``diagonal``: its float64 sum and float32 result;
* scoring: the kept factors, the queries' token factors (``4 T (d_out + d_in')`` bytes per query row and layer, T its
  padded token count), one layer's dense gradients of a training batch and a query batch, the score matrix;
* throughout: one batch's captured layer inputs and output gradients.

Not counted: the model's weights and the activations of its forward pass, which any use of the model needs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from unlearnkit.errors import UnlearnkitError

GB = 1e9


def batch_tokens(batches: Sequence[Mapping[str, Tensor]]) -> tuple[int, int]:
    """``(all padded tokens, the largest batch's padded tokens)`` of encoded batches."""
    sizes = [int(batch["input_ids"].numel()) for batch in batches]
    return sum(sizes), max(sizes, default=0)


def factor_bytes(estimator: str, shapes: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """``(peak while fitting, kept for scoring)`` bytes of the estimator's factors over layers of ``(d_out, d_in')``."""
    squares = sum(d_out * d_out + d_in * d_in for d_out, d_in in shapes.values())
    weights = sum(d_out * d_in for d_out, d_in in shapes.values())
    edges = sum(d_out + d_in for d_out, d_in in shapes.values())
    if estimator in ("ekfac", "kfac"):
        kept = 4 * (squares + edges + weights)
        refit = kept + 4 * weights if estimator == "ekfac" else kept
        return max(4 * squares, refit), kept
    if estimator == "diagonal":
        return 12 * weights, 4 * weights
    return 0, 0


def estimate_bytes(estimator: str, shapes: Mapping[str, tuple[int, int]], *, query_tokens: int, queries: int, train_rows: int,
                   largest_batch_tokens: int, largest_batch_rows: int) -> dict[str, int]:
    """The estimate's parts and its ``total`` (bytes): the larger of fitting and scoring, plus one batch's signals."""
    fitting, kept = factor_bytes(estimator, shapes)
    edges = sum(d_out + d_in for d_out, d_in in shapes.values())
    largest_layer = max((d_out * d_in for d_out, d_in in shapes.values()), default=0)
    parts = {
        "factors_fitting": fitting,
        "factors_kept": kept,
        "query_factors": 4 * query_tokens * edges,
        # One layer at a time: a training batch's and a query batch's dense gradients, float32 and float64.
        "layer_gradients": 12 * 2 * largest_batch_rows * largest_layer,
        "score_matrix": 16 * queries * train_rows,
        "batch_signals": 4 * largest_batch_tokens * edges,
    }
    scoring = parts["factors_kept"] + parts["query_factors"] + parts["layer_gradients"] + parts["score_matrix"]
    parts["total"] = max(fitting, scoring) + parts["batch_signals"]
    return parts


def check_memory(parts: Mapping[str, int], limit_gb: float, *, queries: int, train_rows: int) -> None:
    """Refuse, before anything runs, a run estimated above ``memory_limit_gb``, naming what to reduce."""
    if parts["total"] <= limit_gb * GB:
        return
    shown = ", ".join(f"{name} {value / GB:.2f} GB" for name, value in parts.items() if name != "total" and value >= 0.01 * GB)
    advice = []
    if parts["score_matrix"] > 0.25 * parts["total"]:
        advice.append(f"sample the training rows into a file (e.g. `shuf -n N train.jsonl > sample.jsonl`; {train_rows} now) "
                      "and pass it as --train, or score fewer queries at a time")
    if parts["query_factors"] > 0.25 * parts["total"]:
        advice.append(f"score fewer queries per run ({queries} now), or lower max_length")
    advice.append("track fewer layers (--set layers=... or modules=mlp.down_proj), lower batch_size, or raise "
                  f"--set memory_limit_gb={max(parts['total'] / GB * 1.1, limit_gb + 0.1):.1f} where the machine has the memory")
    raise UnlearnkitError(f"This influence run needs about {parts['total'] / GB:.2f} GB beyond the model ({shown}), more than "
                          f"memory_limit_gb={limit_gb}. To fit it: {'; '.join(advice)}.")
