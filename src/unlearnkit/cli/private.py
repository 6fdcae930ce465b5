"""``unlearnkit private``: the private-data track on built-in fictitious e-mails (docs/private_track.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import Output, Overwrite, Sets


@app.command()
def private(
    output: Output,
    preset: Annotated[str, typer.Option(
        "--preset", help="'micro' (tests, seconds) or 'default' (20 people, the default tiny model).")] = "default",
    methods: Annotated[str, typer.Option(
        "--methods", help="Unlearning methods, comma-separated (see `unlearnkit methods`).")] = "graddiff,npo",
    oracle: Annotated[bool, typer.Option("--oracle/--no-oracle", help="Also train the retain oracle (the never-seen level).")] = True,
    sets: Sets = None,
    overwrite: Overwrite = False,
) -> None:
    """Memorised phone numbers in fictitious e-mails: exposure and extraction before and after unlearning."""
    from unlearnkit.runs.inputs import parse_sets
    from unlearnkit.runs.private import resolve_private, run_private

    chosen = [name.strip() for name in methods.split(",") if name.strip()]
    inputs = resolve_private(preset, chosen, parse_sets(sets), oracle)
    summary = run_private(inputs=inputs, output=Path(output), overwrite=overwrite, show_progress=show_progress())
    target = summary["models"]["target"]["forget"]["mean_exposure"]
    after = ", ".join(f"{name} {head['forget_exposure'][1]:.2f}" for name, head in summary["tradeoff"]["methods"].items())
    typer.echo(f"Forget exposure (of {summary['max_exposure']:.2f} bits): target {target:.2f}; {after}. Results: {output}")
