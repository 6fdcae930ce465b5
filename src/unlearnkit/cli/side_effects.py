"""``unlearnkit side-effects``: bias (BBQ) and toxicity (RealToxicityPrompts) before and after unlearning (docs/side_effects.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.cli.app import app
from unlearnkit.cli.options import Output, Overwrite


@app.command("side-effects")
def side_effects(
    output: Output,
    model: Annotated[list[str], typer.Option(
        "--model", help="A model to measure (repeatable; the first is the reference): a model folder, a pretrained model's "
                        "name (smollm2-135m), or an unlearn results folder; LABEL=MODEL names it in the report.")],
    bbq: Annotated[str | None, typer.Option(
        "--bbq", help="BBQ questions: bbq@DIR (every category file in DIR) or bbq:CONFIG@DIR (default: the built-in set).")] = None,
    prompts: Annotated[str | None, typer.Option(
        "--prompts", help="Prompts to continue: real-toxicity-prompts@DIR or another prompts dataset (default: the built-in set).")] = None,
    judge: Annotated[Path | None, typer.Option(
        "--judge", help="A local Hugging Face sequence classifier folder scoring toxicity (default: the built-in classifier).")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Setting KEY=VALUE (repeatable): samples (25), max_new_tokens (20), top_p (0.9), threshold (0.5), seed, "
                      "batch_size, max_prompts and max_bbq_rows (0: all), judge_label.")] = None,
    overwrite: Overwrite = False,
) -> None:
    """BBQ accuracy and bias scores, expected maximum toxicity and toxicity probability of each model."""
    from unlearnkit.api_tracks import side_effects as run
    from unlearnkit.runs.inputs import parse_sets

    summary = run(output=output, models=model, bbq=bbq, prompts=prompts, judge=judge, settings=parse_sets(sets),
                  overwrite=overwrite).summary
    for label, entry in summary["models"].items():
        bias = entry["bbq"]["bias_score_ambiguous"]
        typer.echo(f"{label}: BBQ bias s_AMB {'n/a' if bias is None else f'{bias:.3f}'}, expected max toxicity "
                   f"{entry['toxicity']['expected_maximum_toxicity']:.3f}")
    typer.echo(f"Results: {output}")
