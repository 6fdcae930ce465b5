"""``sequence``: MUSE's scalability and sustainability, stage by stage, into one results folder."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.provenance import environment, rows_sha256
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.inputs import Builtin, MethodChoice, ModelChoice, RunOptions, resolve_model
from unlearnkit.runs.lock import locks_output
from unlearnkit.sequential import MODES, SequencePlan, builtin_plan, muse_plan, run_plan
from unlearnkit.unlearning import check_method_inputs

# The columns the command prints, where a stage reports them.
SEQUENCE_COLUMNS = ("forget_quality", "model_utility", "forget_probability", "forget_rouge_l", "verbmem_forget",
                    "verbmem_stage_forget", "knowmem_forget", "knowmem_retain")


@dataclass(frozen=True)
class SequenceInputs:
    """The plan of stages, the model (with its tokenizer and prompt format) and the method."""

    plan: SequencePlan
    model: ModelChoice
    tokenizer: Any
    method: MethodChoice


def resolve_sequence(
    *,
    mode: str,
    model: str,
    method: MethodChoice,
    builtin: Builtin,
    muse: Path | None = None,
    muse_name: str = "muse-news",
    splits: tuple[str, ...] = ("forget01", "forget05", "forget10"),
    source_split: str = "forget10",
    requests: int = 4,
    num_shots: int | None = None,
    prompt_format: PromptFormat = PromptFormat(),
    trust_remote_code: bool = False,
) -> SequenceInputs:
    """The built-in benchmark's splits (its oracles trained as needed) or a MUSE-format folder, cut into stages."""
    from transformers import AutoConfig

    from unlearnkit.builtin import EVAL_CONFIG
    from unlearnkit.evaluation.muse import MuseConfig
    from unlearnkit.modeling import load_tokenizer

    if mode not in MODES:
        raise UnlearnkitError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}.")
    muse_config = MuseConfig(num_shots=num_shots)
    if muse is None:
        builtin.prepared(*(splits if mode == "scalability" else (source_split,)))
    chosen = resolve_model(model, prompt_format, builtin)
    tokenizer = load_tokenizer(chosen.source, trust_remote_code)
    chosen.fmt.check(tokenizer)
    try:
        config = AutoConfig.from_pretrained(chosen.source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        raise UnlearnkitError(f"Could not read the configuration of {chosen.source}: {error}") from None
    context = getattr(config, "max_position_embeddings", None)
    if muse is not None:
        plan = muse_plan(muse, mode, tokenizer, context, benchmark=muse_name, num_requests=requests, muse_config=muse_config)
    elif context is None:
        raise UnlearnkitError("The built-in runner needs a model whose config states its context (max_position_embeddings).")
    else:
        plan = builtin_plan(builtin.prepared(), mode, tokenizer, context, splits=splits, source_split=source_split,
                            num_requests=requests, eval_config=EVAL_CONFIG, muse_config=muse_config)
    return SequenceInputs(plan, chosen, tokenizer, method)


@locks_output
def run_sequence(*, inputs: SequenceInputs, options: RunOptions) -> dict[str, dict[str, Any]]:
    """Run the plan and write a results folder; returns the summary (one entry per stage)."""
    plan, model, method = inputs.plan, inputs.model, inputs.method
    check_output_dir(options.output, options.overwrite)
    run_config = {
        "command": "sequence", "mode": plan.mode, "model": model.source, "method": method.name,
        "hyperparameters": asdict(method.config), **model.fmt.record(), **plan.description,
        "requests": [{"name": r.name, "forget_rows": len(r.forget), "retain_rows": len(r.retain),
                      "sha256": rows_sha256(r.forget)} for r in plan.requests],
        "environment": environment(),
    }
    for request in plan.requests:  # the data and tokenised answers now; the model's layers once it is loaded
        check_method_inputs(method.name, method.config, request.forget, request.retain, tokenizer=inputs.tokenizer, fmt=model.fmt)
    started = time.perf_counter()
    with results_folder(options.output, options.overwrite) as folder:
        write(folder / "config.json", run_config)
        result = run_plan(plan, model.source, inputs.tokenizer, method.name, method.config, model.fmt, options.show_progress,
                          options.trust_remote_code)
        write(folder / "summary.json", result.summary)
        write(folder / "per_sample.json", result.per_sample)
        write(folder / "training_log.json", result.training_logs)
        write(folder / "timing.json", {"total_seconds": round(time.perf_counter() - started, 2)})
    return result.summary
