"""``eval`` and ``general``: evaluate a model into a results folder (and, on request, write its oracle reference)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit import distributed
from unlearnkit.data.checks import split_findings, warn
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.qa import TRUTH_RATIO_FIELDS, has_fields
from unlearnkit.descriptions import config_descriptions
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig, check_reference_tokenizer, evaluate, load_reference, save_reference
from unlearnkit.evaluation.evaluator import oracle_reference as make_reference
from unlearnkit.evaluation.mia import MUSE_RETAIN_PRIVLEAK_AUC, evaluate_text_privleak
from unlearnkit.inference.loading import load_any_model
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.provenance import environment
from unlearnkit.runs.folder import check_output_dir, check_spares_inputs, results_folder, with_reasons, write
from unlearnkit.runs.inputs import (
    Builtin,
    Evaluation,
    ModelChoice,
    RunOptions,
    check_builtin_format,
    load_oracle_reference,
    resolve_data,
    resolve_model,
    with_caps,
)
from unlearnkit.runs.lock import locks_output

# eval's data options, in the order of the evaluation's splits.
EVAL_DATA_OPTIONS = ("forget", "retain", "real_authors", "world_facts", "holdout")


@dataclass(frozen=True)
class PrivleakTexts:
    """MUSE's PrivLeak on raw texts: the forget and holdout texts and the retain model's AUC (MUSE's orientation)."""

    forget: list[str]
    holdout: list[str]
    retain_auc: float


@dataclass(frozen=True)
class EvalInputs:
    """The model, what to evaluate it on, and how the user named it all (for config.json)."""

    model: ModelChoice
    evaluation: Evaluation
    description: dict[str, Any] = field(default_factory=dict)
    privleak_texts: PrivleakTexts | None = None


def resolve_privleak_texts(sources: Sequence[str], retain_auc: float | None) -> PrivleakTexts:
    """``--privleak-texts FORGET HOLDOUT`` (MUSE text subsets) and ``--privleak-retain-auc``, checked and loaded.

    Without a retain AUC, MUSE's constant for the corpus (its retrained model's) is taken, as MUSE's eval.py does.
    """
    from unlearnkit.data.schemas import is_schema_source, load_texts, parse_source

    if len(sources) != 2 or not all(is_schema_source(source) for source in sources):
        raise UnlearnkitError("--privleak-texts takes two MUSE text sources, the forget and the holdout texts, e.g. "
                              "--privleak-texts muse-news:privleak/forget muse-news:privleak/holdout.")
    corpora = {parse_source(source).benchmark for source in sources}
    if retain_auc is None:
        if len(corpora) != 1 or next(iter(corpora)) not in MUSE_RETAIN_PRIVLEAK_AUC:
            raise UnlearnkitError("--privleak-retain-auc is needed: MUSE's retain AUC constants hold only for its own "
                                  "muse-news or muse-books texts (both sources from one of them).")
        retain_auc = MUSE_RETAIN_PRIVLEAK_AUC[next(iter(corpora))]
    if not 0.0 < retain_auc <= 1.0:
        raise UnlearnkitError(f"--privleak-retain-auc must be an AUC in (0, 1] (MUSE News: 0.4772, Books: 0.5393); got {retain_auc}.")
    forget, holdout = (load_texts(source) for source in sources)
    if not forget or not holdout:
        raise UnlearnkitError("--privleak-texts: the forget and the holdout source must each hold at least one text.")
    return PrivleakTexts(forget, holdout, float(retain_auc))


def resolve_eval(
    *,
    model: str,
    builtin: Builtin,
    benchmark: str | None = None,
    data: dict[str, str | None] | None = None,
    oracle_reference: Path | None = None,
    prompt_format: PromptFormat = PromptFormat(),
    eval_config: EvalConfig = EvalConfig(),
    privleak_texts: Sequence[str] | None = None,
    privleak_retain_auc: float | None = None,
) -> EvalInputs:
    """``--benchmark SPLIT`` (the built-in sets, its oracle's reference, plain prompts) or data files by split name.

    Each split generates up to its data source's cap (:attr:`DataChoice.max_new_tokens`) unless
    ``eval_config.max_new_tokens`` is set.

    ``privleak_texts``: MUSE's PrivLeak on raw texts as well (or alone), see :func:`resolve_privleak_texts`.
    """
    data = {name: source for name, source in (data or {}).items() if source}
    if privleak_retain_auc is not None and not privleak_texts:
        raise UnlearnkitError("--privleak-retain-auc goes with --privleak-texts FORGET HOLDOUT.")
    texts = resolve_privleak_texts(privleak_texts, privleak_retain_auc) if privleak_texts else None
    if benchmark:
        if data:
            raise UnlearnkitError("Pass either --benchmark SPLIT or data files (--forget/--retain/...), not both.")
        from unlearnkit.builtin import MAX_NEW_TOKENS

        check_builtin_format(prompt_format, builtin)  # the built-in sets are asked in plain prompts, whatever the model
        splits = builtin.evaluation_splits(benchmark)
        eval_config = with_caps(eval_config, dict.fromkeys(splits, MAX_NEW_TOKENS))
        reference = load_oracle_reference(oracle_reference or builtin.reference_path(benchmark))
        chosen = resolve_model(model, builtin=builtin, forget_split=benchmark)
        chosen = ModelChoice(chosen.source, chosen.named, builtin.prompt_format)
    else:
        if "forget" not in data and (data or texts is None):
            raise UnlearnkitError("Pass --benchmark SPLIT, or at least --forget FILE (plus optional --retain/--real-authors/"
                                  "--world-facts), or --privleak-texts FORGET HOLDOUT alone.")
        choices = {name: resolve_data(data[name], name) for name in EVAL_DATA_OPTIONS if name in data}
        splits = {name: choice.rows for name, choice in choices.items()}
        warn(split_findings(splits, {name: choice.source for name, choice in choices.items()}))
        eval_config = with_caps(eval_config, {name: choice.max_new_tokens for name, choice in choices.items()})
        reference = load_oracle_reference(oracle_reference)
        chosen = resolve_model(model, prompt_format)
    description = {"benchmark": benchmark, **{name: data.get(name) for name in EVAL_DATA_OPTIONS},
                   "oracle_reference": str(oracle_reference) if oracle_reference else None,
                   # the built-in benchmark's cache names its configuration: reports compare only runs of one benchmark
                   "cache": str(builtin.root) if benchmark else None}
    if texts is not None:
        description |= {"privleak_texts": list(privleak_texts), "privleak_retain_auc": texts.retain_auc}
    return EvalInputs(chosen, Evaluation(splits, reference, eval_config), description, texts)


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
    network = load_any_model(model.source, options.trust_remote_code)  # a wrapped model (``wrap``) evaluates as any model
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.check(tokenizer)  # an impossible prompt format fails here, before any output exists
    if evaluation.reference is not None:
        check_reference_tokenizer(evaluation.reference, tokenizer)  # another tokenizer's truth ratios are not comparable
    with results_folder(options.output, options.overwrite) as folder:
        run_config = {"command": "eval", "model": model.source, **inputs.description, **model.fmt.record(),
                      "eval": asdict(evaluation.config), "max_new_tokens": evaluation.config.caps(evaluation.splits),
                      "environment": environment()}
        write(folder / "config.json", run_config)
        result = evaluate(network, tokenizer, evaluation.splits, model.fmt, evaluation.config, evaluation.reference)
        if inputs.privleak_texts is not None:
            texts = inputs.privleak_texts
            privleak = evaluate_text_privleak(network, tokenizer, texts.forget, texts.holdout, texts.retain_auc,
                                              evaluation.config.min_k_fraction, form=evaluation.config.privleak_form)
            result.summary.update(privleak.summary)
            result.per_sample.update({"privleak_forget_texts": privleak.forget, "privleak_holdout_texts": privleak.holdout})
        write(folder / "summary.json", with_reasons(result.summary, result.not_computed))
        write(folder / "config.json", {**run_config, **config_descriptions(result.summary)})  # what the report shows
        write(folder / "per_sample.json", result.per_sample)
    if save_reference_to is not None and distributed.is_main_process():
        split_name = str(inputs.description.get("forget") or "forget")
        save_reference(Path(save_reference_to),
                       make_reference(evaluation.splits["forget"], result.forget_truth_ratios, split_name, result.membership,
                                      tokenizer=tokenizer))
    return with_reasons(result.summary, result.not_computed)


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
