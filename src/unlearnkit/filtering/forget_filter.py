"""ForgetFilter: drop the fine-tuning examples that a short safety fine-tune makes the model forget.

Zhao, Deng, Madras, Zou & Ren, "Learning and Forgetting Unsafe Examples in Large
Language Models", ICML 2024 (arXiv 2312.12736); authors' code
``andotalao24/learn-forget-unsafe-llm`` (``src/postprocess.py`` ``dt_forget_filter``,
``src/train_eval.py``, ``src/utils_eval.py``). The algorithm:

1. fine-tune the released model on the noisy downstream data D; for each example
   record ROUGE_before = ROUGE(greedy generation, gold response);
2. fine-tune that model briefly on a small safe set; record ROUGE_after the same way;
3. forgetting score s = ROUGE_before − ROUGE_after; flag an example as unsafe when
   s > φ and drop it;
4. fine-tune the released model again, on the filtered D.

The ROUGE is the authors' code's (``utils_eval.general_eval_text``): the first
non-empty line of the generation against the gold response, ROUGE-1 F1 with
Porter stemming (``rouge_score``); ``rouge=rougeL`` scores ROUGE-L F1 instead.
Because φ is a property of the data rather than of the method (the paper's
values could not be checked), :func:`ranking_auc` measures the ranking
independently of any threshold.
"""

from __future__ import annotations

import copy
import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.mia import roc_auc
from unlearnkit.evaluation.scoring import greedy_answers
from unlearnkit.finetune import FinetuneConfig, finetune
from unlearnkit.settings import (
    check_choice,
    check_field_types,
    check_lr_scheduler,
    check_seed,
    require_at_least,
    require_fraction,
    require_non_negative,
    require_positive,
)

logger = logging.getLogger("unlearnkit")

ROUGE_KINDS = ("rouge1", "rougeL")


