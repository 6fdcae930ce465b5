"""``filter``: ForgetFilter (Zhao et al., ICML 2024) on a user's fine-tuning data, into one results folder.

Results folder (documented in docs/forget_filter.md):

* ``scores.json``: one entry per data row, in the data's order: its prompt and response, ROUGE before
  and after the safety fine-tune, the forgetting score, its rank (1 = forgotten most), whether it
  was flagged, its label when ``--labels`` names one, and both greedy generations;
* ``filtered.jsonl``: the rows kept, exactly as read (every field), one JSON object a line;
* ``summary.json``: counts, the flagging rule, the score distribution and, with labels, the ranking's
  AUC and the filter's precision, recall and F1;
* ``config.json``: the settings, sources, prompt format, versions and digests; ``log.txt``;
* ``model/``: with ``--train-filtered``, the model fine-tuned on the kept rows (step 4; safetensors).

Rows are ``prompt``/``response`` or ``question``/``answer`` pairs; every input is checked
(:func:`resolve_filter`) before a model loads or anything is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unlearnkit import distributed
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.safety_mix import is_safety_mix_source, load_safety_mix
from unlearnkit.errors import UnlearnkitError
from unlearnkit.filtering.forget_filter import FilterResult, ForgetFilterConfig, filter_quality, forget_filter, ranking_auc
from unlearnkit.io import write_text
from unlearnkit.runs.folder import check_output_dir, results_folder, with_reasons, write
from unlearnkit.runs.inputs import ModelChoice, RunOptions
from unlearnkit.runs.lock import locks_output
from unlearnkit.settings import build_config

logger = logging.getLogger("unlearnkit")

SCORES_FILE = "scores.json"
FILTERED_FILE = "filtered.jsonl"
SUMMARY_FILE = "summary.json"
# The two row forms accepted, in the order they are looked for.
ROW_FORMS = (("prompt", "response"), ("question", "answer"))
_TRUE_WORDS = {"1": True, "true": True, "0": False, "false": False}


@dataclass(frozen=True)
class FilterData:
    """Rows as read (``raw``, written back unchanged) and as question/answer pairs (``rows``), with their labels if any."""

    source: str
    role: str
    raw: list[dict] = field(repr=False)
    rows: list[dict] = field(repr=False)
    labels: list[bool] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class FilterInputs:
    """Everything ``filter`` works on, resolved and checked."""

    model: ModelChoice
    data: FilterData
    safe: FilterData
    labels_field: str | None
    config: ForgetFilterConfig
    train_filtered: bool = False


def read_rows(source: str, role: str) -> list[Any]:
    """The rows of ``source``: a built-in ``safety-mix:SPLIT``, a local JSON/JSONL/CSV/Parquet file or ``hf:NAME``."""
    from unlearnkit.data import qa

    text = str(source)
    if not text.strip():
        raise UnlearnkitError(f"The {role} source is empty; name a JSON/JSONL/CSV/Parquet file, hf:NAME or safety-mix:SPLIT.")
    if is_safety_mix_source(text) and not Path(text).exists():
        return load_safety_mix(text)
    if text.startswith(qa.HUB_PREFIX):
        return qa._load_hub(text[len(qa.HUB_PREFIX):], role)  # the QA loader's readers: one parser for every command
    return qa._load_file(Path(text), role)


def to_pairs(raw: Sequence[Any], where: str) -> list[dict]:
    """Each row as ``{"question", "answer"}`` from its prompt/response or question/answer fields (non-empty strings)."""
    if len(raw) == 0:
        raise UnlearnkitError(f"The {where} is empty: it needs at least one row with prompt and response (or question and answer).")
    pairs = []
    for index, row in enumerate(raw, start=1):
        if not isinstance(row, dict):
            raise UnlearnkitError(f"Row {index} of the {where} is a {type(row).__name__}, not an object with fields.")
        form = next((names for names in ROW_FORMS if all(name in row for name in names)), None)
        if form is None:
            present = ", ".join(sorted(map(str, row))) or "none"
            raise UnlearnkitError(f"Row {index} of the {where} has neither prompt and response nor question and answer "
                                  f"(fields present: {present}). Every row needs one of the two pairs.")
        for name in form:
            if not isinstance(row[name], str) or not row[name].strip():
                raise UnlearnkitError(f"Row {index} of the {where}: field {name!r} must be a non-empty string, got {row[name]!r}.")
        pairs.append({"question": row[form[0]], "answer": row[form[1]]})
    return pairs


def read_labels(raw: Sequence[dict], name: str, where: str) -> list[bool]:
    """The boolean label ``name`` of every row: true/false, 1/0, or (as CSV cells hold them) "true"/"false"/"1"/"0"."""
    missing = [index for index, row in enumerate(raw, start=1) if row.get(name) is None]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise UnlearnkitError(f"--labels {name}: {len(missing)} of {len(raw)} rows of the {where} lack the field (row(s) {shown}). "
                              "Every row needs a label (true/1 = unsafe, false/0 = safe), or drop --labels.")
    labels = []
    for index, row in enumerate(raw, start=1):
        value = row[name]
        if isinstance(value, bool):
            labels.append(value)
        elif isinstance(value, (int, float)) and value in (0, 1):
            labels.append(bool(value))
        elif isinstance(value, str) and value.strip().lower() in _TRUE_WORDS:
            labels.append(_TRUE_WORDS[value.strip().lower()])
        else:
            raise UnlearnkitError(f"--labels {name}: row {index} of the {where} holds {value!r}; a label must be true/false or "
                                  "1/0 (1 = unsafe).")
    return labels


def resolve_data(source: str, role: str, labels_field: str | None = None) -> FilterData:
    """Read and check one data source; the labels too when ``labels_field`` is given."""
    where = f"{role} data ({source})"
    raw = read_rows(source, role)
    rows = to_pairs(raw, where)
    labels = read_labels(raw, labels_field, where) if labels_field is not None else None
    return FilterData(str(source), role, list(raw), rows, labels)


def check_disjoint(data: FilterData, safe: FilterData) -> None:
    """Refuse a safe set that repeats data examples: the safety fine-tune trains on them, so their score measures nothing."""
    def key(row: Mapping[str, str]) -> tuple[str, str]:
        return " ".join(row["question"].lower().split()), " ".join(row["answer"].lower().split())

    safe_keys = {key(row) for row in safe.rows}
    shared = [index for index, row in enumerate(data.rows, start=1) if key(row) in safe_keys]
    if shared:
        shown = ", ".join(map(str, shared[:10])) + (", ..." if len(shared) > 10 else "")
        raise UnlearnkitError(f"The safe set repeats {len(shared)} example(s) of the data (data row(s) {shown}, compared ignoring "
                              "case and spacing). The safety fine-tune would train on them directly; remove them from --safe.")


def resolve_filter(
    *, data: str, safe: str | None, model: str, labels: str | None = None, settings: Mapping[str, Any] | None = None,
    prompt_format: PromptFormat = PromptFormat(), train_filtered: bool = False,
) -> FilterInputs:
    """Check every input before anything loads: the settings, the safe set's presence, the data, labels, overlap; then the model."""
    from unlearnkit.runs.inputs import resolve_model

    config = build_config(ForgetFilterConfig, dict(settings or {}), what="filter setting")
    if safe is None or not str(safe).strip():
        raise UnlearnkitError("ForgetFilter needs a safe set (--safe FILE): its score is what a short safety fine-tune on safe "
                              "examples makes the model forget, so without one there is nothing to rank by.")
    if labels is not None and not labels.strip():
        raise UnlearnkitError("--labels is empty; name the field holding each row's unsafe label, or drop --labels.")
    chosen = resolve_data(data, "data", labels)
    safe_data = resolve_data(safe, "safe")
    check_disjoint(chosen, safe_data)
    return FilterInputs(resolve_model(model, prompt_format), chosen, safe_data, labels, config, train_filtered)


