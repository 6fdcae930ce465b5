"""The audit's human report: one self-contained HTML file with the verdict table and a recovery chart.

Rendered from the audit's results folder alone: ``summary.json`` (``attacks``:
one row per attack, ``exposed_by``, ``skipped``) and ``config.json``
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
    chart = plots.recovery_bars([row["attack"] for row in rows], {role: [row.get(role) for row in rows] for role in roles},
                                "Recovery of the forgotten knowledge under each attack")
    header = "".join(f"<th>{escape(name)}</th>" for name in ("attack", "measure", *roles, "recovered share", "verdict"))
    body = "".join(
        "<tr>" + f"<td>{escape(str(row['attack']))}</td><td>{escape(str(row.get('measure', '')))}</td>"
        + "".join(f"<td>{_number(row.get(role))}</td>" for role in roles)
        + f"<td>{_number(row.get('recovered_share'))}</td><td>{escape(str(row.get('verdict', '')))}</td></tr>"
        for row in rows
    )
    threshold = float(rows[0].get("threshold") or 0.0) if rows else 0.0
    exposed = ", ".join(map(str, exposed_by)) if exposed_by else "none of the attacks"
    skipped = "".join(f"<li>{escape(str(name))}: {escape(str(reason))}</li>" for name, reason in skipped_by.items())
    papers = "".join(_attack_item(str(row["attack"]), info.get(row["attack"])) for row in rows)
    figure = figure_html(chart, "Recovery per attack",
                         "Recovery of the unlearned model, the target and the retain oracle under each attack.")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>"
        f'<h1>{escape(title)}</h1><p class="meta">unlearnkit {escape(__version__)}</p>'
        f"<p><b>Hidden knowledge exposed by:</b> {escape(exposed)}.</p>"
        f"{figure}"
        f"<table><tr>{header}</tr>{body}</table>"
        f'<p class="note">Verdict: the unlearned model\'s recovery minus the retain oracle\'s under the same attack, against the '
        f"threshold {threshold:g}. Recovered share: "
        "(unlearned − oracle) / (target − oracle), where target − oracle exceeds the threshold.</p>"
        + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "")
        + f"<h2>Attacks</h2><ul>{papers}</ul></body></html>\n"
    )


def _attack_item(name: str, info: Any) -> str:
    """An attack's line: its summary and paper where the folder recorded them (``attack_info``), else its name alone."""
    if not isinstance(info, dict) or not (info.get("summary") or info.get("paper")):
        return f"<li><b>{escape(name)}</b></li>"
    return f"<li><b>{escape(name)}</b>: {escape(str(info.get('summary', '')))} <i>{escape(str(info.get('paper', '')))}</i></li>"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
