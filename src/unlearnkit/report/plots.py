"""The report's figures, drawn with matplotlib's Agg renderer (no display needed) and returned as PNG bytes.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot,
so drawing keeps no global state and needs no interactive backend.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axis import Axis
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatterSciNotation, MaxNLocator, NullFormatter, NullLocator

DPI = 100
# Forget quality is a p-value drawn on a log axis; a value that underflowed to 0 is drawn at this floor.
QUALITY_FLOOR = 1e-300
TARGET_STYLE = {"marker": "X", "color": "black", "markersize": 11}
ORACLE_STYLE = {"marker": "*", "color": "#e6a700", "markersize": 17, "markeredgecolor": "black"}


@dataclass(frozen=True)
class TradeoffPoint:
    """One model on the trade-off plot; several values (one per seed) draw their mean and range."""

    label: str
    role: str  # "target", "oracle" or "method"
    model_utility: Sequence[float]
    forget_quality: Sequence[float]


def tradeoff(points: Sequence[TradeoffPoint], title: str) -> bytes:
    """Forget quality (log scale) against model utility; the top right is best, where the retain oracle sits."""
    figure = Figure(figsize=(7.5, 4.8))
    axes = figure.add_subplot()
    colours = iter(_palette(sum(point.role == "method" for point in points)))
    for point in points:
        utility = np.asarray(point.model_utility, dtype=float)
        quality = np.maximum(np.asarray(point.forget_quality, dtype=float), QUALITY_FLOOR)
        x, y = float(utility.mean()), float(quality.mean())
        # Error bars span the seeds' range: a mean minus a standard deviation can fall below 0, off a log axis.
        x_err = [[x - utility.min()], [utility.max() - x]] if len(utility) > 1 else None
        y_err = [[y - quality.min()], [quality.max() - y]] if len(quality) > 1 else None
        if point.role == "target":
            style = {**TARGET_STYLE, "linestyle": "none"}
        elif point.role == "oracle":
            style = {**ORACLE_STYLE, "linestyle": "none"}
        else:
            style = {"marker": "o", "color": next(colours), "markersize": 8, "linestyle": "none"}
        seeds = f" ({len(utility)} seeds)" if len(utility) > 1 else ""
        axes.errorbar([x], [y], xerr=x_err, yerr=y_err, capsize=3, label=f"{point.label}{seeds}", zorder=3, **style)
    axes.set_yscale("log")
    _readable_log_axis(axes.yaxis)
    axes.set_xlabel("model utility (higher is better)")
    axes.set_ylabel("forget quality, log scale (higher is better)")
    axes.set_title(title)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return _png(figure)


def accuracy_tradeoff(points: Sequence[TradeoffPoint], title: str) -> bytes:
    """Forget accuracy against neighbour accuracy, for benchmarks with no retain oracle (real knowledge).

    ``model_utility`` carries the neighbour accuracy and ``forget_quality`` the forget accuracy of each point.
    The best corner is the bottom right: the forget probes no longer answered, the neighbours still answered.
    """
    figure = Figure(figsize=(7.5, 4.8))
    axes = figure.add_subplot()
    colours = iter(_palette(sum(point.role == "method" for point in points)))
    for point in points:
        neighbour, forget = np.asarray(point.model_utility, dtype=float), np.asarray(point.forget_quality, dtype=float)
        x, y = float(neighbour.mean()), float(forget.mean())
        x_err = [[x - neighbour.min()], [neighbour.max() - x]] if len(neighbour) > 1 else None
        y_err = [[y - forget.min()], [forget.max() - y]] if len(forget) > 1 else None
        style = {**TARGET_STYLE, "linestyle": "none"} if point.role == "target" else \
            {"marker": "o", "color": next(colours), "markersize": 8, "linestyle": "none"}
        seeds = f" ({len(neighbour)} seeds)" if len(neighbour) > 1 else ""
        axes.errorbar([x], [y], xerr=x_err, yerr=y_err, capsize=3, label=f"{point.label}{seeds}", zorder=3, **style)
    axes.set_xlim(-0.03, 1.03)
    axes.set_ylim(-0.03, 1.03)
    axes.set_xlabel("neighbour accuracy (higher is better)")
    axes.set_ylabel("forget accuracy (lower is better)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return _png(figure)


def truth_ratio_ecdf(curves: Mapping[str, Sequence[float]], title: str) -> bytes:
    """Empirical CDFs of per-sample forget truth ratios R: the samples the KS test (forget quality) compares."""
    figure = Figure(figsize=(5.6, 3.4))
    axes = figure.add_subplot()
    styles = {"retain oracle": {"color": "#e6a700", "linewidth": 2.2}, "target": {"color": "black", "linestyle": "--"}}
    for name, values in curves.items():
        ratios = np.sort(np.asarray([v for v in values if math.isfinite(v) and v > 0], dtype=float))
        if ratios.size == 0:
            continue
        fractions = np.arange(1, ratios.size + 1) / ratios.size
        axes.step(np.concatenate([[ratios[0]], ratios]), np.concatenate([[0.0], fractions]), where="post",
                  label=f"{name} (n={ratios.size})", **styles.get(name, {"color": "#1f77b4", "linewidth": 2.0}))
    axes.set_xscale("log")
    _readable_log_axis(axes.xaxis)
    axes.set_xlabel("truth ratio R = p(paraphrased) / p(perturbed), log scale")
    axes.set_ylabel("fraction of forget questions")
    axes.set_ylim(0, 1.02)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _png(figure)


def training_curves(steps: Sequence[Mapping[str, float]], terms: Sequence[str], title: str) -> bytes:
    """Each recorded loss term (and tracked metric) per optimiser step."""
    figure = Figure(figsize=(5.6, 3.4))
    axes = figure.add_subplot()
    for term in terms:
        xs = [line["step"] for line in steps if isinstance(line.get(term), (int, float))]
        ys = [line[term] for line in steps if isinstance(line.get(term), (int, float))]
        # Markers keep a run of one or two logged steps visible; long runs read better as lines.
        axes.plot(xs, ys, marker="o" if len(xs) <= 20 else None, markersize=4, label=term,
                  linewidth=2.2 if term == "loss" else 1.4)
    _whole_steps(axes.xaxis)
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("value")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    return _png(figure)


# Metrics drawn from eval_curve.json, when present: the headline ones first.
TRACKED_METRICS = ("model_utility", "forget_truth_ratio", "forget_probability", "forget_rouge_l", "retain_rouge_l")


def eval_curves(curve: Sequence[Mapping], title: str, selected_step: int | None = None) -> bytes:
    """Metrics of the evaluations during training per step; forget quality (a p-value) on its own log axis."""
    figure = Figure(figsize=(5.6, 3.4))
    axes = figure.add_subplot()
    steps = [entry["step"] for entry in curve]
    for name in TRACKED_METRICS:
        values = [entry["metrics"].get(name) for entry in curve]
        if any(isinstance(value, (int, float)) for value in values):
            axes.plot(steps, [np.nan if value is None else value for value in values], marker="o" if len(steps) <= 20 else None,
                      markersize=4, label=name, linewidth=1.4)
    quality = [entry["metrics"].get("forget_quality") for entry in curve]
    if any(isinstance(value, (int, float)) for value in quality):
        right = axes.twinx()
        right.plot(steps, [max(value, QUALITY_FLOOR) if isinstance(value, (int, float)) else np.nan for value in quality],
                   color="black", linestyle=":", marker="s", markersize=3, label="forget_quality (right, log)")
        right.set_yscale("log")
        _readable_log_axis(right.yaxis)
        right.set_ylabel("forget quality, log scale")
        right.legend(fontsize=8, loc="lower right")
    if selected_step is not None:
        axes.axvline(selected_step, color="grey", linestyle="--", linewidth=1)
    _whole_steps(axes.xaxis)
    axes.set_xlabel("optimiser step")
    axes.set_ylabel("value")
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper right")
    return _png(figure)


def recovery_bars(attacks: Sequence[str], recoveries: Mapping[str, Sequence[float | None]], title: str) -> bytes:
    """Grouped bars: each attack's recovery for each model (e.g. unlearned, target, oracle); a missing value draws no bar."""
    figure = Figure(figsize=(max(6.0, 0.9 * len(attacks) + 2), 4.2))
    axes = figure.add_subplot()
    width = 0.8 / max(len(recoveries), 1)
    colours = {"unlearned": "#1f77b4", "target": "black", "oracle": "#e6a700"}
    for index, (model, values) in enumerate(recoveries.items()):
        positions = [i + (index - (len(recoveries) - 1) / 2) * width for i in range(len(attacks))]
        heights = [np.nan if value is None else value for value in values]
        axes.bar(positions, heights, width, label=model, color=colours.get(model, _palette(index + 1)[index]), edgecolor="white")
    axes.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("recovery (higher: more knowledge back)")
    axes.set_title(title, fontsize=10)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _png(figure)


