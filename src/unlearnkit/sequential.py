"""MUSE's scalability and sustainability criteria as runners (Shi et al., "MUSE: Machine Unlearning
Six-Way Evaluation for Language Models", ICLR 2025, criteria C5 and C6).

* **Scalability**: forget sets of growing size, each unlearned from the same
  target model, each result evaluated. Does the method still work, and still
  leave the model useful, when more has to go?
* **Sustainability**: a sequence of unlearning requests applied one after
  another, each starting from the model the previous one produced, the model
  re-evaluated after each on everything requested so far. Does utility erode,
  and does forgotten knowledge come back, as requests accumulate?

Two sources of requests:

Built-in benchmark
    Scalability stages are built-in forget splits (default ``forget01``,
    ``forget05``, ``forget10``: nested, as MUSE's ``scal`` sets are), each with
    its complementary retain split. Sustainability splits one forget split
    (default ``forget10``) into ``num_requests`` disjoint requests of whole
    authors (rows, when the split has fewer authors than requests), ordered
    from the split's last author backwards: the built-in splits hold the last
    authors (``forget01`` ⊂ ``forget05`` ⊂ ``forget10``), so the cumulative
    forget set passes through them where the sizes allow (forget10 in 4
    requests of 5 authors: after request 2 it is forget05, after request 4
    forget10). Every request trains with the source split's retain set, which
    holds none of their authors. Each stage is evaluated with the TOFU metrics
    (the forget set being the stage's, the retain and utility sets the
    benchmark's) plus VerbMem on the forget authors' biographies
    (:mod:`unlearnkit.data.biographies`). **Forget quality needs a retain
    oracle trained without exactly that forget set**: it is reported only for
    a stage whose forget set equals a built-in forget split whose oracle is
    prepared; other stages have none, and their ``oracle`` entry is null.

MUSE-format local files (a folder in the layout of :mod:`unlearnkit.data.schemas`)
    Requests are the ``scal`` (scalability) or ``sust`` (sustainability)
    ``forget_1`` … ``forget_4`` sets when the folder has them, else the
    ``raw/forget`` documents cut into ``num_requests`` parts (growing prefixes
    for scalability, disjoint parts for sustainability); the retain set is
    ``raw/retain1`` (none when absent). Each stage is evaluated with VerbMem on
    ``verbmem/forget`` (when present) and on the stage's own forget texts, and
    KnowMem on ``knowmem/forget_qa`` and ``knowmem/retain_qa`` with their
    ``*_icl`` examples (when present).

    MUSE unlearns raw text with a loss on every token. unlearnkit's methods
    train on (prompt, answer) pairs, so each text is cut into windows of
    ``window_tokens`` tokens whose first ``prefix_tokens`` tokens are the
    prompt and the rest the answer, under the run's prompt format: the loss
    covers all but each window's first ``prefix_tokens`` tokens.

Every run also evaluates the starting model (stage ``target``) on the largest
forget set. The results folder holds ``config.json``, ``summary.json`` (one
entry per stage, in order), ``per_sample.json``, ``training_log.json`` (per
stage) and ``timing.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.builtin import EVAL_CONFIG, FORGET_SPLITS, PreparedBenchmark, check_forget_split
from unlearnkit.data.biographies import PASSAGE_TOKENS, training_texts
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.schemas import SchemaSource, load_rows, load_texts, local_files
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation import muse
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate, load_reference
from unlearnkit.methods import MethodConfig
from unlearnkit.modeling import load_model
from unlearnkit.unlearning import check_method_inputs, unlearn

logger = logging.getLogger("unlearnkit")

MODES = ("scalability", "sustainability")
TARGET_STAGE = "target"


@dataclass
class Request:
    """One unlearning request: the QA rows to forget and the retain rows to train with."""

    name: str
    forget: list[dict]
    retain: list[dict]
    # What the stage is evaluated on (rows for the built-in benchmark, texts for MUSE).
    payload: list[Any] = field(default_factory=list)


@dataclass
class SequencePlan:
    """The requests of a run and how a model is evaluated after each stage."""

    mode: str
    requests: list[Request]
    # (model, what the stage is evaluated on: see stage_payload) -> (summary, per-sample values)
    evaluate: Callable[[PreTrainedModel, list[Any]], tuple[dict[str, Any], dict[str, Any]]]
    description: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UnlearnkitError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}.")
        if len(self.requests) < 1:
            raise UnlearnkitError("A scalability or sustainability run needs at least one forget set.")

    def stage_payload(self, index: int) -> list[Any]:
        """What stage ``index`` is evaluated on: its own set (scalability) or everything requested so far."""
        if self.mode == "scalability":
            return list(self.requests[index].payload)
        return [item for request in self.requests[: index + 1] for item in request.payload]

    def largest_payload(self) -> list[Any]:
        return self.stage_payload(len(self.requests) - 1) if self.mode == "sustainability" else max(
            (list(r.payload) for r in self.requests), key=len)


# --- The built-in benchmark -------------------------------------------------------------


def split_requests(rows: Sequence[dict], num_requests: int) -> list[list[dict]]:
    """Cut ``rows`` into ``num_requests`` disjoint requests of whole authors, last authors first.

    Authors are grouped into near-equal contiguous groups in the rows' order,
    and the groups are returned last-first (see the module docstring). With
    fewer authors than requests the rows themselves are grouped the same way.
    """
    if num_requests < 1:
        raise UnlearnkitError(f"--requests must be at least 1, got {num_requests}.")
    by_author: dict[Any, list[dict]] = {}
    for index, row in enumerate(rows):
        by_author.setdefault(row.get("author", index), []).append(row)  # a row without an author is its own unit
    units: list[list[dict]]
    if len(by_author) >= num_requests:
        units = list(by_author.values())
    elif len(rows) >= num_requests:
        units = [[row] for row in rows]
    else:
        raise UnlearnkitError(f"Cannot make {num_requests} requests from {len(rows)} forget rows; lower --requests.")
    groups = [units[round(i * len(units) / num_requests):round((i + 1) * len(units) / num_requests)] for i in range(num_requests)]
    return [[row for unit in group for row in unit] for group in reversed(groups)]


def builtin_plan(
    bench: PreparedBenchmark,
    mode: str,
    tokenizer: PreTrainedTokenizerBase,
    context: int,
    splits: Sequence[str] = FORGET_SPLITS,
    source_split: str = "forget10",
    num_requests: int = 4,
    eval_config: EvalConfig = EVAL_CONFIG,
    muse_config: muse.MuseConfig = muse.MuseConfig(),
    prefix_tokens: int = 16,
) -> SequencePlan:
    """The requests of a run on the built-in benchmark (module docstring) and their evaluator."""
    if mode == "scalability":
        for split in splits:
            check_forget_split(split)
        requests = [Request(split, bench.split(split), bench.split(bench.retain_split(split)), bench.split(split)) for split in splits]
        description = {"splits": list(splits)}
    else:
        check_forget_split(source_split)
        retain = bench.split(bench.retain_split(source_split))
        parts = split_requests(bench.split(source_split), num_requests)
        requests = [Request(f"request{i + 1}", part, retain, part) for i, part in enumerate(parts)]
        description = {"source_split": source_split, "num_requests": num_requests}
    evaluator = BuiltinStageEvaluator(bench, tokenizer, context, eval_config, muse_config, prefix_tokens)
    return SequencePlan(mode, requests, evaluator, {"data": "builtin", **description})


class BuiltinStageEvaluator:
    """TOFU metrics on a stage's forget set (forget quality where an oracle exists) plus VerbMem on biographies."""

    def __init__(
        self,
        bench: PreparedBenchmark,
        tokenizer: PreTrainedTokenizerBase,
        context: int,
        eval_config: EvalConfig,
        muse_config: muse.MuseConfig,
        prefix_tokens: int,
    ) -> None:
        self.bench, self.tokenizer, self.eval_config = bench, tokenizer, eval_config
        self.window = PASSAGE_TOKENS  # the passages the target was trained on, whole
        self.prefix_tokens = prefix_tokens
        # Generate no more than a passage's continuation holds (ROUGE F1 would count the excess against it),
        # and never past the context.
        self.muse_config = muse.MuseConfig(**{**asdict(muse_config), "verbmem_max_new_tokens": min(
            muse_config.verbmem_max_new_tokens, PASSAGE_TOKENS - prefix_tokens, context - prefix_tokens - 1)})
        # Retain, real_authors and world_facts do not depend on the forget split.
        self.fixed_splits = {k: v for k, v in bench.eval_splits(FORGET_SPLITS[-1]).items() if k != "forget"}

    def __call__(self, model: PreTrainedModel, forget_rows: list[dict]) -> tuple[dict[str, Any], dict[str, Any]]:
        forget_rows, oracle_split = self._match_oracle(forget_rows)
        reference = load_reference(self.bench.reference_path(oracle_split)) if oracle_split else None
        result = evaluate(model, self.tokenizer, {"forget": forget_rows, **self.fixed_splits}, self.bench.config.prompt_format,
                          self.eval_config, reference)
        passages = training_texts(forget_rows, self.tokenizer, self.window)
        items = muse.text_windows(self.tokenizer, [p["text"] for p in passages], self.prefix_tokens, self.window)
        verbatim = muse.verbmem(model, self.tokenizer, items, self.muse_config)
        summary = {"forget_size": len(forget_rows), "oracle": oracle_split, **result.summary,
                   "verbmem_forget": verbatim.value}
        return summary, {**result.per_sample, "verbmem_forget": verbatim.per_sample}

    def _match_oracle(self, rows: list[dict]) -> tuple[list[dict], str | None]:
        """The built-in split (rows in its order) equal to ``rows`` whose oracle is prepared, if any."""
        questions = {row["question"] for row in rows}
        for split in FORGET_SPLITS:
            split_rows = self.bench.split(split)
            if {row["question"] for row in split_rows} == questions and self.bench.reference_path(split).is_file():
                return split_rows, split
        return rows, None


