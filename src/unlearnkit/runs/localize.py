"""``localize``: run a localizer on a model and data, into one results folder.

Results folder (documented in docs/localization.md): the localization itself
(``localization.json`` and ``scores.safetensors``, see
:mod:`unlearnkit.localization.base`), its heat maps (``*.png``, drawn by
:mod:`unlearnkit.localization.plots` when that module is installed),
``summary.json`` (what was selected: layers, modules, neuron and weight counts,
the top scores), ``report.md`` (the same, for a reader), ``config.json`` (the
resolved configuration, versions and digests) and ``log.txt``.

A run whose results folder names a localization (``--localize DIR``) records
:func:`localization_record` in its ``config.json`` and copies the localization's
manifest and heat maps into its own ``localization/`` folder, which its report shows.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearnkit import distributed
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import write_text
from unlearnkit.localization import LOCALIZERS, Localization, check_fits, save_localization, selected_parameters
from unlearnkit.localization.base import LOCALIZATION_FILE, SCORES_FILE, LocalizerSpec
from unlearnkit.report.results import LOCALIZATION_COPY
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.inputs import Builtin, DataChoice, ModelChoice, RunOptions
from unlearnkit.runs.lock import locks_output
from unlearnkit.settings import build_config

logger = logging.getLogger("unlearnkit")

SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
# Where a run trained on a localization keeps its copy of the manifest and heat maps.
RUN_COPY = LOCALIZATION_COPY
# Entries of each score array listed in the summary and the report.
TOP_SCORES = 5


@dataclass(frozen=True)
class LocalizerChoice:
    """A registered localizer and its validated configuration."""

    name: str
    config: Any

    @property
    def spec(self) -> LocalizerSpec:
        return LOCALIZERS.get(self.name)


@dataclass(frozen=True)
class LocalizeInputs:
    """Everything ``localize`` works on, resolved: the model, the localizer, the rows."""

    model: ModelChoice
    localizer: LocalizerChoice
    data: DataChoice
    max_rows: int | None = None

    @property
    def rows(self) -> list[dict]:
        return self.data.rows[: self.max_rows] if self.max_rows else self.data.rows


def resolve_localizer(name: str, overrides: Mapping[str, Any]) -> LocalizerChoice:
    """Look the localizer up (did-you-mean on a typo) and build its config from ``--set`` values."""
    spec = LOCALIZERS.get(name)
    return LocalizerChoice(name, build_config(spec.config, dict(overrides), what="localizer setting"))


def resolve_localize(
    *, model: str, data: str, localizer: LocalizerChoice, builtin: Builtin, prompt_format: PromptFormat = PromptFormat(),
    max_rows: int | None = None,
) -> LocalizeInputs:
    """Resolve ``localize``'s inputs: the data first (a bad row fails before any model loads), then the model."""
    from unlearnkit.runs.inputs import resolve_data, resolve_model

    if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
        raise UnlearnkitError(f"--max-rows must be a whole number, 1 or more; got {max_rows!r}.")
    chosen = resolve_data(data, "localization", builtin)
    return LocalizeInputs(resolve_model(model, prompt_format, builtin), localizer, chosen, max_rows)


@locks_output
def run_localize(*, inputs: LocalizeInputs, options: RunOptions) -> dict[str, Any]:
    """Run the localizer and write its results folder; returns the summary.

    The localizer runs before anything is written, so a row it refuses (one without a subject, say)
    leaves no folder behind.
    """
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.provenance import environment, rows_sha256, weights_sha256

    model, localizer = inputs.model, inputs.localizer
    check_output_dir(options.output, options.overwrite, {"MODEL": model.source, "--data": inputs.data.source})
    network = load_model(model.source, options.trust_remote_code)
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.check(tokenizer)
    network.eval()
    rows = inputs.rows
    logger.info("localizing with %s on %d row(s)", localizer.name, len(rows))
    localization = localizer.spec.function(network, tokenizer, rows, model.fmt, localizer.config)
    check_fits(localization, network, f"The {localizer.name} localizer's result")  # a localizer's own mistake, caught before writing
    summary = localization_summary(localization, network, len(rows))
    run_config = {
        "command": "localize", "model": model.source, "data": inputs.data.source, "localizer": localizer.name,
        "citation": localizer.spec.citation, "settings": localization.settings, "max_rows": inputs.max_rows,
        **model.fmt.record(), "environment": environment(),
        "sha256": {"rows": rows_sha256(rows), "source_model": weights_sha256(model.source)},
    }
    with results_folder(options.output, options.overwrite) as folder:
        save_localization(localization, folder)
        summary["heat_maps"] = write_heat_maps(localization, folder)
        write(folder / "config.json", run_config)
        write(folder / SUMMARY_FILE, summary)
        if distributed.is_main_process():
            write_text(folder / REPORT_FILE, render_report(summary, localizer.spec))
    return summary


def write_heat_maps(localization: Localization, folder: Path) -> list[str]:
    """Draw the localization's heat maps as PNG files into ``folder``; their file names (none without the plots module)."""
    try:
        from unlearnkit.localization import plots
    except ImportError:  # unlearnkit.localization.plots draws them; an install without it writes none
        return []
    written = plots.write_heat_maps(localization, folder)
    return sorted(Path(path).name for path in written)


