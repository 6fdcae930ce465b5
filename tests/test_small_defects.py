"""Small defects a researcher bringing their own data met: report plots with overlapping tick labels, and a library
deprecation notice printed on every LoRA run."""

from __future__ import annotations

import itertools
import warnings

import pytest
from matplotlib.axis import Axis
from matplotlib.figure import Figure

from unlearnkit.report import plots


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures the plot functions draw, kept to measure their tick labels."""
    figures: list[Figure] = []
    draw = plots._png

    def keep(figure: Figure) -> bytes:
        figures.append(figure)
        return draw(figure)

    monkeypatch.setattr(plots, "_png", keep)
    return figures


def _labels_in_view(axis: Axis) -> list:
    low, high = sorted(axis.get_view_interval())
    ticks = zip(axis.get_major_ticks() + axis.get_minor_ticks(),
                list(axis.get_majorticklocs()) + list(axis.get_minorticklocs()), strict=False)
    return [label for tick, where in ticks if low <= where <= high
            for label in (tick.label1, tick.label2) if label.get_visible() and label.get_text()]


def _overlapping_labels(figure: Figure) -> list[tuple[str, str]]:
    renderer = figure.canvas.get_renderer()
    clashes = []
    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            labels = _labels_in_view(axis)
            for first, second in itertools.combinations(labels, 2):
                if first.get_window_extent(renderer).overlaps(second.get_window_extent(renderer)):
                    clashes.append((first.get_text(), second.get_text()))
    return clashes


# Truth ratios and forget qualities as real runs give them: within one decade, over a few, over hundreds (a p-value of 1e-90).
RANGES = [(0.185, 0.256), (0.35, 0.9), (0.028, 0.59), (0.55, 8.2), (1.5e-6, 3.7e-5), (3.7e-5, 0.011), (1e-12, 1.0), (1e-90, 1.0),
          (0.0, 1.0)]


@pytest.mark.parametrize("low, high", RANGES)
def test_log_axes_labels_never_overlap(low: float, high: float, drawn: list[Figure]) -> None:
    middle = (max(low, 1e-300) * high) ** 0.5
    plots.truth_ratio_ecdf({"target": [max(low, 1e-300), middle, high], "retain oracle": [middle, high]}, "truth ratios")
    plots.tradeoff([plots.TradeoffPoint("target", "target", [0.61], [low]), plots.TradeoffPoint("retain oracle", "oracle", [0.6], [high]),
                    plots.TradeoffPoint("ga", "method", [0.2, 0.3], [low, middle])], "trade-off")
    plots.eval_curves([{"step": step, "metrics": {"model_utility": 0.5, "forget_quality": quality}}
                       for step, quality in ((0, low), (2, middle), (4, high))], "tracked")
    for figure in drawn:
        assert _overlapping_labels(figure) == [], figure.axes[0].get_title()
        for axes in figure.axes:
            log_axes = [axis for axis in (axes.xaxis, axes.yaxis) if axis.get_scale() == "log"]
            for axis in log_axes:
                assert len(_labels_in_view(axis)) >= 2, (axes.get_title(), low, high)  # a scale needs two labels to be read


@pytest.mark.parametrize("steps", [1, 3, 50, 123_456])
def test_training_steps_are_whole_numbers(steps: int, drawn: list[Figure]) -> None:
    plots.training_curves([{"step": step, "loss": 1.0 / step} for step in (1, steps) if step <= steps], ["loss"], "training")
    plots.eval_curves([{"step": step, "metrics": {"model_utility": 0.5}} for step in (0, steps)], "tracked")
    for figure in drawn:
        axis = figure.axes[0].xaxis
        assert all(float(where).is_integer() for where in axis.get_majorticklocs())
        assert _overlapping_labels(figure) == []


def test_lora_prints_no_library_deprecation_notice(micro_bench) -> None:
    """peft reads transformers' deprecated is_gradient_checkpointing alias: a FutureWarning on every LoRA run, even with -q."""
    from unlearnkit.modeling import load_model
    from unlearnkit.parameters import Selection, apply_lora

    model = load_model(micro_bench.target_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_lora(model, Selection(None, None), rank=2, alpha=4.0, dropout=0.0)
        warnings.warn("another warning still shows", FutureWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["another warning still shows"]