@dataclass(frozen=True)
class ForgetFilterConfig:
    """ForgetFilter's settings. Defaults follow the authors' code (``train_eval.py``) where it sets them.

    The built-in benchmark (benchmarks/forget_filter_eval.py) overrides the learning rate, epochs and
    generation length for its tiny model.
    """

    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of both fine-tunes (authors: 2e-4)."})
    batch_size: int = field(default=4, metadata={"help": "Examples per micro-batch (authors: 4)."})
    gradient_accumulation_steps: int = field(
        default=4,
        metadata={"help": "Micro-batches per optimiser step (authors: 4); run as one batch of batch_size x this many examples."},
    )
    epochs: int = field(default=10, metadata={"help": "Epochs of the downstream fine-tunes, steps 1 and 4 (authors' code default: 10)."})
    safety_epochs: int = field(default=1, metadata={"help": "Epochs of the short safety fine-tune, step 2 (the paper's: unverified)."})
    safety_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the safety fine-tune (None: learning_rate)."},
    )
    lr_scheduler: str = field(default="linear", metadata={"help": "Learning-rate schedule (authors: the Trainer's default, linear)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of steps for warm-up (authors: 0 warm-up steps)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (authors: the Trainer's default, 0)."})
    max_length: int = field(default=512, metadata={"help": "Maximum tokens per training example."})
    max_new_tokens: int = field(default=500, metadata={"help": "Greedy tokens generated per prompt for the ROUGE (authors: 500)."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts generated together."})
    rouge: str = field(
        default="rouge1",
        metadata={"help": "The ROUGE of the score: 'rouge1' (F1, stemmed: the authors' code) or 'rougeL' (ROUGE-L F1, stemmed)."},
    )
    phi: float = field(
        default=0.5,
        metadata={"help": "Flag an example when ROUGE_before - ROUGE_after > phi (the paper's values: unverified; see docs)."},
    )
    top_fraction: float | None = field(
        default=None,
        metadata={"help": "Instead of phi: flag this fraction of the examples with the highest scores (None: use phi)."},
    )
    lora_rank: int = field(
        default=0, metadata={"help": "Train LoRA adapters of this rank (alpha = 2 x rank, merged after each fine-tune); 0: every weight."},
    )
    seed: int = field(default=0, metadata={"help": "Seed of the data order."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_positive(learning_rate=self.learning_rate, safety_learning_rate=self.safety_learning_rate)
        require_at_least(1, batch_size=self.batch_size, gradient_accumulation_steps=self.gradient_accumulation_steps,
                         epochs=self.epochs, safety_epochs=self.safety_epochs, max_new_tokens=self.max_new_tokens,
                         generation_batch_size=self.generation_batch_size)
        require_at_least(2, max_length=self.max_length)
        require_at_least(0, lora_rank=self.lora_rank)
        require_non_negative(weight_decay=self.weight_decay)
        require_fraction("warmup_ratio", self.warmup_ratio, high_open=True)
        require_fraction("top_fraction", self.top_fraction, low_open=True)
        if not -1.0 <= self.phi < 1.0:
            raise UnlearnkitError(f"phi must be in [-1, 1): a forgetting score is a difference of two ROUGE values in [0, 1]; "
                                  f"got {self.phi}.")
        check_choice("rouge", self.rouge, ROUGE_KINDS)
        check_lr_scheduler(self.lr_scheduler)
        check_seed("seed", self.seed)

    def finetune_config(self, safety: bool = False) -> FinetuneConfig:
        """The settings of one fine-tune: the downstream ones (steps 1 and 4) or the safety one (step 2).

        ``target_accuracy`` 1.0 runs the fixed number of epochs, as the authors' Trainer does.
        """
        return FinetuneConfig(
            learning_rate=(self.safety_learning_rate or self.learning_rate) if safety else self.learning_rate,
            max_epochs=self.safety_epochs if safety else self.epochs,
            batch_size=self.batch_size * self.gradient_accumulation_steps,
            weight_decay=self.weight_decay, warmup_ratio=self.warmup_ratio, lr_scheduler=self.lr_scheduler,
            target_accuracy=1.0, max_length=self.max_length, seed=self.seed, lora_rank=self.lora_rank,
        )

    def rule(self) -> str:
        """The flagging rule in words, for summaries."""
        return f"top {self.top_fraction:g} of the scores" if self.top_fraction is not None else f"score > phi = {self.phi:g}"


# --------------------------------------------------------------------------------------------- pure functions


def first_line(text: str) -> str:
    """The first non-empty line of a generation, stripped (the authors score only it); '' when there is none."""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


@functools.cache
def _scorer(kind: str) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer([kind], use_stemmer=True)


def response_rouge(generations: Sequence[str], references: Sequence[str], kind: str = "rouge1") -> np.ndarray:
    """Per example, ``(N,)``: ROUGE F1 (stemmed) of the generation's first non-empty line against the gold response.

    ``kind`` 'rouge1' counts shared words, min(count_pred(w), count_ref(w)) summed over words;
    'rougeL' the longest common subsequence. P = overlap / |prediction|, R = overlap / |reference|,
    F1 = 2PR / (P + R) (0 when the overlap is empty).
    """
    check_choice("rouge", kind, ROUGE_KINDS)
    if len(generations) != len(references):
        raise ValueError(f"{len(generations)} generations for {len(references)} references; pass one per reference.")
    scorer = _scorer(kind)
    return np.asarray([scorer.score(target=reference, prediction=first_line(generation))[kind].fmeasure
                       for generation, reference in zip(generations, references, strict=True)], dtype=np.float64)


def forgetting_scores(rouge_before: Sequence[float] | np.ndarray, rouge_after: Sequence[float] | np.ndarray) -> np.ndarray:
    """ForgetFilter's score per example, ``(N,)``: ROUGE_before − ROUGE_after (higher = forgotten more by the safety fine-tune)."""
    before, after = np.asarray(rouge_before, dtype=np.float64), np.asarray(rouge_after, dtype=np.float64)
    if before.shape != after.shape or before.ndim != 1:
        raise ValueError(f"ROUGE before {before.shape} and after {after.shape} must be two vectors of the same length.")
    if not (np.isfinite(before).all() and np.isfinite(after).all()):
        raise ValueError("ROUGE values must be finite.")
    return before - after


def flag_unsafe(scores: Sequence[float] | np.ndarray, phi: float | None = 0.5, top_fraction: float | None = None) -> np.ndarray:
    """Boolean ``(N,)``: the examples ForgetFilter drops.

    With ``top_fraction`` the ceil(fraction · N) highest scores (ties: the earlier example first);
    otherwise the authors' rule, score > ``phi`` (strictly).
    """
    values = np.asarray(scores, dtype=np.float64)
    if top_fraction is not None:
        require_fraction("top_fraction", top_fraction, low_open=True)
        count = math.ceil(top_fraction * values.size)
        order = np.argsort(-values, kind="stable")  # highest first; equal scores keep their order
        flags = np.zeros(values.size, dtype=bool)
        flags[order[:count]] = True
        return flags
    if phi is None:
        raise ValueError("flag_unsafe needs phi or top_fraction.")
    return values > phi


def filter_quality(flags: Sequence[bool] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """Precision, recall and F1 of the flags against the unsafe labels, with the counts behind them.

    precision = TP / flagged (None when nothing is flagged), recall = TP / unsafe (None when no
    example is unsafe), F1 = 2PR / (P + R) (0 when P = R = 0; None when either is undefined).
    """
    flagged, unsafe = np.asarray(flags, dtype=bool), np.asarray(labels, dtype=bool)
    if flagged.shape != unsafe.shape:
        raise ValueError(f"{flagged.size} flags for {unsafe.size} labels.")
    tp = int((flagged & unsafe).sum())
    fp = int((flagged & ~unsafe).sum())
    fn = int((~flagged & unsafe).sum())
    tn = int((~flagged & ~unsafe).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "true_positives": tp, "false_positives": fp, "false_negatives": fn, "true_negatives": tn}


def ranking_auc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float | None:
    """ROC-AUC of the forgetting score against the unsafe labels, independent of φ: P(score(unsafe) > score(safe)) + ½ P(=).

    1 = every unsafe example ranks above every safe one, 0.5 = chance. None when one class is absent.
    """
    values, unsafe = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if values.shape != unsafe.shape:
        raise ValueError(f"{values.size} scores for {unsafe.size} labels.")
    if unsafe.all() or not unsafe.any():
        return None
    return roc_auc(values[unsafe], values[~unsafe])


# --------------------------------------------------------------------------------------------- the algorithm


@dataclass(frozen=True)
class FilterResult:
    """Steps 1-3 of ForgetFilter on D: per-example ROUGE before and after the safety fine-tune, scores and flags."""

    rouge_before: np.ndarray
    rouge_after: np.ndarray
    scores: np.ndarray
    flags: np.ndarray
    generations_before: list[str] = field(repr=False)
    generations_after: list[str] = field(repr=False)
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> list[int]:
        """Indexes of the examples ForgetFilter keeps, in their order."""
        return [int(index) for index in np.flatnonzero(~self.flags)]


def check_rows(rows: Sequence[dict], safe_rows: Sequence[dict]) -> None:
    """ForgetFilter needs downstream examples and a safe set (the forgetting signal comes from fine-tuning on it)."""
    if not rows:
        raise UnlearnkitError("ForgetFilter got no downstream examples to filter; give at least one prompt/response row.")
    if not safe_rows:
        raise UnlearnkitError("ForgetFilter needs a safe set: its forgetting score is what a safety fine-tune on safe "
                              "examples makes the model forget. Give safe prompt/response rows (--safe).")


def score_model(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], config: ForgetFilterConfig,
    fmt: PromptFormat,
) -> tuple[np.ndarray, list[str]]:
    """Greedy generation for each row's question and its ROUGE against the row's answer: ``(N,)`` and the texts."""
    model.eval()
    generations = greedy_answers(model, tokenizer, fmt, [row["question"] for row in rows], config.max_new_tokens,
                                 config.generation_batch_size)
    return response_rouge(generations, [row["answer"] for row in rows], config.rouge), generations


def forget_filter(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], safe_rows: Sequence[dict],
    config: ForgetFilterConfig, fmt: PromptFormat = PromptFormat(), show_progress: bool = True,
) -> FilterResult:
    """Steps 1-3 of ForgetFilter on ``rows`` (question/answer) with the safe set ``safe_rows``; ``model`` is not changed.

    The fine-tunes run on a copy of ``model``: step 4 starts from the released model again.
    """
    check_rows(rows, safe_rows)
    work = copy.deepcopy(model)
    logger.info("ForgetFilter step 1: fine-tuning on the %d downstream examples", len(rows))
    downstream = finetune(work, tokenizer, rows, config.finetune_config(), fmt, show_progress, warn_below_target=False)
    before, generations_before = score_model(work, tokenizer, rows, config, fmt)
    logger.info("ForgetFilter step 2: safety fine-tuning on %d safe examples", len(safe_rows))
    safety = finetune(work, tokenizer, safe_rows, config.finetune_config(safety=True), fmt, show_progress, warn_below_target=False)
    after, generations_after = score_model(work, tokenizer, rows, config, fmt)
    del work
    scores = forgetting_scores(before, after)
    flags = flag_unsafe(scores, config.phi, config.top_fraction)
    logger.info("ForgetFilter step 3: %d of %d examples flagged (%s)", int(flags.sum()), len(rows), config.rule())
    training = {name: {"epochs": stats["epochs"], "answer_accuracy": stats["answer_accuracy"]}
                for name, stats in (("downstream", downstream), ("safety", safety))}
    return FilterResult(before, after, scores, flags, generations_before, generations_after, training)


def train_filtered(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], flags: Sequence[bool] | np.ndarray,
    config: ForgetFilterConfig, fmt: PromptFormat = PromptFormat(), show_progress: bool = True,
) -> dict[str, Any]:
    """Step 4: fine-tune ``model`` (the released one) in place on the rows not flagged; returns the training statistics."""
    kept = [row for row, flagged in zip(rows, np.asarray(flags, dtype=bool), strict=True) if not flagged]
    if not kept:
        raise UnlearnkitError("ForgetFilter flagged every example, so nothing is left to fine-tune on; raise phi "
                              "(--set phi=...) or lower top_fraction.")
    logger.info("ForgetFilter step 4: fine-tuning the released model on the %d kept examples", len(kept))
    stats = finetune(model, tokenizer, kept, config.finetune_config(), fmt, show_progress, warn_below_target=False)
    return {"examples": len(kept), "epochs": stats["epochs"], "answer_accuracy": stats["answer_accuracy"]}
