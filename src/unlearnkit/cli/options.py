"""The command line's shared options and their checks: a bad value is a usage error (exit 2), never a traceback."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.errors import did_you_mean


def choice(*choices: str) -> Callable[[str | None], str | None]:
    """An option callback refusing a value outside ``choices`` (a usage error: exit 2, with did-you-mean)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}.{did_you_mean(value, choices)}")
        return value

    return check


def finite(
    above: float | None = None, at_least: float | None = None, at_most: float | None = None
) -> Callable[[float | None], float | None]:
    """An option callback refusing a non-finite number, or one outside the given bounds (click's ranges let NaN through)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number.")
        if ((above is not None and value <= above) or (at_least is not None and value < at_least)
                or (at_most is not None and value > at_most)):
            bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
                      f"<= {at_most}" if at_most is not None else ""]
            raise typer.BadParameter(f"{value} must be {' and '.join(b for b in bounds if b)}.")
        return value

    return check

Threads = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for torch (default: $OMP_NUM_THREADS, else 1).")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Results folder (must be new or empty unless --overwrite).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing results folder.")]
Preset = Annotated[str, typer.Option("--preset", help=(
    "Built-in benchmark: 'default' (200 authors, tiny model), 'smollm2' (40 authors on the pretrained SmolLM2-135M-Instruct) "
    "or 'micro' (tests); see `unlearnkit presets`."))]
Cache = Annotated[Path | None, typer.Option(
    "--cache", help="Cache folder for the built-in benchmark (default: $UNLEARNKIT_CACHE or ~/.cache/unlearnkit)."
)]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Hyperparameter override KEY=VALUE (repeatable); see `unlearnkit methods`.")]
OracleReference = Annotated[Path | None, typer.Option(help="The retain oracle's forget_reference.json, for forget quality.")]
MaxNewTokens = Annotated[int | None, typer.Option(
    min=1, help="Greedy tokens generated per question for ROUGE, on every split (default: each data source's cap: built-in "
                "splits 48, tofu: names 200, muse-*:knowmem names 32, other files and hf: datasets 200).",
)]
CheckpointEvery = Annotated[int, typer.Option(
    min=0, help="Save a checkpoint every N optimiser steps (0: never); an interrupted run resumes from the last one."
)]
Resume = Annotated[bool, typer.Option(
    "--resume", help="Insist on resuming an interrupted run of this same command (rerunning it resumes anyway)."
)]
RemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run (off by default).")]
# unlearnkit.data.encoding.PROMPT_STYLES, named here so that the command line starts without loading torch.
PROMPT_FORMATS = ("auto", "plain", "chat", "tofu-llama2", "openunlearning-chat")
PromptStyle = Annotated[str, typer.Option(
    "--prompt-format", callback=choice(*PROMPT_FORMATS),
    help="'auto' (the chat template if the tokenizer has one, else plain), 'plain' ('Question: ...\\nAnswer:'), 'chat' (the "
         "tokenizer's chat template), or a reference format for released checkpoints: 'tofu-llama2' (TOFU's "
         "'[INST] question [/INST]answer', its Llama-2 models) or 'openunlearning-chat' (the chat template as OpenUnlearning "
         "trains with it, e.g. its Llama-3.2 TOFU models: system prompt 'You are a helpful assistant.', date '10 Apr 2025').",
)]
SystemPrompt = Annotated[str | None, typer.Option(
    "--system-prompt", help="Chat formats: the system message sent before each question ('' for none; default: none for "
                            "'chat', OpenUnlearning's for 'openunlearning-chat'). Refused where the template has no system message.",
)]
DateString = Annotated[str | None, typer.Option(
    "--date-string", help="Chat formats: the date the chat template shows (Llama-3's 'Today Date: ...', e.g. '10 Apr 2025'; "
                          "default: '10 Apr 2025' for 'openunlearning-chat', the template's own, today's, for 'chat'). "
                          "Refused where the template has no date slot.",
)]
EvalEvery = Annotated[int, typer.Option(min=0, help="Evaluate every N optimiser steps during training and write eval_curve.json (0: off).")]
SelectBest = Annotated[str | None, typer.Option(
    help="Keep the weights of the best evaluation during training by METRIC, max:METRIC or min:METRIC."
)]
SubjectTo = Annotated[str | None, typer.Option(
    help="Constraints on the best evaluation, comma-separated METRIC OP VALUE; "
         "VALUE a number, F*oracle or F*target (e.g. 'model_utility>=0.9*oracle')."
)]
Patience = Annotated[int, typer.Option(min=0, help="Stop training after K evaluations without a new best (0: never early).")]
EvalRows = Annotated[int, typer.Option(min=0, help="Evaluate during training on at most N evenly spaced rows per set (0: all rows).")]

# The evaluation sets eval and unlearn take besides --forget and --retain (own data; a built-in split brings its own).
RealAuthors = Annotated[str | None, typer.Option(help="Real-authors utility data (model utility needs it, with perturbed answers).")]
WorldFacts = Annotated[str | None, typer.Option(help="World-facts utility data (model utility needs it, with perturbed answers).")]
Holdout = Annotated[str | None, typer.Option(
    help="Holdout QA data never trained on: membership inference and memorization against --forget."
)]

# A localization folder (``unlearnkit localize``): the weight-changing commands train only what it selects.
Localize = Annotated[Path | None, typer.Option(
    "--localize", help="A localization folder written by `unlearnkit localize`: train only the weights it selects (layers, "
                       "modules, neurons or single weights; everything else stays bit-identical). Same as --set localize=DIR.",
)]
