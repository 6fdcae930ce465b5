"""Memorization and extraction metrics, and Jang et al.'s stopping rule as a training callback.

Pure functions take ``logits (B, T, V)`` and ``labels (B, T)`` with the
conventions of :mod:`unlearnkit.losses`: a label of ``-100`` is not scored, and
the causal shift (``logits[:, t - 1]`` predicts ``labels[:, t]``) is done here.
"Scored tokens" below are the labels that are not ``-100`` after the shift.

* **Exact memorization** (Tirumala et al., NeurIPS 2022): the fraction of
  scored tokens whose teacher-forced argmax equals the label.
* **Extraction strength** (Carlini et al., "Quantifying Memorization Across
  Neural Language Models", ICLR 2023; the form used by OpenUnlearning):
  ``1 − k/|y|``, with ``k`` the smallest offset such that the teacher-forced
  argmax equals the label on every token of ``y[k:]``; equivalently the length
  of the longest fully-predicted suffix divided by ``|y|``. When even the last
  token is wrong no suffix matches, ``k = |y|`` and the value is 0.
  OpenUnlearning's loop (src/evals/metrics/memorization.py at d3d7cf9) stops
  at ``k = |y| − 1`` and returns ``1/|y|`` there, the same value as when only
  the last token is predicted: a bug not repeated here.
* **Memorization accuracy** MA and **extraction likelihood** EL_n (Jang et al.,
  "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", ACL
  2023): MA is the greedy next-token accuracy over a token sequence x (every
  token after the first); EL_n is, as in their code (``validation_el`` of
  models/Neo_Model.py), the mean over prefixes x_<t of the number of n-grams
  of the greedy continuation of x_<t (with repeats) found among the n-grams of
  the true suffix x_≥t, divided by the number of the suffix's n-grams.

EOS: OpenUnlearning scores exact memorization and extraction strength without
the answer's final EOS (its ``tokenwise_vocab_logprobs`` in
src/evals/metrics/utils.py drops the last labelled token, the EOS its collator
appends), and so do the answer-level functions here by default
(``score_eos=False``, :func:`without_final_eos`); ``score_eos=True`` keeps it.
``|y|`` above is then the answer's tokens without EOS.

For short QA answers the sequence x is the answer's tokens (without EOS,
unless ``score_eos``) and the question's prompt is a fixed prefix in front of
every prefix x_<t: the model is asked to continue "question + first t answer
tokens". With that scope MA equals exact memorization on the answer tokens, and
EL_n has ``|x| − n`` terms (prefix lengths 1 .. |x| − n, each suffix holding at
least one n-gram; Jang et al. divide by the same count); a sequence of at most
n tokens has no term and gives NaN, which the aggregates skip.

Each function that gives a reported number carries its catalog entries
(:func:`unlearnkit.evaluation.catalog.metric`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

from unlearnkit import distributed
from unlearnkit.data.encoding import PromptFormat, pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import CARLINI_QUANTIFYING, JANG, MEAN, NANMEAN, TIRUMALA, metric
from unlearnkit.evaluation.scoring import encode_pairs, greedy_token_continuations
from unlearnkit.losses import IGNORE_INDEX, _check_lm_inputs

logger = logging.getLogger("unlearnkit")

DEFAULT_NGRAM = 10
"""Jang et al.'s n for EL_n."""


# ---------------------------------------------------------------------------
# Pure functions on logits and labels
# ---------------------------------------------------------------------------


