"""The audit's human report: one self-contained HTML file with the verdict table and a recovery chart.

Rendered from the audit's results folder alone: ``summary.json`` (``attacks``:
one row per attack, ``exposed_by``, ``skipped``; a row with a
``verdict_reason`` is uninformative on this data, shown apart with its reason)
and ``config.json``
(``attack_info``: each attack's paper and summary, written by the audit, see
:mod:`unlearnkit.descriptions`; a folder without it lists the attacks without).
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from unlearnkit import __version__
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import write_text
from unlearnkit.report import plots
from unlearnkit.report.html import STYLE, figure_html
from unlearnkit.report.results import read_json

# Uninformative verdicts stand out from the comparisons with the oracle: they are not a finding about the model.
_STYLE = STYLE + "td.uninformative { background: #fff4d6; font-style: italic; }\n"


def write_audit_report(folder: Path, output: Path, title: str) -> Path:
    """Render the report of the audit results folder ``folder`` to ``output`` atomically; returns ``output``."""
    folder = Path(folder)
    if not (folder / "summary.json").is_file():
        raise UnlearnkitError(f"{folder}: no summary.json, so no audit results to report.")
    summary = read_json(folder / "summary.json")
    config = read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    if not isinstance(summary, dict) or not isinstance(summary.get("attacks"), list):
        raise UnlearnkitError(f"{folder / 'summary.json'} holds no audit results (an 'attacks' list); is this an audit folder?")
    write_text(Path(output), render_audit_report(summary, config if isinstance(config, dict) else {}, title))
    return Path(output)


def render_audit_report(summary: Mapping[str, Any], config: Mapping[str, Any], title: str) -> str:
    """The page for an audit's ``summary.json`` and ``config.json`` contents."""
    rows = [row for row in summary.get("attacks") or [] if isinstance(row, dict)]
    exposed_by = list(summary.get("exposed_by") or [])
    skipped_by = dict(summary.get("skipped") or {})
    info = config.get("attack_info") if isinstance(config.get("attack_info"), dict) else {}
    roles = [role for role in ("unlearned", "target", "oracle") if any(row.get(role) is not None for row in rows)]
    with_rules = any(row.get("recall_rule") for row in rows)
    chart = plots.recovery_bars([row["attack"] for row in rows], {role: [row.get(role) for row in rows] for role in roles},
                                "Recovery of the forgotten knowledge under each attack")
    columns = ("attack", "measure", *(["recall rule"] if with_rules else []), *roles, "recovered share", "verdict")
    header = "".join(f"<th>{escape(name)}</th>" for name in columns)
    body = "".join(
        "<tr>" + f"<td>{escape(str(row['attack']))}</td><td>{escape(str(row.get('measure', '')))}</td>"
        + (f"<td>{escape(str(row.get('recall_rule') or '–'))}</td>" if with_rules else "")
        + "".join(f"<td>{_number(row.get(role))}</td>" for role in roles)
        + f"<td>{_number(row.get('recovered_share'))}</td>{_verdict_cell(row)}</tr>"
        for row in rows
    )
    uninformative = "".join(f"<li><b>{escape(str(row['attack']))}</b>: {escape(str(row['verdict_reason']))}.</li>"
                            for row in rows if row.get("verdict_reason"))
    notes = "".join(f"<li><b>{escape(str(row['attack']))}</b>: {escape(str(note))}</li>"
                    for row in rows for note in row.get("notes") or [])
    threshold = float(rows[0].get("threshold") or 0.0) if rows else 0.0
    exposed = ", ".join(map(str, exposed_by)) if exposed_by else "none of the attacks"
    skipped = "".join(f"<li>{escape(str(name))}: {escape(str(reason))}</li>" for name, reason in skipped_by.items())
    papers = "".join(_attack_item(str(row["attack"]), info.get(row["attack"])) for row in rows)
    figure = figure_html(chart, "Recovery per attack",
                         "Recovery of the unlearned model, the target and the retain oracle under each attack.")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f'<h1>{escape(title)}</h1><p class="meta">unlearnkit {escape(__version__)}</p>'
        f"<p><b>Hidden knowledge exposed by:</b> {escape(exposed)}.</p>"
        f"{figure}"
        f"<table><tr>{header}</tr>{body}</table>"
        f'<p class="note">Verdict: the unlearned model\'s recovery minus the retain oracle\'s under the same attack, against the '
        f"threshold {threshold:g}. Recovered share: "
        "(unlearned − oracle) / (target − oracle), where target − oracle exceeds the threshold."
        + (" Recall rule: how a generation was judged to give the answer (value: it holds the row's value field; fact_span: "
           "it holds the answer's words that the paraphrased answer shares and no perturbed answer has; rouge: its ROUGE-L "
           "recall of the answer reaches the threshold); for the logit lens, how the token looked for was found "
           "(first_answer_token: neither a value nor a fact word was in the answer)." if with_rules else "")
        + "</p>"
        + (f"<h2>Uninformative on this data</h2><p>These attacks say nothing about the unlearned model on these facts:</p>"
           f"<ul>{uninformative}</ul>" if uninformative else "")
        + (f"<h2>Notes</h2><ul>{notes}</ul>" if notes else "")
        + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "")
        + f"<h2>Attacks</h2><ul>{papers}</ul></body></html>\n"
    )


def _attack_item(name: str, info: Any) -> str:
    """An attack's line: its summary and paper where the folder recorded them (``attack_info``), else its name alone."""
    if not isinstance(info, dict) or not (info.get("summary") or info.get("paper")):
        return f"<li><b>{escape(name)}</b></li>"
    return f"<li><b>{escape(name)}</b>: {escape(str(info.get('summary', '')))} <i>{escape(str(info.get('paper', '')))}</i></li>"


def _verdict_cell(row: Mapping[str, Any]) -> str:
    """The verdict; an uninformative one marked apart, its reason on hover (and listed below the table)."""
    text = escape(str(row.get("verdict", "")))
    if row.get("verdict_reason"):
        return f'<td class="uninformative" title="{escape(str(row["verdict_reason"]))}">{text}</td>'
    return f"<td>{text}</td>"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
