"""``unlearnkit tune``: search a method's hyperparameters on the built-in or the real-knowledge benchmark (docs/tuning.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from unlearnkit.cli.app import app, show_progress
from unlearnkit.cli.options import Cache, Preset, Sets, choice


@app.command()
def tune(
    method: Annotated[str, typer.Option(help="Unlearning method to tune (see `unlearnkit methods`).")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Study folder: new or empty, or an earlier study with the same settings (resumed; --trials is "
                               "the study's total). Needed unless --show-space.")] = None,
    benchmark: Annotated[str, typer.Option(
        callback=choice("builtin", "real-knowledge"),
        help="'builtin': the built-in benchmark (--preset; a retain oracle per split); 'real-knowledge': what a pretrained "
             "model really knows about real entities (no oracle; docs/real_knowledge.md).")] = "builtin",
    preset: Preset = "default",
    split: Annotated[str | None, typer.Option(
        help="What the study tunes on. Built-in: a forget split, forget01, forget05 or forget10 (default forget10). "
             "Real knowledge: comma-separated forget entities (default: the first half of them).")] = None,
    holdout_split: Annotated[str, typer.Option(
        help="What the chosen setting is re-evaluated on, not tuned on. Built-in: a forget split ('auto': forget05 for "
             "forget10, forget10 otherwise). Real knowledge: forget entities ('auto': those not tuned on). 'none': skip.")] = "auto",
    trials: Annotated[int, typer.Option(min=1, help="Trials in the study, in all (a resumed study runs only the rest).")] = 20,
    jobs: Annotated[int, typer.Option(min=1, help="Trials run at once, each in its own process.")] = 1,
    space: Annotated[list[str] | None, typer.Option(
        "--space", help="A setting to search, NAME=KIND:ARGS (repeatable): log:LOW:HIGH, float:LOW:HIGH[:STEP], "
                        "int:LOW:HIGH[:STEP] or choice:A,B,...; replaces the default space (see --show-space).")] = None,
    objective: Annotated[str | None, typer.Option(
        help="Metric to optimise: METRIC, max:METRIC or min:METRIC (default direction: the metric's own). Default: "
             "forget_quality (built-in), forget_accuracy (real knowledge).")] = None,
    subject_to: Annotated[str | None, typer.Option(
        help="Constraints, comma-separated METRIC OP VALUE; VALUE a number, F*oracle or F*target on the tuned split "
             "('' for none). Default: model_utility>=0.95*oracle (built-in); neighbour_accuracy>=0.9*target,"
             "general_perplexity<=1.2*target (real knowledge).")] = None,
    eval_every: Annotated[int | None, typer.Option(
        min=0, help="Evaluate every N optimiser steps during each trial, for pruning (default: about 4 evaluations per trial "
                    "at the method's settings before the search; 0 without pruning).")] = None,
    eval_rows: Annotated[int, typer.Option(min=0, help="Evaluations during training use at most N rows per set (0: all).")] = 0,
    pruner: Annotated[str | None, typer.Option(
        callback=choice("median", "none"), help="'median': stop a trial whose evaluations during training are worse than "
                                                "the median of the finished trials' at the same step; 'none'. Default: median "
                                                "(built-in), none (real knowledge).")] = None,
    prune_after: Annotated[int, typer.Option(min=0, help="Prune only once this many trials have finished.")] = 5,
    sets: Sets = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each trial runs every seed and is judged on their mean.")] = "0",
    sampler_seed: Annotated[int, typer.Option(min=0, help="Seed of the TPE sampler.")] = 0,
    cache: Cache = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", min=1, help="CPU threads per trial process (default: the global --threads, else $OMP_NUM_THREADS, else 1).")] = None,
    keep_models: Annotated[bool, typer.Option(
        "--keep-models", help="Keep every trial's model (default: only the chosen trial's, the others' metrics and logs stay).")] = False,
    show_space: Annotated[bool, typer.Option("--show-space", help="Print the search space and exit (nothing is run or written).")] = False,
    model: Annotated[str | None, typer.Option(
        help="Real knowledge: the pretrained model (default smollm2-135m, the shipped probes' model).")] = None,
    probes: Annotated[Path | None, typer.Option(help="Real knowledge: probes JSONL (default: shipped).")] = None,
    forget_corpus: Annotated[Path | None, typer.Option(help="Real knowledge: passages to forget, JSONL (default: shipped).")] = None,
    retain_corpus: Annotated[Path | None, typer.Option(help="Real knowledge: passages to keep, JSONL (default: shipped).")] = None,
    general_text: Annotated[Path | None, typer.Option(help="Real knowledge: plain text for perplexity (default: shipped).")] = None,
) -> None:
    """Search a method's hyperparameters with Optuna for the best objective subject to constraints (resumable)."""
    from unlearnkit.errors import UnlearnkitError
    from unlearnkit.runs.bench import parse_seeds
    from unlearnkit.runs.inputs import parse_sets
    from unlearnkit.runs.tune import TuneOptions, resolve_tune, run_tune
    from unlearnkit.tuning.benchmarks import tuning_benchmark
    from unlearnkit.tuning.plan import check_counts

    check_counts(trials, jobs, prune_after, eval_every, eval_rows)
    if output is None and not show_space:
        raise UnlearnkitError("--output is needed: the study folder to create (or to resume), e.g. --output runs/tune-npo.")
    inputs = {"model": model, "probes": probes, "forget_corpus": forget_corpus, "retain_corpus": retain_corpus,
              "general_text": general_text}
    ground = tuning_benchmark(benchmark, preset=preset, cache=cache, show_progress=show_progress(),
                              inputs={key: str(value) for key, value in inputs.items() if value is not None})
    plan, holdout = resolve_tune(benchmark=ground, method=method, split=split, holdout=holdout_split, space=space, objective=objective,
                                 subject_to=subject_to, fixed=parse_sets(sets), seeds=parse_seeds(seeds), eval_every=eval_every,
                                 eval_rows=eval_rows, pruner=pruner, prune_after=prune_after, sampler_seed=sampler_seed)
    if show_space:
        typer.echo(f"Search space of {method} on {ground.describe()}" + (f" (fixed: {plan.fixed})" if plan.fixed else "") + ":")
        for dimension in plan.space:
            typer.echo(f"  --space {dimension}")
        return
    outcome = run_tune(plan=plan, holdout=holdout, benchmark=ground, output=output,
                       options=TuneOptions(trials, jobs, threads, show_progress(), keep_models))
    best = outcome.best
    counts = best["trials"]
    typer.echo(f"\n{outcome.ran} trial(s) run now; the study holds {len(outcome.records)}: {counts['complete']} complete "
               f"({counts['feasible']} meeting the constraints), {counts['pruned']} pruned, {counts['failed']} failed.")
    if best.get("chosen") is None:
        typer.echo(best["note"])
    else:
        typer.echo(f"Chosen: trial {best['chosen']} ({', '.join(f'{k}={v}' for k, v in best['settings'].items())}).")
        for part in ("tuned", "holdout"):
            result = best.get(part) or {}
            if "metrics" in result:
                reference = "oracle" if any(value is not None for value in result["oracle"].values()) else "target"
                shown = ", ".join(f"{name}={_number(value)} ({reference} {_number(result[reference].get(name))})"
                                  for name, value in list(result["metrics"].items())[:2])
                typer.echo(f"  {result['split']} ({'tuned' if part == 'tuned' else 'held out'}): {shown}; "
                           f"{'meets' if result['meets_constraints'] else 'breaks'} the constraints")
            elif result.get("note"):
                typer.echo(f"  held out: {result['note']}")
    typer.echo(f"Study: {output}/best.json, trials.json, report.html")


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) else "n/a"
