"""One self-contained HTML page from results folders: plots as embedded PNGs, inline CSS, no script, no network.

Sections: the forget-quality / model-utility trade-off (one plot per forget
split), the metric tables with each metric's direction and definition, each
method's paper and hyperparameters, per run the distribution of per-sample
forget truth ratios against the retain oracle's and the training curves, and
example generations before and after unlearning. Every text taken from the
results (questions, generations, names, settings) is HTML-escaped.

Everything shown comes from the folders: the metrics' definitions from each
``config.json``'s ``metric_info``, a method's paper, loss and defaults from its
``method_info`` (written by the runners, see :mod:`unlearnkit.descriptions`).
A folder without them shows its metrics under their own names and its method
without a paper.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from unlearnkit import __version__
from unlearnkit.io import write_text
from unlearnkit.report import plots
from unlearnkit.report.glossary import LEADERBOARD_METRICS, Glossary
from unlearnkit.report.leaderboard import RunGroup, format_mean_std, format_number, group_runs, reference_summaries
from unlearnkit.report.results import RunResults

EXAMPLES_PER_SPLIT = 3
# Numbers of a summary that are no metric (the step whose weights were kept); not listed with the metrics.
NOT_METRICS = frozenset({"selected_step"})

# The explanations under each section's heading (plain text; escaped where used).
TRADEOFF_NOTE = (
    "Each point is one method (mean over seeds; bars span the seeds' range). The black cross is the target model "
    "before unlearning, the gold star the retain oracle (trained without the forget set): a good method lands near "
    "the star, high on both axes. Forget quality is a p-value, on a log axis."
)
# A benchmark of real knowledge has no retain oracle: its trade-off is forget accuracy against neighbour accuracy.
ACCURACY_AXES = ("forget_accuracy", "neighbour_accuracy")
ACCURACY_TRADEOFF_NOTE = (
    "Real knowledge has no retain oracle, so no forget quality: each point is one method's accuracy on the forget "
    "probes (facts about the entities to forget, lower is better) against its accuracy on the neighbour probes (related "
    "entities to keep, higher is better), averaged over the question, fill-in-the-blank and multiple-choice forms. The "
    "black cross is the model before unlearning; a good method lands at the bottom right."
)
METRICS_NOTE = (
    "Values: mean ± sample standard deviation over seeds (one seed: the value alone). Definitions follow TOFU "
    "(Maini et al., COLM 2024)."
)
SETTINGS_NOTE = (
    "Shown: the seeds and the settings that differ from the method's defaults (the authors' values), e.g. the "
    "benchmark's settings for its tiny models or --set values (bold in the full list)."
)
RUNS_NOTE = (
    "Left: the empirical distribution of the per-sample forget truth ratio R of the unlearned model against the "
    "retain oracle's (and the target's): forget quality is the KS-test p-value between the first two; the closer "
    "the curves, the better. Right: the training log per step, the loss and each term the method records "
    "(e.g. forget_loss, retain_loss). With --eval-every, a third plot shows the metrics tracked during training "
    "(evaluated every N steps; step 0 is the model before unlearning, the dashed line the step whose weights were kept)."
)
EXAMPLES_NOTE = (
    "Greedy answers to the first questions of each set, from the first run of each method: the target model before "
    "unlearning and the model after. On forget questions a good method no longer gives the answer; on retain "
    "questions it still does."
)

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1100px;
       padding: 0 1rem; color: #1a1a1a; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2rem; margin-top: 2.2rem; }
.meta, figcaption, .note { color: #555; font-size: 0.9rem; }
table { border-collapse: collapse; margin: 0.6rem 0 1rem; font-size: 0.88rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; vertical-align: top; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.target td, tr.oracle td { background: #f6f6f6; font-style: italic; }
figure { margin: 0.5rem 0 1rem; } img { max-width: 100%; height: auto; }
.pair { display: flex; flex-wrap: wrap; gap: 1rem; } .pair figure { flex: 1 1 420px; }
.changed { font-weight: bold; } code { background: #f3f3f3; padding: 0 0.2rem; }
.generation { font-family: ui-monospace, monospace; font-size: 0.82rem; }
"""


