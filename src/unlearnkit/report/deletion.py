"""A deletion request's record on one page (``record.html``), for a reader who is not an ML engineer.

Rendered from the record and the ledger alone (``record.json``, ``ledger.json`` of an ``unlearnkit forget`` folder):
the verdict first, then what was asked, what was removed, each check with its numbers and limit, the attacks,
earlier requests re-checked, and the model and method, with digests that identify them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from unlearnkit import __version__
from unlearnkit.io import write_text
from unlearnkit.report import plots
from unlearnkit.report.html import STYLE, figure_html

_STYLE = STYLE + """
.verdict { padding: 0.8rem 1rem; border-radius: 6px; font-size: 1.15rem; margin: 1rem 0; }
.passed { background: #e3f4e3; border: 1px solid #7bb77b; } .failed { background: #fbe3e3; border: 1px solid #d08080; }
td.pass { color: #1b6e1b; font-weight: bold; } td.fail { color: #a31515; font-weight: bold; } td.neutral { color: #666; }
"""

SET_LABELS = {"forget": "the entity's questions", "neighbours": "neighbours (closest other facts)",
              "rest": "the rest of the corpus (sample)", "utility": "general utility set"}


def write_record_page(record: Mapping[str, Any], ledger: Mapping[str, Any], output: Path) -> Path:
    """Write the page for ``record`` and ``ledger`` to ``output`` atomically; returns ``output``."""
    write_text(Path(output), render_record_page(record, ledger))
    return Path(output)


def render_record_page(record: Mapping[str, Any], ledger: Mapping[str, Any]) -> str:
    request, data, checks = record["request"], record["data"], record["checks"]
    outcome = record["verdict"]
    title = f"Deletion request {request['number']}: {request['entity']}"
    banner = (f'<div class="verdict {"passed" if outcome["passed"] else "failed"}"><b>Verdict:</b> '
              f"{escape(str(outcome['verdict']))}.</div>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n<body>"
        f'<h1>{escape(title)}</h1><p class="meta">unlearnkit {escape(__version__)} · completed {escape(str(request["completed"]))}</p>'
        f"{banner}"
        + _request_section(request, data)
        + _checks_section(record, checks)
        + _attacks_section(checks.get("attacks"), record["audit"])
        + _earlier_section(record.get("earlier_requests") or [])
        + _ledger_section(ledger.get("requests") or [])
        + _model_section(record)
        + "</body></html>\n"
    )


def _request_section(request: Mapping[str, Any], data: Mapping[str, Any]) -> str:
    aliases = ", ".join(request.get("aliases") or []) or "none"
    rows = [("Entity", request["entity"]), ("Aliases", aliases), ("Requester's reference", request.get("request_id") or "–"),
            ("Received", request["received"]), ("Completed", request["completed"]),
            ("Follows request", request.get("after") or "none (first request)"),
            ("Training data searched", f"{data['corpus']} ({data['corpus_rows']} rows)"),
            ("How rows were found", data["matching"]),
            ("Rows about the entity (forgotten)", f"{data['forget_rows']} rows"),
            ("Rows kept (retain set)", f"{data['retain_rows']} rows"
             + (f", without the rows of earlier requests ({_counts(data['excluded_earlier_requests'])})"
                if data.get("excluded_earlier_requests") else ""))]
    if data.get("corpus_changed_since_previous"):
        rows.append(("Note", "the training data differs from the previous request's (its digest changed)"))
    return "<h2>The request</h2>" + _table(rows)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"request {number}: {count} rows" for number, count in counts.items())


def _checks_section(record: Mapping[str, Any], checks: Mapping[str, Any]) -> str:
    forgotten = checks["forgotten"]
    guess = record["guess_level"]
    lines = [("Forgotten: answer recall on the entity's questions", forgotten["before"], forgotten["after"],
              f"≤ {forgotten['limit']:.3f}", forgotten["passed"])]
    lines += [(f"Kept: answer ROUGE-L on {SET_LABELS.get(row['set'], row['set'])}", row["before"], row["after"],
               f"≥ {row['limit']:.3f}", row["passed"]) for row in checks["utility"]]
    attacks = checks.get("attacks")
    if attacks is None:
        lines.append(("Stays forgotten under attack", None, None, "", None))
    else:
        back = [row["attack"] for row in attacks if row["outcome"] == "still shows the facts"]
        lines.append(("Stays forgotten under attack" + (f" (the facts still show under {', '.join(back)})" if back else ""), None, None,
                      "no attack above its floor", not back))
    body = "".join(
        f"<tr><td>{escape(name)}</td>{_num(before)}{_num(after)}<td>{escape(limit)}</td>{_result(passed)}</tr>"
        for name, before, after, limit, passed in lines)
    sets = [name for name in ("forget", "neighbours", "rest", "utility") if name in record["metrics"]["before"]]
    chart = plots.recovery_bars(
        ["forget recall", *(f"{name} ROUGE-L" for name in sets)],
        {"before": [forgotten["before"], *(record["metrics"]["before"][name].get("rouge_l") for name in sets)],
         "after": [forgotten["after"], *(record["metrics"]["after"][name].get("rouge_l") for name in sets)]},
        "Before and after unlearning")
    criteria = checks["criteria"]
    return (
        "<h2>Checks</h2><table><tr><th>check</th><th>before</th><th>after</th><th>limit</th><th>result</th></tr>"
        f"{body}</table>"
        f'<p class="note">Guess level: {guess["value"]:.3f}, from {escape(str(guess["source"]))}: how often a model that never '
        f"saw an entity still gives its answers. The entity counts as forgotten when the recall after unlearning is at most "
        f"the guess level plus {criteria['margin']:g}; a set counts as kept when its score lost at most "
        f"{criteria['max_utility_drop']:.0%} of its value before.</p>"
        + figure_html(chart, "Before and after unlearning",
                      "Answer recall on the entity's questions, and answer ROUGE-L on the sets that must be kept, before and after.")
    )


def _attacks_section(attacks: Sequence[Mapping[str, Any]] | None, audit: Mapping[str, Any]) -> str:
    if attacks is None:
        return ("<h2>Attacks</h2><p>Not run (--attacks none): the verdict cannot say whether the facts stay forgotten "
                "under attack.</p>")
    info = audit.get("attack_info") or {}
    body = "".join(
        f"<tr><td>{escape(str(row['attack']))}</td><td>{escape(str(row['measure']))}</td>{_num(row['before'])}{_num(row['after'])}"
        f"{_num(row['floor'])}{_outcome(row['outcome'])}</tr>" for row in attacks)
    skipped = "".join(f"<li>{escape(str(name))}: {escape(str(reason))}</li>" for name, reason in (audit.get("skipped") or {}).items())
    papers = "".join(f"<li><b>{escape(str(row['attack']))}</b>: {escape(str((info.get(row['attack']) or {}).get('summary', '')))} "
                     f"<i>{escape(str((info.get(row['attack']) or {}).get('paper', '')))}</i></li>" for row in attacks)
    return (
        "<h2>Attacks</h2><p>Each attack tries to get the entity's facts out of the model (rephrased questions, a few steps "
        "of fine-tuning on some of them, the facts in the prompt, reading its layers, ...). The floor is what the attack "
        "gets from the model before unlearning about people it never saw (the holdout questions), or the attack's chance "
        "level where it cannot run on them. The model still shows the facts when its score exceeds the floor by more than "
        "the margin; an attack is uninformative when the model before unlearning did not exceed it either.</p>"
        "<table><tr><th>attack</th><th>measure</th><th>before unlearning</th><th>after</th><th>floor</th><th>outcome</th></tr>"
        f"{body}</table>"
        + (f"<p>Skipped (unsuitable for this data):</p><ul>{skipped}</ul>" if skipped else "")
        + (f"<ul>{papers}</ul>" if papers else "")
    )


def _earlier_section(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{row['number']}</td><td>{escape(str(row['entity']))}</td><td>{row['rows']}</td>{_num(row['recall_then'])}"
        f"{_num(row['recall_now'])}{_result(row['still_forgotten'])}</tr>" for row in rows)
    return ("<h2>Earlier requests, checked again</h2><p>Unlearning one entity can bring another back; each earlier request's "
            "questions were asked again of the new model.</p><table><tr><th>request</th><th>entity</th><th>rows</th>"
            f"<th>recall then</th><th>recall now</th><th>still forgotten</th></tr>{body}</table>")


def _ledger_section(requests: Sequence[Mapping[str, Any]]) -> str:
    body = "".join(
        f"<tr><td>{entry['number']}</td><td>{escape(str(entry['entity']))}</td><td>{escape(str(entry.get('request_id') or '–'))}</td>"
        f"<td>{escape(str(entry['completed']))}</td><td>{entry['forget_rows']}</td><td>{escape(str(entry['method']))}</td>"
        f"<td>{escape(str(entry['verdict']))}</td></tr>" for entry in requests)
    return ("<h2>Ledger</h2><table><tr><th>request</th><th>entity</th><th>reference</th><th>completed</th><th>rows</th>"
            f"<th>method</th><th>verdict then</th></tr>{body}</table>")


def _model_section(record: Mapping[str, Any]) -> str:
    model, method, data = record["model"], record["method"], record["data"]
    rows = [("Model before", f"{model['source']}"), ("Weights before (SHA-256)", model.get("before_sha256") or "– (not a local folder)"),
            ("Weights after (SHA-256)", model.get("after_sha256") or "–"), ("Unlearned model", "model/ in this folder"),
            ("Method", f"{method['name']} ({method['family']}): {method['paper']}"),
            ("Forgotten rows (SHA-256)", data["forget_sha256"]), ("Training data (SHA-256)", data["corpus_sha256"]),
            ("Unlearning time", f"{record['timing']['unlearn_seconds']:.0f} s")]
    settings = "".join(f"<tr><td>{escape(str(key))}</td><td>{escape(str(value))}</td></tr>" for key, value in method["settings"].items())
    return ("<h2>Model and method</h2>" + _table(rows)
            + f"<details><summary>Every setting of {escape(method['name'])}</summary><table>{settings}</table></details>")


def _table(rows: Sequence[Sequence[Any]]) -> str:
    """A table of label/value rows, without a header."""
    body = "".join("<tr>" + "".join(f"<td>{escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>{body}</table>"


def _num(value: float | None) -> str:
    return '<td class="num">–</td>' if value is None else f'<td class="num">{value:.3f}</td>'


def _result(passed: bool | None) -> str:
    if passed is None:
        return '<td class="neutral">not judged</td>'
    return '<td class="pass">yes</td>' if passed else '<td class="fail">no</td>'


def _outcome(outcome: str) -> str:
    css = {"still shows the facts": "fail", "at the floor": "pass"}.get(outcome, "neutral")
    return f'<td class="{css}">{escape(outcome)}</td>'
