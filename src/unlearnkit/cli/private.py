"""``unlearnkit private``: the private-data track, on built-in fictitious e-mails or on real Enron e-mails (docs/private_track.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import Output, Overwrite, Sets


@app.command()
def private(
    output: Output,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="Built-in e-mails: 'micro' (tests, seconds) or 'default' (20 people, the default tiny model; "
                         "the default).")] = None,
    methods: Annotated[str, typer.Option(
        "--methods", help="Unlearning methods, comma-separated (see `unlearnkit methods`).")] = "graddiff,npo",
    oracle: Annotated[bool | None, typer.Option(
        "--oracle/--no-oracle", help="Built-in e-mails: also train the retain oracle (the never-seen level; on by "
                                     "default).")] = None,
    enron: Annotated[str | None, typer.Option(
        "--enron", help="Real e-mails instead: an Enron corpus (maildir folder, emails.csv or JSON Lines); needs --model.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="With --enron: the model to probe and unlearn (a folder, or a pretrained name such as smollm2-135m).")] = None,
    forget_people: Annotated[int | None, typer.Option(
        "--forget-people", help="With --enron: forget this many senders, those with the most e-mails (default 2).")] = None,
    forget_names: Annotated[str | None, typer.Option(
        "--forget-names", help="With --enron: forget these senders, comma-separated names.")] = None,
    sets: Sets = None,
    overwrite: Overwrite = False,
) -> None:
    """Memorised private data in e-mails (phone numbers, addresses): exposure and extraction before and after unlearning."""
    from unlearnkit.api_tracks import private as run
    from unlearnkit.runs.inputs import parse_sets

    names = [name.strip() for name in (forget_names or "").split(",") if name.strip()]
    summary = run(output=output, preset=preset, methods=methods.split(","), oracle=oracle, enron=enron, model=model,
                  forget_people=forget_people, forget_names=names, settings=parse_sets(sets), overwrite=overwrite,
                  progress=show_progress()).summary
    if enron is None:
        target = summary["models"]["target"]["forget"]["mean_exposure"]
        after = ", ".join(f"{name} {head['forget_exposure'][1]:.2f}" for name, head in summary["tradeoff"]["methods"].items())
        typer.echo(f"Forget exposure (of {summary['max_exposure']:.2f} bits): target {target:.2f}; {after}. Results: {output}")
        return
    before = summary["models"]["original"]["forget"]["extraction_rate"]
    after = ", ".join(f"{name} {head['forget_extraction_rate'][1]:.2f}" for name, head in summary["tradeoff"]["methods"].items())
    typer.echo(f"Forgotten people's address extraction rate: original {before:.2f}; {after}. Results: {output}")
