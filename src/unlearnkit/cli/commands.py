"""The commands: each declares its options, resolves them (:mod:`unlearnkit.runs.inputs`), calls a runner and prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from unlearnkit.cli.app import app, data_app, show_progress
from unlearnkit.cli.options import (
    Cache,
    CheckpointEvery,
    DateString,
    EvalEvery,
    EvalRows,
    Holdout,
    Localize,
    MaxNewTokens,
    OracleReference,
    Output,
    Overwrite,
    Patience,
    Preset,
    PromptStyle,
    RealAuthors,
    RemoteCode,
    Resume,
    SelectBest,
    Sets,
    SubjectTo,
    SystemPrompt,
    WorldFacts,
    choice,
    finite,
)
from unlearnkit.cli.papers import papers as papers_command
from unlearnkit.errors import NumericalFault
from unlearnkit.runs.inputs import Builtin, RunOptions, check_outputs, parse_sets

Method = Annotated[str, typer.Option(help="Unlearning method (see `unlearnkit methods`).")]


def _tracking(every: int, select_best: str | None, subject_to: str | None, patience: int, rows: int) -> Any:
    from unlearnkit.evaluation.tracking import TrackingConfig

    return TrackingConfig(every=every, select_best=select_best, subject_to=subject_to, patience=patience, max_rows=rows)


def _prompt_format(style: str, system_prompt: str | None, date_string: str | None) -> Any:
    """``--prompt-format`` with ``--system-prompt`` and ``--date-string``, checked together (a slot the format lacks is refused)."""
    from unlearnkit.data.encoding import PromptFormat

    return PromptFormat(style, system_prompt, date_string)


def _echo_table(summary: dict[str, Any], columns: Any = None) -> None:
    from unlearnkit.report.tables import HEADLINE_METRICS, format_table

    typer.echo(format_table(summary, columns or HEADLINE_METRICS))


def _echo_summary(summary: dict[str, Any]) -> None:
    for key, value in summary.items():
        if key == "not_computed":
            for metric, reason in value.items():
                typer.echo(f"{metric:>28}: not computed: {reason}")
            continue
        typer.echo(f"{key:>28}: {value:.4g}" if isinstance(value, float) else f"{key:>28}: {value}")


@app.command()
def demo(
    output: Output = Path("runs/demo"),
    method: Method = "npo",
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
    localize: Localize = None,
) -> None:
    """Prepare the built-in benchmark (cached), unlearn a split, and compare target, retain oracle and unlearned model."""
    from unlearnkit.api import with_localize
    from unlearnkit.runs.inputs import resolve_method
    from unlearnkit.runs.unlearn import run_demo

    builtin = Builtin(preset, cache, show_progress())
    overrides = with_localize(parse_sets(sets), localize)
    check_outputs(output, overwrite, builtin=builtin, localize=overrides.get("localize"))
    tracking = _tracking(eval_every, select_best, subject_to, patience, eval_rows)
    summary = run_demo(builtin=builtin, method=resolve_method(method, overrides, builtin), forget_split=split,
                       options=RunOptions(output, overwrite, show_progress(), checkpoint_every, resume), tracking=tracking)
    typer.echo(f"\n{method} on {split} (built-in benchmark, preset {preset}):\n")
    _echo_table(summary)
    typer.echo(f"\nResults: {output}/summary.json (per-sample values in per_sample.json, model in model/)")
    if (output / "report.html").is_file():
        typer.echo(f"Report: {output / 'report.html'}")


@app.command("real-knowledge")
def real_knowledge(
    output: Output = Path("runs/real-knowledge"),
    method: Method = "npo",
    model: Annotated[str, typer.Option(
        help="The pretrained model to unlearn: a name (see `unlearnkit models`), a model folder or a hub name."
    )] = "smollm2-135m",
    probes: Annotated[Path | None, typer.Option(
        help="Probes JSONL (forget and neighbour facts in qa/cloze/mcq forms; docs/real_knowledge.md). Default: the shipped "
             "probes, selected on smollm2-135m."
    )] = None,
    forget_corpus: Annotated[Path | None, typer.Option(help="Passages to forget, JSONL {entity, text} (default: shipped).")] = None,
    retain_corpus: Annotated[Path | None, typer.Option(help="Passages the method keeps, JSONL {entity, text} (default: shipped).")] = None,
    general_text: Annotated[Path | None, typer.Option(help="Plain text for perplexity, paragraphs apart (default: shipped).")] = None,
    targets: Annotated[str | None, typer.Option(
        help="Unlearn only these forget entities, comma-separated (e.g. 'Albert Einstein,Paris'); the other forget entities' "
             "probes then count as neighbours. Default: every forget entity.")] = None,
    sets: Sets = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    cache: Cache = None,
    checkpoint_every: CheckpointEvery = 50,
    resume: Resume = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Unlearn real knowledge of a pretrained model (no retain oracle): forget vs neighbour accuracy, before and after."""
    from unlearnkit.data.real_knowledge import parse_targets
    from unlearnkit.evaluation.real_knowledge import HEADLINE_KEYS
    from unlearnkit.runs.real_knowledge import resolve_method, resolve_real_knowledge, run_real_knowledge

    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    chosen_targets = parse_targets(targets) if targets is not None else None
    chosen = resolve_method(method, parse_sets(sets))
    check_outputs(output, overwrite, model=model, probes=probes, forget_corpus=forget_corpus, retain_corpus=retain_corpus,
                  general_text=general_text, files={"--cache": cache})
    inputs = resolve_real_knowledge(model=model, method=chosen, probes=probes, forget_corpus=forget_corpus,
                                    retain_corpus=retain_corpus, general_text=general_text, prompt_format=fmt,
                                    targets=chosen_targets)
    summary = run_real_knowledge(inputs=inputs, options=RunOptions(output, overwrite, show_progress(), checkpoint_every, resume,
                                                                   trust_remote_code), cache=cache)
    typer.echo(f"\n{method} on real knowledge ({model}):\n")
    _echo_table(summary, HEADLINE_KEYS)
    typer.echo(f"\nResults: {output}/summary.json (per-probe results in per_sample.json, model in model/)")
    if (output / "report.html").is_file():
        typer.echo(f"Report: {output / 'report.html'}")


