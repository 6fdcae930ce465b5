"""Heat maps of a localization, drawn with matplotlib's Agg renderer (no display needed) and written as PNG files.

* causal tracing: one map per restored state (hidden, MLP, attention): ROME's token
  categories × layers, the mean indirect effect on the answer's probability;
* saliency: layers × module types, the mean score and the fraction selected.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so
drawing keeps no global state (as :mod:`unlearnkit.report.plots`). matplotlib is
imported when a map is drawn: the package imports every localization module, and
localizing needs no plotting library.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unlearnkit.localization.base import Localization

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
TRACE_TITLES = {"hidden": "hidden state (decoder layer output)", "mlp": "MLP output", "attn": "attention output"}
TRACE_COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}  # ROME's figures' colours


def heat_map(values: np.ndarray, row_labels: Sequence[str], column_labels: Sequence[str], title: str, colour_label: str,
             cmap: str = "viridis", marked: Sequence[tuple[int, int]] = (), x_label: str = "layer") -> bytes:
    """A PNG of ``values`` ``(rows, columns)``; NaN cells (nothing measured) grey, ``marked`` cells outlined."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    figure = Figure(figsize=(max(7.0, 0.28 * len(column_labels) + 3.5), max(2.6, 0.38 * len(row_labels) + 1.6)))
    axes = figure.add_subplot()
    colours = colormaps[cmap].with_extremes(bad="#dddddd")
    image = axes.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=colours, interpolation="nearest")
    axes.set_yticks(range(len(row_labels)), labels=list(row_labels))
    step = max(1, len(column_labels) // 16)  # at most about 16 labels, so they never overlap
    axes.set_xticks(range(0, len(column_labels), step), labels=list(column_labels)[::step],
                    rotation=0 if all(len(label) < 4 for label in column_labels) else 45, ha="right" if step == 1 else "center")
    for row, column in marked:  # the selected layers
        axes.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="black", linewidth=2))
    axes.set_xlabel(x_label)
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label=colour_label)
    figure.tight_layout()
    return _png(figure)


def _png(figure: Figure) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buffer = io.BytesIO()
    FigureCanvasAgg(figure)  # attaches the Agg canvas that savefig draws on
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _causal_trace_maps(localization: Localization) -> dict[str, bytes]:
    notes, settings = localization.notes, localization.settings
    categories = notes.get("token_categories") or []
    layers_chosen = set(localization.selection.layers or ())
    figures = {}
    for kind in notes.get("kinds") or []:
        values = localization.scores.get(f"ie/{kind}")
        if values is None:
            continue
        values = values.float().numpy()
        window = f", window {settings.get('window')}" if kind != "hidden" and settings.get("window") else ""
        marked = [(categories.index("last subject token"), layer) for layer in sorted(layers_chosen)] if kind == "mlp" else []
        title = (f"Causal trace: restoring the {TRACE_TITLES.get(kind, kind)}{window}\n"
                 f"mean over {len(notes.get('rows') or [])} rows; p(answer) clean {notes.get('mean_p_clean', float('nan')):.3f}, "
                 f"corrupted {notes.get('mean_p_corrupted', float('nan')):.3f}")
        figures[f"causal_trace_{kind}.png"] = heat_map(values, categories, [str(layer) for layer in range(values.shape[1])], title,
                                                       "indirect effect on p(answer)", TRACE_COLOURS.get(kind, "viridis"), marked)
    return figures


def _saliency_maps(localization: Localization) -> dict[str, bytes]:
    notes, settings = localization.notes, localization.settings
    modules = notes.get("modules") or []
    unit = notes.get("unit", "entries")
    figures = {}
    for key, label, cmap in (("map/score", f"mean {settings.get('score', '')} score per {unit[:-1]}", "magma"),
                             ("map/selected", f"fraction of {unit} selected", "Blues")):
        values = localization.scores.get(key)
        if values is None:
            continue
        values = values.float().numpy()  # (layers, modules)
        title = (f"Saliency ({settings.get('score')}, {settings.get('granularity')}, percentile {settings.get('percentile')}): "
                 f"{notes.get('selected')} of {notes.get('candidates')} {unit} selected")
        name = key.split("/")[1]
        figures[f"saliency_{name}.png"] = heat_map(values.T, modules, [str(layer) for layer in range(values.shape[0])], title,
                                                   label, cmap)
    return figures


def write_heat_maps(localization: Localization, folder: Path | str) -> list[Path]:
    """Write the localization's heat maps into ``folder`` (created if needed) and return their paths; none for a localizer
    that has no map."""
    drawers = {"causal_trace": _causal_trace_maps, "saliency": _saliency_maps}
    drawer = drawers.get(localization.localizer)
    if drawer is None:
        return []
    figures = drawer(localization)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in figures.items():
        path = folder / name
        path.write_bytes(png)
        paths.append(path)
    return paths