def write_report(runs: Sequence[RunResults], output: Path, title: str = "unlearnkit report") -> Path:
    """Render the report of ``runs`` and write it to ``output`` atomically; returns ``output``."""
    write_text(Path(output), render_report(runs, title))
    return Path(output)


def render_report(runs: Sequence[RunResults], title: str = "unlearnkit report") -> str:
    groups = group_runs(runs)
    splits = list(dict.fromkeys(group.split for group in groups))
    glossary = Glossary.from_runs(runs)
    sections = [
        ("tradeoff", "Forgetting vs utility", _tradeoff_section(runs, groups, splits)),
        ("metrics", "Metrics", _metrics_section(runs, groups, splits, glossary)),
        ("methods", "Methods and settings", _methods_section(groups)),
        ("runs", "Runs: truth ratios and training", _runs_section(groups)),
        ("examples", "Example generations", _examples_section(groups)),
    ]
    contents = "".join(f'<li><a href="#{anchor}">{escape(name)}</a></li>' for anchor, name, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{escape(name)}</h2>{html}</section>' for anchor, name, html in sections)
    meta = (f"{len(runs)} run(s) on benchmark <code>{escape(runs[0].benchmark)}</code>, forget split(s) "
            f"{escape(', '.join(splits))}; unlearnkit {escape(__version__)}. Folders: "
            + ", ".join(f"<code>{escape(str(run.path))}</code>" for run in runs))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>"
        f'<h1>{escape(title)}</h1><p class="meta">{meta}</p><nav><ol>{contents}</ol></nav>{body}</body></html>\n'
    )


def _tradeoff_section(runs: Sequence[RunResults], groups: Sequence[RunGroup], splits: Sequence[str]) -> str:
    references = reference_summaries(runs)
    parts = [_note(TRADEOFF_NOTE)]
    for split in splits:
        points = []
        for role in ("target", "oracle"):
            summary = references.get(split, {}).get(role, {})
            if "model_utility" in summary and "forget_quality" in summary:
                label = "target" if role == "target" else "retain oracle"
                points.append(plots.TradeoffPoint(label, role, [summary["model_utility"]], [summary["forget_quality"]]))
        for group in (group for group in groups if group.split == split):
            usable = [run for run in group.runs if "model_utility" in run.summary and "forget_quality" in run.summary]
            if usable:
                points.append(plots.TradeoffPoint(group.label, "method", [run.summary["model_utility"] for run in usable],
                                                  [run.summary["forget_quality"] for run in usable]))
        if not any(point.role == "method" for point in points) and _has_accuracy_tradeoff(groups, split):
            parts.append(_accuracy_tradeoff(references, groups, split))
            continue
        if not any(point.role == "method" for point in points):
            reasons = "".join(
                f"<li>{escape(run.label)}: " + "; ".join(f"{escape(name.replace('_', ' '))} {escape(run.missing(name))}"
                                                        for name in ("forget_quality", "model_utility") if name not in run.summary)
                + "</li>" for group in groups if group.split == split for run in group.runs)
            parts.append(f'<p class="note">{escape(split)}: no run has both forget quality and model utility, so there is no '
                         f"trade-off to draw. What each run lacks:</p><ul>{reasons}</ul>")
            continue
        image = plots.tradeoff(points, f"Forget quality vs model utility, {split}")
        parts.append(figure_html(image, f"Trade-off on {split}", f"Forget quality (log) against model utility on {split}."))
    return "".join(parts)


def _has_accuracy_tradeoff(groups: Sequence[RunGroup], split: str) -> bool:
    """Whether the split's runs measure forget vs neighbour accuracy (a benchmark with no retain oracle)."""
    return any(set(ACCURACY_AXES) <= set(run.summary) for group in groups if group.split == split for run in group.runs)


