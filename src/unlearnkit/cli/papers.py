"""``unlearnkit papers``: the literature map (:mod:`unlearnkit.literature`), whole or one family or kind of it.

The function is registered with the application by :mod:`unlearnkit.cli.commands` (``app.command("papers")(papers)``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from unlearnkit.literature import FAMILIES, KINDS

Family = Annotated[str | None, typer.Option(
    "--family", help=f"Only this method family: {', '.join(FAMILIES)} (quote names with spaces)."
)]
Kind = Annotated[str | None, typer.Option("--kind", help=f"Only this kind of work: {', '.join(KINDS)}.")]


def papers(family: Family = None, kind: Kind = None) -> None:
    """List the surveyed papers (regulations, surveys, methods, attacks, benchmarks, ...) and what in unlearnkit implements each."""
    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.literature import load, render, select

    chosen = select(load(), family=family, kind=kind)
    if not chosen:
        filters = " and ".join(f"{name} {value!r}" for name, value in (("family", family), ("kind", kind)) if value)
        raise UnlearnkitError(f"No paper of {filters} in the literature map; `unlearnkit papers` lists them all.")
    parts = [part for part in (family, kind) if part]
    typer.echo(render(chosen, title="Literature map" + (f": {', '.join(parts)}" if parts else "")), nl=False)