@app.command()
def bench(
    methods: Annotated[str, typer.Option(help="Comma-separated methods (see `unlearnkit methods`), e.g. ga,graddiff,npo.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Benchmark folder: new, empty, or an earlier bench's (resumed, or extended with more runs)."
    )],
    splits: Annotated[str, typer.Option(help="Comma-separated forget splits: forget01, forget05, forget10.")] = "forget10",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds; each combination runs once per seed.")] = "0",
    preset: Preset = "default",
    sets: Sets = None,
    cache: Cache = None,
    checkpoint_every: CheckpointEvery = 50,
    localize: Localize = None,
) -> None:
    """Run every method x split x seed on the built-in benchmark (resumable) and write a leaderboard and a report."""
    from unlearnkit.api import with_localize
    from unlearnkit.runs.bench import parse_list, parse_seeds, run_bench

    builtin = Builtin(preset, cache, show_progress())
    overrides = with_localize(parse_sets(sets), localize)
    names = parse_list(methods, "--methods")
    check_outputs(None, False, builtin=builtin, files={"--output": output}, localize=overrides.get("localize"))
    if overrides.get("localize"):
        _check_bench_localization(builtin, names, overrides)
    outcome = run_bench(builtin=builtin, methods=names, splits=parse_list(splits, "--splits"),
                        seeds=parse_seeds(seeds), overrides=overrides,
                        options=RunOptions(output, show_progress=show_progress(), checkpoint_every=checkpoint_every))
    typer.echo(f"\n{len(outcome.ran)} run(s) done now, {len(outcome.skipped)} done before (skipped).\n")
    typer.echo((output / "leaderboard.md").read_text(encoding="utf-8"))
    typer.echo(f"Leaderboard: {output}/leaderboard.md (.csv, .json); one results folder per run in {output}")
    if outcome.report is not None:
        typer.echo(f"Report: {outcome.report}")
    if outcome.failed:
        raise NumericalFault(f"{len(outcome.failed)} run(s) diverged and are left out of the leaderboard: "
                             + "; ".join(f"{name}: {error}" for name, error in outcome.failed.items()))


def _check_bench_localization(builtin: Builtin, methods: list[str], overrides: dict[str, str]) -> None:
    """Before any run of a bench: every method can use the localization, and it was made on the benchmark's target."""
    from unlearnkit.runs.inputs import resolve_method
    from unlearnkit.runs.localize import check_fits_model
    from unlearnkit.unlearning import method_localization

    for name in methods:
        method_localization(name, resolve_method(name, overrides, builtin).config)
    check_fits_model(overrides["localize"], str(builtin.prepared().target_dir))


@app.command()
def report(
    folders: Annotated[list[Path], typer.Argument(
        help="Results folders of demo, bench, unlearn or eval (a bench folder stands for all its runs)."
    )],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML file to write.")] = Path("report.html"),
    title: Annotated[str, typer.Option(help="The report's title.")] = "unlearnkit report",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file at --output.")] = False,
) -> None:
    """One self-contained HTML report (plots embedded, no network needed) comparing the given results folders."""
    from unlearnkit.api import write_report

    report = write_report(folders, output=output, title=title, overwrite=overwrite)
    typer.echo(f"Report on {report.runs} run(s): {report.path}")


@app.command()
def prepare(
    preset: Preset = "default",
    splits: Annotated[str | None, typer.Option(
        help="Comma-separated forget splits to train retain oracles for (default: the preset's own; see `unlearnkit presets`)."
    )] = None,
    cache: Cache = None,
) -> None:
    """Generate the built-in benchmark and train its target model and retain oracles (cached)."""
    builtin = Builtin(preset, cache, show_progress())
    names = builtin.config.forget_splits if splits is None else tuple(split.strip() for split in splits.split(",") if split.strip())
    bench = builtin.prepared(*names)
    typer.echo(f"target model: {bench.target_dir}")
    for split in names:
        typer.echo(f"retain oracle for {split}: {bench.oracle_dir(split)} (reference: {bench.reference_path(split).name})")


