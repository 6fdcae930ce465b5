"""``unlearn`` and ``demo``: unlearn a forget set, save the model, evaluate it, into one results folder.

Results folder (documented in the README): ``config.json`` (the resolved
configuration, versions and digests), ``summary.json``, ``per_sample.json``,
``model/``, ``training_log.json``, ``eval_curve.json`` (with evaluation during
training), ``timing.json``, ``log.txt``, for ``demo`` ``report.html`` and, for a run
trained on a localization (``--localize``), ``localization/`` (its manifest and heat maps).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit import distributed
from unlearnkit.data.checks import split_findings, warn
from unlearnkit.data.encoding import PromptFormat, check_fits_context
from unlearnkit.descriptions import config_descriptions
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig, EvalResult, check_reference_tokenizer, evaluate, load_reference
from unlearnkit.evaluation.tracking import CURVE_FILE, EvalTracker, TrackingConfig
from unlearnkit.localization import Localization, save_localization
from unlearnkit.modeling import load_model, load_tokenizer, save_model
from unlearnkit.provenance import environment, rows_sha256, weights_sha256
from unlearnkit.runs.folder import CHECKPOINTS, check_output_dir, results_folder, with_reasons, write
from unlearnkit.runs.inputs import Builtin, DataChoice, Evaluation, MethodChoice, ModelChoice, RunOptions
from unlearnkit.runs.localize import RUN_COPY, copy_into_run, localization_record, write_heat_maps
from unlearnkit.runs.lock import locks_output
from unlearnkit.unlearning import UnlearnOutcome, check_method_inputs, check_overlap, inline_localization, unlearn

logger = logging.getLogger("unlearnkit")


@dataclass(frozen=True)
class UnlearnInputs:
    """Everything ``unlearn`` works on, resolved: the model, the method, the data and what to evaluate on."""

    model: ModelChoice
    method: MethodChoice
    forget: DataChoice
    retain: DataChoice | None
    evaluation: Evaluation | None
    # The retain oracle's own metrics, for constraints such as model_utility>=0.9*oracle (built-in splits only).
    oracle_summary: dict[str, Any] | None = None
    # How the user named the oracle reference and the other evaluation sets (config.json records it; reports read it).
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def retain_rows(self) -> list[dict]:
        return self.retain.rows if self.retain is not None else []


def resolve_unlearn(
    *,
    model: str | None,
    method: MethodChoice,
    forget: str,
    retain: str | None,
    builtin: Builtin,
    prompt_format: PromptFormat = PromptFormat(),
    evaluate_after: bool = True,
    oracle_reference: Path | None = None,
    eval_config: EvalConfig = EvalConfig(),
    tracking: TrackingConfig = TrackingConfig(),
    evaluation_data: dict[str, str | None] | None = None,
) -> UnlearnInputs:
    """Resolve ``unlearn``'s inputs; a built-in forget split brings its retain split, evaluation sets and oracle.

    ``model`` None means the built-in target, allowed only with a built-in forget split: unlearning the built-in
    model with one's own data is a mistake to name, not to make silently. ``evaluation_data``: the utility and
    holdout sets (``real_authors``, ``world_facts``, ``holdout``) evaluated with the forget and retain data, as
    ``eval`` takes them. Each evaluated split generates up to its data source's cap unless
    ``eval_config.max_new_tokens`` is set.
    """
    from unlearnkit.builtin import MAX_NEW_TOKENS
    from unlearnkit.runs.inputs import BUILTIN_MODEL, load_oracle_reference, resolve_data, resolve_model, with_caps

    forget_split = forget if builtin.is_forget_split(forget) else None
    extra = {name: source for name, source in (evaluation_data or {}).items() if source}
    if model is None:
        if not forget_split:
            raise UnlearnkitError(f"--model is needed with your own forget data ({forget}): pass the model to unlearn (a folder "
                                  f"or a hub name), or --model {BUILTIN_MODEL} to unlearn the built-in target with it.")
        model = BUILTIN_MODEL
    if extra and forget_split:
        raise UnlearnkitError(f"The built-in split {forget_split} brings its own evaluation sets; drop "
                              f"{', '.join('--' + name.replace('_', '-') for name in extra)}.")
    if extra and not evaluate_after:
        raise UnlearnkitError(f"{', '.join('--' + name.replace('_', '-') for name in extra)} are evaluation sets: drop --no-eval.")
    if retain is None and forget_split:
        retain = builtin.default_retain(forget_split)
    forget_data = resolve_data(forget, "forget", builtin)
    retain_data = resolve_data(retain, "retain", builtin, required=None) if retain else None
    # The forget/retain overlap is refused or warned about by --on-overlap; the truth-ratio wording is warned about here.
    given = {"forget": forget_data, **({"retain": retain_data} if retain_data else {})}
    warn([finding for finding in split_findings({name: choice.rows for name, choice in given.items()},
                                                {name: choice.source for name, choice in given.items()})
          if finding.check != "forget_retain_overlap"])
    evaluation, oracle_summary = None, None
    if evaluate_after:
        if forget_split:
            splits = builtin.evaluation_splits(forget_split)
            eval_config = with_caps(eval_config, dict.fromkeys(splits, MAX_NEW_TOKENS))
            reference = load_oracle_reference(oracle_reference or builtin.reference_path(forget_split))
            criterion = tracking.criterion() if tracking.enabled else None
            if criterion and "oracle" in criterion.needs():
                oracle_dir = builtin.model_dir("builtin-oracle", forget_split)
                oracle_summary = evaluation_cache(builtin.prepared(forget_split), "oracle", oracle_dir, forget_split, eval_config).summary
        else:
            choices = {"forget": forget_data, **({"retain": retain_data} if retain_data else {}),
                       **{name: resolve_data(source, name) for name, source in extra.items()}}
            splits = {name: choice.rows for name, choice in choices.items()}
            eval_config = with_caps(eval_config, {name: choice.max_new_tokens for name, choice in choices.items()})
            reference = load_oracle_reference(oracle_reference)
        evaluation = Evaluation(splits, reference, eval_config)
    description = {"oracle_reference": str(oracle_reference) if oracle_reference else None, **extra}
    return UnlearnInputs(resolve_model(model, prompt_format, builtin), method, forget_data, retain_data, evaluation, oracle_summary,
                         description)


@locks_output
def run_unlearn(
    *, inputs: UnlearnInputs, options: RunOptions, on_overlap: str = "refuse", tracking: TrackingConfig = TrackingConfig()
) -> dict[str, Any]:
    """Unlearn and write a results folder; returns the summary (empty without evaluation).

    With ``options.checkpoint_every`` > 0 the run checkpoints every that many
    steps; an interrupted run resumes when the same command runs again (see
    :func:`unlearnkit.runs.folder.results_folder`).
    """
    distributed.setup()  # with several processes: the process group and this process's GPU, before any model loads
    model, method, forget, retain = inputs.model, inputs.method, inputs.forget.rows, inputs.retain_rows
    check_output_dir(options.output, options.overwrite,
                     {"--model": model.source, "--forget": inputs.forget.source, "--retain": inputs.retain and inputs.retain.source,
                      "--localize": method.config.localize})
    check_overlap(forget, retain, on_overlap)
    check_method_inputs(method.name, method.config, forget, retain)
    network = load_model(model.source, options.trust_remote_code)
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.check(tokenizer)  # an impossible prompt format fails here, before any output exists
    if inputs.evaluation is not None and inputs.evaluation.reference is not None:
        check_reference_tokenizer(inputs.evaluation.reference, tokenizer)  # refused before training, not after it
    check_method_inputs(method.name, method.config, forget, retain, network, tokenizer, model.fmt)
    context = getattr(network.config, "max_position_embeddings", None)
    check_fits_context(tokenizer, model.fmt, forget, context, "forget data")
    check_fits_context(tokenizer, model.fmt, retain, context, "retain data")
    inline = inline_localization(method.name, method.config, network, tokenizer, forget, model.fmt)  # before any output
    evaluation = inputs.evaluation
    tracker = None
    if tracking.enabled:
        known = {"oracle": inputs.oracle_summary} if inputs.oracle_summary is not None else {}
        tracker = EvalTracker(tokenizer, evaluation.splits if evaluation else {}, tracking, model.fmt,
                              evaluation.config if evaluation else EvalConfig(), evaluation.reference if evaluation else None, known)
    run_config = {
        "command": "unlearn", "model": model.source, "method": method.name, "forget": inputs.forget.source,
        "retain": inputs.retain.source if inputs.retain else None, **inputs.description, "hyperparameters": asdict(method.config),
        **model.fmt.record(), "environment": environment(),
        "sha256": {"forget_rows": rows_sha256(forget), "retain_rows": rows_sha256(retain),
                   "source_model": weights_sha256(model.source)},
    }
    if evaluation is not None:
        run_config["max_new_tokens"] = evaluation.config.caps(evaluation.splits)
    if tracker is not None:
        run_config["eval_during_training"] = asdict(tracking)
    record_localization(run_config, method, inline)
    with results_folder(options.output, options.overwrite, identity=run_config, resume=options.resume) as folder:
        unlearned, seconds = unlearn_into(folder, run_config, tracker, network, tokenizer, inputs, options, inline)
        write(folder / "timing.json", {"unlearn_seconds": round(seconds, 2)})
        summary: dict[str, Any] = {}
        if evaluation and evaluation.splits:
            result = evaluate(unlearned, tokenizer, evaluation.splits, model.fmt, evaluation.config, evaluation.reference)
            summary.update(with_reasons(result.summary, result.not_computed))
            write(folder / "per_sample.json", result.per_sample)
        if tracker is not None and tracker.selected_step is not None:
            summary["selected_step"] = tracker.selected_step
        write(folder / "summary.json", summary)
        write(folder / "config.json", {**run_config, **config_descriptions(summary, method.name)})  # what the report shows
    return summary


def unlearn_into(
    folder: Path, run_config: dict[str, Any], tracker: EvalTracker | None, network: Any, tokenizer: Any,
    inputs: UnlearnInputs, options: RunOptions, inline: Localization | None = None,
) -> tuple[Any, float]:
    """Unlearn into a results folder being built: config, training log, curve, model and its digest.

    ``inline``: the ``localizer`` setting's localization, computed before the folder existed; kept in the folder.
    Returns the model every process evaluates and the seconds the unlearning itself took.
    """
    write(folder / "config.json", run_config)
    if inputs.method.config.localize is not None and distributed.is_main_process():
        copy_into_run(inputs.method.config.localize, folder)  # the run's report shows its heat maps
    if inline is not None and distributed.is_main_process():
        save_localization(inline, folder / RUN_COPY)  # the whole localization (scores too): it exists nowhere else
        write_heat_maps(inline, folder / RUN_COPY)
    started = time.perf_counter()
    outcome = unlearn(network, tokenizer, inputs.method.name, inputs.forget.rows, inputs.retain_rows, inputs.method.config,
                      inputs.model.fmt, options.show_progress, checkpoint_dir=folder / CHECKPOINTS,
                      checkpoint_every=options.checkpoint_every, callbacks=[tracker] if tracker is not None else (),
                      localization=inline)
    seconds = time.perf_counter() - started
    write(folder / "training_log.json", outcome.log_history)
    if tracker is not None:
        write(folder / CURVE_FILE, tracker.curve)
        run_config["eval_during_training"] = {**run_config.get("eval_during_training", {}), **tracker.selection()}
        write(folder / "config.json", run_config)
    unlearned = save_unlearned(outcome, tokenizer, folder / "model")
    if distributed.is_main_process():
        run_config["sha256"]["output_model"] = weights_sha256(folder / "model")
    write(folder / "config.json", run_config)
    return unlearned, seconds


def record_localization(run_config: dict[str, Any], method: MethodChoice, inline: Localization | None = None) -> None:
    """A run trained on a localization records it (path, digest, localizer, selection): a changed one is another run.

    An inline one (the ``localizer`` setting) is kept in the run's own ``localization/`` folder.
    """
    if method.config.localize is not None:
        run_config["localization"] = localization_record(method.config.localize)
    elif inline is not None:
        run_config["localization"] = {"path": RUN_COPY, "inline": True, "localizer": inline.localizer, "settings": inline.settings,
                                      "selection": inline.selection.to_json()}


def save_unlearned(outcome: UnlearnOutcome, tokenizer: Any, folder: Path) -> Any:
    """Save the unlearned model once (main process) and return the model every process evaluates.

    When training sharded the weights (FSDP, ZeRO-3), the main process saves the
    gathered full weights and every process reloads them whole for evaluation.
    """
    if distributed.is_main_process():
        if outcome.state_dict is None:
            save_model(outcome.model, tokenizer, folder, outcome.artifacts)
        else:
            from safetensors.torch import save_file

            outcome.model.save_pretrained(folder, state_dict=outcome.state_dict, safe_serialization=True)
            tokenizer.save_pretrained(folder)
            for name, tensors in outcome.artifacts.items():
                save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, str(Path(folder) / name))
    distributed.barrier()
    return outcome.model if outcome.state_dict is None else load_model(folder)


def evaluation_cache_path(bench: Any, name: str, forget_split: str, eval_config: EvalConfig) -> Path:
    """Where :func:`evaluation_cache` stores the evaluation of a benchmark model (``target``/``oracle``)."""
    key = hashlib.sha256(json.dumps(asdict(eval_config), sort_keys=True).encode()).hexdigest()[:8]
    return bench.root / "evaluations" / f"{name}-{forget_split}-{key}.json"


def evaluation_cache(bench: Any, name: str, model_dir: Path, forget_split: str, eval_config: EvalConfig) -> EvalResult:
    """Evaluate a cached benchmark model once per (split, eval settings); later runs read the stored result."""
    from unlearnkit.builtin import evaluate_cached_model

    path = evaluation_cache_path(bench, name, forget_split, eval_config)
    stored_before = path.exists()
    distributed.barrier()  # every process decides on the same state: all evaluate together, or none does
    if stored_before:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return EvalResult(summary=stored["summary"], per_sample=stored["per_sample"], forget_truth_ratios=None)
    reference = load_reference(bench.reference_path(forget_split))
    result = evaluate_cached_model(bench, model_dir, forget_split, reference, eval_config)
    write(path, {"summary": result.summary, "per_sample": result.per_sample})
    return result


@locks_output
def run_demo(
    *,
    builtin: Builtin,
    method: MethodChoice,
    forget_split: str,
    options: RunOptions,
    eval_config: EvalConfig | None = None,
    tracking: TrackingConfig = TrackingConfig(),
    listeners: Sequence[Callable[[dict[str, Any]], None]] = (),
) -> dict[str, dict[str, float]]:
    """The whole experiment on the built-in benchmark; returns ``{"target"|"oracle"|"unlearned": summary}``.

    ``method`` is resolved with the benchmark's settings for it (:func:`unlearnkit.runs.inputs.resolve_method`);
    ``eval_config`` defaults to the built-in benchmark's (:data:`unlearnkit.builtin.EVAL_CONFIG`).
    ``listeners`` receive each evaluation during training (see :class:`EvalTracker`; only with ``tracking`` on).
    """
    from unlearnkit.builtin import EVAL_CONFIG, check_forget_split

    eval_config = eval_config or EVAL_CONFIG

    check_forget_split(forget_split)
    check_output_dir(options.output, options.overwrite)
    distributed.setup()
    started = time.perf_counter()
    bench = builtin.prepared(forget_split)
    prepared = time.perf_counter()
    results = {
        "target": evaluation_cache(bench, "target", bench.target_dir, forget_split, eval_config),
        "oracle": evaluation_cache(bench, "oracle", bench.oracle_dir(forget_split), forget_split, eval_config),
    }
    forget = DataChoice(forget_split, "forget", bench.split(forget_split), forget_split)
    retain_split = bench.retain_split(forget_split)
    retain = DataChoice(retain_split, "retain", bench.split(retain_split), retain_split)
    reference = load_reference(bench.reference_path(forget_split))
    inputs = UnlearnInputs(ModelChoice(str(bench.target_dir), "builtin", builtin.prompt_format), method, forget, retain,
                           Evaluation(bench.eval_splits(forget_split), reference, eval_config), results["oracle"].summary)
    run_config = {
        "command": "demo", "benchmark": asdict(builtin.config), "cache": str(bench.root), "method": method.name,
        "forget_split": forget_split, "hyperparameters": asdict(method.config), "eval": asdict(eval_config),
        "max_new_tokens": eval_config.caps(inputs.evaluation.splits),
        "environment": environment(),
        "sha256": {"forget_rows": rows_sha256(forget.rows), "retain_rows": rows_sha256(retain.rows),
                   "source_model": weights_sha256(bench.target_dir)},
    }
    tokenizer = load_tokenizer(bench.target_dir)
    network = load_model(bench.target_dir)
    check_method_inputs(method.name, method.config, forget.rows, retain.rows, network, tokenizer, builtin.prompt_format)
    inline = inline_localization(method.name, method.config, network, tokenizer, forget.rows, builtin.prompt_format)
    record_localization(run_config, method, inline)
    tracker = None
    if tracking.enabled:
        # Forget quality during training uses the oracle reference of the final evaluation.
        tracker = EvalTracker(tokenizer, inputs.evaluation.splits, tracking, builtin.prompt_format, eval_config, reference,
                              {"oracle": inputs.oracle_summary}, listeners)
        run_config["eval_during_training"] = asdict(tracking)
    with results_folder(options.output, options.overwrite, identity=run_config, resume=options.resume) as folder:
        unlearned, unlearn_seconds = unlearn_into(folder, run_config, tracker, network, tokenizer, inputs, options, inline)
        results["unlearned"] = evaluate(unlearned, tokenizer, inputs.evaluation.splits, builtin.prompt_format, eval_config, reference)
        summary = {name: result.summary for name, result in results.items()}
        if tracker is not None and tracker.selected_step is not None:
            summary["unlearned"] = {**summary["unlearned"], "selected_step": tracker.selected_step}
        write(folder / "summary.json", summary)
        write(folder / "config.json", {**run_config, **config_descriptions(summary, method.name)})  # what the report shows
        write(folder / "per_sample.json", {name: result.per_sample for name, result in results.items()})
        write(folder / "timing.json", {
            "prepare_seconds": round(prepared - started, 2),
            "unlearn_seconds": round(unlearn_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
        })
        if distributed.is_main_process():
            write_run_report(folder, options.output, title=f"unlearnkit demo: {method.name} on {forget_split}")
    return summary


def write_run_report(folder: Path, output: Path, title: str) -> None:
    """Write ``report.html`` into a results folder being built (``folder``, to be published as ``output``).

    The report is drawn from the files already written, so a failure to draw it
    costs only the report (`unlearnkit report` rebuilds it), never the run.
    """
    from unlearnkit.report.html import write_report
    from unlearnkit.report.results import load_run

    try:
        run = load_run(folder, label=Path(output).name)
        run.path = Path(output)
        write_report([run], folder / "report.html", title=title)
    except Exception as error:  # noqa: BLE001 - a report failure must never cost the run (see the docstring)
        logger.warning("report.html not written (%s: %s); rebuild it with `unlearnkit report %s`", type(error).__name__, error, output)
