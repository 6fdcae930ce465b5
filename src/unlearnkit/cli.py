"""The ``unlearnkit`` command line. It only parses options and calls the library (``jobs``)."""

from __future__ import annotations

import errno
import logging
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from unlearnkit.errors import Interrupted, NumericalFault, UnlearnkitError, did_you_mean

app = typer.Typer(
    help="Machine unlearning for LLMs: methods, trusted metrics and an offline benchmark.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="The built-in benchmark's data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

_state: dict[str, Any] = {"progress": True}


def _choice(*choices: str) -> Callable[[str | None], str | None]:
    """An option callback refusing a value outside ``choices`` (a usage error: exit 2, with did-you-mean)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"{value!r} is not one of {', '.join(choices)}.{did_you_mean(value, choices)}")
        return value

    return check


def _finite(above: float | None = None, at_least: float | None = None, at_most: float | None = None) -> Callable[[float | None], float | None]:
    """An option callback refusing a non-finite number, or one outside the given bounds (click's ranges let NaN through)."""

    def check(value: float | None) -> float | None:
        if value is None:
            return value
        if not math.isfinite(value):
            raise typer.BadParameter(f"{value} is not a finite number.")
        if (above is not None and value <= above) or (at_least is not None and value < at_least) or (at_most is not None and value > at_most):
            bounds = [f"> {above}" if above is not None else "", f">= {at_least}" if at_least is not None else "",
                      f"<= {at_most}" if at_most is not None else ""]
            raise typer.BadParameter(f"{value} must be {' and '.join(b for b in bounds if b)}.")
        return value

    return check

Threads = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads for torch (default: $OMP_NUM_THREADS, else 1).")]
Output = Annotated[Path, typer.Option("--output", "-o", help="Results folder (must be new or empty unless --overwrite).")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing results folder.")]
Preset = Annotated[str, typer.Option("--preset", help="Built-in benchmark size: 'default' (200 authors) or 'micro' (tests).")]
Cache = Annotated[Path | None, typer.Option("--cache", help="Cache folder for the built-in benchmark (default: $UNLEARNKIT_CACHE or ~/.cache/unlearnkit).")]
Sets = Annotated[list[str] | None, typer.Option("--set", help="Hyperparameter override KEY=VALUE (repeatable); see `unlearnkit methods`.")]
OracleReference = Annotated[Path | None, typer.Option(help="The retain oracle's forget_reference.json, for forget quality.")]
MaxNewTokens = Annotated[int, typer.Option(min=1, help="Greedy tokens generated per question for ROUGE.")]
CheckpointEvery = Annotated[int, typer.Option(min=0, help="Save a checkpoint every N optimiser steps (0: never); an interrupted run resumes from the last one.")]
Resume = Annotated[bool, typer.Option("--resume", help="Insist on resuming an interrupted run of this same command (rerunning it resumes anyway).")]
RemoteCode = Annotated[bool, typer.Option("--trust-remote-code", help="Allow a hub model's own Python code to run (off by default).")]
PromptStyle = Annotated[str, typer.Option("--prompt-format", callback=_choice("auto", "plain", "chat"), help="'auto' (chat template if the tokenizer has one), 'plain' or 'chat'.")]
EvalEvery = Annotated[int, typer.Option(min=0, help="Evaluate every N optimiser steps during training and write eval_curve.json (0: off).")]
SelectBest = Annotated[str | None, typer.Option(help="Keep the weights of the best evaluation during training by METRIC, max:METRIC or min:METRIC.")]
SubjectTo = Annotated[str | None, typer.Option(help="Constraints on the best evaluation, comma-separated METRIC OP VALUE; VALUE a number, F*oracle or F*target (e.g. 'model_utility>=0.9*oracle').")]
Patience = Annotated[int, typer.Option(min=0, help="Stop training after K evaluations without a new best (0: never early).")]
EvalRows = Annotated[int, typer.Option(min=0, help="Evaluate during training on at most N evenly spaced rows per set (0: all rows).")]


@app.callback()
def _global(
    threads: Threads = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Hide progress bars and info logs.")] = False,
) -> None:
    from unlearnkit.runtime import default_threads, quiet_libraries, set_threads

    set_threads(threads or default_threads())
    _state["progress"] = not quiet
    _setup_logging(quiet)
    quiet_libraries()


def _setup_logging(quiet: bool) -> None:
    """Info and up always reach a run's log.txt; the console shows them unless --quiet."""
    logger = logging.getLogger("unlearnkit")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in [h for h in logger.handlers if getattr(h, "unlearnkit_console", False)]:
        logger.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.unlearnkit_console = True  # type: ignore[attr-defined]
    logger.addHandler(console)



def _parse_sets(pairs: list[str] | None) -> dict[str, str]:
    overrides = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UnlearnkitError(f"--set expects KEY=VALUE, got {pair!r} (e.g. --set learning_rate=1e-4).")
        if key.strip() in overrides and overrides[key.strip()] != value.strip():
            raise UnlearnkitError(f"--set {key.strip()} is given twice, as {overrides[key.strip()]!r} and {value.strip()!r}; keep one.")
        overrides[key.strip()] = value.strip()
    return overrides


def _check_outputs(output: Path | None, overwrite: bool, *, preset: str | None = None, cache: Path | None = None,
                   files: dict[str, Path | None] | None = None, **inputs: Any) -> None:
    """Before any work: no output may destroy what the command reads (its models, data, references, the cache).

    ``inputs`` are the command's options and arguments that name something it
    reads, keyword by option name (an argument's name in capitals, e.g. ``MODEL``);
    ``files`` are other outputs than the results folder (a reference file).
    """
    from unlearnkit.io import check_output_dir, check_spares_inputs

    read: dict[str, Any] = {}
    for name, value in inputs.items():
        for each in value if isinstance(value, (list, tuple)) else [value]:
            read.update(_local_inputs(name if name.isupper() else f"--{name.replace('_', '-')}", each))
    if preset is not None:
        from unlearnkit.benchmark import benchmark_root, get_preset

        read["the built-in benchmark's cache"] = benchmark_root(get_preset(preset), cache)
    if output is not None:
        check_output_dir(output, overwrite, read)
    check_spares_inputs({role: path for role, path in (files or {}).items() if path is not None}, read)


def _local_inputs(role: str, value: Any) -> dict[str, Any]:
    """The local paths behind one input: a file or folder, a TOFU/MUSE name's @DIR, an adapter's base model."""
    import json

    if value is None:
        return {}
    text = str(value)
    found: dict[str, Any] = {role: text}
    prefix, sep, rest = text.partition(":")
    if sep and "@" in rest and not Path(text).exists():
        found[role] = rest.rpartition("@")[2]  # tofu:forget10@DIR reads DIR
    adapter = Path(text) / "adapter_config.json"
    if adapter.is_file():
        try:
            found[f"the base model of {role}"] = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
        except (ValueError, OSError, AttributeError):
            pass  # the model loader reports a damaged adapter
    return found


def _eval_config(batch_size: int, max_new_tokens: int):  # noqa: ANN202
    from unlearnkit.evaluation.evaluator import EvalConfig

    return EvalConfig(batch_size=batch_size, max_new_tokens=max_new_tokens)


def _tracking(every: int, select_best: str | None, subject_to: str | None, patience: int, rows: int):  # noqa: ANN202
    from unlearnkit.evaluation.tracking import TrackingConfig

    return TrackingConfig(every=every, select_best=select_best, subject_to=subject_to, patience=patience, max_rows=rows)


@app.command()
def demo(
    output: Output = Path("runs/demo"),
    method: Annotated[str, typer.Option(help="Unlearning method (see `unlearnkit methods`).")] = "npo",
    split: Annotated[str, typer.Option(help="Forget split: forget01, forget05 or forget10.")] = "forget10",
    preset: Preset = "default",
    sets: Sets = None,
    overwrite: Overwrite = False,
    cache: Cache = None,
    checkpoint_every: CheckpointEvery = 50,
    resume: Resume = False,
    eval_every: EvalEvery = 0,
    select_best: SelectBest = None,
    subject_to: SubjectTo = None,
    patience: Patience = 0,
    eval_rows: EvalRows = 0,
) -> None:
    """Prepare the built-in benchmark (cached), unlearn a split, and compare target, retain oracle and unlearned model."""
    _check_outputs(output, overwrite, preset=preset, cache=cache)
    from unlearnkit.benchmark import get_preset
    from unlearnkit.jobs import format_table, run_demo

    tracking = _tracking(eval_every, select_best, subject_to, patience, eval_rows)
    summary = run_demo(
        output=output, config=get_preset(preset), method=method, forget_split=split,
        overrides=_parse_sets(sets), overwrite=overwrite, cache_dir=cache, show_progress=_state["progress"],
        checkpoint_every=checkpoint_every, resume=resume, tracking=tracking,
    )
    typer.echo(f"\n{method} on {split} (built-in benchmark, preset {preset}):\n")
    typer.echo(format_table(summary))
    typer.echo(f"\nResults: {output}/summary.json (per-sample values in per_sample.json, model in model/)")
    if (output / "report.html").is_file():
        typer.echo(f"Report: {output / 'report.html'}")


@app.command()
def bench(
    methods: Annotated[str, typer.Option(help="Comma-separated methods (see `unlearnkit methods`), e.g. ga,graddiff,npo.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Benchmark folder: new, empty, or an earlier bench's (resumed, or extended with more runs).")],
    splits: Annotated[str, typer.Option(help="Comma-separated forget splits: forget01, forget05, forget10.")] = "forget10",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each combination runs once per seed.")] = "0",
    preset: Preset = "default",
    sets: Sets = None,
    cache: Cache = None,
    checkpoint_every: CheckpointEvery = 50,
) -> None:
    """Run every method x split x seed on the built-in benchmark (resumable) and write a leaderboard and a report."""
    _check_outputs(None, False, preset=preset, cache=cache, files={"--output": output})
    from unlearnkit.bench import parse_list, parse_seeds, run_bench
    from unlearnkit.benchmark import get_preset

    outcome = run_bench(
        output=output, config=get_preset(preset), methods=parse_list(methods, "--methods"),
        splits=parse_list(splits, "--splits"), seeds=parse_seeds(seeds), overrides=_parse_sets(sets), cache_dir=cache,
        show_progress=_state["progress"], checkpoint_every=checkpoint_every,
    )
    typer.echo(f"\n{len(outcome.ran)} run(s) done now, {len(outcome.skipped)} done before (skipped).\n")
    typer.echo((output / "leaderboard.md").read_text(encoding="utf-8"))
    typer.echo(f"Leaderboard: {output}/leaderboard.md (.csv, .json); one results folder per run in {output}")
    if outcome.report is not None:
        typer.echo(f"Report: {outcome.report}")
    if outcome.failed:
        raise NumericalFault(f"{len(outcome.failed)} run(s) diverged and are left out of the leaderboard: "
                             + "; ".join(f"{name}: {error}" for name, error in outcome.failed.items()))


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(help="Results folders of demo, bench, unlearn or eval (a bench folder stands for all its runs).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="The report's title.")] = "unlearnkit report",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file at --output.")] = False,
) -> None:
    """One self-contained HTML report (plots embedded, no network needed) comparing the given results folders."""
    from unlearnkit.report.html import write_report
    from unlearnkit.report.results import load_runs

    _check_outputs(None, overwrite, files={"--output": output}, FOLDERS=folders)
    if output.exists() and (output.is_dir() or not overwrite):
        raise UnlearnkitError(f"{output} exists; choose another --output{'' if output.is_dir() else ', or pass --overwrite'}.")
    runs = load_runs(folders)
    try:
        write_report(runs, output, title=title)
    except OSError as error:
        raise UnlearnkitError(f"Cannot write {output}: {error.strerror or error}. Choose another --output.") from None
    typer.echo(f"Report on {len(runs)} run(s): {output}")


@app.command()
def prepare(
    preset: Preset = "default",
    splits: Annotated[str, typer.Option(help="Comma-separated forget splits to train retain oracles for.")] = "forget01,forget05,forget10",
    cache: Cache = None,
) -> None:
    """Generate the built-in benchmark and train its target model and retain oracles (cached)."""
    from unlearnkit.benchmark import get_preset
    from unlearnkit.benchmark import prepare as prepare_benchmark

    bench = prepare_benchmark(get_preset(preset), cache, tuple(s.strip() for s in splits.split(",") if s.strip()), _state["progress"])
    typer.echo(f"target model: {bench.target_dir}")
    for split in splits.split(","):
        typer.echo(f"retain oracle for {split.strip()}: {bench.oracle_dir(split.strip())} (reference: {bench.reference_path(split.strip()).name})")


@app.command()
def finetune(
    data: Annotated[list[str], typer.Option("--data", help="Training data: a built-in split, a JSON/JSONL/CSV/Parquet file or hf:NAME[:CONFIG][@SPLIT]; repeatable.")],
    output: Output,
    model: Annotated[str, typer.Option(help="'tiny' (a fresh tiny Llama with a tokenizer trained on the data), a model folder or a hub name.")] = "tiny",
    learning_rate: Annotated[float | None, typer.Option(callback=_finite(above=0), help="Peak learning rate (default 1e-2 for 'tiny'; use ~1e-5 for large models).")] = None,
    max_epochs: Annotated[int, typer.Option(min=1, help="Epochs of the (cosine) learning-rate schedule; stops earlier at --target-accuracy.")] = 12,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 32,
    target_accuracy: Annotated[float, typer.Option(callback=_finite(above=0, at_most=1), help="Stop once an epoch's answer-token accuracy reaches this.")] = 0.95,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
    preset: Annotated[str, typer.Option("--preset", help="Built-in benchmark whose splits --data may name, and whose tiny model size 'tiny' uses.")] = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
    checkpoint_every: CheckpointEvery = 200,
    resume: Resume = False,
) -> None:
    """Fine-tune a model on QA data (how targets and retain oracles are made, for your own data too)."""
    _check_outputs(output, overwrite, preset=preset, cache=cache, data=data, model=model)
    from unlearnkit.benchmark import get_preset
    from unlearnkit.benchmark import prepare as prepare_benchmark
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.finetune import FinetuneConfig
    from unlearnkit.jobs import run_finetune

    bench_config = get_preset(preset)
    config = FinetuneConfig(
        learning_rate=learning_rate or (bench_config.training.learning_rate if model == "tiny" else 1e-5),
        max_epochs=max_epochs, batch_size=batch_size, target_accuracy=target_accuracy, seed=seed,
    )
    from unlearnkit.data.qa import is_builtin_name

    needs_builtin = any(is_builtin_name(source) for source in data)
    bench = prepare_benchmark(bench_config, cache, (), _state["progress"]) if needs_builtin else None
    stats = run_finetune(
        model=model, data=data, output=output, config=config, tiny=bench_config.model, overwrite=overwrite,
        fmt=PromptFormat(prompt_format), trust_remote_code=trust_remote_code, bench=bench, show_progress=_state["progress"],
        checkpoint_every=checkpoint_every, resume=resume,
    )
    typer.echo(f"{stats['epochs']} epochs, answer-token accuracy {stats['answer_accuracy']:.4f}; model in {output}/model")


@app.command()
def unlearn(
    method: Annotated[str, typer.Option(help="Unlearning method (see `unlearnkit methods`).")],
    output: Output,
    model: Annotated[str, typer.Option(help="'builtin' (the built-in target), a model folder, or a hub name.")] = "builtin",
    forget: Annotated[str, typer.Option(help="Forget data: a built-in split, a JSON/JSONL/CSV/Parquet file, or hf:NAME[:CONFIG][@SPLIT].")] = "forget10",
    retain: Annotated[str | None, typer.Option(help="Retain data (same forms); default for built-in forget splits: the complementary retain split.")] = None,
    sets: Sets = None,
    oracle_reference: OracleReference = None,
    evaluate_after: Annotated[bool, typer.Option("--eval/--no-eval", help="Evaluate the unlearned model (built-in benchmark, or the given data).")] = True,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
    eval_batch_size: Annotated[int, typer.Option(min=1, help="Sequences per evaluation forward pass.")] = 64,
    max_new_tokens: MaxNewTokens = 48,
    checkpoint_every: CheckpointEvery = 50,
    resume: Resume = False,
    on_overlap: Annotated[str, typer.Option(callback=_choice("refuse", "warn"), help="When forget questions also appear in the retain data: 'refuse' or 'warn'.")] = "refuse",
    eval_every: EvalEvery = 0,
    select_best: SelectBest = None,
    subject_to: SubjectTo = None,
    patience: Patience = 0,
    eval_rows: EvalRows = 0,
) -> None:
    """Unlearn a forget set from a model and write the model, metrics and logs."""
    _check_outputs(output, overwrite, preset=preset, cache=cache, model=model, forget=forget, retain=retain,
                   oracle_reference=oracle_reference)
    from unlearnkit.benchmark import FORGET_SPLITS, get_preset
    from unlearnkit.benchmark import prepare as prepare_benchmark
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.data.qa import is_builtin_name
    from unlearnkit.evaluation.evaluator import load_reference
    from unlearnkit.jobs import run_unlearn
    from unlearnkit.unlearn import resolve_method

    bench_config = get_preset(preset)
    overrides = _parse_sets(sets)
    tracking = _tracking(eval_every, select_best, subject_to, patience, eval_rows)
    if tracking.enabled and not evaluate_after:
        raise UnlearnkitError("--eval-every evaluates on the evaluation sets: drop --no-eval.")
    builtin_forget = forget in FORGET_SPLITS and not Path(forget).exists()
    if model == "builtin":
        overrides = {**bench_config.overrides_for(method), **overrides}
    resolve_method(method, overrides)  # fail on a bad method or hyperparameter before any training
    bench = None
    if model == "builtin" or builtin_forget or (retain and is_builtin_name(retain)):
        bench = prepare_benchmark(bench_config, cache, (forget,) if builtin_forget else (), _state["progress"])
    if retain is None and builtin_forget:
        retain = bench.retain_split(forget)
    model_path = str(bench.target_dir) if model == "builtin" else model
    fmt = PromptFormat("plain") if model == "builtin" else PromptFormat(prompt_format)
    eval_splits, reference = None, None
    if evaluate_after:
        if builtin_forget:
            eval_splits = bench.eval_splits(forget)
            reference = load_reference(oracle_reference or bench.reference_path(forget))
        else:
            eval_splits = _user_eval_splits(forget, retain, None, None)
            reference = load_reference(oracle_reference) if oracle_reference else None
    summary = run_unlearn(
        model=model_path, method=method, forget=forget, retain=retain, output=output, overrides=overrides,
        overwrite=overwrite, bench=bench, eval_splits=eval_splits, oracle_reference=reference, fmt=fmt,
        eval_config=_eval_config(eval_batch_size, max_new_tokens), trust_remote_code=trust_remote_code,
        show_progress=_state["progress"], checkpoint_every=checkpoint_every, resume=resume, on_overlap=on_overlap,
        tracking=tracking,
    )
    _echo_summary(summary)
    typer.echo(f"Results: {output} (model in {output}/model)")


def _user_eval_splits(forget: str, retain: str | None, real_authors: str | None, world_facts: str | None) -> dict[str, list[dict]]:
    from unlearnkit.data.qa import load_qa

    sources = {"forget": forget, "retain": retain, "real_authors": real_authors, "world_facts": world_facts}
    return {split: load_qa(source, role=split) for split, source in sources.items() if source}


def _echo_summary(summary: dict[str, Any]) -> None:
    for key, value in summary.items():
        typer.echo(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="A model folder or hub name ('builtin-target' / 'builtin-oracle' for the built-in ones).")],
    output: Output,
    benchmark: Annotated[str | None, typer.Option(help="Evaluate on the built-in benchmark's sets for this forget split (e.g. forget10).")] = None,
    forget: Annotated[str | None, typer.Option(help="Forget QA data (file or hf:...).")] = None,
    retain: Annotated[str | None, typer.Option(help="Retain QA data.")] = None,
    real_authors: Annotated[str | None, typer.Option(help="Real-authors utility data.")] = None,
    world_facts: Annotated[str | None, typer.Option(help="World-facts utility data.")] = None,
    holdout: Annotated[str | None, typer.Option(help="Holdout QA data never trained on: membership inference and memorization against --forget.")] = None,
    oracle_reference: OracleReference = None,
    save_reference: Annotated[Path | None, typer.Option(help="Write this model's per-sample forget truth ratios here, as a retain oracle's reference file.")] = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 64,
    max_new_tokens: MaxNewTokens = 48,
) -> None:
    """Evaluate a model: TOFU-style metrics, forget quality against a retain oracle, model utility."""
    _check_outputs(output, overwrite, preset=preset, cache=cache, files={"--save-reference": save_reference}, model=model,
                   forget=forget, retain=retain, real_authors=real_authors, world_facts=world_facts, holdout=holdout,
                   oracle_reference=oracle_reference)
    from unlearnkit.benchmark import get_preset
    from unlearnkit.benchmark import prepare as prepare_benchmark
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.evaluation.evaluator import load_reference
    from unlearnkit.jobs import run_eval

    eval_config = _eval_config(batch_size, max_new_tokens)
    if benchmark:
        if forget or retain or real_authors or world_facts or holdout:
            raise UnlearnkitError("Pass either --benchmark SPLIT or data files (--forget/--retain/...), not both.")
        bench = prepare_benchmark(get_preset(preset), cache, (benchmark,), _state["progress"])
        splits = bench.eval_splits(benchmark)
        reference = load_reference(oracle_reference or bench.reference_path(benchmark))
        model = {"builtin-target": str(bench.target_dir), "builtin-oracle": str(bench.oracle_dir(benchmark))}.get(model, model)
        fmt = PromptFormat("plain")
    else:
        if not forget:
            raise UnlearnkitError("Pass --benchmark SPLIT, or at least --forget FILE (plus optional --retain/--real-authors/--world-facts).")
        splits = _user_eval_splits(forget, retain, real_authors, world_facts)
        if holdout:
            from unlearnkit.data.qa import load_qa

            splits["holdout"] = load_qa(holdout, role="holdout")
        reference = load_reference(oracle_reference) if oracle_reference else None
        fmt = PromptFormat(prompt_format)
    summary = run_eval(
        model=model, splits=splits, output=output, oracle_reference=reference, overwrite=overwrite, fmt=fmt,
        eval_config=eval_config, trust_remote_code=trust_remote_code,
        description={"benchmark": benchmark, "forget": forget, "retain": retain, "real_authors": real_authors,
                     "world_facts": world_facts, "holdout": holdout, "oracle_reference": str(oracle_reference) if oracle_reference else None,
                     # the built-in benchmark's cache names its configuration: reports compare only runs of one benchmark
                     "cache": str(bench.root) if benchmark else None},
        save_reference_to=save_reference,
    )
    _echo_summary(summary)
    typer.echo(f"Results: {output}")


@app.command()
def sequence(
    mode: Annotated[str, typer.Option(callback=_choice("scalability", "sustainability"), help="'scalability' (forget sets of growing size, each from the target) or 'sustainability' (requests one after another).")],
    output: Output,
    method: Annotated[str, typer.Option(help="Unlearning method (see `unlearnkit methods`).")] = "npo",
    model: Annotated[str, typer.Option(help="'builtin' (the built-in target), a model folder, or a hub name (with --muse).")] = "builtin",
    muse: Annotated[Path | None, typer.Option("--muse", help="A MUSE-format folder (raw/, verbmem/, knowmem/, optional scal/ sust/) instead of the built-in benchmark.")] = None,
    muse_name: Annotated[str, typer.Option(callback=_choice("muse-news", "muse-books"), help="Which MUSE corpus the folder holds: muse-news or muse-books.")] = "muse-news",
    splits: Annotated[str, typer.Option(help="Scalability on the built-in benchmark: comma-separated forget splits, smallest first.")] = "forget01,forget05,forget10",
    source_split: Annotated[str, typer.Option(help="Sustainability on the built-in benchmark: the forget split cut into requests.")] = "forget10",
    requests: Annotated[int, typer.Option(min=1, help="Requests to cut the forget data into (sustainability; scalability on MUSE raw/forget).")] = 4,
    num_shots: Annotated[int | None, typer.Option(min=0, help="KnowMem in-context examples (default: all given).")] = None,
    sets: Sets = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """MUSE's scalability and sustainability: unlearn several forget sets and evaluate after each stage."""
    _check_outputs(output, overwrite, preset=preset, cache=cache, model=model, muse=muse)
    from transformers import AutoConfig

    from unlearnkit.benchmark import get_preset
    from unlearnkit.benchmark import prepare as prepare_benchmark
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.evaluation.muse import MuseConfig
    from unlearnkit.jobs import format_table
    from unlearnkit.modeling import load_tokenizer
    from unlearnkit.sequential import MODES, builtin_plan, muse_plan, run_sequence
    from unlearnkit.unlearn import resolve_method

    if mode not in MODES:
        raise UnlearnkitError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}.")
    bench_config = get_preset(preset)
    overrides = _parse_sets(sets)
    if model == "builtin":
        overrides = {**bench_config.overrides_for(method), **overrides}
    config = resolve_method(method, overrides)  # a bad method or hyperparameter fails before any work
    muse_config = MuseConfig(num_shots=num_shots)
    stage_splits = tuple(s.strip() for s in splits.split(",") if s.strip())
    bench = None
    if model == "builtin" or muse is None:
        oracle_splits = stage_splits if mode == "scalability" else (source_split,)
        bench = prepare_benchmark(bench_config, cache, oracle_splits if muse is None else (), _state["progress"])
    model_path = str(bench.target_dir) if model == "builtin" else model
    fmt = PromptFormat("plain") if model == "builtin" else PromptFormat(prompt_format)
    tokenizer = load_tokenizer(model_path, trust_remote_code)
    fmt.uses_chat(tokenizer)
    try:
        context = getattr(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code), "max_position_embeddings", None)
    except (OSError, ValueError) as error:
        raise UnlearnkitError(f"Could not read the configuration of {model_path}: {error}") from None
    if muse is None:
        if context is None:
            raise UnlearnkitError("The built-in runner needs a model whose config states its context (max_position_embeddings).")
        plan = builtin_plan(bench, mode, tokenizer, context, splits=stage_splits, source_split=source_split,
                            num_requests=requests, muse_config=muse_config)
    else:
        plan = muse_plan(muse, mode, tokenizer, context, benchmark=muse_name, num_requests=requests, muse_config=muse_config)
    summary = run_sequence(plan=plan, model_source=model_path, tokenizer=tokenizer, method=method, config=config,
                           output=output, fmt=fmt, overwrite=overwrite, show_progress=_state["progress"],
                           trust_remote_code=trust_remote_code)
    columns = [key for key in ("forget_quality", "model_utility", "forget_probability", "forget_rouge_l", "verbmem_forget",
                               "verbmem_stage_forget", "knowmem_forget", "knowmem_retain")
               if any(isinstance(values.get(key), float) for values in summary.values())]
    typer.echo(f"\n{method}, {mode}:\n")
    typer.echo(format_table(summary, columns))
    typer.echo(f"\nResults: {output}/summary.json (one entry per stage; per-sample values in per_sample.json)")


