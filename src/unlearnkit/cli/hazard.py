"""``unlearnkit hazard``: the hazardous-knowledge track (the WMDP setting) on built-in fictitious domains or a WMDP copy."""

from __future__ import annotations

from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import Output, Overwrite, PromptStyle, RemoteCode, Sets


@app.command()
def hazard(
    output: Output,
    preset: Annotated[str, typer.Option(
        "--preset", help="Built-in analogue: 'micro' (tests, seconds) or 'default' (30 spores and 30 towns, the default tiny "
                         "model).")] = "default",
    methods: Annotated[str | None, typer.Option(
        "--methods", help="Unlearning methods, comma-separated (see `unlearnkit methods`; built-in default: rmu,npo,graddiff; "
                          "with --model: none, evaluate only).")] = None,
    oracle: Annotated[bool, typer.Option("--oracle/--no-oracle", help="Built-in: also train the oracle without the hazard facts.")] = True,
    model: Annotated[str | None, typer.Option(
        "--model", help="Real data: measure this model (folder or hub name) on --mcq instead of the built-in analogue.")] = None,
    mcq: Annotated[str | None, typer.Option(
        "--mcq", help="With --model: hazard questions, a catalog source (wmdp:bio@DIR) or a .json/.jsonl file of "
                      "{question, choices, answer}.")] = None,
    general_mcq: Annotated[str | None, typer.Option(
        "--general-mcq", help="With --model: general questions to keep (same forms as --mcq).")] = None,
    forget_corpus: Annotated[str | None, typer.Option(
        "--forget-corpus", help="With --model and --methods: texts to unlearn (wmdp-corpora:cyber-forget@DIR or a {text} file).")] = None,
    retain_corpus: Annotated[str | None, typer.Option(
        "--retain-corpus", help="With --model and --methods: texts to keep (wmdp-corpora:cyber-retain@DIR or a {text} file).")] = None,
    scoring: Annotated[str | None, typer.Option(
        "--scoring", help="'letters' (lm-eval's WMDP prompt, scores ' A'..' D'; default with --model) or 'choices' (each "
                          "choice's text as the answer; the built-in default, set there with --set scoring=...).")] = None,
    prompt_format: PromptStyle = "auto",
    trust_remote_code: RemoteCode = False,
    sets: Sets = None,
    overwrite: Overwrite = False,
) -> None:
    """Hazard vs general multiple-choice accuracy before and after unlearning (goal: hazard at chance, 0.25)."""
    from unlearnkit.api_tracks import hazard as run
    from unlearnkit.runs.inputs import parse_sets

    summary = run(output=output, preset=preset, methods=None if methods is None else methods.split(","), oracle=oracle, model=model,
                  mcq=mcq, general_mcq=general_mcq, forget_corpus=forget_corpus, retain_corpus=retain_corpus, scoring=scoring,
                  prompt_format=prompt_format, trust_remote_code=trust_remote_code, settings=parse_sets(sets), overwrite=overwrite,
                  progress=show_progress()).summary
    accuracies = ", ".join(f"{name} {entry['hazard_acc']:.3f}" for name, entry in summary["models"].items())
    typer.echo(f"Hazard MCQ accuracy (chance 0.25): {accuracies}. Results: {output}")