@app.command()
def finetune(
    data: Annotated[list[str], typer.Option(
        "--data", help="Training data: a built-in split, a JSON/JSONL/CSV/Parquet file or hf:NAME[:CONFIG][@SPLIT]; repeatable."
    )],
    output: Output,
    model: Annotated[str, typer.Option(
        help="'tiny' (a fresh tiny Llama with the built-in benchmark's tokenizer, the same whatever the data), a pretrained "
             "model's name (see `unlearnkit models`), a model folder or a hub name."
    )] = "tiny",
    learning_rate: Annotated[float | None, typer.Option(
        callback=finite(above=0), help="Peak learning rate (default 1e-2 for 'tiny'; use ~1e-5 for large models)."
    )] = None,
    max_epochs: Annotated[int, typer.Option(
        min=1, help="Epochs of the (cosine) learning-rate schedule; stops earlier at --target-accuracy."
    )] = 12,
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per step.")] = 32,
    target_accuracy: Annotated[float, typer.Option(
        callback=finite(above=0, at_most=1), help="Stop once an epoch's answer-token accuracy reaches this."
    )] = 0.95,
    seed: Annotated[int, typer.Option(min=0, max=2**32 - 1, help="Random seed.")] = 0,
    lora_rank: Annotated[int, typer.Option(
        min=0, help="Train LoRA adapters of this rank and merge them into the weights when done (0: train every weight)."
    )] = 0,
    preset: Annotated[str, typer.Option(
        "--preset", help="Built-in benchmark whose splits --data may name, and whose tiny model size 'tiny' uses."
    )] = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
    checkpoint_every: CheckpointEvery = 200,
    resume: Resume = False,
) -> None:
    """Fine-tune a model on QA data (how targets and retain oracles are made, for your own data too)."""
    from unlearnkit.finetune import FinetuneConfig
    from unlearnkit.runs.finetune import TINY, FinetuneInputs, run_finetune
    from unlearnkit.runs.inputs import model_source, resolve_data

    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    builtin = Builtin(preset, cache, show_progress())
    check_outputs(output, overwrite, builtin=builtin, data=data, model=model)
    default_rate = builtin.config.training.learning_rate if model == TINY else 1e-5
    config = FinetuneConfig(learning_rate=learning_rate or default_rate, max_epochs=max_epochs, batch_size=batch_size,
                            target_accuracy=target_accuracy, seed=seed, lora_rank=lora_rank)
    training_data = [resolve_data(source, "training", builtin) for source in data]
    # The data is checked first; then a pretrained model's name becomes its folder (converted on first use), recorded and hashed.
    inputs = FinetuneInputs(model if model == TINY else model_source(model), training_data, fmt, builtin.config.model)
    stats = run_finetune(inputs=inputs, config=config, options=RunOptions(output, overwrite, show_progress(), checkpoint_every,
                                                                          resume, trust_remote_code))
    typer.echo(f"{stats['epochs']} epochs, answer-token accuracy {stats['answer_accuracy']:.4f}; model in {output}/model")


@app.command()
def unlearn(
    method: Method,
    output: Output,
    model: Annotated[str | None, typer.Option(
        help="The model to unlearn: a model folder, a pretrained model's name (see `unlearnkit models`), a hub name, or 'builtin' "
             "(the built-in target; the default with a built-in forget split, and required with your own forget data)."
    )] = None,
    forget: Annotated[str, typer.Option(
        help="Forget data: a built-in split, a JSON/JSONL/CSV/Parquet file, or hf:NAME[:CONFIG][@SPLIT]."
    )] = "forget10",
    retain: Annotated[str | None, typer.Option(
        help="Retain data (same forms); default for built-in forget splits: the complementary retain split."
    )] = None,
    sets: Sets = None,
    oracle_reference: OracleReference = None,
    real_authors: RealAuthors = None,
    world_facts: WorldFacts = None,
    holdout: Holdout = None,
    evaluate_after: Annotated[bool, typer.Option(
        "--eval/--no-eval", help="Evaluate the unlearned model (built-in benchmark, or the given data)."
    )] = True,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
    eval_batch_size: Annotated[int, typer.Option(min=1, help="Sequences per evaluation forward pass.")] = 64,
    max_new_tokens: MaxNewTokens = None,
    checkpoint_every: CheckpointEvery = 50,
    resume: Resume = False,
    on_overlap: Annotated[str, typer.Option(
        callback=choice("refuse", "warn"), help="When forget questions also appear in the retain data: 'refuse' or 'warn'."
    )] = "refuse",
    eval_every: EvalEvery = 0,
    select_best: SelectBest = None,
    subject_to: SubjectTo = None,
    patience: Patience = 0,
    eval_rows: EvalRows = 0,
    localize: Localize = None,
) -> None:
    """Unlearn a forget set from a model and write the model, metrics and logs."""
    from unlearnkit.api import unlearn as run

    result = run(method=method, output=output, model=model, forget=forget, retain=retain, settings=parse_sets(sets),
                 oracle_reference=oracle_reference, real_authors=real_authors, world_facts=world_facts, holdout=holdout,
                 evaluate_after=evaluate_after, preset=preset, cache=cache, prompt_format=prompt_format, system_prompt=system_prompt,
                 date_string=date_string, overwrite=overwrite, trust_remote_code=trust_remote_code, eval_batch_size=eval_batch_size,
                 max_new_tokens=max_new_tokens, checkpoint_every=checkpoint_every, resume=resume, on_overlap=on_overlap,
                 eval_every=eval_every, select_best=select_best, subject_to=subject_to, patience=patience, eval_rows=eval_rows,
                 localize=localize, progress=show_progress())
    _echo_summary(result.summary)
    typer.echo(f"Results: {output} (model in {output}/model)")


