"""``unlearnkit copyright``: the copyrighted-text track, verbatim memorisation before and after unlearning (docs/copyright_track.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import Output, Overwrite, Sets


@app.command("copyright")
def copyright_command(
    output: Output,
    model: Annotated[str | None, typer.Option(
        "--model", help="Pretrained model (name, e.g. smollm2-135m, or folder) whose memorised text is unlearned "
                        "(default: smollm2-135m unless --preset is given).")] = None,
    preset: Annotated[str | None, typer.Option(
        "--preset", help="Built-in analogue instead of a pretrained model: 'micro' (tests, seconds) or 'default'.")] = None,
    methods: Annotated[str, typer.Option(
        "--methods", help="Unlearning methods, comma-separated (see `unlearnkit methods`).")] = "whp,npo,ga",
    text: Annotated[Path | None, typer.Option(
        "--text", help="Your own text to forget: a UTF-8 .txt file or a folder of them (the catalog's copyrighted loader).")] = None,
    anchors: Annotated[Path | None, typer.Option(
        "--anchors", help="WHP's anchored-term dictionary, a JSON object {\"term\": \"generic term\"} (default: the shipped one, "
                          "or anchored_terms.json beside --text).")] = None,
    oracle: Annotated[bool | None, typer.Option(
        "--oracle/--no-oracle", help="With --preset: also train the oracle that never read the work (on by default).")] = None,
    sets: Sets = None,
    overwrite: Overwrite = False,
) -> None:
    """Verbatim recall of a memorised text (VerbMem) before and after unlearning, against recall of texts to keep."""
    from unlearnkit.api_tracks import copyright as run
    from unlearnkit.runs.inputs import parse_sets

    summary = run(output=output, model=model, preset=preset, methods=methods.split(","), text=text, anchors=anchors, oracle=oracle,
                  settings=parse_sets(sets), overwrite=overwrite, progress=show_progress()).summary
    target = summary["models"]["target"]["forget"]["verbmem"]
    after = ", ".join(f"{name} {head['forget_verbmem'][1]:.3f}" for name, head in summary["tradeoff"]["methods"].items())
    typer.echo(f"Forget VerbMem: target {target:.3f}; {after}. Results: {output}")
