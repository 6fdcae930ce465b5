"""Utility on general benchmarks through lm-eval (EleutherAI's lm-evaluation-harness), an optional extra.

``pip install 'unlearnkit[general]'`` installs lm-eval. :func:`evaluate_general`
wraps an already-loaded model and tokenizer in lm-eval's ``HFLM`` and runs
``lm_eval.simple_evaluate`` on the named tasks, e.g. ``mmlu`` (general
knowledge: utility should stay) or ``wmdp_bio`` / ``wmdp_cyber`` (hazardous
knowledge: the WMDP benchmark's forget target, accuracy should fall to chance,
0.25). Multiple-choice tasks are scored by lm-eval's log-likelihood of each
choice; the accuracy reported is lm-eval's ``acc`` (and ``acc_norm`` where the
task defines it). Tasks can also be defined by local YAML files
(``include_path``), which is how the tests run a tiny task offline. The data of
hub tasks is downloaded by lm-eval (the ``datasets`` library) on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.errors import UnlearnkitError

INSTALL_HINT = "lm-eval is an optional extra: pip install 'unlearnkit[general]' (or pip install lm-eval==0.4.13)."
# lm-eval reports "METRIC,FILTER" keys; these are the accuracies we keep. They are reported as
# general_<task>_<metric>, named by the tasks chosen at run time, so they have no catalog entry; a utility
# metric with a fixed key is registered with @metric (unlearnkit.evaluation.catalog) on its compute function here.
ACCURACY_METRICS = ("acc", "acc_norm")


def lm_eval_available() -> bool:
    try:
        import lm_eval  # noqa: F401 - imported only to learn whether it is installed
    except ImportError:
        return False
    return True


def parse_tasks(text: str) -> list[str]:
    tasks = [name.strip() for name in text.split(",") if name.strip()]
    if not tasks:
        raise UnlearnkitError("--tasks: name at least one lm-eval task, e.g. mmlu,wmdp_bio.")
    return tasks


def evaluate_general(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: Sequence[str],
    include_path: str | Path | None = None,
    batch_size: int = 16,
    limit: int | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """lm-eval accuracies per task: ``{task: {"acc": ..., "acc_norm": ..., "acc_stderr": ...}}``.

    ``limit``: at most this many documents per task (lm-eval's ``limit``), for quick checks;
    ``include_path``: a folder of local task YAML files, besides lm-eval's own tasks.
    """
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UnlearnkitError(INSTALL_HINT) from None
    manager = None
    if include_path:
        # Scanning lm-eval's own few thousand task files takes seconds: skip it when the local folder has every task.
        manager = TaskManager(include_path=str(include_path), include_defaults=False)
        if not all(task in manager.all_tasks for task in tasks):
            manager = None
    manager = manager or TaskManager(include_path=str(include_path) if include_path else None)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise UnlearnkitError(
            f"Unknown lm-eval task(s) {', '.join(unknown)}; see `lm-eval ls tasks` (e.g. mmlu, wmdp_bio, wmdp_cyber), "
            "or pass --include-path with your own task YAML files."
        )
    was_training = model.training
    model.eval()
    try:
        wrapped = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        output = simple_evaluate(
            model=wrapped, tasks=list(tasks), task_manager=manager, limit=limit, num_fewshot=num_fewshot,
            log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
            bootstrap_iters=0,
        )
    finally:
        model.train(was_training)
    if output is None:
        raise UnlearnkitError("lm-eval returned no results (it returns none on non-main processes of a distributed run).")
    return {task: _accuracies(values) for task, values in output["results"].items()}


def general_summary(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Flat ``general_<task>_<metric>`` entries for a summary.json."""
    return {f"general_{task}_{metric}": value for task, values in results.items() for metric, value in values.items()
            if metric in ACCURACY_METRICS}


def _accuracies(values: dict[str, Any]) -> dict[str, float]:
    kept: dict[str, float] = {}
    for key, value in values.items():
        metric = key.split(",")[0]
        if (metric in ACCURACY_METRICS or metric in (f"{name}_stderr" for name in ACCURACY_METRICS)) and isinstance(value, (int, float)):
            kept[metric] = float(value)
    return kept
