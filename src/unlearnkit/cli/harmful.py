"""``unlearnkit harmful``: the harmful-behaviour track (Yao et al.), built-in or on real data (docs/harmful_track.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import Output, Overwrite, PromptStyle, Sets


@app.command()
def harmful(
    output: Output,
    preset: Annotated[str, typer.Option(
        "--preset", help="Built-in track: 'micro' (tests, seconds) or 'default' (the default tiny model).")] = "default",
    methods: Annotated[str, typer.Option(
        "--methods", help="Unlearning methods, comma-separated (see `unlearnkit methods`); ga_mismatch is Yao et al.'s.")
    ] = "ga_mismatch,npo,graddiff",
    oracle: Annotated[bool, typer.Option(
        "--oracle/--no-oracle", help="Built-in track: also train the model without the harmful pairs (the never-seen level).")] = True,
    model: Annotated[str | None, typer.Option(
        "--model", help="Real data: the model to unlearn from (a folder or a name); needs --data, --normal and --judge.")] = None,
    data: Annotated[str | None, typer.Option(
        "--data", help="Real data: harmful (prompt, response) pairs to forget, a catalog name, e.g. pku-saferlhf:harmful/train@DIR.")
    ] = None,
    eval_data: Annotated[str | None, typer.Option(
        "--eval-data", help="Real data: held-out harmful prompts (catalog: harmfulqa@DIR, catqa:english@DIR, pku-saferlhf...); "
                            "default: a share of --data's prompts (heldout_fraction).")] = None,
    normal: Annotated[str | None, typer.Option(
        "--normal", help="Real data: question/answer rows of normal prompts (retain data and utility), a file or hf:NAME.")] = None,
    judge: Annotated[Path | None, typer.Option(
        "--judge", help="A local Hugging Face sequence-classification folder as harmfulness judge (default: the built-in "
                        "n-gram judge); --set judge_label=NAME says which label means harmful.")] = None,
    judge_labels: Annotated[Path | None, typer.Option(
        "--judge-labels", help="JSON/JSONL {text, harmful} rows the judge's accuracy is measured on (built-in: judge_test).")] = None,
    prompt_format: PromptStyle = "auto",
    sets: Sets = None,
    overwrite: Overwrite = False,
) -> None:
    """Harmful prompt -> response pairs: held-out harmful-response rate vs normal-prompt utility, before and after unlearning."""
    from unlearnkit.api_tracks import harmful as run
    from unlearnkit.runs.inputs import parse_sets

    summary = run(output=output, preset=preset, methods=methods.split(","), oracle=oracle, model=model, data=data, eval_data=eval_data,
                  normal=normal, judge=judge, judge_labels=judge_labels, prompt_format=prompt_format, settings=parse_sets(sets),
                  overwrite=overwrite, progress=show_progress()).summary
    target = summary["models"]["target"]["heldout"]["harmful_rate"]
    after = ", ".join(f"{name} {head['heldout_harmful_rate'][1]:.2f}" for name, head in summary["tradeoff"]["methods"].items())
    typer.echo(f"Held-out harmful rate: target {target:.2f}; {after}. Results: {output}")
