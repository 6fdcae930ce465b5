"""The one table writer of the package: plain text for the terminal, Markdown for files and papers.

:func:`format_table` lays out rows (mappings, one key per column) under their
columns; callers choose the headers, the right-aligned columns and how numbers
read. The terminal summaries (``demo``, ``sequential``: :data:`HEADLINE_METRICS`
per model), the audit's table (:func:`audit_table`, also ``audit.md``) and the
bench's ``leaderboard.md`` are written with it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

STYLES = ("text", "markdown")
# The columns of a run's terminal summary: forgetting, utility, then the forget-set details.
HEADLINE_METRICS: tuple[str, ...] = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_probability", "forget_rouge_l")


def compact_number(value: float) -> str:
    """Four decimals; values under 1e-3 (p-values) with three significant digits (``1.23e-05``)."""
    return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"


def fixed_number(value: float) -> str:
    """Three decimals."""
    return f"{value:.3f}"


def format_table(
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Mapping[str, Any]],
    columns: Sequence[str],
    *,
    index: str = "model",
    headers: Sequence[str] | Mapping[str, str] | None = None,
    style: str = "text",
    right: Collection[str] = (),
    number: Callable[[float], str] = compact_number,
    missing: str = "-",
) -> str:
    """``rows`` under ``columns``, one line per row, without a trailing newline.

    * ``rows``: a sequence of mappings (column -> value), or a mapping of row
      names to such mappings (a summary: ``{"target": {...}, "unlearned": {...}}``),
      whose names fill a first column ``index`` (added before ``columns`` unless they name it);
    * a cell is ``row[column]``: a string as it is, a number (int or float, not
      bool) through ``number``, None or absent as ``missing``, anything else through ``str``;
    * ``headers``: the header of each column, in order (``index`` first where it was added) or by
      column (default: the column names);
    * ``style="text"``: columns padded to their widest cell, two spaces apart, a
      line of dashes under the header; ``style="markdown"``: a GitHub table
      (``| a | b |`` lines, ``|---|---:|`` under the header);
    * ``right``: the columns aligned right (numbers), the others left.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}.")
    if isinstance(rows, Mapping):
        rows = [{**values, index: name} for name, values in rows.items()]
        columns = list(columns) if index in columns else [index, *columns]
    if headers is None:
        titles = list(columns)
    elif isinstance(headers, Mapping):
        titles = [str(headers.get(column, column)) for column in columns]
    else:
        titles = [str(header) for header in headers]
        if len(titles) != len(columns):
            raise ValueError(f"{len(titles)} headers for {len(columns)} columns.")
    cells = [[_cell(row.get(column), number, missing) for column in columns] for row in rows]
    if style == "markdown":
        rule = "|" + "".join("---:|" if column in right else "---|" for column in columns)
        return "\n".join(["| " + " | ".join(titles) + " |", rule, *("| " + " | ".join(line) + " |" for line in cells)])
    widths = [max(len(line[position]) for line in [titles, *cells]) for position in range(len(columns))]

    def lay(line: Sequence[str]) -> str:
        return "  ".join(cell.rjust(width) if column in right else cell.ljust(width)
                         for cell, width, column in zip(line, widths, columns, strict=True))

    return "\n".join([lay(titles), "  ".join("-" * width for width in widths), *(lay(line) for line in cells)])


def _cell(value: Any, number: Callable[[float], str], missing: str) -> str:
    if value is None:
        return missing
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return number(value)
    return str(value)


def audit_table(rows: Sequence[Mapping[str, Any]], exposed_by: Sequence[str]) -> str:
    """An audit's summary rows (``summary.json``'s ``attacks``) as a Markdown table, then the threshold and hidden-knowledge lines."""
    numbers = ("unlearned", "target", "oracle", "recovered_share")
    table = format_table(rows, ["attack", "measure", *numbers, "verdict", "recall_rule"],
                         headers={"recovered_share": "recovered share", "recall_rule": "recall rule"},
                         style="markdown", right=numbers, number=fixed_number, missing="–")
    threshold = rows[0]["threshold"] if rows else 0.0
    exposed = ", ".join(exposed_by) if exposed_by else "none of the attacks"
    # Why an attack could not judge this data, and what each attack noted about it (e.g. no entity field).
    remarks = [f"- {row['attack']}: {row['verdict']}: {row['verdict_reason']}." for row in rows if row.get("verdict_reason")]
    remarks += [f"- {row['attack']}: {note}" for row in rows for note in row.get("notes") or []]
    return "\n".join([
        table, "",
        f"Verdict threshold: {threshold:g} (absolute difference from the retain oracle's recovery under the same attack).",
        f"Hidden knowledge exposed by: {exposed}.",
        *remarks,
    ]) + "\n"