def _accuracy_tradeoff(references: dict[str, dict[str, dict[str, float]]], groups: Sequence[RunGroup], split: str) -> str:
    points = []
    original = references.get(split, {}).get("target", {})
    if set(ACCURACY_AXES) <= set(original):
        points.append(plots.TradeoffPoint("model before unlearning", "target", [original["neighbour_accuracy"]],
                                          [original["forget_accuracy"]]))
    for group in (group for group in groups if group.split == split):
        usable = [run for run in group.runs if set(ACCURACY_AXES) <= set(run.summary)]
        if usable:
            points.append(plots.TradeoffPoint(group.label, "method", [run.summary["neighbour_accuracy"] for run in usable],
                                              [run.summary["forget_accuracy"] for run in usable]))
    image = plots.accuracy_tradeoff(points, f"Forget vs neighbour accuracy, {split}")
    return _note(ACCURACY_TRADEOFF_NOTE) + figure_html(
        image, f"Trade-off on {split}", f"Forget accuracy against neighbour accuracy on {split} (no retain oracle exists).")


def _metrics_section(runs: Sequence[RunResults], groups: Sequence[RunGroup], splits: Sequence[str], glossary: Glossary) -> str:
    every_metric = glossary.order(name for run in runs for name in run.metrics if name not in NOT_METRICS)
    described = "".join(
        f"<tr><td><code>{escape(info.name)}</code></td><td>{escape(info.label)}</td><td>{escape(info.better)} "
        f"{escape(info.arrow)}</td><td>{escape(info.definition)}</td></tr>"
        for info in map(glossary.describe, every_metric)
    )
    # Results first; the definitions follow them, folded (a reader hovers a column header for one definition).
    parts = [_note(METRICS_NOTE)]
    references = reference_summaries(runs)
    for split in splits:
        split_groups = [group for group in groups if group.split == split]
        parts.append(f"<h3>{escape(split)}</h3>")
        parts.append(_metric_table(split_groups, references.get(split, {}), LEADERBOARD_METRICS, glossary))
        parts.append("<details><summary>All metrics</summary>"
                     f"{_metric_table(split_groups, references.get(split, {}), every_metric, glossary)}</details>")
    parts.append(f"<details><summary>Definitions of the {len(every_metric)} metrics</summary><table><tr><th>metric</th>"
                 f"<th>name</th><th>better</th><th>definition</th></tr>{described}</table></details>")
    if any(not info.definition for info in map(glossary.describe, every_metric)):
        parts.append(_note("A metric without a definition: its results folder records none (no metric_info in its "
                           "config.json: written by an older unlearnkit); `unlearnkit metrics` describes every metric."))
    return "".join(parts)