def localization_summary(localization: Localization, model: torch.nn.Module, rows: int) -> dict[str, Any]:
    """What a localization selects, counted on ``model``: layers, modules, neurons, weights and the top scores."""
    from unlearnkit.localization import neuron_masks

    selection = localization.selection
    parameters = dict(model.named_parameters())
    trained = selected_parameters(model, selection)
    masks = neuron_masks(model, localization)
    weights = sum(int(masks[name].sum()) if name in masks else parameters[name].numel() for name in trained)
    total = sum(parameter.numel() for parameter in parameters.values())
    return {
        "localizer": localization.localizer,
        "rows": rows,
        "layers": list(selection.layers) if selection.layers is not None else None,
        "target_modules": list(selection.target_modules) if selection.target_modules is not None else None,
        "parameters": len(trained),
        "neurons": {"rows": sum(len(indices) for indices in selection.rows.values()),
                    "columns": sum(len(indices) for indices in selection.columns.values())},
        "masked_parameters": len(selection.weight_masks),
        "weights": weights,
        "weights_total": total,
        "weights_fraction": weights / total if total else 0.0,
        "top_scores": {name: top_entries(scores) for name, scores in sorted(localization.scores.items())
                       if not name.startswith("mask/") and scores.numel()},
        "notes": localization.notes,
    }


def top_entries(scores: torch.Tensor, count: int = TOP_SCORES) -> list[dict[str, Any]]:
    """The ``count`` largest finite entries of a score array, each with its index (one number per dimension), largest first."""
    flat = scores.detach().float().reshape(-1)
    ranked = torch.where(torch.isfinite(flat), flat, torch.tensor(-torch.inf))  # NaN and ±inf last: no score to rank
    order = torch.argsort(ranked, descending=True, stable=True)[:count]
    entries = []
    for position in order.tolist():
        if not torch.isfinite(flat[position]):
            break
        index = list(torch.unravel_index(torch.tensor(position), tuple(scores.shape))) if scores.dim() else []
        entries.append({"index": [int(i) for i in index], "value": float(flat[position])})
    return entries


def render_report(summary: Mapping[str, Any], spec: LocalizerSpec) -> str:
    """``report.md``: the selection and the top scores, in words."""
    layers = ", ".join(map(str, summary["layers"])) if summary["layers"] is not None else "all"
    modules = ", ".join(summary["target_modules"]) if summary["target_modules"] is not None else "all"
    lines = [
        f"# Localization: {summary['localizer']}",
        "",
        f"{spec.summary}",
        "",
        f"Paper: {spec.citation}",
        "",
        f"On {summary['rows']} row(s), the localizer selects:",
        "",
        f"- layers: {layers}",
        f"- modules: {modules}",
        f"- {summary['parameters']} parameter tensor(s); neurons: {summary['neurons']['rows']} row(s), "
        f"{summary['neurons']['columns']} column(s); {summary['masked_parameters']} parameter(s) masked weight by weight",
        f"- {summary['weights']:,} of {summary['weights_total']:,} weights ({summary['weights_fraction']:.2%}) may change "
        "in a localized run (`--localize`)",
        "",
    ]
    if summary["top_scores"]:
        lines += ["## Top scores", "", "| score | index | value |", "|---|---|---|"]
        for name, entries in summary["top_scores"].items():
            lines += [f"| {name} | {tuple(entry['index'])} | {entry['value']:.4g} |" for entry in entries]
        lines.append("")
    if summary.get("heat_maps"):
        lines += ["## Heat maps", "", *[f"![{name}]({name})" for name in summary["heat_maps"]], ""]
    return "\n".join(lines)


def localization_digest(folder: Path | str) -> str:
    """SHA-256 over a localization folder's manifest and scores (name, then bytes): what a run trained on."""
    digest = hashlib.sha256()
    for name in (LOCALIZATION_FILE, SCORES_FILE):
        path = Path(folder) / name
        if path.is_file():
            digest.update(name.encode() + path.read_bytes())
    return digest.hexdigest()


def localization_record(folder: Path | str) -> dict[str, Any]:
    """How a run's ``config.json`` records the localization it trained on: where, its digest, its localizer and selection."""
    from unlearnkit.unlearning import load_checked_localization

    localization = load_checked_localization(folder)
    return {
        "path": str(folder), "sha256": localization_digest(folder), "localizer": localization.localizer,
        "settings": localization.settings, "selection": localization.selection.to_json(),
        "heat_maps": sorted(path.name for path in Path(folder).glob("*.png")),
    }


def copy_into_run(source: Path | str, run_folder: Path) -> None:
    """Copy a localization's manifest and heat maps (not its scores, which may be large) into a run's ``localization/``."""
    target = run_folder / RUN_COPY
    target.mkdir(parents=True, exist_ok=True)
    for path in [Path(source) / LOCALIZATION_FILE, *sorted(Path(source).glob("*.png"))]:
        shutil.copyfile(path, target / path.name)


def check_fits_model(folder: Path | str, model_source: str, trust_remote_code: bool = False) -> None:
    """Refuse, before a bench starts, a localization made on another model than ``model_source``."""
    from unlearnkit.modeling import load_model
    from unlearnkit.unlearning import load_checked_localization

    check_fits(load_checked_localization(folder), load_model(model_source, trust_remote_code), f"The localization {folder}")