def argmax_matches(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Teacher-forced greedy hits, with the causal shift.

    Returns ``(matches, mask)``, both bool ``(B, T-1)``: ``matches[b, t]`` is
    ``argmax logits[b, t] == labels[b, t+1]`` and ``mask[b, t]`` whether that
    label is scored.
    """
    _check_lm_inputs(logits, labels)
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    matches = (logits[:, :-1].argmax(dim=-1) == shifted_labels) & mask
    return matches, mask


def without_final_eos(labels: Tensor, eos_token_id: int | None) -> Tensor:
    """``labels (B, T)`` with each row's last scored label set to -100 where it is ``eos_token_id``.

    OpenUnlearning drops that position from exact memorization, extraction
    strength, Min-K% and Min-K%++ (its collator always ends an answer with EOS).
    A row whose last scored label is another token (an answer truncated before
    its EOS) is left as it is; so are all rows when ``eos_token_id`` is None.
    """
    if eos_token_id is None:
        return labels
    scored = labels != IGNORE_INDEX
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    last = torch.where(scored, positions, -1).amax(dim=1)  # (B,): index of the last scored label, -1 if none
    rows = torch.arange(labels.shape[0], device=labels.device)
    is_eos = (last >= 0) & (labels[rows, last.clamp_min(0)] == eos_token_id)
    trimmed = labels.clone()
    trimmed[rows[is_eos], last[is_eos]] = IGNORE_INDEX
    return trimmed


def _scored_per_row(mask: Tensor) -> Tensor:
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        raise ValueError("every sequence needs at least one scored label (!= -100) at a position t >= 1.")
    return counts.double()


@metric("forget_exact_memorization", "lower",
        "Mean over forget answers of the fraction of answer tokens (EOS excluded) predicted by the teacher-forced argmax.",
        TIRUMALA, "memorization", label="forget exact memorization", aggregation=MEAN)
@metric("holdout_exact_memorization", "lower",
        "Mean over holdout answers of the fraction of answer tokens (EOS excluded) predicted by the teacher-forced argmax.",
        TIRUMALA, "memorization", label="holdout exact memorization", aggregation=MEAN)
# MA on the answer tokens, as the stopping rule measures it (answer_memorization), is exact memorization of the
# answer; memorization_accuracy() below is MA over every token of a whole sequence.
@metric("memorization_accuracy", "lower",
        "Jang et al.'s MA: mean greedy next-token accuracy on the answer tokens, EOS excluded "
        "(their stopping rule: below the value on unseen data).",
        JANG, "memorization", label="memorization accuracy (MA)", aggregation=MEAN)
def exact_memorization(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of each sequence's scored tokens predicted exactly by the teacher-forced argmax; ``(B,)``."""
    matches, mask = argmax_matches(logits, labels)
    return matches.sum(dim=1).double() / _scored_per_row(mask)


@metric("forget_extraction_strength", "lower",
        "Mean over forget answers (EOS excluded) of 1 - k/|y|, k the smallest offset with y[k:] all predicted by the "
        "teacher-forced argmax (0 when no suffix is).", CARLINI_QUANTIFYING, "memorization",
        label="forget extraction strength", aggregation=MEAN)
@metric("holdout_extraction_strength", "lower",
        "Mean over holdout answers (EOS excluded) of 1 - k/|y|, k the smallest offset with y[k:] all predicted by the "
        "teacher-forced argmax (0 when no suffix is).", CARLINI_QUANTIFYING, "memorization",
        label="holdout extraction strength", aggregation=MEAN)
def extraction_strength(logits: Tensor, labels: Tensor) -> Tensor:
    """``1 − k/|y|`` per sequence, ``k`` the smallest offset with every token of ``y[k:]`` predicted; ``(B,)``.

    0 when the last scored token is mispredicted (no suffix matches), 1 when every token is.
    """
    matches, mask = argmax_matches(logits, labels)
    # Unscored positions (prompt, padding) must not break a run of hits, so they count as hits here.
    hit_or_unscored = (matches | ~mask).long()
    # Reverse cumulative product: 1 at t iff every position from t to the end is a hit (or unscored).
    suffix_all_hits = hit_or_unscored.flip(dims=[1]).cumprod(dim=1).flip(dims=[1]).bool()
    matched_suffix = (suffix_all_hits & mask).sum(dim=1).double()
    return matched_suffix / _scored_per_row(mask)


def memorization_accuracy(logits: Tensor, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Jang et al.'s MA: greedy next-token accuracy over every real token after the first; ``(B,)``.

    ``input_ids (B, T)`` is the whole sequence x (right padding; ``attention_mask``
    marks the real tokens). To score only part of a sequence (an answer after a
    fixed question), use :func:`exact_memorization` with labels on that part.
    """
    labels = input_ids.clone()
    if attention_mask is not None:
        labels[attention_mask == 0] = IGNORE_INDEX
    return exact_memorization(logits, labels)


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """The contiguous n-grams of ``tokens`` in order (with repeats)."""
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def ngram_overlap(generation: Sequence[int], reference: Sequence[int], n: int) -> float:
    """Jang et al.'s OVERLAP_n: ``generation``'s n-grams found among ``reference``'s, over the count of ``reference``'s.

    As their code: every n-gram of the generation (repeats included) counts when
    it occurs anywhere in the reference, and the denominator is the number of
    the reference's n-grams (repeats included). A continuation is never longer
    than its reference suffix, so the value is at most 1; a looping
    continuation that repeats one true n-gram counts it each time. NaN when
    ``reference`` has fewer than ``n`` tokens (Jang et al. skip that term).
    """
    _check_n(n)
    wanted = ngrams(reference, n)
    if not wanted:
        return math.nan
    present = set(wanted)
    return sum(gram in present for gram in ngrams(generation, n)) / len(wanted)


@metric("extraction_likelihood", "lower",
        "Jang et al.'s EL_n (n = 10): mean over answer prefixes of the greedy continuation's n-grams found in the true suffix, "
        "over the suffix's n-gram count.",
        JANG, "memorization", label="extraction likelihood (EL_n)", aggregation=NANMEAN)
def extraction_likelihood(sequence: Sequence[int], continuations: Sequence[Sequence[int]], n: int = DEFAULT_NGRAM) -> float:
    """EL_n of one token sequence x from the greedy continuations of its prefixes.

    ``continuations[i]`` is the greedy continuation of the prefix ``x[:i + 1]``
    (see :func:`el_prefix_lengths`); the result is the mean over those prefixes
    of :func:`ngram_overlap` (continuation, ``x[i + 1:]``). NaN when ``|x| <= n``.
    """
    lengths = el_prefix_lengths(len(sequence), n)
    if len(continuations) != len(lengths):
        raise ValueError(
            f"EL_{n} of a {len(sequence)}-token sequence needs {len(lengths)} continuations "
            f"(prefix lengths 1..{len(sequence) - n}); got {len(continuations)}."
        )
    if not lengths:
        return math.nan
    overlaps = [ngram_overlap(continuation, sequence[p:], n) for p, continuation in zip(lengths, continuations, strict=True)]
    return float(np.mean(overlaps))


def el_prefix_lengths(length: int, n: int) -> list[int]:
    """Prefix lengths EL_n averages over: 1 .. length − n (each suffix keeps at least one n-gram)."""
    _check_n(n)
    return list(range(1, length - n + 1))


def _check_n(n: int) -> None:
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"the n-gram length n must be an integer >= 1 (Jang et al. use 10); got {n!r}.")


# ---------------------------------------------------------------------------
# Model queries for QA rows
# ---------------------------------------------------------------------------


def answer_memorization(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[dict],
    batch_size: int = 64,
    max_length: int = 512,
    score_eos: bool = False,
) -> dict[str, np.ndarray]:
    """Exact memorization (= MA on the answer) and extraction strength of each row's answer; each ``(N,)``.

    The answer's final EOS is not scored unless ``score_eos`` (OpenUnlearning's
    rule, see the module docstring). Several processes score a share of the rows
    each (:mod:`unlearnkit.distributed`).
    """
    return distributed.sharded_rows(
        lambda share: _answer_memorization(model, tokenizer, fmt, share, batch_size, max_length, score_eos), rows
    )


@torch.no_grad()
def _answer_memorization(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, rows: Sequence[dict], batch_size: int,
    max_length: int, score_eos: bool,
) -> dict[str, np.ndarray]:
    features = encode_pairs(tokenizer, fmt, [(row["question"], row["answer"]) for row in rows], max_length)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    memorized = np.zeros(len(features))
    strength = np.zeros(len(features))
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in pad_batch([features[i] for i in chosen], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"] if score_eos else without_final_eos(batch["labels"], tokenizer.eos_token_id)
        memorized[chosen] = exact_memorization(logits, labels).cpu().numpy()
        strength[chosen] = extraction_strength(logits, labels).cpu().numpy()
    return {"exact_memorization": memorized, "extraction_strength": strength}


def answer_extraction_likelihood(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[dict],
    n: int = DEFAULT_NGRAM,
    batch_size: int = 64,
    score_eos: bool = False,
) -> np.ndarray:
    """EL_n of each row's answer tokens x, with the question's prompt as a fixed prefix; ``(N,)`` (NaN if |x| <= n).

    x ends before the answer's EOS unless ``score_eos`` (Jang et al.'s sequences hold no EOS).
    """
    pairs = fmt.qa_ids_many(tokenizer, [(row["question"], row["answer"]) for row in rows])
    prompts = [prompt for prompt, _ in pairs]
    answers = [answer for _, answer in pairs]
    if not score_eos and tokenizer.eos_token_id is not None:
        answers = [answer[:-1] if answer and answer[-1] == tokenizer.eos_token_id else answer for answer in answers]
    prefixes: list[list[int]] = []
    lengths: list[int] = []
    owner: list[int] = []
    for index, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        for p in el_prefix_lengths(len(answer), n):
            prefixes.append(prompt + answer[:p])
            lengths.append(len(answer) - p)
            owner.append(index)
    continuations = (greedy_token_continuations(model, prefixes, lengths, tokenizer.pad_token_id, batch_size=batch_size)
                     if prefixes else [])
    per_row: list[list[list[int]]] = [[] for _ in rows]
    for index, continuation in zip(owner, continuations, strict=True):
        per_row[index].append(continuation)
    return np.array([extraction_likelihood(answer, per_row[i], n) for i, answer in enumerate(answers)])


def memorization_accuracy_and_el(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[dict],
    n: int = DEFAULT_NGRAM,
    batch_size: int = 64,
    score_eos: bool = False,
) -> tuple[float, float]:
    """Mean MA and mean EL_n over ``rows`` (the quantities of Jang et al.'s stopping rule), EOS scored only with ``score_eos``."""
    was_training = model.training
    model.eval()
    try:
        accuracy = answer_memorization(model, tokenizer, fmt, rows, batch_size, score_eos=score_eos)["exact_memorization"]
        likelihood = answer_extraction_likelihood(model, tokenizer, fmt, rows, n, batch_size, score_eos)
    finally:
        model.train(was_training)
    if np.isnan(likelihood).all():
        raise UnlearnkitError(
            f"No answer is longer than n = {n} tokens, so EL_{n} is undefined on every row; choose a smaller n."
        )
    return float(np.mean(accuracy)), float(np.nanmean(likelihood))


# ---------------------------------------------------------------------------
# Jang et al.'s stopping rule
# ---------------------------------------------------------------------------


@dataclass
class JangStoppingCallback(TrainerCallback):
    """Stop unlearning once the forget set's mean MA and mean EL_n both fall below thresholds.

    Jang et al. take the thresholds from data the model never saw: pass
    ``unseen`` rows (e.g. the built-in benchmark's holdout split), and the
    thresholds are the model's mean MA and EL_n on them, measured once before the
    first step; or give ``ma_threshold`` and ``el_threshold`` directly. The forget
    set is checked every ``check_every`` optimizer steps; each check is recorded
    in ``history`` as ``{"step", "ma", "el"}``. The answers' EOS is scored only
    with ``score_eos`` (Jang et al.'s sequences have none).
    """

    tokenizer: PreTrainedTokenizerBase
    forget: Sequence[dict]
    unseen: Sequence[dict] | None = None
    fmt: PromptFormat = field(default_factory=PromptFormat)
    ma_threshold: float | None = None
    el_threshold: float | None = None
    n: int = DEFAULT_NGRAM
    check_every: int = 1
    batch_size: int = 64
    score_eos: bool = False
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_at: int | None = None

    def __post_init__(self) -> None:
        _check_n(self.n)
        if self.check_every < 1:
            raise UnlearnkitError(f"check_every must be at least 1 step; got {self.check_every}.")
        if not self.forget:
            raise UnlearnkitError("The stopping rule needs forget rows to check.")
        given = (self.ma_threshold is not None, self.el_threshold is not None)
        if given == (False, False) and not self.unseen:
            raise UnlearnkitError(
                "Jang et al.'s stopping rule needs thresholds: pass unseen rows (e.g. the holdout split) "
                "or both ma_threshold and el_threshold."
            )
        if given in ((True, False), (False, True)):
            raise UnlearnkitError("Give both ma_threshold and el_threshold, or neither (then they are measured on unseen rows).")

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if self.ma_threshold is None:
            self.ma_threshold, self.el_threshold = memorization_accuracy_and_el(
                model, self.tokenizer, self.fmt, self.unseen, self.n, self.batch_size, self.score_eos
            )
            logger.info("stopping thresholds from unseen data: MA %.4f, EL_%d %.4f", self.ma_threshold, self.n, self.el_threshold)

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001 - Trainer callback signature
        if state.global_step % self.check_every:
            return control
        ma, el = memorization_accuracy_and_el(model, self.tokenizer, self.fmt, self.forget, self.n, self.batch_size, self.score_eos)
        self.history.append({"step": state.global_step, "ma": ma, "el": el})
        if ma < self.ma_threshold and el < self.el_threshold:
            logger.info("step %d: forget MA %.4f and EL_%d %.4f below the unseen-data values: stopping",
                        state.global_step, ma, self.n, el)
            self.stopped_at = state.global_step
            control.should_training_stop = True
        return control