def _metric_table(groups: Sequence[RunGroup], references: dict[str, dict[str, float]], metrics: Sequence[str],
                  glossary: Glossary) -> str:
    header = "".join(f'<th title="{escape(info.definition)}">{escape(info.label)} {escape(info.arrow)}</th>'
                     for info in map(glossary.describe, metrics))
    rows = []
    for role, summary in references.items():
        cells = "".join(f'<td class="num">{escape(format_number(name, summary.get(name)))}</td>' for name in metrics)
        rows.append(f'<tr class="{role}"><td>{escape(role)}</td><td>–</td>{cells}</tr>')
    for group in groups:
        cells = []
        for name in metrics:
            value = group.metric(name)
            text = format_mean_std(name, value.mean, value.std)
            cells.append(f'<td class="num">{escape(text)}</td>')
        rows.append(f"<tr><td>{escape(group.label)}</td><td>{len(group.runs)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>model</th><th>seeds</th>{header}</tr>{''.join(rows)}</table>"


def _methods_section(groups: Sequence[RunGroup]) -> str:
    parts = []
    for group in groups:
        run = group.runs[0]
        parts.append(f"<h3>{escape(group.label)} <small>({escape(group.split)})</small></h3>")
        if group.method is None:
            parts.append(f'<p class="note">An evaluation of <code>{escape(str(run.config.get("model", "?")))}</code>; '
                         "no unlearning method recorded.</p>")
            continue
        info = _method_info(group)
        defaults: dict[str, Any] = info.get("defaults") if isinstance(info.get("defaults"), dict) else {}
        if info.get("paper") or info.get("summary"):
            paper, loss = escape(str(info.get("paper", ""))), escape(str(info.get("summary", "")))
            parts.append(f"<p><b>Paper:</b> {paper}<br><b>Loss:</b> {loss}</p>")
        else:
            parts.append(f'<p class="note">Method {escape(group.method)}: its results folder records no description '
                         "(method_info in config.json), so its paper and defaults are not shown.</p>")
        settings = run.hyperparameters
        if group.seeds:
            settings["seed"] = ", ".join(map(str, group.seeds))
        changed = {key: value for key, value in settings.items() if key == "seed" or _changed(key, value, defaults)}
        parts.append(_settings_table(changed, defaults))
        parts.append(f"<details><summary>All {len(settings)} hyperparameters</summary>{_settings_table(settings, defaults)}</details>")
    parts.append(_note(SETTINGS_NOTE))
    return "".join(parts)


def _settings_table(settings: dict[str, Any], defaults: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr{_changed(key, value, defaults)}><td><code>{escape(key)}</code></td><td>{escape(str(value))}</td>"
        f"<td>{escape(str(defaults[key])) if key in defaults else ''}</td></tr>"
        for key, value in settings.items()
    )
    return f"<table><tr><th>hyperparameter</th><th>value</th><th>method default</th></tr>{rows}</table>"


def _runs_section(groups: Sequence[RunGroup]) -> str:
    parts = [_note(RUNS_NOTE)]
    for group in groups:
        for run in group.runs:
            seed = f", seed {run.seed}" if run.seed is not None else ""
            parts.append(f"<h3>{escape(run.label)} <small>({escape(group.label)}, {escape(run.split)}{escape(seed)})</small></h3>")
            quality = run.summary.get("forget_quality")
            figures = []
            curves: dict[str, list[float]] = {}
            if run.truth_ratios():
                curves[group.label if run.method else "evaluated model"] = run.truth_ratios()
            if run.oracle_truth_ratios:
                curves["retain oracle"] = run.oracle_truth_ratios
            target = [row["truth_ratio"] for row in (run.target_per_sample or {}).get("forget", []) if "truth_ratio" in row]
            if target:
                curves["target"] = target
            if run.truth_ratios():
                title = f"{run.label}: forget truth ratios" + (
                    f" (forget quality {format_number('q', quality)})" if quality is not None else ""
                )
                figures.append(figure_html(plots.truth_ratio_ecdf(curves, title), f"Forget truth ratios of {run.label}",
                                       "ECDF of per-sample forget truth ratios" + ("" if run.oracle_truth_ratios else
                                       " (the retain oracle's reference was not found for this folder)") + "."))
            else:
                figures.append('<p class="note">No per-sample forget truth ratios in this folder.</p>')
            steps = run.training_steps()
            if steps:
                figures.append(figure_html(plots.training_curves(steps, run.training_terms(), f"{run.label}: training"),
                                       f"Training curves of {run.label}",
                                       f"{len(steps)} logged step(s); terms: {', '.join(run.training_terms())}."))
            else:
                figures.append('<p class="note">No training log (an evaluation-only folder).</p>')
            if run.eval_curve:
                selected = (run.config.get("eval_during_training") or {}).get("selected_step")
                figures.append(figure_html(plots.eval_curves(run.eval_curve, f"{run.label}: metrics tracked during training", selected),
                                       f"Metrics tracked during training of {run.label}",
                                       f"{len(run.eval_curve)} evaluation(s) during training (eval_curve.json)"
                                       + (f"; the weights of step {selected} were kept." if selected is not None else ".")))
            parts.append(f'<div class="pair">{"".join(figures)}</div>')
            if run.localization is not None:
                parts.append(localization_html(run))
    return "".join(parts)


def localization_html(run: RunResults) -> str:
    """What a localized run trained (its localizer and selection) and the localization's heat maps."""
    record = run.localization or {}
    selection = record.get("selection") if isinstance(record.get("selection"), dict) else {}
    layers = selection.get("layers")
    modules = selection.get("target_modules")
    neurons = sum(len(indices) for key in ("rows", "columns") for indices in (selection.get(key) or {}).values())
    masked = len(selection.get("weight_masks") or [])
    text = (f"Trained only the weights located by {record.get('localizer', '?')} ({record.get('path', '?')}, sha256 "
            f"{str(record.get('sha256', '?'))[:12]}): layers {', '.join(map(str, layers)) if layers is not None else 'all'}; "
            f"modules {', '.join(modules) if modules is not None else 'all'}"
            + (f"; {neurons} neuron(s)" if neurons else "") + (f"; {masked} parameter(s) masked weight by weight" if masked else "")
            + ". Every other weight is as it was before unlearning.")
    figures = [figure_html(png, f"Localization heat map {name}", f"Localization heat map: {name}") for name, png in run.localization_maps]
    if not figures:
        figures = ['<p class="note">The localization folder holds no heat map.</p>']
    return f'<p><b>Localization.</b> {escape(text)}</p><div class="pair">{"".join(figures)}</div>'


def _examples_section(groups: Sequence[RunGroup]) -> str:
    parts = [_note(EXAMPLES_NOTE)]
    for group in groups:
        run = group.runs[0]
        parts.append(f"<h3>{escape(group.label)} <small>({escape(run.label)})</small></h3>")
        for split in ("forget", "retain"):
            after = run.per_sample.get(split) or []
            before = (run.target_per_sample or {}).get(split) or []
            if not after:
                continue
            # The target's answer to the same question (rows are matched by question, not by position).
            before_by_question = {str(row.get("question")): row.get("generation", "") for row in before if isinstance(row, dict)}
            rows = []
            for sample in after[:EXAMPLES_PER_SPLIT]:
                question = str(sample.get("question", ""))
                target = f'<td class="generation">{escape(str(before_by_question.get(question, "")))}</td>' if before else ""
                rows.append(f"<tr><td>{escape(question)}</td><td>{escape(str(sample.get('answer', '')))}</td>{target}"
                            f'<td class="generation">{escape(str(sample.get("generation", "")))}</td></tr>')
            header = "<th>target (before)</th><th>unlearned (after)</th>" if before else "<th>generation</th>"
            parts.append(f"<p><b>{split} set</b></p><table><tr><th>question</th><th>reference answer</th>"
                         f"{header}</tr>{''.join(rows)}</table>")
            if not before and group.method is not None:
                parts.append(_note("The target's answers are not in this report: add the results folder of an `unlearnkit eval` "
                                   f"of {run.config.get('model', 'the model it started from')} on the same data to see them here."))
    return "".join(parts)


def _note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def figure_html(png: bytes, alt: str, caption: str) -> str:
    width, height = png_size(png)
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}" width="{width}" height="{height}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16-24), raising ValueError for anything else."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def _changed(key: str, value: Any, defaults: dict[str, Any]) -> str:
    """The row class of a hyperparameter set away from the method's default (the seed is the bench's, not a choice)."""
    return ' class="changed"' if key != "seed" and key in defaults and defaults[key] != value else ""


def _method_info(group: RunGroup) -> dict[str, Any]:
    """The ``method_info`` the group's folders recorded (the first that has one), or an empty dict."""
    for run in group.runs:
        info = run.config.get("method_info")
        if isinstance(info, dict):
            return info
    return {}
