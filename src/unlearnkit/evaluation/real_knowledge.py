"""Metrics of real-knowledge unlearning without a retain oracle: forget vs neighbour knowledge, and fluency.

When the knowledge to remove was learnt in pretraining (Who's Harry Potter,
Eldan & Russinovich, arXiv 2023; RWKU; WMDP) no model that never saw it exists,
so nothing is compared with an oracle. RWKU (Jin et al., NeurIPS Datasets and Benchmarks 2024) reads the result
as a trade-off instead: accuracy on probes about the forget targets should fall,
accuracy on probes about related *neighbour* entities should stay, and the model
should stay fluent. The probes come in three forms that share a gold answer
(:mod:`unlearnkit.data.real_knowledge`), since knowledge removed from one way of
asking often survives another:

* ``qa``: the greedy answer (32 tokens) to the question (the prompt format's, e.g. the chat
  template) contains the answer or an alias;
* ``cloze``: the greedy continuation (8 tokens) of the text before the blank,
  given as plain text outside any chat template, contains it: a second route by
  which a fact leaks when unlearning changed only chat answers;
* ``mcq``: the correct option has the lowest answer NLL of the options, each
  scored as the answer to the question. The default score is the mean NLL per
  answer token (EOS included): the summed NLL favours options with fewer
  tokens whatever the model knows ("Io" over "Ganymede"), the mean does not.
  Both are recorded per probe; chance is 1 / number of options (0.25 here).

Utility beyond the neighbours: the perplexity of general English prose, and
distinct-2 (Li et al., NAACL 2016) of greedy answers to open prompts, which
falls when a method leaves the model repeating itself.

The pure functions below compute each reported number from per-probe values;
:func:`evaluate_real_knowledge` gets those values from the model with the
shared scoring helpers (:mod:`unlearnkit.evaluation.scoring`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import distributed
from unlearnkit.data.checks import words
from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat, pad_batch
from unlearnkit.data.real_knowledge import FORMS, ROLES, cloze_prefix, contains_answer, normalize_answer
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import AS_IS, MEAN, NANMEAN, metric
from unlearnkit.evaluation.muse import cut_at_stop_strings
from unlearnkit.evaluation.scoring import answer_nll, greedy_answers, greedy_texts
from unlearnkit.losses import sequence_nll, sequence_token_count

# The answer matching the metrics use is the data schema's (re-exported here with the metrics built on it).
__all__ = [
    "MCQ_SCORES", "accuracy", "answers_found", "cloze_continuations", "contains_answer", "distinct_n", "evaluate_real_knowledge",
    "form_mean_accuracy", "mcq_choice", "mcq_correct", "mcq_option_nlls", "normalize_answer", "perplexity", "score_probes",
    "summary_keys", "text_nll",
]

RWKU = 'Jin et al., "RWKU: Benchmarking Real-World Knowledge Unlearning for Large Language Models", NeurIPS Datasets and Benchmarks 2024'
DISTINCT = 'Li et al., "A Diversity-Promoting Objective Function for Neural Conversation Models", NAACL 2016'
PERPLEXITY = 'Jelinek et al., "Perplexity - a measure of the difficulty of speech recognition tasks", J. Acoust. Soc. Am. 1977'

QA_MAX_NEW_TOKENS = 32  # the chat model restates the question before it answers ("Albert Einstein was born on ...")
CLOZE_MAX_NEW_TOKENS = 8
GENERATION_MAX_NEW_TOKENS = 48
GENERAL_MAX_LENGTH = 512
# A plain-format answer that runs on into a new "Question:" is cut there, so the next made-up pair cannot count.
QA_STOP_STRINGS = ("\nQuestion", "Question:")
MCQ_SCORES = ("mean", "sum")
"""How an mcq option is scored: its mean NLL per answer token (the default) or its summed NLL."""
DISTINCT_N = 2
# The summary keys a table of a real-knowledge run shows first (the terminal's, a tuning study's).
HEADLINE_KEYS = ("forget_accuracy", "neighbour_accuracy", "forget_qa_accuracy", "forget_cloze_accuracy",
                 "forget_mcq_accuracy", "general_perplexity", "generation_distinct_2")


# --- Pure functions ---------------------------------------------------------------------


@metric("forget_qa_accuracy", "lower", "Share of forget qa probes whose greedy answer contains the gold answer or an alias "
        "(normalised, whole words).", RWKU, "real_knowledge", label="forget QA accuracy", aggregation=MEAN)
@metric("forget_cloze_accuracy", "lower", "Share of forget cloze probes whose greedy continuation (8 tokens) of the text "
        "before the blank contains the gold answer or an alias.", RWKU, "real_knowledge", label="forget cloze accuracy", aggregation=MEAN)
@metric("neighbour_qa_accuracy", "higher", "Share of neighbour qa probes (related entities to keep) whose greedy answer "
        "contains the gold answer or an alias.", RWKU, "real_knowledge", label="neighbour QA accuracy", aggregation=MEAN)
@metric("neighbour_cloze_accuracy", "higher", "Share of neighbour cloze probes whose greedy continuation (8 tokens) "
        "contains the gold answer or an alias.", RWKU, "real_knowledge", label="neighbour cloze accuracy", aggregation=MEAN)
def answers_found(predictions: Sequence[str], answers: Sequence[str], aliases: Sequence[Sequence[str]]) -> np.ndarray:
    """Per probe, 1.0 when the model's text contains the answer or one of its aliases (:func:`contains_answer`), else 0.0; (N,)."""
    return np.array([float(contains_answer(prediction, answer, names))
                     for prediction, answer, names in zip(predictions, answers, aliases, strict=True)])