@app.command()
def localize(
    model: Annotated[str, typer.Argument(help="The model to localize in: a model folder, a pretrained model's name (see `unlearnkit "
                                              "models`), a hub name, or 'builtin' (the built-in target).")],
    data: Annotated[str, typer.Option(
        "--data", help="The facts to localize: a built-in split, a JSON/JSONL/CSV/Parquet file or hf:NAME[:CONFIG][@SPLIT] (rows with "
                       "question and answer; causal tracing and editing also need the subject, e.g. a 'subject' field)."
    )],
    localizer: Annotated[str, typer.Option("--localizer", help="The localizer (see `unlearnkit localizers`).")],
    output: Output,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Localizer setting KEY=VALUE (repeatable); see `unlearnkit localizers -v`."
    )] = None,
    max_rows: Annotated[int | None, typer.Option(min=1, help="Localize on the first N rows only (default: every row).")] = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Find where the data's facts live in the model (layers, modules, neurons); train only there with --localize DIR."""
    from unlearnkit.api import localize as run

    result = run(model=model, data=data, localizer=localizer, output=output, settings=parse_sets(sets), max_rows=max_rows,
                 preset=preset, cache=cache, prompt_format=prompt_format, system_prompt=system_prompt, date_string=date_string,
                 overwrite=overwrite, trust_remote_code=trust_remote_code, progress=show_progress())
    summary = result.summary
    layers = ", ".join(map(str, summary["layers"])) if summary["layers"] is not None else "all"
    modules = ", ".join(summary["target_modules"]) if summary["target_modules"] is not None else "all"
    typer.echo(f"{localizer} on {summary['rows']} row(s): layers {layers}; modules {modules}; {summary['weights']:,} of "
               f"{summary['weights_total']:,} weights ({summary['weights_fraction']:.2%}) selected.")
    typer.echo(f"Results: {output} (report: {output}/report.md); train only there with --localize {output}")