# --- MUSE-format local files ------------------------------------------------------------


def muse_plan(
    folder: Path,
    mode: str,
    tokenizer: PreTrainedTokenizerBase,
    context: int | None,
    benchmark: str = "muse-news",
    num_requests: int = 4,
    muse_config: muse.MuseConfig = muse.MuseConfig(),
    prefix_tokens: int = 32,
    window_tokens: int = 256,
) -> SequencePlan:
    """The requests of a run on a MUSE-format folder (module docstring) and their evaluator."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UnlearnkitError(f"MUSE folder {folder} does not exist.")
    if context is not None:
        window_tokens = min(window_tokens, context - 1)
    subset = "scal" if mode == "scalability" else "sust"
    sets = [texts for i in range(1, 5) if (texts := _maybe_texts(SchemaSource(benchmark, subset, f"forget_{i}", folder)))]
    if sets:
        source = f"{subset}/forget_1..{len(sets)}"
    else:
        documents = load_texts(SchemaSource(benchmark, "raw", "forget", folder))
        parts = [documents[round(i * len(documents) / num_requests):round((i + 1) * len(documents) / num_requests)]
                 for i in range(num_requests)]
        if any(not part for part in parts):
            raise UnlearnkitError(f"raw/forget has {len(documents)} document(s), too few for {num_requests} requests; lower --requests.")
        sets = [[text for part in parts[: i + 1] for text in part] for i in range(num_requests)] if mode == "scalability" else parts
        source = "raw/forget"
    retain_texts = _maybe_texts(SchemaSource(benchmark, "raw", "retain1", folder)) or []
    retain = _window_rows(tokenizer, retain_texts, prefix_tokens, window_tokens)
    requests = [Request(f"{subset}{i + 1}", _window_rows(tokenizer, texts, prefix_tokens, window_tokens), retain, texts)
                for i, texts in enumerate(sets)]
    evaluator = MuseStageEvaluator(folder, benchmark, tokenizer, context, muse_config, prefix_tokens, window_tokens)
    return SequencePlan(mode, requests, evaluator, {"data": str(folder), "benchmark": benchmark, "requests_from": source,
                                                    "prefix_tokens": prefix_tokens, "window_tokens": window_tokens})


class MuseStageEvaluator:
    """VerbMem (the folder's verbmem/forget and the stage's own texts) and KnowMem (forget and retain QA)."""

    def __init__(
        self,
        folder: Path,
        benchmark: str,
        tokenizer: PreTrainedTokenizerBase,
        context: int | None,
        muse_config: muse.MuseConfig,
        prefix_tokens: int,
        window_tokens: int,
    ) -> None:
        self.tokenizer, self.prefix_tokens, self.window_tokens = tokenizer, prefix_tokens, window_tokens
        limit = (muse_config.verbmem_max_new_tokens if context is None
                 else min(muse_config.verbmem_max_new_tokens, context - prefix_tokens - 1))
        self.config = muse.MuseConfig(**{**asdict(muse_config), "verbmem_max_new_tokens": limit})
        self.verbmem_items = _maybe_rows(SchemaSource(benchmark, "verbmem", "forget", folder))
        self.knowmem = {
            name: (rows, _maybe_rows(SchemaSource(benchmark, "knowmem", f"{split}_icl", folder)) or [])
            for name, split in (("forget", "forget_qa"), ("retain", "retain_qa"))
            if (rows := _maybe_rows(SchemaSource(benchmark, "knowmem", split, folder)))
        }

    def __call__(self, model: PreTrainedModel, texts: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
        summary: dict[str, Any] = {"forget_texts": len(texts)}
        per_sample: dict[str, Any] = {}
        own = muse.text_windows(self.tokenizer, texts, self.prefix_tokens, self.window_tokens)
        scores = {"verbmem_stage_forget": own}
        if self.verbmem_items:
            scores["verbmem_forget"] = self.verbmem_items
        for name, items in scores.items():
            result = muse.verbmem(model, self.tokenizer, items, self.config)
            summary[name], per_sample[name] = result.value, result.per_sample
        for name, (rows, examples) in self.knowmem.items():
            result = muse.knowmem(model, self.tokenizer, rows, examples, self.config)
            summary[f"knowmem_{name}"], per_sample[f"knowmem_{name}"] = result.value, result.per_sample
        return summary, per_sample


def _window_rows(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], prefix_tokens: int, window_tokens: int) -> list[dict]:
    """Text windows as QA rows: the prefix is the question, the continuation the answer."""
    return [{"question": w["prompt"], "answer": w["gt"]} for w in muse.text_windows(tokenizer, texts, prefix_tokens, window_tokens)]


def _maybe_texts(source: SchemaSource) -> list[str] | None:
    return [row["text"] for row in rows] if (rows := _maybe_rows(source)) else None


def _maybe_rows(source: SchemaSource) -> list[dict] | None:
    """The rows of an optional part of a MUSE folder, or None when the folder does not have it."""
    try:
        local_files(source)
    except UnlearnkitError:
        return None
    return load_rows(source)


# --- The runner --------------------------------------------------------------------------


@dataclass
class SequenceResult:
    summary: dict[str, dict[str, Any]]
    per_sample: dict[str, dict[str, Any]]
    training_logs: dict[str, list[dict[str, Any]]]


def run_plan(
    plan: SequencePlan,
    model_source: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    method: str,
    config: MethodConfig,
    fmt: PromptFormat,
    show_progress: bool = True,
    trust_remote_code: bool = False,
) -> SequenceResult:
    """Evaluate the target, then unlearn and evaluate each stage (see the module docstring)."""
    model = load_model(model_source, trust_remote_code)
    for request in plan.requests:
        check_method_inputs(method, config, request.forget, request.retain, model)
    logger.info("%s: evaluating the target model", plan.mode)
    summary, per_sample = {}, {}
    summary[TARGET_STAGE], per_sample[TARGET_STAGE] = plan.evaluate(model, plan.largest_payload())
    logs: dict[str, list[dict[str, Any]]] = {}
    for index, request in enumerate(plan.requests):
        stage = f"{index + 1}-{request.name}"
        if plan.mode == "scalability" and index > 0:
            model = load_model(model_source, trust_remote_code)  # every forget set starts from the same target
        logger.info("%s stage %d/%d (%s): unlearning %d forget example(s)", plan.mode, index + 1, len(plan.requests),
                    request.name, len(request.forget))
        started = time.perf_counter()
        outcome = unlearn(model, tokenizer, method, request.forget, request.retain, config, fmt, show_progress)
        model = outcome.model
        logs[stage] = outcome.log_history
        unlearned_at = time.perf_counter()
        stage_summary, stage_samples = plan.evaluate(model, plan.stage_payload(index))
        summary[stage] = {"requests": [r.name for r in plan.requests[: index + 1]] if plan.mode == "sustainability" else [request.name],
                          **stage_summary, "unlearn_seconds": round(unlearned_at - started, 2),
                          "eval_seconds": round(time.perf_counter() - unlearned_at, 2)}
        per_sample[stage] = stage_samples
        logger.info("%s stage %d/%d done: %s", plan.mode, index + 1, len(plan.requests), _headline(stage_summary))
    return SequenceResult(summary, per_sample, logs)


def _headline(summary: Mapping[str, Any]) -> str:
    keys = ("forget_quality", "model_utility", "forget_rouge_l", "verbmem_forget", "verbmem_stage_forget", "knowmem_forget",
            "knowmem_retain")
    return ", ".join(f"{key} {summary[key]:.4g}" for key in keys if isinstance(summary.get(key), float))