def mcq_choice(option_nlls: Sequence[float]) -> int:
    """Index of the option the model prefers: the lowest NLL, the first of equal ones."""
    if len(option_nlls) == 0:
        raise ValueError("an mcq probe needs at least one option score.")
    return int(np.argmin(np.asarray(option_nlls, dtype=float)))


@metric("forget_mcq_accuracy", "lower", "Share of forget mcq probes whose correct option has the lowest mean answer-token NLL "
        "(chance: 1/options).", RWKU, "real_knowledge", label="forget MCQ accuracy", aggregation=MEAN)
@metric("neighbour_mcq_accuracy", "higher", "Share of neighbour mcq probes whose correct option has the lowest mean "
        "answer-token NLL.", RWKU, "real_knowledge", label="neighbour MCQ accuracy", aggregation=MEAN)
def mcq_correct(option_nlls: Sequence[Sequence[float]], answer_indices: Sequence[int]) -> np.ndarray:
    """Per probe, 1.0 when :func:`mcq_choice` of its option scores is the correct option, else 0.0; (N,)."""
    return np.array([float(mcq_choice(scores) == index) for scores, index in zip(option_nlls, answer_indices, strict=True)])


def accuracy(correct: Sequence[float] | np.ndarray) -> float:
    """Mean of per-probe 0/1 values; NaN when there is no probe (no number is better than a made-up one)."""
    values = np.asarray(correct, dtype=float)
    return float(values.mean()) if values.size else math.nan


@metric("forget_accuracy", "lower", "Mean of the forget qa, cloze and mcq accuracies (forms without probes left out).",
        RWKU, "real_knowledge", label="forget accuracy", aggregation=AS_IS)
@metric("neighbour_accuracy", "higher", "Mean of the neighbour qa, cloze and mcq accuracies (forms without probes left out).",
        RWKU, "real_knowledge", label="neighbour accuracy", aggregation=AS_IS)
def form_mean_accuracy(form_accuracies: Sequence[float]) -> float:
    """Mean over the probe forms of their accuracies, each form weighing the same whatever its probe count; NaN ones skipped.

    The forms are separate ways of asking, and a fact survives unlearning as
    long as one of them still gets it out: no form should dominate because it
    kept more probes at selection.
    """
    values = np.asarray(form_accuracies, dtype=float)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else math.nan


@metric("general_perplexity", "lower", "exp of the mean token NLL of general English prose unrelated to the entities "
        "(all tokens of all passages pooled).", PERPLEXITY, "real_knowledge", label="general perplexity", aggregation=AS_IS)
def perplexity(nll_sums: Sequence[float] | np.ndarray, token_counts: Sequence[float] | np.ndarray) -> float:
    """``exp(Σ NLL / Σ tokens)`` over passages: every token weighs the same, however the text is cut into passages."""
    total_tokens = float(np.sum(token_counts))
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one scored token.")
    return float(math.exp(float(np.sum(nll_sums)) / total_tokens))


@metric("generation_distinct_2", "higher", "Mean over open prompts of distinct word bigrams / all bigrams of the greedy answer "
        "(falls when the model repeats itself).", DISTINCT, "real_knowledge", label="generation distinct-2", aggregation=NANMEAN)
