"""``unlearnkit filter``: ForgetFilter, drop the fine-tuning examples a short safety fine-tune forgets (docs/forget_filter.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import DateString, Output, Overwrite, PromptStyle, RemoteCode, SystemPrompt
from unlearnkit.runs.inputs import RunOptions, check_outputs, parse_sets


@app.command(name="filter")
def filter_command(
    data: Annotated[str, typer.Option(
        "--data", help="The fine-tuning data to filter: a JSON/JSONL/CSV/Parquet file, hf:NAME[:CONFIG][@SPLIT] or "
                       "safety-mix:downstream (the built-in fictitious set); rows with prompt and response (or question and answer).")],
    model: Annotated[str, typer.Option(
        help="The released model the data would fine-tune: a model folder, a pretrained model's name or a hub name. Read, never changed.")],
    output: Output,
    safe: Annotated[str | None, typer.Option(
        "--safe", help="The small safe set of the safety fine-tune (required): prompt/response rows, none repeating a data row "
                       "(built-in: safety-mix:safety).")] = None,
    labels: Annotated[str | None, typer.Option(
        "--labels", help="A field of the data holding each row's label (true/1 = unsafe, false/0 = safe): the summary adds the "
                         "ranking's AUC and the filter's precision, recall and F1.")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="ForgetFilter setting KEY=VALUE (repeatable): learning_rate, epochs, safety_epochs, phi, top_fraction, "
                      "max_new_tokens, rouge, ... (see docs/forget_filter.md).")] = None,
    train_filtered: Annotated[bool, typer.Option(
        "--train-filtered", help="Also fine-tune the model on the kept rows (step 4) and save it in OUTPUT/model.")] = False,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Rank fine-tuning rows by how much a safety fine-tune makes the model forget them; drop those above phi (ForgetFilter)."""
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.runs.filter import resolve_filter, run_filter

    fmt = PromptFormat(prompt_format, system_prompt, date_string)
    check_outputs(output, overwrite, data=data, safe=safe, model=model)
    inputs = resolve_filter(data=data, safe=safe, model=model, labels=labels, settings=parse_sets(sets), prompt_format=fmt,
                            train_filtered=train_filtered)
    summary = run_filter(inputs=inputs, options=RunOptions(Path(output), overwrite, show_progress(), trust_remote_code=trust_remote_code))
    typer.echo(f"{summary['flagged']} of {summary['rows']} rows flagged ({summary['rule']}); {summary['kept']} kept in "
               f"{output}/filtered.jsonl")
    if "filter" in summary:
        quality = summary["filter"]
        shown = {name: "n/a" if quality[name] is None else f"{quality[name]:.3f}" for name in ("precision", "recall", "f1")}
        auc = "n/a" if summary["auc"] is None else f"{summary['auc']:.3f}"
        typer.echo(f"against --labels {labels}: AUC {auc}, precision {shown['precision']}, recall {shown['recall']}, F1 {shown['f1']}")
    if train_filtered:
        typer.echo(f"model fine-tuned on the kept rows: {output}/model")