@app.command()
def wrap(
    model: Annotated[str, typer.Option(help="The model to wrap: a model folder, a pretrained model's name, a hub name or "
                                            "'builtin' (the built-in target). It is read, never changed.")],
    wrapper: Annotated[str, typer.Option(help="The inference-time wrapper (see `unlearnkit wrappers`).")],
    forget: Annotated[str, typer.Option(help="What to forget: a built-in split, a QA file or hf:NAME (question, answer).")],
    output: Output,
    retain: Annotated[str | None, typer.Option(help="Retain QA data (default for a built-in forget split: its retain split).")] = None,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Wrapper setting KEY=VALUE (repeatable); see `unlearnkit wrappers -v`."
    )] = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Unlearn at inference time: wrap a model so it stops revealing the forget data, its weights untouched."""
    from unlearnkit.api import wrap as run

    result = run(model=model, wrapper=wrapper, forget=forget, output=output, retain=retain, settings=parse_sets(sets), preset=preset,
                 cache=cache, prompt_format=prompt_format, system_prompt=system_prompt, date_string=date_string,
                 overwrite=overwrite, trust_remote_code=trust_remote_code, progress=show_progress())
    built = {key: value for key, value in result.summary.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
    typer.echo(f"{wrapper}: " + ", ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                                           for key, value in built.items()))
    typer.echo(f"Results: {output}; the wrapped model is {output}/model (use it as --model with eval, audit, real-knowledge, serve)")


@app.command()
def wrappers(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list every setting with its default and help.")] = False,
) -> None:
    """List the inference-time unlearning wrappers of `unlearnkit wrap` with their papers."""
    from unlearnkit.inference import WRAPPERS
    from unlearnkit.settings import config_help

    for name in WRAPPERS.names():
        spec = WRAPPERS.get(name)
        typer.echo(f"{name} ({spec.family})\n    {spec.summary}\n    Paper: {spec.paper}")
        if verbose:
            for field_name, type_name, default, text in config_help(spec.config):
                typer.echo(f"      {field_name} ({type_name}, default {default}): {text}")
        typer.echo("")
    typer.echo("Build one with `unlearnkit wrap --wrapper NAME --model M --forget DATA -o DIR`; DIR/model is then a model.")


@app.command()
def localizers(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list every setting with its default and help.")] = False,
) -> None:
    """List the localizers of `unlearnkit localize` with their papers."""
    from unlearnkit.localization import LOCALIZERS
    from unlearnkit.settings import config_help

    if not LOCALIZERS.names():
        typer.echo("No localizer is registered.")
    for name in LOCALIZERS.names():
        spec = LOCALIZERS.get(name)
        typer.echo(f"{name}\n    {spec.summary}\n    Paper: {spec.citation}")
        if verbose:
            for field_name, type_name, default, text in config_help(spec.config):
                typer.echo(f"      {field_name} ({type_name}, default {default}): {text}")
        typer.echo("")
    typer.echo("Train only the located weights with `unlearnkit unlearn ... --localize DIR` (also demo and bench).")


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option(help="A model folder, a pretrained model's name or a hub name ('builtin-target' / "
                                            "'builtin-oracle' for the built-in ones; see `unlearnkit models`).")],
    output: Output,
    benchmark: Annotated[str | None, typer.Option(
        help="Evaluate on the built-in benchmark's sets for this forget split (e.g. forget10)."
    )] = None,
    forget: Annotated[str | None, typer.Option(help="Forget QA data (file or hf:...).")] = None,
    retain: Annotated[str | None, typer.Option(help="Retain QA data.")] = None,
    real_authors: RealAuthors = None,
    world_facts: WorldFacts = None,
    holdout: Holdout = None,
    oracle_reference: OracleReference = None,
    save_reference: Annotated[Path | None, typer.Option(
        help="Write this model's per-sample forget truth ratios here, as a retain oracle's reference file."
    )] = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 64,
    max_new_tokens: MaxNewTokens = None,
    privleak_texts: Annotated[tuple[str, str] | None, typer.Option(
        help="MUSE's PrivLeak on raw texts: the forget and holdout text sources, e.g. "
             "muse-news:privleak/forget muse-news:privleak/holdout.",
    )] = None,
    privleak_retain_auc: Annotated[float | None, typer.Option(
        help="The retain model's muse_privleak_auc on the same texts (default: MUSE's constant for muse-news / muse-books)."
    )] = None,
    spv_mia: Annotated[bool, typer.Option(
        "--spv-mia", help="Also compute SPV-MIA's AUC (mia_spv_auc; needs retain and holdout; costs a generation and a "
                          "reference fine-tune). Its settings: --spv-set KEY=VALUE.")] = False,
    spv_sets: Annotated[list[str] | None, typer.Option(
        "--spv-set", help="SPV-MIA setting KEY=VALUE (repeatable), e.g. reference_learning_rate=1e-3; see docs/spv_mia.md.")] = None,
) -> None:
    """Evaluate a model: TOFU-style metrics, forget quality against a retain oracle, model utility."""
    from unlearnkit.api import evaluate

    result = evaluate(model=model, output=output, benchmark=benchmark, forget=forget, retain=retain, real_authors=real_authors,
                      world_facts=world_facts, holdout=holdout, oracle_reference=oracle_reference, save_reference=save_reference,
                      preset=preset, cache=cache, prompt_format=prompt_format, system_prompt=system_prompt, date_string=date_string,
                      overwrite=overwrite, trust_remote_code=trust_remote_code, batch_size=batch_size, max_new_tokens=max_new_tokens,
                      privleak_texts=privleak_texts, privleak_retain_auc=privleak_retain_auc, spv_mia=spv_mia,
                      spv_mia_settings=parse_sets(spv_sets), progress=show_progress())
    _echo_summary(result.summary)
    typer.echo(f"Results: {output}")


@app.command("check-data")
def check_data(
    source: Annotated[str, typer.Argument(help="QA data to check: a .json/.jsonl/.csv/.parquet file, hf:NAME, tofu:/muse- name or "
                                                 "built-in split.")],
    retain: Annotated[str | None, typer.Option(help="Retain data to check with it (overlap with SOURCE, and the model's "
                                                    "preference check runs on it).")] = None,
    model: Annotated[str | None, typer.Option(help="The model before unlearning: adds the length and truth-ratio checks.")] = None,
    max_length: Annotated[int, typer.Option(min=2, help="Tokens per example the methods keep (their max_length).")] = 256,
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON instead of text.")] = False,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    trust_remote_code: RemoteCode = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Sequences per forward pass.")] = 64,
) -> None:
    """Find data that loads but would mislead the metrics: repeats, forget/retain overlap, paraphrases and perturbed answers
    that measure wording, rows too long for the model, a model that prefers the perturbed answers. Writes nothing."""
    import json

    from unlearnkit.runs.check import run_check_data

    report = run_check_data(source, retain=retain, model=model, prompt_format=_prompt_format(prompt_format, system_prompt, date_string),
                            builtin=Builtin(preset, cache, show_progress()), max_length=max_length, batch_size=batch_size,
                            trust_remote_code=trust_remote_code)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
        return
    checked = ", ".join(f"{where}: {rows} rows" for where, rows in report.checked.items())
    typer.echo(f"Checked {checked}.")
    for finding in report.findings:
        typer.echo(f"- [{finding.check}] {finding.describe()}")
    for check, why in report.skipped.items():
        typer.echo(f"  (not checked: {check}: {why})")
    typer.echo(f"{len(report.findings)} finding(s)." if report.findings else "No findings.")


@app.command()
def sequence(
    mode: Annotated[str, typer.Option(
        callback=choice("scalability", "sustainability"),
        help="'scalability' (forget sets of growing size, each from the target) or 'sustainability' (requests one after another).",
    )],
    output: Output,
    method: Method = "npo",
    model: Annotated[str, typer.Option(help="'builtin' (the built-in target), a model folder, or a hub name (with --muse).")] = "builtin",
    muse: Annotated[Path | None, typer.Option(
        "--muse", help="A MUSE-format folder (raw/, verbmem/, knowmem/, optional scal/ sust/) instead of the built-in benchmark."
    )] = None,
    muse_name: Annotated[str, typer.Option(
        callback=choice("muse-news", "muse-books"), help="Which MUSE corpus the folder holds: muse-news or muse-books."
    )] = "muse-news",
    splits: Annotated[str, typer.Option(
        help="Scalability on the built-in benchmark: comma-separated forget splits, smallest first."
    )] = "forget01,forget05,forget10",
    source_split: Annotated[str, typer.Option(
        help="Sustainability on the built-in benchmark: the forget split cut into requests."
    )] = "forget10",
    requests: Annotated[int, typer.Option(
        min=1, help="Requests to cut the forget data into (sustainability; scalability on MUSE raw/forget)."
    )] = 4,
    num_shots: Annotated[int | None, typer.Option(min=0, help="KnowMem in-context examples (default: all given).")] = None,
    sets: Sets = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """MUSE's scalability and sustainability: unlearn several forget sets and evaluate after each stage."""
    from unlearnkit.runs.inputs import BUILTIN_MODEL, resolve_method
    from unlearnkit.runs.sequence import SEQUENCE_COLUMNS, resolve_sequence, run_sequence

    fmt = _prompt_format(prompt_format, system_prompt, date_string)
    builtin = Builtin(preset, cache, show_progress())
    check_outputs(output, overwrite, builtin=builtin, model=model, muse=muse)
    chosen = resolve_method(method, parse_sets(sets), builtin if model == BUILTIN_MODEL else None)
    inputs = resolve_sequence(mode=mode, model=model, method=chosen, builtin=builtin, muse=muse, muse_name=muse_name,
                              splits=tuple(s.strip() for s in splits.split(",") if s.strip()), source_split=source_split,
                              requests=requests, num_shots=num_shots, prompt_format=fmt,
                              trust_remote_code=trust_remote_code)
    summary = run_sequence(inputs=inputs, options=RunOptions(output, overwrite, show_progress(), trust_remote_code=trust_remote_code))
    typer.echo(f"\n{method}, {mode}:\n")
    _echo_table(summary, [key for key in SEQUENCE_COLUMNS if any(isinstance(values.get(key), float) for values in summary.values())])
    typer.echo(f"\nResults: {output}/summary.json (one entry per stage; per-sample values in per_sample.json)")