def distinct_n(texts: Sequence[str], n: int = DISTINCT_N) -> np.ndarray:
    """Per text, distinct word n-grams / all word n-grams (lower-cased words, punctuation dropped); NaN below n words; (N,)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    values = []
    for text in texts:
        tokens = words(text)
        grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
        values.append(len(set(grams)) / len(grams) if grams else math.nan)
    return np.array(values, dtype=float)


def summary_keys() -> list[str]:
    """Every key :func:`evaluate_real_knowledge` reports, in order."""
    keys = []
    for role in ROLES:
        keys += [*(f"{role}_{form}_accuracy" for form in FORMS), f"{role}_accuracy"]
    return [*keys, "general_perplexity", f"generation_distinct_{DISTINCT_N}"]


# --- Model queries ----------------------------------------------------------------------


def text_nll(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 8,
    max_length: int = GENERAL_MAX_LENGTH,
) -> tuple[np.ndarray, np.ndarray]:
    """Per text: summed NLL of its tokens and their count, (N,), (N,). No EOS is added; the first token is context only."""
    return distributed.sharded_rows(lambda share: _text_nll(model, tokenizer, share, batch_size, max_length), list(texts))


@torch.no_grad()
def _text_nll(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    features = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
        features.append({"input_ids": ids, "labels": [IGNORE_INDEX, *ids[1:]]})
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    nll_sum, tokens = np.zeros(len(features)), np.zeros(len(features))
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in pad_batch([features[i] for i in chosen], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        nll_sum[chosen] = sequence_nll(logits.float(), batch["labels"]).cpu().numpy()
        tokens[chosen] = sequence_token_count(batch["labels"]).cpu().numpy()
    return nll_sum, tokens


def cloze_continuations(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_new_tokens: int = CLOZE_MAX_NEW_TOKENS,
    batch_size: int = 32,
) -> list[str]:
    """Greedy plain-text continuation of each cloze text's part before the blank (no chat template)."""
    prompts = [tokenizer(cloze_prefix(text), add_special_tokens=True)["input_ids"] for text in texts]
    return greedy_texts(model, tokenizer, prompts, max_new_tokens, batch_size)


