"""``eval`` and ``general``: evaluate a model into a results folder (and, on request, write its oracle reference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit import distributed
from unlearnkit.data.qa import TRUTH_RATIO_FIELDS, has_fields
from unlearnkit.descriptions import config_descriptions
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate, load_reference, save_reference
from unlearnkit.evaluation.evaluator import oracle_reference as make_reference
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.provenance import environment
from unlearnkit.runs.folder import check_output_dir, check_spares_inputs, results_folder, write
from unlearnkit.runs.inputs import Builtin, Evaluation, ModelChoice, RunOptions, load_oracle_reference, resolve_data, resolve_model
from unlearnkit.runs.lock import locks_output

# eval's data options, in the order of the evaluation's splits.
EVAL_DATA_OPTIONS = ("forget", "retain", "real_authors", "world_facts", "holdout")


@dataclass(frozen=True)
class EvalInputs:
    """The model, what to evaluate it on, and how the user named it all (for config.json)."""

    model: ModelChoice
    evaluation: Evaluation
    description: dict[str, Any] = field(default_factory=dict)


def resolve_eval(
    *,
    model: str,
    builtin: Builtin,
    benchmark: str | None = None,
    data: dict[str, str | None] | None = None,
    oracle_reference: Path | None = None,
    prompt_format: str = "auto",
    eval_config: EvalConfig = EvalConfig(),
) -> EvalInputs:
    """``--benchmark SPLIT`` (the built-in sets, its oracle's reference, plain prompts) or data files by split name."""
    data = {name: source for name, source in (data or {}).items() if source}
    if benchmark:
        if data:
            raise UnlearnkitError("Pass either --benchmark SPLIT or data files (--forget/--retain/...), not both.")
        splits = builtin.evaluation_splits(benchmark)
        reference = load_oracle_reference(oracle_reference or builtin.reference_path(benchmark))
        chosen = resolve_model(model, builtin=builtin, forget_split=benchmark)
        chosen = ModelChoice(chosen.source, chosen.named, builtin.prompt_format)  # the built-in sets are asked in plain prompts
    else:
        if "forget" not in data:
            raise UnlearnkitError("Pass --benchmark SPLIT, "
                                  "or at least --forget FILE (plus optional --retain/--real-authors/--world-facts).")
        splits = {name: resolve_data(data[name], name).rows for name in EVAL_DATA_OPTIONS if name in data}
        reference = load_oracle_reference(oracle_reference)
        chosen = resolve_model(model, prompt_format)
    description = {"benchmark": benchmark, **{name: data.get(name) for name in EVAL_DATA_OPTIONS},
                   "oracle_reference": str(oracle_reference) if oracle_reference else None,
                   # the built-in benchmark's cache names its configuration: reports compare only runs of one benchmark
                   "cache": str(builtin.root) if benchmark else None}
    return EvalInputs(chosen, Evaluation(splits, reference, eval_config), description)


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
def run_eval(*, inputs: EvalInputs, options: RunOptions, save_reference_to: Path | None = None) -> dict[str, float]:
    """Evaluate a model on QA splits and write a results folder; returns the summary.

    ``save_reference_to``: also write the model's per-sample forget truth ratios
    as an oracle reference file (for evaluating a retain oracle).
    """
    distributed.setup()  # with several processes: the process group and this process's GPU, before any model loads
    model, evaluation = inputs.model, inputs.evaluation
    check_output_dir(options.output, options.overwrite, {"--model": model.source})
    if save_reference_to is not None:
        check_spares_inputs({"--save-reference": save_reference_to}, {"--model": model.source})
        check_reference_target(Path(save_reference_to), options.output, options.overwrite)
        if not has_fields(evaluation.splits.get("forget", []), TRUTH_RATIO_FIELDS):
            raise UnlearnkitError("--save-reference needs forget data with paraphrased_answer and perturbed_answer fields.")
    network = load_model(model.source, options.trust_remote_code)
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.uses_chat(tokenizer)  # an impossible prompt format fails here, before any output exists
    with results_folder(options.output, options.overwrite) as folder:
        run_config = {"command": "eval", "model": model.source, **inputs.description, "prompt_format": model.fmt.style,
                      "eval": asdict(evaluation.config), "environment": environment()}
        write(folder / "config.json", run_config)
        result = evaluate(network, tokenizer, evaluation.splits, model.fmt, evaluation.config, evaluation.reference)
        write(folder / "summary.json", result.summary)
        write(folder / "config.json", {**run_config, **config_descriptions(result.summary)})  # what the report shows
        write(folder / "per_sample.json", result.per_sample)
    if save_reference_to is not None and distributed.is_main_process():
        split_name = str(inputs.description.get("forget") or "forget")
        save_reference(Path(save_reference_to),
                       make_reference(evaluation.splits["forget"], result.forget_truth_ratios, split_name, result.membership))
    return result.summary


@locks_output
def run_general(
    *,
    model: ModelChoice,
    tasks: Sequence[str],
    options: RunOptions,
    include_path: Path | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    num_fewshot: int | None = None,
) -> dict[str, dict[str, float]]:
    """Accuracy on lm-eval tasks (the optional ``general`` extra); writes config.json, summary.json and general.json."""
    from unlearnkit.evaluation.general import INSTALL_HINT, evaluate_general, general_summary, lm_eval_available

    if not lm_eval_available():
        raise UnlearnkitError(INSTALL_HINT)
    check_output_dir(options.output, options.overwrite, {"--model": model.source, "--include-path": include_path})
    network = load_model(model.source, options.trust_remote_code)
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    with results_folder(options.output, options.overwrite) as folder:
        write(folder / "config.json", {
            "command": "general", "model": model.source, "tasks": list(tasks), "include_path": str(include_path) if include_path else None,
            "batch_size": batch_size, "limit": limit, "num_fewshot": num_fewshot, "environment": environment(),
        })
        results = evaluate_general(network, tokenizer, tasks, include_path, batch_size, limit, num_fewshot)
        write(folder / "general.json", results)
        write(folder / "summary.json", general_summary(results))
    return results