@app.command()
def general(
    model: Annotated[str, typer.Option(help="A model folder or hub name ('builtin-target' for the built-in target).")],
    tasks: Annotated[str, typer.Option(help="Comma-separated lm-eval tasks, e.g. mmlu,wmdp_bio,wmdp_cyber.")],
    output: Output,
    include_path: Annotated[Path | None, typer.Option(help="A folder of your own lm-eval task YAML files.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N documents per task (quick checks).")] = None,
    num_fewshot: Annotated[int | None, typer.Option(min=0, help="Few-shot examples per question (default: the task's).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Requests per forward pass.")] = 16,
    preset: Preset = "default",
    cache: Cache = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Accuracy on general benchmarks through lm-eval (optional extra: pip install "unlearnkit\\[general]")."""
    _check_outputs(output, overwrite, preset=preset, cache=cache, model=model, include_path=include_path)
    from unlearnkit.evaluation.general import parse_tasks
    from unlearnkit.jobs import run_general

    if model == "builtin-target":
        from unlearnkit.benchmark import get_preset
        from unlearnkit.benchmark import prepare as prepare_benchmark

        model = str(prepare_benchmark(get_preset(preset), cache, (), _state["progress"]).target_dir)
    results = run_general(model=model, tasks=parse_tasks(tasks), output=output, overwrite=overwrite, include_path=include_path,
                          batch_size=batch_size, limit=limit, num_fewshot=num_fewshot, trust_remote_code=trust_remote_code)
    for task, values in results.items():
        typer.echo(f"{task:>28}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items()))
    typer.echo(f"Results: {output}")


@app.command()
def audit(
    model: Annotated[str, typer.Argument(help="The unlearned model: a folder (or an unlearn/demo results folder), or a hub name.")],
    output: Output,
    benchmark: Annotated[str | None, typer.Option(help="Audit on the built-in benchmark for this forget split (e.g. forget10); the target and retain oracle come with it.")] = None,
    target: Annotated[str | None, typer.Option(help="The model before unlearning (folder or hub name); built-in: the benchmark's target.")] = None,
    oracle: Annotated[str | None, typer.Option(help="The retain oracle, trained without the forget set; built-in: the benchmark's oracle.")] = None,
    forget: Annotated[str | None, typer.Option(help="Forget QA data (file or hf:...) when not on the built-in benchmark.")] = None,
    retain: Annotated[str | None, typer.Option(help="Retain QA data (the linear probe trains on it).")] = None,
    holdout: Annotated[str | None, typer.Option(help="Holdout QA data never trained on (membership inference).")] = None,
    attacks: Annotated[str, typer.Option(help="Comma-separated attacks (see `unlearnkit attacks`), or 'all'.")] = "all",
    sets: Annotated[list[str] | None, typer.Option("--set", help="Audit setting KEY=VALUE (repeatable); see `unlearnkit attacks -v`.")] = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Attack an unlearned model to bring the forgotten knowledge back; compare with the target and the retain oracle."""
    _check_outputs(output, overwrite, preset=preset, cache=cache, MODEL=model, target=target, oracle=oracle, forget=forget,
                   retain=retain, holdout=holdout)
    from unlearnkit.attacks import AuditData
    from unlearnkit.audit import attack_order, build_audit_config, builtin_audit_settings, format_table, run_audit
    from unlearnkit.bench import parse_list
    from unlearnkit.benchmark import get_preset
    from unlearnkit.benchmark import prepare as prepare_benchmark
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.data.qa import load_qa

    names = None if attacks.strip() == "all" else attack_order(parse_list(attacks, "--attacks"))
    overrides = _parse_sets(sets)
    build_audit_config(overrides)  # a bad attack name or setting fails before any model is loaded or trained
    cached = None
    if benchmark is not None:
        if forget or retain or holdout:
            raise UnlearnkitError("--benchmark brings its own forget, retain and holdout sets: drop --forget/--retain/--holdout.")
        bench = prepare_benchmark(get_preset(preset), cache, (benchmark,), _state["progress"])
        config = build_audit_config({**builtin_audit_settings(bench.config), **overrides})
        data = AuditData(forget=bench.split(benchmark), retain=bench.split(bench.retain_split(benchmark)),
                         holdout=bench.split("holdout" + benchmark[-2:]), fmt=PromptFormat("plain"))
        builtin = {"target": bench.target_dir, "oracle": bench.oracle_dir(benchmark)}
        target, oracle = target or str(builtin["target"]), oracle or str(builtin["oracle"])
        # The built-in target's and oracle's outcomes are the same for every audited method: computed once, then reused.
        cached = {role: bench.root / "audits" / f"{role}-{benchmark}" for role, chosen in (("target", target), ("oracle", oracle))
                  if Path(chosen) == builtin[role]}
        description = {"benchmark": benchmark, "preset": preset}
    else:
        if not forget:
            raise UnlearnkitError("Give the data to attack: --benchmark SPLIT for the built-in benchmark, or --forget FILE (with --target and --oracle).")
        config = build_audit_config(overrides)
        data = AuditData(forget=load_qa(forget, role="forget"), retain=load_qa(retain, role="retain") if retain else [],
                         holdout=load_qa(holdout, role="holdout") if holdout else [], fmt=PromptFormat(prompt_format))
        description = {"forget": forget, "retain": retain, "holdout": holdout}
    result = run_audit(model=model, output=output, data=data, target=target, oracle=oracle, attacks=names, config=config,
                       overwrite=overwrite, trust_remote_code=trust_remote_code, cached=cached, description=description)
    typer.echo(format_table(result.rows, result.exposed_by), nl=False)
    typer.echo(f"Results: {output} (report: {output}/report.html)")


@app.command("attacks")
def attacks_command(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list the audit's settings with their defaults and help.")] = False,
) -> None:
    """List the robustness attacks of `unlearnkit audit` with their papers."""
    from dataclasses import fields

    from unlearnkit.attacks import ATTACKS, AuditConfig
    from unlearnkit.audit import attack_order

    family = None
    for name in attack_order():
        spec = ATTACKS.get(name)
        if spec.family != family:
            family = spec.family
            typer.echo(f"[{family}]")
        typer.echo(f"{name}\n    {spec.summary}\n    Paper: {spec.paper}\n")
    if verbose:
        typer.echo("Audit settings (--set KEY=VALUE):")
        for item in fields(AuditConfig):
            typer.echo(f"  {item.name} (default {item.default}): {item.metadata.get('help', '')}")


@app.command()
def methods(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list every hyperparameter with its default and help.")] = False,
) -> None:
    """List the unlearning methods with their papers."""
    from unlearnkit.methods import METHODS
    from unlearnkit.settings import config_help

    families: dict[str, list[str]] = {}
    for name in METHODS.names():
        families.setdefault(METHODS.get(name).family, []).append(name)
    for family, names in families.items():
        typer.echo(f"[{family}]")
        for name in names:
            spec = METHODS.get(name)
            typer.echo(f"{name}\n    {spec.summary}\n    Paper: {spec.paper}")
            if verbose:
                for field_name, type_name, default, text in config_help(spec.config):
                    typer.echo(f"      {field_name} ({type_name}, default {default}): {text}")
            typer.echo("")
    typer.echo("Every method takes the shared options (see -v), among them lora_rank for its LoRA form\n"
               "and target_modules / layers to choose the weights it may change.")


@app.command()
def metrics() -> None:
    """List every reported metric with its better direction, definition and source paper."""
    from unlearnkit.evaluation.catalog import FAMILIES, metric_catalog

    catalog = metric_catalog()
    for family in FAMILIES:
        specs = [catalog.get(name) for name in catalog.names() if catalog.get(name).family == family]
        if not specs:
            continue
        typer.echo(f"[{family}]")
        for spec in specs:
            typer.echo(f"{spec.name} ({spec.direction} is better {spec.arrow})\n    {spec.definition}\n    Paper: {spec.paper}")
        typer.echo("")


@app.command()
def fuse(
    base: Annotated[str, typer.Option("--base", help="The model every EUL run started from (folder or hub name).")],
    layers: Annotated[list[Path], typer.Option("--layers", help="An EUL run's model/unlearning_layers.safetensors; repeat once per run.")],
    output: Output,
    ridge: Annotated[float | None, typer.Option(callback=_finite(at_least=0), help="Pull towards the identity, relative to the Gram matrices' mean diagonal (default 1e-6).")] = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Fuse the unlearning layers of several EUL runs into one model (Chen & Yang's least-squares closed form)."""
    _check_outputs(output, overwrite, base=base, layers=layers)
    from unlearnkit.methods.eul import DEFAULT_RIDGE, fuse_unlearning_files

    modules = fuse_unlearning_files(
        base, layers, output, ridge=DEFAULT_RIDGE if ridge is None else ridge, overwrite=overwrite, trust_remote_code=trust_remote_code
    )
    typer.echo(f"fused {len(layers)} run(s) at {len(modules)} module(s); model in {output}")


@data_app.command("export")
def data_export(
    output: Output,
    preset: Preset = "default",
    overwrite: Overwrite = False,
) -> None:
    """Write the built-in benchmark's splits as JSONL files, one per split."""
    from unlearnkit.benchmark import get_preset
    from unlearnkit.data.world import export_world, generate_world
    from unlearnkit.io import write_json
    from unlearnkit.jobs import results_folder

    config = get_preset(preset)
    with results_folder(output, overwrite) as folder:
        paths = export_world(generate_world(config.world), folder)
        write_json(folder / "export.json", {"command": "data export", "preset": preset, "files": sorted(p.name for p in paths)})
    typer.echo(f"wrote {len(paths)} splits to {output}")


# Exit statuses (README, "Reliability"): 0 done; 1 an internal error (a bug: please report the traceback);
# 2 bad input or usage, nothing written; 3 training diverged; 4 results could not be written (disk full,
# I/O error), the unfinished run is kept; 130 / 143 interrupted by SIGINT / SIGTERM, the unfinished run is kept.
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_CANNOT_WRITE = 2, 3, 4
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def main() -> None:
    """Console entry point: every failure the user can fix prints one message (no traceback) and a documented status."""
    previous = _catch_signals()
    try:
        status = app(standalone_mode=False)
    except NumericalFault as error:
        _fail(str(error), EXIT_DIVERGED)
    except UnlearnkitError as error:
        _fail(str(error), EXIT_BAD_INPUT)
    except Interrupted as error:
        _fail(_interrupted_message(error), error.exit_status)
    except KeyboardInterrupt as error:  # before the handlers were installed, or raised by a library
        _fail(_interrupted_message(error), SIGNAL_EXIT[signal.SIGINT])
    except OSError as error:
        if error.errno not in NO_SPACE:
            raise
        _fail(f"{error.strerror or error} while writing {error.filename or 'the results'}. Free some space and rerun the "
              "same command: an unfinished run resumes from its last intact checkpoint.", EXIT_CANNOT_WRITE)
    except Exception as error:
        # typer ships its own copy of click, whose exceptions are not click's: recognise them by what they carry.
        if not (hasattr(error, "format_message") and hasattr(error, "exit_code")):
            raise
        _usage_error(error)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if isinstance(status, int) and status:  # typer returns the status of a command that exits early
        sys.exit(status)


def _fail(message: str, status: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(status)


def _usage_error(error: Exception) -> None:
    """A usage error (unknown option or command, missing or malformed value): one message and a pointer to --help."""
    context = getattr(error, "ctx", None)
    message = error.format_message()  # type: ignore[attr-defined]
    if type(error).__name__ == "NoArgsIsHelpError":  # a bare command group: its help is the message
        typer.echo(message, err=True)
        sys.exit(EXIT_BAD_INPUT)
    hint = f"\nSee '{context.command_path} --help'." if context is not None else ""
    typer.echo(f"error: {message}{hint}", err=True)
    sys.exit(error.exit_code or EXIT_BAD_INPUT)  # type: ignore[attr-defined]


def _catch_signals() -> dict[int, Any]:
    """SIGINT and SIGTERM raise :class:`Interrupted`, so the run keeps its unfinished state and exits 130 / 143.

    A second signal during that clean-up gets the default behaviour (stop at once).
    """
    previous = {number: signal.getsignal(number) for number in SIGNAL_EXIT}

    def interrupt(number: int, _frame: Any) -> None:
        for each in SIGNAL_EXIT:
            signal.signal(each, signal.default_int_handler if each == signal.SIGINT else signal.SIG_DFL)
        raise Interrupted(signal.Signals(number).name, SIGNAL_EXIT[number])

    try:
        for number in SIGNAL_EXIT:
            signal.signal(number, interrupt)
    except ValueError:  # not the main thread (e.g. called from a worker thread): keep Python's defaults
        return {}
    return previous


def _interrupted_message(error: BaseException) -> str:
    """Where the unfinished run is kept and how to resume it."""
    name = getattr(error, "signal_name", "SIGINT")
    staging = getattr(error, "staging", None)
    if staging is None:
        return f"interrupted by {name} before any results were written; rerun the same command to run it again."
    checkpoints = sorted(Path(staging, "checkpoints").glob("checkpoint-*"))
    how = ("rerun the same command to resume it from its last checkpoint (--resume insists on resuming)"
           if checkpoints else "rerun the same command to run it again")
    return f"interrupted by {name}; the unfinished run is kept in {staging}: {how}, or pass --overwrite to start over."


if __name__ == "__main__":
    main()