def mcq_option_nlls(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, probes: Sequence[Mapping[str, Any]],
    batch_size: int = 32,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per mcq probe, (mean, summed) NLL of each option as the answer to its question, each (options,); one scoring pass for all."""
    pairs = [(probe["question"], option) for probe in probes for option in probe["options"]]
    nll_sum, tokens = answer_nll(model, tokenizer, fmt, pairs, batch_size)
    scores, start = [], 0
    for probe in probes:
        end = start + len(probe["options"])
        scores.append((nll_sum[start:end] / np.maximum(tokens[start:end], 1), nll_sum[start:end]))
        start = end
    return scores


def _identity(probe: Mapping[str, Any]) -> dict[str, Any]:
    return {key: probe[key] for key in ("id", "entity", "role", "target", "form") if key in probe}


def score_probes(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[Mapping[str, Any]],
    fmt: PromptFormat,
    batch_size: int = 32,
    *,
    mcq_score: str = "mean",
    qa_max_new_tokens: int = QA_MAX_NEW_TOKENS,
    cloze_max_new_tokens: int = CLOZE_MAX_NEW_TOKENS,
) -> list[dict[str, Any]]:
    """One result per probe, in the caller's order: the model's output (qa, cloze) or option scores (mcq), and ``correct``.

    Each form is run in one batched call (greedy answers, greedy continuations,
    one scoring pass over every option). ``correct`` of an mcq probe follows
    ``mcq_score``; ``correct_mean`` and ``correct_sum`` give both.
    """
    if mcq_score not in MCQ_SCORES:
        raise UnlearnkitError(f"mcq_score must be one of {', '.join(MCQ_SCORES)}, got {mcq_score!r}.")
    positions = {form: [i for i, probe in enumerate(probes) if probe["form"] == form] for form in FORMS}
    by_form = {form: [probes[i] for i in positions[form]] for form in FORMS}
    results: list[dict[str, Any]] = [{} for _ in probes]

    # qa: greedy answers through the prompt format, cut where a plain-format answer runs into a new question.
    qa_outputs = [cut_at_stop_strings(text, QA_STOP_STRINGS).strip() for text in greedy_answers(
        model, tokenizer, fmt, [probe["question"] for probe in by_form["qa"]], qa_max_new_tokens, batch_size)]
    cloze_outputs = cloze_continuations(model, tokenizer, [probe["text"] for probe in by_form["cloze"]], cloze_max_new_tokens, batch_size)
    for form, outputs in (("qa", qa_outputs), ("cloze", cloze_outputs)):
        group = by_form[form]
        found = answers_found(outputs, [p["answer"] for p in group], [p.get("aliases", []) for p in group])
        for index, probe, output, hit in zip(positions[form], group, outputs, found, strict=True):
            prompt = probe["question"] if form == "qa" else probe["text"]
            results[index] = {**_identity(probe), "prompt": prompt, "answer": probe["answer"], "output": output, "correct": bool(hit)}

    option_scores = mcq_option_nlls(model, tokenizer, fmt, by_form["mcq"], batch_size)
    mean_nlls = [mean for mean, _ in option_scores]
    sum_nlls = [total for _, total in option_scores]
    answer_indices = [probe["options"].index(probe["answer"]) for probe in by_form["mcq"]]
    hits = {"mean": mcq_correct(mean_nlls, answer_indices), "sum": mcq_correct(sum_nlls, answer_indices)}
    for row, (index, probe) in enumerate(zip(positions["mcq"], by_form["mcq"], strict=True)):
        options = probe["options"]
        results[index] = {
            **_identity(probe), "prompt": probe["question"], "answer": probe["answer"], "options": list(options),
            "option_mean_nll": mean_nlls[row].tolist(), "option_sum_nll": sum_nlls[row].tolist(),
            "choice_mean": options[mcq_choice(mean_nlls[row])], "choice_sum": options[mcq_choice(sum_nlls[row])],
            "correct_mean": bool(hits["mean"][row]), "correct_sum": bool(hits["sum"][row]), "correct": bool(hits[mcq_score][row]),
        }
    return results


def evaluate_real_knowledge(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    probes: Sequence[Mapping[str, Any]],
    fmt: PromptFormat,
    general_text: str | Sequence[str],
    prompts: Sequence[str],
    batch_size: int = 32,
    *,
    mcq_score: str = "mean",
    qa_max_new_tokens: int = QA_MAX_NEW_TOKENS,
    cloze_max_new_tokens: int = CLOZE_MAX_NEW_TOKENS,
    generation_max_new_tokens: int = GENERATION_MAX_NEW_TOKENS,
) -> dict[str, Any]:
    """Forget and neighbour accuracy per probe form, general perplexity and generation distinct-2.

    ``probes``: validated probe rows (:func:`unlearnkit.data.real_knowledge.load_probes`);
    ``fmt``: how questions become prompts (qa, mcq; the cloze form is plain text);
    ``general_text``: a text or its passages, for perplexity; ``prompts``: open
    prompts answered greedily (``generation_max_new_tokens``) through ``fmt``.
    ``mcq_score``: "mean" (default) or "sum" NLL decides the mcq summary; both are
    in the per-probe results. Returns ``{"summary", "per_sample", "counts", "settings"}``:
    ``summary`` maps each of :func:`summary_keys` to a float (NaN for a role or
    form without probes); ``per_sample`` holds the probes (in the order given),
    the passages and the generations.
    """
    passages = [general_text] if isinstance(general_text, str) else list(general_text)
    if not passages or not all(isinstance(passage, str) and passage.strip() for passage in passages):
        raise UnlearnkitError("general_text needs at least one non-empty passage.")
    if not prompts:
        raise UnlearnkitError("prompts needs at least one open prompt for the generation check.")
    model.eval()
    per_probe = score_probes(model, tokenizer, probes, fmt, batch_size, mcq_score=mcq_score,
                             qa_max_new_tokens=qa_max_new_tokens, cloze_max_new_tokens=cloze_max_new_tokens)
    correct: dict[tuple[str, str], list[float]] = {(role, form): [] for role in ROLES for form in FORMS}
    for result in per_probe:
        correct[result["role"], result["form"]].append(float(result["correct"]))

    summary: dict[str, float] = {}
    for role in ROLES:
        forms = {form: accuracy(correct[role, form]) for form in FORMS}
        summary.update({f"{role}_{form}_accuracy": value for form, value in forms.items()})
        summary[f"{role}_accuracy"] = form_mean_accuracy(list(forms.values()))

    nll_sums, token_counts = text_nll(model, tokenizer, passages, batch_size=max(1, min(batch_size, 8)))
    if not token_counts.sum():
        raise UnlearnkitError("general_text is too short to score: its passages need at least two tokens.")
    summary["general_perplexity"] = perplexity(nll_sums, token_counts)
    generations = greedy_answers(model, tokenizer, fmt, list(prompts), generation_max_new_tokens, batch_size)
    diversity = distinct_n(generations, DISTINCT_N)
    summary[f"generation_distinct_{DISTINCT_N}"] = float(np.nanmean(diversity)) if np.isfinite(diversity).any() else math.nan

    return {
        "summary": {key: summary[key] for key in summary_keys()},
        "per_sample": {
            "probes": per_probe,
            "general_text": [{"tokens": int(count), "nll_sum": float(total)} for total, count in zip(nll_sums, token_counts, strict=True)],
            "generations": [{"prompt": prompt, "generation": text, f"distinct_{DISTINCT_N}": float(value)}
                            for prompt, text, value in zip(prompts, generations, diversity, strict=True)],
        },
        "counts": {role: {form: len(correct[role, form]) for form in FORMS} for role in ROLES},
        "settings": {"prompt_format": fmt.record(), "mcq_score": mcq_score, "qa_max_new_tokens": qa_max_new_tokens,
                     "cloze_max_new_tokens": cloze_max_new_tokens, "generation_max_new_tokens": generation_max_new_tokens},
    }