@locks_output
def run_filter(*, inputs: FilterInputs, options: RunOptions) -> dict[str, Any]:
    """Run ForgetFilter and write its results folder; returns the summary (the fine-tunes run before anything is written)."""
    from unlearnkit.filtering.forget_filter import train_filtered
    from unlearnkit.modeling import load_model, load_tokenizer, save_model
    from unlearnkit.provenance import environment, rows_sha256, tokenizer_sha256, weights_sha256

    model, config = inputs.model, inputs.config
    check_output_dir(options.output, options.overwrite, {"--model": model.source, "--data": inputs.data.source,
                                                         "--safe": inputs.safe.source})
    network = load_model(model.source, options.trust_remote_code)
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.check(tokenizer)
    result = forget_filter(network, tokenizer, inputs.data.rows, inputs.safe.rows, config, model.fmt, options.show_progress)
    filtered_stats = None
    if inputs.train_filtered:
        filtered_stats = train_filtered(network, tokenizer, inputs.data.rows, result.flags, config, model.fmt, options.show_progress)
    summary = filter_summary(result, inputs.data.labels, config)
    if filtered_stats is not None:
        summary["filtered_training"] = filtered_stats
    run_config = {
        "command": "filter", "model": model.source, "data": inputs.data.source, "safe": inputs.safe.source,
        "labels": inputs.labels_field, "train_filtered": inputs.train_filtered, "settings": asdict(config),
        "citation": 'Zhao, Deng, Madras, Zou & Ren, "Learning and Forgetting Unsafe Examples in Large Language Models", ICML 2024',
        **model.fmt.record(), "environment": environment(),
        "sha256": {"data_rows": rows_sha256(inputs.data.raw), "safe_rows": rows_sha256(inputs.safe.raw),
                   "source_model": weights_sha256(model.source), "tokenizer": tokenizer_sha256(tokenizer)},
    }
    with results_folder(options.output, options.overwrite) as folder:
        write(folder / SCORES_FILE, row_scores(result, inputs.data.rows, inputs.data.labels))
        if distributed.is_main_process():
            kept = [inputs.data.raw[index] for index in result.kept]
            write_text(folder / FILTERED_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in kept))
            if inputs.train_filtered:
                save_model(network, tokenizer, folder / "model")
                run_config["sha256"]["output_model"] = weights_sha256(folder / "model")
        write(folder / "config.json", run_config)
        write(folder / SUMMARY_FILE, summary)
    return summary


