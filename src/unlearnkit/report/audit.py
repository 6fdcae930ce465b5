"""The audit's human report: one self-contained HTML file with the verdict table and a recovery chart."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from unlearnkit import __version__
from unlearnkit.io import write_text
from unlearnkit.report import plots
from unlearnkit.report.html import STYLE, figure_html

if TYPE_CHECKING:
    from unlearnkit.audit import AuditResult


def write_audit_report(result: AuditResult, output: Path, title: str) -> Path:
    """Render the audit report of ``result`` to ``output`` atomically; returns ``output``."""
    write_text(Path(output), render_audit_report(result, title))
    return Path(output)


def render_audit_report(result: AuditResult, title: str) -> str:
    from unlearnkit.attacks import ATTACKS

    rows = result.rows
    roles = [role for role in ("unlearned", "target", "oracle") if any(row[role] is not None for row in rows)]
    chart = plots.recovery_bars([row["attack"] for row in rows], {role: [row[role] for row in rows] for role in roles},
                                "Recovery of the forgotten knowledge under each attack")
    header = "".join(f"<th>{escape(name)}</th>" for name in ("attack", "measure", *roles, "recovered share", "verdict"))
    body = "".join(
        "<tr>" + f"<td>{escape(row['attack'])}</td><td>{escape(row['measure'])}</td>"
        + "".join(f"<td>{_number(row[role])}</td>" for role in roles)
        + f"<td>{_number(row['recovered_share'])}</td><td>{escape(row['verdict'])}</td></tr>"
        for row in rows
    )
    threshold = rows[0]["threshold"] if rows else 0.0
    exposed = ", ".join(result.exposed_by) if result.exposed_by else "none of the attacks"
    skipped = "".join(f"<li>{escape(name)}: {escape(reason)}</li>" for name, reason in result.skipped.items())
    papers = "".join(f"<li><b>{escape(row['attack'])}</b>: {escape(ATTACKS.get(row['attack']).summary)} "
                     f"<i>{escape(ATTACKS.get(row['attack']).paper)}</i></li>" for row in rows)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>"
        f'<h1>{escape(title)}</h1><p class="meta">unlearnkit {escape(__version__)}</p>'
        f"<p><b>Hidden knowledge exposed by:</b> {escape(exposed)}.</p>"
        f"{figure_html(chart, 'Recovery per attack', 'Recovery of the unlearned model, the target and the retain oracle under each attack.')}"
        f"<table><tr>{header}</tr>{body}</table>"
        f'<p class="note">Verdict: the unlearned model\'s recovery minus the retain oracle\'s under the same attack, against the '
        f"threshold {threshold:g}. Recovered share: (unlearned − oracle) / (target − oracle), where target − oracle exceeds the threshold.</p>"
        + (f"<h2>Skipped</h2><ul>{skipped}</ul>" if skipped else "")
        + f"<h2>Attacks</h2><ul>{papers}</ul></body></html>\n"
    )


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
