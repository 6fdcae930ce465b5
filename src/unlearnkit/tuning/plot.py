"""The study's trade-off plot: every trial on the objective against the constrained metric, with the Pareto front.

x is the (first) constraint's metric, model utility by default; y the objective, forget quality by default,
on a log axis (a p-value). Complete trials are filled circles when they meet the constraints and hollow
when not; pruned trials sit at their last evaluation during training (grey crosses); failed trials have no
metrics and are only counted in the legend. The Pareto front joins the complete trials no other trial beats
on both axes; the chosen trial is ringed; the dashed line is the constraint's bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure

from unlearnkit.report.plots import ORACLE_STYLE, QUALITY_FLOOR, TARGET_STYLE, _png, _readable_log_axis

LOG_METRICS = ("forget_quality",)


@dataclass(frozen=True)
class TrialPoint:
    """One trial on the plot; ``state`` is ``complete`` or ``pruned``."""

    number: int
    state: str
    x: float
    y: float
    feasible: bool


@dataclass(frozen=True)
class Axes:
    """What the axes show: metric names and which way is better, the bound line, the reference models' points."""

    x_metric: str
    y_metric: str
    x_higher_better: bool
    y_higher_better: bool
    bound: tuple[str, float] | None = None  # the constraint's bound on x: its label and value
    references: Mapping[str, tuple[float, float]] | None = None  # "target"/"oracle" -> (x, y)


def tradeoff_plot(points: Sequence[TrialPoint], axes_info: Axes, front: Sequence[int], chosen: int | None, failed: int,
                  title: str) -> bytes:
    """The PNG of the trade-off plot; ``front`` and ``chosen`` are trial numbers."""
    figure = Figure(figsize=(7.5, 4.8))
    axes = figure.add_subplot()
    log_y = axes_info.y_metric in LOG_METRICS

    def y_of(value: float) -> float:
        return max(value, QUALITY_FLOOR) if log_y else value

    by_number = {point.number: point for point in points}
    groups = [
        ("meets the constraints", [p for p in points if p.state == "complete" and p.feasible],
         {"marker": "o", "color": "#1f77b4", "markersize": 7}),
        ("breaks a constraint", [p for p in points if p.state == "complete" and not p.feasible],
         {"marker": "o", "markerfacecolor": "none", "color": "#d62728", "markersize": 7}),
        ("pruned (last evaluation during training)", [p for p in points if p.state == "pruned"],
         {"marker": "x", "color": "#7f7f7f", "markersize": 7}),
    ]
    for label, members, style in groups:
        if members:
            axes.plot([p.x for p in members], [y_of(p.y) for p in members], linestyle="none", label=f"{label}: {len(members)}",
                      zorder=3, **style)
    line = [by_number[number] for number in front if number in by_number]
    if line:
        axes.plot([p.x for p in line], [y_of(p.y) for p in line], color="#2ca02c", linewidth=1.5, marker="s", markersize=11,
                  markerfacecolor="none", label=f"Pareto front: {len(line)}", zorder=2)
    if chosen is not None and chosen in by_number:
        point = by_number[chosen]
        axes.plot([point.x], [y_of(point.y)], marker="o", markersize=16, markerfacecolor="none", markeredgecolor="black",
                  markeredgewidth=2, linestyle="none", label=f"chosen: trial {chosen}", zorder=4)
    for role, style in (("target", TARGET_STYLE), ("oracle", ORACLE_STYLE)):
        where = (axes_info.references or {}).get(role)
        if where is not None and all(isinstance(v, (int, float)) and math.isfinite(v) for v in where):
            axes.plot([where[0]], [y_of(where[1])], linestyle="none", label="retain oracle" if role == "oracle" else role,
                      zorder=3, **style)
    if axes_info.bound is not None:
        axes.axvline(axes_info.bound[1], color="black", linestyle="--", linewidth=1, label=f"constraint: {axes_info.bound[0]}")
    if failed:
        axes.plot([], [], linestyle="none", label=f"failed (no metrics): {failed}")
    if log_y and (points or axes_info.references):
        axes.set_yscale("log")
        _readable_log_axis(axes.yaxis)
    axes.set_xlabel(f"{axes_info.x_metric} ({_better(axes_info.x_higher_better)})")
    axes.set_ylabel(f"{axes_info.y_metric}{', log scale' if log_y else ''} ({_better(axes_info.y_higher_better)})")
    axes.set_title(title, fontsize=10)
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    return _png(figure)



def _better(higher: bool) -> str:
    return "higher is better" if higher else "lower is better"