def _whole_steps(axis: Axis) -> None:
    """Optimiser steps are whole numbers: no tick at step 1.25."""
    axis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10], integer=True, min_n_ticks=1))


# Most decades a wide log axis labels; beyond, every second, fifth, ... decade is labelled.
MAX_LOG_TICKS = 6


def _readable_log_axis(axis: Axis) -> None:
    """Ticks on a log axis whose labels never overlap, whatever range the data span.

    matplotlib labels the minor ticks (2x10^-1, 3x10^-1, ...) of an axis spanning one or two decades, and on
    a narrower one every 0.1x10^k; those labels overlapped. Here a range of more than two decades is labelled
    at (every few) decades, 10^k; up to two decades at 1, 2 and 5 times a power of ten; a narrower one at a
    few evenly spaced round numbers. Call it after plotting, when the view limits are known.
    """
    low, high = sorted(axis.get_view_interval())
    decades = math.log10(high) - math.log10(low)
    axis.set_minor_formatter(NullFormatter())
    if decades > 2:
        stride = next((step for step in (1, 2, 5, 10, 20, 25, 50, 100) if decades / step <= MAX_LOG_TICKS), 200)
        first, last = math.ceil(math.log10(low) / stride) * stride, math.floor(math.log10(high))
        # 10^-308 is about the smallest normal float; the quality floor (1e-300) sits above it.
        axis.set_major_locator(FixedLocator([10.0 ** exponent for exponent in range(max(first, -300), last + 1, stride)]))
        axis.set_major_formatter(LogFormatterSciNotation())
        axis.set_minor_locator(NullLocator())
        return
    round_values = [mantissa * 10.0 ** exponent for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                    for mantissa in (1, 2, 5)]
    ticks = [value for value in round_values if low <= value <= high]
    if len(ticks) < 3:
        ticks = [value for value in MaxNLocator(nbins=4).tick_values(low, high) if low <= value <= high and value > 0]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))


def _palette(count: int) -> list[str]:
    base = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22", "#ff7f0e"]
    return [base[i % len(base)] for i in range(max(count, 1))]


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()
