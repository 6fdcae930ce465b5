"""``unlearnkit datasets``: the field's datasets the catalog loads (:mod:`unlearnkit.data.catalog`), or one of them."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from unlearnkit.cli.app import app


@app.command("datasets")
def datasets_command(
    name: Annotated[str | None, typer.Argument(help="Show this dataset only, with its configs, splits and an example row.")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show each dataset's schema and configs.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """List the field's datasets (WMDP, BBQ, HarmfulQA, ...): paper, licence, gated or not, schema, use, NAME:CONFIG@DIR."""
    from unlearnkit.data.catalog import CATALOG, get_dataset

    specs = [get_dataset(name)] if name is not None else [CATALOG[key] for key in sorted(CATALOG)]
    described = [spec.describe() for spec in specs]
    if as_json:
        typer.echo(json.dumps(described[0] if name is not None else described, indent=2, ensure_ascii=False))
        return
    if name is None and not verbose:
        typer.echo(_table(described))
        typer.echo("\nRead one with NAME:CONFIG[/SPLIT][@DIR]; `unlearnkit datasets NAME` shows its configs and row form.")
        return
    typer.echo("\n\n".join(_details(entry) for entry in described))


def _table(entries: list[dict[str, Any]]) -> str:
    rows = [("name", "paper", "licence", "gated", "schema (required fields)", "use")]
    rows += [(e["name"], f"{e['paper']['authors']} {e['paper']['venue']} {e['paper']['year']}", e["licence"].split(";")[0],
              "yes" if e["gated"] else "no", _short(", ".join(e["schema"]), 44), e["use"]) for e in entries]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(row[:5], widths, strict=True)), row[5]]).rstrip()
                     for row in rows)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _details(entry: dict[str, Any]) -> str:
    paper = entry["paper"]
    arxiv = f", arXiv {paper['arxiv']}" if paper["arxiv"] else ""
    lines = [
        f"{entry['name']}: {entry['title']}",
        f"  paper:    {paper['authors']}, \"{paper['title']}\", {paper['venue']} {paper['year']}{arxiv}",
        f"  licence:  {entry['licence']}",
        f"  hub:      {entry['hub_id'] or 'none (a local copy only: @PATH)'}{' (gated)' if entry['gated'] else ''}",
        f"  use:      {entry['use']}",
        f"  rows:     {entry['row_form']}",
        "  schema:   " + ", ".join(f"{field} ({kind})" for field, kind in entry["schema"].items()),
    ]
    if entry["optional_fields"]:
        lines.append("  optional: " + ", ".join(f"{field} ({kind})" for field, kind in entry["optional_fields"].items()))
    lines.append("  configs:")
    for config, info in entry["configs"].items():
        gated = " (gated)" if info["gated"] else ""
        hub = f"  [hub {info['hub_id']}{':' + info['hub_config'] if info['hub_config'] else ''}]" if info["hub_id"] else ""
        lines.append(f"    {entry['name']}:{config}  splits: {', '.join(info['splits'])}{gated}{hub}")
    lines.append(f"  local copy: {entry['local_copy']}")
    lines.append(f"  example row: {json.dumps(entry['example_row'], ensure_ascii=False)}")
    for note in entry["unverified"]:
        lines.append(f"  unverified: {note} (map field names with fields=...)")
    return "\n".join(lines)