@app.command()
def general(
    model: Annotated[str, typer.Option(help="A model folder, a pretrained model's name or a hub name ('builtin-target' for the "
                                            "built-in target; see `unlearnkit models`).")],
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
    """Accuracy on general benchmarks through lm-eval (optional extra: pip install "unlearnkit[general]")."""
    from unlearnkit.evaluation.general import parse_tasks
    from unlearnkit.runs.evaluate import run_general
    from unlearnkit.runs.inputs import resolve_model

    builtin = Builtin(preset, cache, show_progress())
    check_outputs(output, overwrite, builtin=builtin, model=model, include_path=include_path)
    results = run_general(model=resolve_model(model, builtin=builtin), tasks=parse_tasks(tasks), include_path=include_path,
                          batch_size=batch_size, limit=limit, num_fewshot=num_fewshot,
                          options=RunOptions(output, overwrite, trust_remote_code=trust_remote_code))
    for task, values in results.items():
        typer.echo(f"{task:>28}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items()))
    typer.echo(f"Results: {output}")


@app.command()
def audit(
    model: Annotated[str, typer.Argument(help="The unlearned model: a folder (or an unlearn/demo results folder), or a hub name.")],
    output: Output,
    benchmark: Annotated[str | None, typer.Option(
        help="Audit on the built-in benchmark for this forget split (e.g. forget10); the target and retain oracle come with it."
    )] = None,
    target: Annotated[str | None, typer.Option(
        help="The model before unlearning (folder, pretrained model's name or hub name); built-in: the benchmark's target."
    )] = None,
    oracle: Annotated[str | None, typer.Option(
        help="The retain oracle, trained without the forget set; built-in: the benchmark's oracle."
    )] = None,
    forget: Annotated[str | None, typer.Option(help="Forget QA data (file or hf:...) when not on the built-in benchmark.")] = None,
    retain: Annotated[str | None, typer.Option(help="Retain QA data (the linear probe trains on it).")] = None,
    holdout: Annotated[str | None, typer.Option(help="Holdout QA data never trained on (membership inference).")] = None,
    attacks: Annotated[str, typer.Option(help="Comma-separated attacks (see `unlearnkit attacks`), or 'all'.")] = "all",
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Audit setting KEY=VALUE (repeatable); see `unlearnkit attacks -v`."
    )] = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Attack an unlearned model to bring the forgotten knowledge back; compare with the target and the retain oracle."""
    from unlearnkit.api import audit as run
    from unlearnkit.report.tables import audit_table

    result = run(model=model, output=output, benchmark=benchmark, target=target, oracle=oracle, forget=forget, retain=retain,
                 holdout=holdout, attacks=attacks, settings=parse_sets(sets), preset=preset, cache=cache, prompt_format=prompt_format,
                 system_prompt=system_prompt, date_string=date_string, overwrite=overwrite, trust_remote_code=trust_remote_code,
                 progress=show_progress())
    typer.echo(audit_table(result.summary["attacks"], result.summary["exposed_by"]), nl=False)
    typer.echo(f"Results: {output} (report: {output}/report.html)")


@app.command()
def forget(
    entity: Annotated[str, typer.Option("--entity", help="The person, work or thing to forget, as the training data names it.")],
    output: Output,
    corpus: Annotated[str | None, typer.Option(
        help="The training data to search: a built-in split (e.g. 'full', the built-in target's training data), or a "
             "JSON/JSONL/CSV/Parquet file of question/answer rows (default with --after: the previous request's)."
    )] = None,
    model: Annotated[str | None, typer.Option(
        help="The model trained on the corpus: a folder, a pretrained model's name or a hub name (default with a built-in "
             "corpus: the built-in target; with --after: the previous request's unlearned model)."
    )] = None,
    alias: Annotated[list[str] | None, typer.Option(
        "--alias", help="Another name of the entity the corpus uses (repeatable): a maiden or pen name, a spelling variant."
    )] = None,
    after: Annotated[Path | None, typer.Option(
        help="The results folder of the previous request: unlearn its model, keep its forgotten rows out of the retain set, "
             "re-check every earlier request, and extend its ledger (the folder itself is not changed)."
    )] = None,
    method: Annotated[str, typer.Option(help="Unlearning method (see `unlearnkit methods`).")] = "npo",
    sets: Sets = None,
    holdout: Annotated[str | None, typer.Option(
        help="Questions about entities the model never saw, in the corpus's format: their recall is the guess level "
             "(default with a built-in corpus: holdout10; without: the guess level is taken as 0)."
    )] = None,
    utility: Annotated[str | None, typer.Option(
        help="General questions that must still be answered (default with a built-in corpus: world_facts)."
    )] = None,
    neighbours: Annotated[int, typer.Option(min=0, help="Rows closest to the entity's (TF-IDF) evaluated as neighbours.")] = 20,
    eval_rows: Annotated[int, typer.Option(min=0, help="Rows of the rest of the corpus evaluated (evenly spaced).")] = 50,
    max_share: Annotated[float, typer.Option(
        callback=finite(above=0, at_most=1), help="Refuse a request whose names match more than this share of the corpus."
    )] = 0.5,
    attacks: Annotated[str, typer.Option(
        help="Attacks of the audit (see `unlearnkit attacks`): 'all' (those that suit the data), comma-separated names, or "
             "'none' (the direct questions only; the verdict then says the audit was not run)."
    )] = "all",
    audit_sets: Annotated[list[str] | None, typer.Option(
        "--audit-set", help="Audit setting KEY=VALUE (repeatable); see `unlearnkit attacks -v`."
    )] = None,
    margin: Annotated[float, typer.Option(
        callback=finite(at_least=0, at_most=0.99), help="Forgotten: recall at most the guess level plus this."
    )] = 0.1,
    max_utility_drop: Annotated[float, typer.Option(
        callback=finite(at_least=0, at_most=0.99), help="Kept: each kept set's answer ROUGE-L may lose at most this share."
    )] = 0.1,
    request_id: Annotated[str | None, typer.Option(help="The requester's reference, recorded in the record and the ledger.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the rows the request would forget and the sizes of what it keeps; write nothing, train nothing."
    )] = False,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    max_new_tokens: MaxNewTokens = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Carry out a deletion request: find the entity's rows, unlearn them, evaluate, attack, and write an audit record."""
    from unlearnkit.api import forget as run

    result = run(entity=entity, output=output, corpus=corpus, model=model, aliases=alias or (), after=after, method=method,
                 settings=parse_sets(sets), holdout=holdout, utility=utility, neighbours=neighbours, eval_rows=eval_rows,
                 max_share=max_share, attacks=attacks, audit_settings=parse_sets(audit_sets), margin=margin,
                 max_utility_drop=max_utility_drop, request_id=request_id, dry_run=dry_run, preset=preset, cache=cache,
                 prompt_format=prompt_format,
                 system_prompt=system_prompt, date_string=date_string, max_new_tokens=max_new_tokens, overwrite=overwrite,
                 trust_remote_code=trust_remote_code, progress=show_progress())
    summary = result.summary
    if dry_run:
        typer.echo(f"{entity}: {summary['forget_rows']} of the corpus's {summary['corpus_rows']} rows would be forgotten "
                   f"({', '.join(summary['names'])} as whole words):")
        for index, question in zip(summary["forget_indices"], summary["questions"], strict=True):
            typer.echo(f"  row {index}: {question}")
        kept_out = "".join(f"; {count} rows of request {number} kept out" for number, count in summary["excluded_earlier_requests"].items())
        typer.echo(f"Retain set: {summary['retain_rows']} rows{kept_out}. Nothing was written (--dry-run).")
        return
    typer.echo(f"Request {summary['request']} ({entity}): {summary['forget_rows']} rows; answer recall {summary['recall_before']:.3f} "
               f"-> {summary['recall_after']:.3f} (guess level {summary['guess_level']:.3f}).")
    for number, still in summary["earlier_still_forgotten"].items():
        state = "no rows in the corpus" if still is None else "still forgotten" if still else "NOT forgotten any more"
        typer.echo(f"Earlier request {number}: {state}.")
    typer.echo(f"Verdict: {summary['verdict']}.")
    typer.echo(f"Record: {output}/record.html (and record.json, ledger.json); unlearned model: {output}/model")


@app.command("attacks")
def attacks_command(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also list the audit's settings with their defaults and help.")] = False,
) -> None:
    """List the robustness attacks of `unlearnkit audit` with their papers."""
    from dataclasses import fields

    from unlearnkit.attacks import ATTACKS, AuditConfig
    from unlearnkit.auditing import attack_order

    family = None
    for name in attack_order():
        spec = ATTACKS.get(name)
        if spec.family != family:
            family = spec.family
            typer.echo(f"[{family}]")
        request = f"\n    Runs only when named (--attacks {name}): it {spec.on_request}." if spec.on_request else ""
        typer.echo(f"{name}\n    {spec.summary}\n    Paper: {spec.paper}{request}\n")
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
def models() -> None:
    """List the built-in models and the pretrained ones (licence, size, installed or not), usable by name as --model."""
    from unlearnkit.builtin import PRESETS
    from unlearnkit.pretrained import describe
    from unlearnkit.runs.inputs import BUILTIN_MODEL_HELP

    tiny = PRESETS["default"].model
    typer.echo("[built-in] tiny Llama models of the built-in benchmark (trained on first use, cached; plain prompts; "
               f"preset default: {tiny.num_layers} layers, hidden size {tiny.hidden_size})")
    for name, text in BUILTIN_MODEL_HELP.items():
        typer.echo(f"{name}\n    {text}")
    typer.echo("tiny (finetune only)\n    a fresh tiny Llama with the built-in benchmark's tokenizer\n")
    typer.echo("[pretrained] real language models shipped as Python packages (GGUF), converted once into the cache, never "
               "downloaded from a hub")
    for row in describe():
        opt_in = " (opt-in)" if row["opt_in"] else ""
        typer.echo(f"{row['name']}: {row['title']}{opt_in}\n    {row['description']}\n    Licence: {row['licence']}; "
                   f"{row['parameters'] / 1e6:.1f}M parameters; {row['fp32_bytes'] / 1e6:,.0f} MB converted (fp32)")
        if not row["installed"]:
            typer.echo(f"    Not installed: {row['pip']}")
        elif row["folder"]:
            typer.echo(f"    Installed; converted: {row['folder']}")
        else:
            typer.echo("    Installed; converted on first use (a minute or so)")
    typer.echo("\nThe pretrained weights are dequantised from 4-bit GGUF copies: a real test bed, not the original releases.")


@app.command()
def presets(cache: Cache = None) -> None:
    """List the built-in benchmark's presets (--preset): their model, size, retain oracles and whether they are prepared."""
    from unlearnkit.builtin import PRESETS, PreparedBenchmark, benchmark_root

    for name, config in PRESETS.items():
        bench = PreparedBenchmark(benchmark_root(config, cache), config)
        model = f"{config.base_model} fine-tuned ({'LoRA r' + str(config.training.lora_rank) if config.training.lora_rank else 'full'})" \
            if config.base_model else f"tiny Llama from scratch ({config.model.num_layers} layers, hidden {config.model.hidden_size})"
        prepared = [part for part, folder in [("target", bench.target_dir)] + [(split, bench.oracle_dir(split)) for split in
                                                                                 config.forget_splits] if folder.is_dir()]
        typer.echo(f"{name}\n    {config.description}\n    model: {model}; prompts: {config.prompt_style}; "
                   f"{config.world.num_authors} authors x {config.world.qa_per_author} facts; "
                   f"retain oracles: {', '.join(config.forget_splits)}\n    prepared: {', '.join(prepared) or 'nothing yet'} "
                   f"({bench.root})")


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
    ridge: Annotated[float | None, typer.Option(
        callback=finite(at_least=0), help="Pull towards the identity, relative to the Gram matrices' mean diagonal (default 1e-6)."
    )] = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Fuse the unlearning layers of several EUL runs into one model (Chen & Yang's least-squares closed form)."""
    from unlearnkit.methods.eul import DEFAULT_RIDGE
    from unlearnkit.runs.fuse import fuse_unlearning_files

    check_outputs(output, overwrite, base=base, layers=layers)
    modules = fuse_unlearning_files(base, layers, output, ridge=DEFAULT_RIDGE if ridge is None else ridge, overwrite=overwrite,
                                    trust_remote_code=trust_remote_code)
    typer.echo(f"fused {len(layers)} run(s) at {len(modules)} module(s); model in {output}")


@data_app.command("export")
def data_export(output: Output, preset: Preset = "default", overwrite: Overwrite = False) -> None:
    """Write the built-in benchmark's splits as JSONL files, one per split."""
    from unlearnkit.runs.export import run_export

    check_outputs(output, overwrite)
    paths = run_export(builtin=Builtin(preset), options=RunOptions(output, overwrite))
    typer.echo(f"wrote {len(paths)} splits to {output}")


app.command("papers")(papers_command)


@app.command()
def influence(
    model: Annotated[str, typer.Argument(help="The model whose training rows to attribute: a model folder, a pretrained model's name, "
                                              "a hub name, or 'builtin' (the built-in target).")],
    query: Annotated[str, typer.Option(
        "--query", help="The facts to explain: a built-in split, a JSON/JSONL/CSV/Parquet file or hf:NAME[:CONFIG][@SPLIT] (rows with "
                        "question and answer)."
    )],
    train: Annotated[str, typer.Option("--train", help="The training rows to rank (same forms as --query), e.g. the built-in 'full'.")],
    output: Output,
    estimator: Annotated[str, typer.Option(
        "--estimator", help="ekfac (Grosse et al. 2023), kfac, diagonal or tracin (Pruthi et al. 2020: gradient dot product)."
    )] = "ekfac",
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Training rows listed per query.")] = 10,
    sets: Annotated[list[str] | None, typer.Option(
        "--set", help="Influence setting KEY=VALUE (repeatable): damping, empirical_fisher, fisher_samples, normalize, modules, layers, "
                      "batch_size, max_length, max_train_rows, group_field, seed (docs/influence.md)."
    )] = None,
    factors: Annotated[Path | None, typer.Option(
        "--factors", help="Reuse the fitted curvature of an earlier influence run on the same model (its folder or its factors/)."
    )] = None,
    preset: Preset = "default",
    cache: Cache = None,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Overwrite = False,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Rank training rows by their influence on each query's answer (influence functions; which rows taught this fact?)."""
    from unlearnkit.api import influence as run

    result = run(model=model, query=query, train=train, output=output, estimator=estimator, top_k=top_k, settings=parse_sets(sets),
                 factors=factors, preset=preset, cache=cache, prompt_format=prompt_format, system_prompt=system_prompt,
                 date_string=date_string, overwrite=overwrite, trust_remote_code=trust_remote_code, progress=show_progress())
    summary = result.summary
    typer.echo(f"{estimator}: {summary['train_rows']} training row(s) ranked for {summary['queries']} query row(s) "
               f"(factors {'reused' if summary['factors_reused'] else 'fitted'}; {summary['seconds']['total']:.1f} s).")
    for name, recall in summary.get("recall", {}).items():
        shown = "n/a" if recall["recall_at_k"] is None else f"{recall['recall_at_k']:.3f}"
        typer.echo(f"top-k recall of each query's {recall['field']} ({name}): {shown} (chance {recall['chance']:.3f})")
    typer.echo(f"Results: {output} (summary.json; factors in {output}/factors, reuse with --factors {output})")