def row_scores(result: FilterResult, rows: Sequence[dict], labels: Sequence[bool] | None) -> list[dict[str, Any]]:
    """Per row, in the data's order: ROUGE before/after, score, rank (1 = highest score), flag, label, generations."""
    order = np.argsort(-result.scores, kind="stable")
    ranks = np.empty(len(rows), dtype=int)
    ranks[order] = np.arange(1, len(rows) + 1)
    entries = []
    for index, row in enumerate(rows):
        entry = {"index": index, "prompt": row["question"], "response": row["answer"],
                 "rouge_before": float(result.rouge_before[index]), "rouge_after": float(result.rouge_after[index]),
                 "score": float(result.scores[index]), "rank": int(ranks[index]), "flagged": bool(result.flags[index])}
        if labels is not None:
            entry["label_unsafe"] = bool(labels[index])
        entry["generation_before"] = result.generations_before[index]
        entry["generation_after"] = result.generations_after[index]
        entries.append(entry)
    return entries


def filter_summary(result: FilterResult, labels: Sequence[bool] | None, config: ForgetFilterConfig) -> dict[str, Any]:
    """Counts, rule, score distribution; with labels the AUC and precision/recall/F1 (``not_computed`` says what is missing)."""
    scores = result.scores
    summary: dict[str, Any] = {
        "rows": int(scores.size), "flagged": int(result.flags.sum()), "kept": int((~result.flags).sum()), "rule": config.rule(),
        "rouge": config.rouge, "mean_rouge_before": float(result.rouge_before.mean()), "mean_rouge_after": float(result.rouge_after.mean()),
        "score": {"mean": float(scores.mean()), "min": float(scores.min()), "median": float(np.median(scores)), "max": float(scores.max())},
        "training": result.training,
    }
    reasons: dict[str, str] = {}
    if labels is None:
        reasons["auc"] = reasons["precision_recall"] = "no --labels: the ranking and the kept rows only"
        return with_reasons(summary, reasons)
    unsafe = np.asarray(labels, dtype=bool)
    summary["unsafe_rows"] = int(unsafe.sum())
    summary["auc"] = ranking_auc(scores, unsafe)
    if summary["auc"] is None:
        reasons["auc"] = "the labels hold one class only: the ranking's AUC needs unsafe and safe rows"
    summary["filter"] = filter_quality(result.flags, unsafe)
    return with_reasons(summary, reasons)
