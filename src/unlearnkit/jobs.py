"""Commands as library functions: each writes one results folder atomically.

Results folder contract (documented in the README):

* ``config.json``: the resolved configuration of the run;
* ``summary.json``: aggregate metrics (for ``demo``: one entry per evaluated model);
* ``per_sample.json``: per-question values behind the summary;
* ``model/``: the unlearned or fine-tuned model (safetensors + tokenizer), where one is produced;
* ``training_log.json``: the Trainer's log (loss, learning rate per logging step), where training ran;
* ``eval_curve.json``: (with ``--eval-every``) one entry per evaluation during training: step, epoch, metrics;
* ``log.txt``: the run's log;
* ``report.html``: (``demo``) the run's visual report, see :mod:`unlearnkit.report`.

Everything is written to a hidden staging folder beside the output and moved
into place at the end, so a failed run leaves no folder that looks finished,
and the source model is only ever read.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from unlearnkit import distributed
from unlearnkit.benchmark import (
    FORGET_SPLITS,
    BuiltinBenchmark,
    PreparedBenchmark,
    check_forget_split,
    evaluate_cached_model,
    prepare,
)
from unlearnkit.data.encoding import PromptFormat, check_fits_context
from unlearnkit.data.qa import QA_FIELDS, TRUTH_RATIO_FIELDS, has_fields, load_qa
from unlearnkit.errors import Interrupted, UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig, EvalResult, evaluate, load_reference, save_reference
from unlearnkit.evaluation.evaluator import oracle_reference as make_reference
from unlearnkit.evaluation.tracking import CURVE_FILE, EvalTracker, TrackingConfig
from unlearnkit.finetune import FinetuneConfig, finetune
from unlearnkit.training import disk_full_error
from unlearnkit.io import check_output_dir, check_spares_inputs, locks_output, output_lock, partial_dir, publish_dir, write_json, write_text
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_model, load_tokenizer, save_model, train_tokenizer
from unlearnkit.provenance import environment, rows_sha256, weights_sha256
from unlearnkit.unlearn import UnlearnOutcome, check_method_inputs, check_overlap, resolve_method, unlearn

logger = logging.getLogger("unlearnkit")

# The metrics the demo prints, in order.
HEADLINE_METRICS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_probability", "forget_rouge_l")


RUN_IDENTITY = "run-identity.json"
INCOMPLETE_MARKER = "INCOMPLETE"
CHECKPOINTS = "checkpoints"


@contextlib.contextmanager
def results_folder(
    output: Path,
    overwrite: bool,
    identity: Mapping[str, Any] | None = None,
    resume: bool = False,
    inputs: Mapping[str, Any] | None = None,
) -> Iterator[Path]:
    """Yield the staging folder of ``output``; it becomes ``output`` only if the block finishes.

    The block runs under the output's lock (:func:`unlearnkit.io.output_lock`),
    so a second command on the same ``output`` is refused instead of deleting
    this one's files. The staging folder (``.NAME.partial`` beside ``output``)
    holds an ``INCOMPLETE`` marker while the run is unfinished, and keeps it,
    saying why, when the run fails or is interrupted, so that an unfinished run
    never looks finished. A staging folder left by an interrupted run with the
    same ``identity`` (the resolved configuration) is reused, and its last
    intact checkpoint resumes the run; one with another identity is refused
    unless ``overwrite``, except a run that failed, which is replaced. The
    output is checked against ``inputs`` (see :func:`unlearnkit.io.check_output_dir`).

    With several processes (``accelerate launch``) every process gets the same
    folder (the Trainer's checkpoints need it), but only the main process
    creates, marks and publishes it; the others wait for it at barriers.
    """
    with output_lock(output):
        check_output_dir(output, overwrite, inputs)
        staging = partial_dir(output)
        resuming = _reusable_staging(staging, identity, overwrite)
        if resume and not resuming:
            raise UnlearnkitError(f"--resume: no interrupted run of this command was found at {staging}.")
        main = distributed.is_main_process()
        distributed.barrier()  # every process has read the old state before the main process changes it
        handler = None
        if main:
            if staging.exists() and not resuming:
                shutil.rmtree(staging)
            staging.mkdir(parents=True, exist_ok=True)
            write_text(staging / INCOMPLETE_MARKER, "running\n")
            if identity is not None:
                write_text(staging / RUN_IDENTITY, json.dumps(identity, sort_keys=True, default=str))
            handler = logging.FileHandler(staging / "log.txt", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        distributed.barrier()
        if resuming:
            logger.info("resuming the interrupted run kept in %s", staging)
        try:
            yield staging
        except BaseException as error:
            interrupted = isinstance(error, (KeyboardInterrupt, Interrupted))
            if main:
                reason = "interrupted" if interrupted else "failed"
                with contextlib.suppress(OSError):  # on a full disk the marker may not fit: the original error matters
                    write_text(staging / INCOMPLETE_MARKER, f"{reason}: {type(error).__name__}: {error}\n")
            if interrupted:
                error.staging = staging  # the command line says where the unfinished run is and how to resume it
                raise
            logger.error("run failed; the unfinished run is kept in %s", staging)
            full = disk_full_error(error, staging) if isinstance(error, Exception) else None
            if full is not None and not isinstance(error, OSError):
                raise full from error  # safetensors and torch report a full disk in their own words
            raise
        finally:
            if handler is not None:
                logger.removeHandler(handler)
                handler.close()
        distributed.barrier()  # all processes are done with the folder (checkpoints included)
        if main:
            shutil.rmtree(staging / CHECKPOINTS, ignore_errors=True)
            for name in (RUN_IDENTITY, INCOMPLETE_MARKER):
                (staging / name).unlink(missing_ok=True)
            publish_dir(staging, output)
            logger.info("results written to %s", output)
        distributed.barrier()  # no process returns before the results are in place


def _reusable_staging(staging: Path, identity: Mapping[str, Any] | None, overwrite: bool) -> bool:
    """Whether the staging folder left by an earlier run of this command is resumed (else it is replaced).

    A run with the same identity resumes; one with other settings is refused
    (``--overwrite`` discards it) unless it failed, since a failed run holds
    nothing to resume that would not fail again: it is replaced, with a message.
    """
    if not staging.exists() or identity is None or overwrite:
        return False
    stored = staging / RUN_IDENTITY
    previous = stored.read_text(encoding="utf-8") if stored.exists() else None
    if previous == json.dumps(identity, sort_keys=True, default=str):
        return True
    marker = staging / INCOMPLETE_MARKER
    if marker.is_file() and marker.read_text(encoding="utf-8").startswith("failed"):
        logger.warning("replacing the failed run kept in %s", staging)
        return False
    raise UnlearnkitError(
        f"An interrupted run with other settings is kept in {staging}. Rerun it with its own settings to "
        "resume it, or pass --overwrite to discard it."
    )


def _write(path: Path, data: Any) -> None:
    """Write a results file: the main process does, the others computed the same values and write nothing."""
    if distributed.is_main_process():
        write_json(path, data)


def _unlearn_into(
    folder: Path,
    run_config: dict[str, Any],
    tracker: EvalTracker | None,
    model: Any,
    tokenizer: Any,
    method: str,
    forget: Sequence[dict],
    retain: Sequence[dict],
    config: Any,
    fmt: PromptFormat,
    show_progress: bool,
    checkpoint_every: int,
) -> tuple[Any, float]:
    """Unlearn into a results folder being built: config, training log, curve, model and its digest.

    Returns the model every process evaluates and the seconds the unlearning itself took.
    """
    _write(folder / "config.json", run_config)
    started = time.perf_counter()
    outcome = unlearn(model, tokenizer, method, forget, retain, config, fmt, show_progress,
                      checkpoint_dir=folder / CHECKPOINTS, checkpoint_every=checkpoint_every,
                      callbacks=[tracker] if tracker is not None else ())
    seconds = time.perf_counter() - started
    _write(folder / "training_log.json", outcome.log_history)
    if tracker is not None:
        _write_tracking(folder, tracker, run_config)
    unlearned = _save_unlearned(outcome, tokenizer, folder / "model")
    if distributed.is_main_process():
        run_config["sha256"]["output_model"] = weights_sha256(folder / "model")
    _write(folder / "config.json", run_config)
    return unlearned, seconds


def _save_unlearned(outcome: UnlearnOutcome, tokenizer: Any, folder: Path) -> Any:
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


def _write_eval(folder: Path, result: EvalResult) -> None:
    _write(folder / "summary.json", result.summary)
    _write(folder / "per_sample.json", result.per_sample)


def builtin_resolver(bench: PreparedBenchmark | None):  # noqa: ANN201 - returns a callable or None
    return bench.split if bench is not None else None


@locks_output
def run_unlearn(
    *,
    model: str,
    method: str,
    forget: str,
    retain: str | None,
    output: Path,
    overrides: Mapping[str, Any],
    overwrite: bool = False,
    bench: PreparedBenchmark | None = None,
    eval_splits: Mapping[str, Sequence[dict]] | None = None,
    oracle_reference: Mapping[str, Any] | None = None,
    fmt: PromptFormat = PromptFormat(),
    eval_config: EvalConfig = EvalConfig(),
    trust_remote_code: bool = False,
    show_progress: bool = True,
    checkpoint_every: int = 0,
    resume: bool = False,
    on_overlap: str = "refuse",
    tracking: TrackingConfig = TrackingConfig(),
) -> dict[str, Any]:
    """Unlearn ``forget`` from ``model`` and write a results folder; returns the summary (empty without eval data).

    With ``checkpoint_every`` > 0 the run checkpoints every that many steps; an
    interrupted run resumes when the same command runs again (see :func:`results_folder`).
    """
    distributed.setup()  # with several processes: the process group and this process's GPU, before any model loads
    config = resolve_method(method, overrides)
    check_output_dir(output, overwrite, {"--model": model, "--forget": forget, "--retain": retain})
    forget_rows = load_qa(forget, role="forget", builtin=builtin_resolver(bench), required=QA_FIELDS)
    retain_rows = load_qa(retain, role="retain", builtin=builtin_resolver(bench)) if retain else []
    check_overlap(forget_rows, retain_rows, on_overlap)
    check_method_inputs(method, config, forget_rows, retain_rows)
    network = load_model(model, trust_remote_code)
    tokenizer = load_tokenizer(model, trust_remote_code)
    fmt.uses_chat(tokenizer)  # an impossible prompt format fails here, before any output exists
    check_method_inputs(method, config, forget_rows, retain_rows, network, tokenizer, fmt)
    context = getattr(network.config, "max_position_embeddings", None)
    check_fits_context(tokenizer, fmt, forget_rows, context, "forget data")
    check_fits_context(tokenizer, fmt, retain_rows, context, "retain data")
    tracker = None
    if tracking.enabled:
        # The oracle's own metrics, for constraints such as model_utility>=0.9*oracle, are known for built-in splits.
        known = {}
        criterion = tracking.criterion()
        if criterion and "oracle" in criterion.needs() and bench is not None and forget in FORGET_SPLITS:
            known["oracle"] = evaluation_cache(bench, "oracle", bench.oracle_dir(forget), forget, eval_config).summary
        tracker = EvalTracker(tokenizer, eval_splits or {}, tracking, fmt, eval_config, oracle_reference, known)
    run_config = {
        "command": "unlearn", "model": str(model), "method": method, "forget": str(forget),
        "retain": str(retain) if retain else None, "hyperparameters": asdict(config),
        "prompt_format": fmt.style, "environment": environment(),
        "sha256": {"forget_rows": rows_sha256(forget_rows), "retain_rows": rows_sha256(retain_rows),
                   "source_model": weights_sha256(model)},
    }
    if tracker is not None:
        run_config["eval_during_training"] = asdict(tracking)
    with results_folder(output, overwrite, identity=run_config, resume=resume) as folder:
        unlearned, seconds = _unlearn_into(folder, run_config, tracker, network, tokenizer, method, forget_rows, retain_rows,
                                           config, fmt, show_progress, checkpoint_every)
        _write(folder / "timing.json", {"unlearn_seconds": round(seconds, 2)})
        summary: dict[str, Any] = {}
        if eval_splits:
            result = evaluate(unlearned, tokenizer, eval_splits, fmt, eval_config, oracle_reference)
            summary.update(result.summary)
            _write(folder / "per_sample.json", result.per_sample)
        if tracker is not None and tracker.selected_step is not None:
            summary["selected_step"] = tracker.selected_step
        _write(folder / "summary.json", summary)
    return summary


def _write_tracking(folder: Path, tracker: EvalTracker, run_config: dict[str, Any]) -> None:
    """The curve of evaluations during training, and the chosen step in config.json."""
    _write(folder / CURVE_FILE, tracker.curve)
    run_config["eval_during_training"] = {**run_config.get("eval_during_training", {}), **tracker.selection()}
    _write(folder / "config.json", run_config)


def check_reference_target(path: Path, output: Path, overwrite: bool) -> None:
    """``--save-reference`` may replace (with ``overwrite``) only an earlier reference file, and never the results folder."""
    if path.expanduser().absolute() == Path(output).expanduser().absolute() or path.is_dir():
        raise UnlearnkitError(f"--save-reference {path} is a folder (or the --output folder); name a .json file for the reference.")
    if not path.exists():
        return
    if not overwrite:
        raise UnlearnkitError(f"Reference file {path} exists; choose another path or pass --overwrite.")
    try:
        load_reference(path)
    except UnlearnkitError:
        raise UnlearnkitError(
            f"--save-reference {path} is not an oracle reference file that --overwrite may replace; choose another path."
        ) from None


@locks_output
def run_eval(
    *,
    model: str,
    splits: Mapping[str, Sequence[dict]],
    output: Path,
    oracle_reference: Mapping[str, Any] | None,
    overwrite: bool = False,
    fmt: PromptFormat = PromptFormat(),
    eval_config: EvalConfig = EvalConfig(),
    trust_remote_code: bool = False,
    description: Mapping[str, Any] | None = None,
    save_reference_to: Path | None = None,
) -> dict[str, float]:
    """Evaluate a model on QA splits and write a results folder; returns the summary.

    ``save_reference_to``: also write the model's per-sample forget truth ratios
    as an oracle reference file (for evaluating a retain oracle).
    """
    distributed.setup()  # with several processes: the process group and this process's GPU, before any model loads
    check_output_dir(output, overwrite, {"--model": model})
    if save_reference_to is not None:
        check_spares_inputs({"--save-reference": save_reference_to}, {"--model": model})
        check_reference_target(Path(save_reference_to), output, overwrite)
        if not has_fields(splits.get("forget", []), TRUTH_RATIO_FIELDS):
            raise UnlearnkitError("--save-reference needs forget data with paraphrased_answer and perturbed_answer fields.")
    network = load_model(model, trust_remote_code)
    tokenizer = load_tokenizer(model, trust_remote_code)
    fmt.uses_chat(tokenizer)  # an impossible prompt format fails here, before any output exists
    with results_folder(output, overwrite) as folder:
        _write(folder / "config.json", {
            "command": "eval", "model": str(model), **(description or {}), "prompt_format": fmt.style,
            "eval": asdict(eval_config), "environment": environment(),
        })
        result = evaluate(network, tokenizer, splits, fmt, eval_config, oracle_reference)
        _write_eval(folder, result)
    if save_reference_to is not None and distributed.is_main_process():
        split_name = str((description or {}).get("forget") or "forget")
        save_reference(Path(save_reference_to), make_reference(splits["forget"], result.forget_truth_ratios, split_name, result.membership))
    return result.summary


@locks_output
def run_finetune(
    *,
    model: str,
    data: Sequence[str],
    output: Path,
    config: FinetuneConfig,
    tiny: TinyModelConfig | None = None,
    overwrite: bool = False,
    fmt: PromptFormat = PromptFormat(),
    trust_remote_code: bool = False,
    bench: PreparedBenchmark | None = None,
    show_progress: bool = True,
    checkpoint_every: int = 0,
    resume: bool = False,
) -> dict[str, Any]:
    """Fine-tune ``model`` (or, for ``model == "tiny"``, a fresh tiny Llama) on the union of ``data``."""
    distributed.setup()  # with several processes: the process group and this process's GPU, before any model loads
    check_output_dir(output, overwrite, {"--model": model, **{f"--data {source}": source for source in data}})
    rows = [row for source in data for row in load_qa(source, role="training", builtin=builtin_resolver(bench))]
    if model == "tiny":
        tiny = tiny or TinyModelConfig()
        texts = [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in rows]
        tokenizer = train_tokenizer(texts, tiny.vocab_size)
        network = build_tiny_model(tiny, tokenizer, seed=config.seed)
        fmt = PromptFormat("plain")
    else:
        network = load_model(model, trust_remote_code)
        tokenizer = load_tokenizer(model, trust_remote_code)
    fmt.uses_chat(tokenizer)  # an impossible prompt format fails here, before any output exists
    check_fits_context(tokenizer, fmt, rows, getattr(network.config, "max_position_embeddings", None), "training data")
    run_config = {
        "command": "finetune", "model": model, "data": list(data), "training": asdict(config),
        "tiny_model": asdict(tiny) if model == "tiny" and tiny else None, "prompt_format": fmt.style,
        "environment": environment(), "sha256": {"training_rows": rows_sha256(rows), "source_model": weights_sha256(model)},
    }
    with results_folder(output, overwrite, identity=run_config, resume=resume) as folder:
        _write(folder / "config.json", run_config)
        stats = finetune(network, tokenizer, rows, config, fmt, show_progress,
                         checkpoint_dir=folder / CHECKPOINTS, checkpoint_every=checkpoint_every)
        _write(folder / "training_log.json", stats.pop("log_history"))
        if distributed.is_main_process():
            save_model(network, tokenizer, folder / "model")
            run_config["sha256"]["output_model"] = weights_sha256(folder / "model")
        _write(folder / "config.json", run_config)
        _write(folder / "summary.json", {"examples": len(rows), **stats})
    return stats


@locks_output
def run_general(
    *,
    model: str,
    tasks: Sequence[str],
    output: Path,
    overwrite: bool = False,
    include_path: Path | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    num_fewshot: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, dict[str, float]]:
    """Accuracy on lm-eval tasks (the optional ``general`` extra); writes config.json, summary.json and general.json."""
    from unlearnkit.evaluation.general import INSTALL_HINT, evaluate_general, general_summary, lm_eval_available

    if not lm_eval_available():
        raise UnlearnkitError(INSTALL_HINT)
    check_output_dir(output, overwrite, {"--model": model, "--include-path": include_path})
    network = load_model(model, trust_remote_code)
    tokenizer = load_tokenizer(model, trust_remote_code)
    with results_folder(output, overwrite) as folder:
        _write(folder / "config.json", {
            "command": "general", "model": str(model), "tasks": list(tasks), "include_path": str(include_path) if include_path else None,
            "batch_size": batch_size, "limit": limit, "num_fewshot": num_fewshot, "environment": environment(),
        })
        results = evaluate_general(network, tokenizer, tasks, include_path, batch_size, limit, num_fewshot)
        _write(folder / "general.json", results)
        _write(folder / "summary.json", general_summary(results))
    return results


def evaluation_cache(bench: PreparedBenchmark, name: str, model_dir: Path, forget_split: str, eval_config: EvalConfig) -> EvalResult:
    """Evaluate a cached benchmark model once per (split, eval settings); later runs read the stored result."""
    key = hashlib.sha256(json.dumps(asdict(eval_config), sort_keys=True).encode()).hexdigest()[:8]
    path = bench.root / "evaluations" / f"{name}-{forget_split}-{key}.json"
    stored_before = path.exists()
    distributed.barrier()  # every process decides on the same state: all evaluate together, or none does
    if stored_before:
        stored = json.loads(path.read_text(encoding="utf-8"))
        return EvalResult(summary=stored["summary"], per_sample=stored["per_sample"], forget_truth_ratios=None)
    reference = load_reference(bench.reference_path(forget_split))
    result = evaluate_cached_model(bench, model_dir, forget_split, reference, eval_config)
    _write(path, {"summary": result.summary, "per_sample": result.per_sample})
    return result


@locks_output
def run_demo(
    *,
    output: Path,
    config: BuiltinBenchmark,
    method: str = "npo",
    forget_split: str = "forget10",
    overrides: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    cache_dir: Path | None = None,
    eval_config: EvalConfig = EvalConfig(),
    show_progress: bool = True,
    checkpoint_every: int = 0,
    resume: bool = False,
    tracking: TrackingConfig = TrackingConfig(),
) -> dict[str, dict[str, float]]:
    """The whole experiment on the built-in benchmark; returns ``{"target"|"oracle"|"unlearned": summary}``."""
    check_forget_split(forget_split)
    hyperparameters = {**config.overrides_for(method), **dict(overrides or {})}
    method_config = resolve_method(method, hyperparameters)
    check_output_dir(output, overwrite)
    distributed.setup()
    started = time.perf_counter()
    bench = prepare(config, cache_dir, (forget_split,), show_progress)
    prepared = time.perf_counter()
    results = {
        "target": evaluation_cache(bench, "target", bench.target_dir, forget_split, eval_config),
        "oracle": evaluation_cache(bench, "oracle", bench.oracle_dir(forget_split), forget_split, eval_config),
    }
    fmt = PromptFormat("plain")
    forget = bench.split(forget_split)
    retain = bench.split(bench.retain_split(forget_split))
    run_config = {
        "command": "demo", "benchmark": asdict(config), "cache": str(bench.root), "method": method,
        "forget_split": forget_split, "hyperparameters": asdict(method_config), "eval": asdict(eval_config),
        "environment": environment(),
        "sha256": {"forget_rows": rows_sha256(forget), "retain_rows": rows_sha256(retain),
                   "source_model": weights_sha256(bench.target_dir)},
    }
    tokenizer = load_tokenizer(bench.target_dir)
    model = load_model(bench.target_dir)
    check_method_inputs(method, method_config, forget, retain, model, tokenizer, fmt)
    tracker = None
    if tracking.enabled:
        # Forget quality during training uses the oracle reference of the final evaluation.
        tracker = EvalTracker(tokenizer, bench.eval_splits(forget_split), tracking, fmt, eval_config,
                              load_reference(bench.reference_path(forget_split)), {"oracle": results["oracle"].summary})
        run_config["eval_during_training"] = asdict(tracking)
    with results_folder(output, overwrite, identity=run_config, resume=resume) as folder:
        unlearned, unlearn_seconds = _unlearn_into(folder, run_config, tracker, model, tokenizer, method, forget, retain,
                                                   method_config, fmt, show_progress, checkpoint_every)
        reference = load_reference(bench.reference_path(forget_split))
        results["unlearned"] = evaluate(unlearned, tokenizer, bench.eval_splits(forget_split), fmt, eval_config, reference)
        summary = {name: result.summary for name, result in results.items()}
        if tracker is not None and tracker.selected_step is not None:
            summary["unlearned"] = {**summary["unlearned"], "selected_step": tracker.selected_step}
        _write(folder / "summary.json", summary)
        _write(folder / "per_sample.json", {name: result.per_sample for name, result in results.items()})
        _write(folder / "timing.json", {
            "prepare_seconds": round(prepared - started, 2),
            "unlearn_seconds": round(unlearn_seconds, 2),
            "total_seconds": round(time.perf_counter() - started, 2),
        })
        if distributed.is_main_process():
            write_run_report(folder, output, title=f"unlearnkit demo: {method} on {forget_split}")
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
    except Exception as error:  # noqa: BLE001 - see the docstring
        logger.warning("report.html not written (%s: %s); rebuild it with `unlearnkit report %s`", type(error).__name__, error, output)


def format_table(summary: Mapping[str, Mapping[str, float]], metric_names: Sequence[str] = HEADLINE_METRICS) -> str:
    """A plain-text table: one row per model, one column per metric."""
    header = ["model", *metric_names]
    rows = [[name, *(_fmt(values.get(metric)) for metric in metric_names)] for name, values in summary.items()]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=False)) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
