"""Memorization metrics against hand-computed values, EL_n's batched generation against an unbatched one, Jang's stopping rule."""

from __future__ import annotations

import math

import pytest
import torch

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.memorization import (
    JangStoppingCallback,
    answer_extraction_likelihood,
    el_prefix_lengths,
    exact_memorization,
    extraction_likelihood,
    extraction_strength,
    memorization_accuracy,
    memorization_accuracy_and_el,
    ngram_overlap,
    without_final_eos,
)
from unlearnkit.methods import METHODS
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.settings import build_config
from unlearnkit.unlearning import unlearn

FMT = PromptFormat("plain")


def one_hot_logits(argmax: list[list[int]], vocab: int = 3) -> torch.Tensor:
    """(B, T, V) logits whose argmax at [b, t] is argmax[b][t]."""
    logits = torch.zeros(len(argmax), len(argmax[0]), vocab)
    for b, row in enumerate(argmax):
        for t, token in enumerate(row):
            logits[b, t, token] = 2.0
    return logits


# V = 3, T = 4. logits[:, t] predicts labels[:, t + 1].
# Row 0: labels 0, 1, 2 scored; predictions 0 (hit), 2 (miss), 2 (hit).
# Row 1: labels 1, 2 scored;    predictions 1 (hit), 0 (miss): the last token is wrong, so no suffix matches.
# Row 2: labels 0, 1, 2 scored; predictions all hits.
LABELS = torch.tensor([[-100, 0, 1, 2], [-100, -100, 1, 2], [-100, 0, 1, 2]])
LOGITS = one_hot_logits([[0, 2, 2, 0], [0, 1, 0, 0], [0, 1, 2, 0]])


def test_exact_memorization_is_the_fraction_of_argmax_hits() -> None:
    assert exact_memorization(LOGITS, LABELS).tolist() == pytest.approx([2 / 3, 1 / 2, 1.0])


def test_extraction_strength_is_one_minus_offset_over_length() -> None:
    # Row 0: y[2:] = (2) is predicted, y[1:] is not: k = 2, 1 - 2/3. Row 2: k = 0.
    values = extraction_strength(LOGITS, LABELS).tolist()
    assert values[0] == pytest.approx(1 / 3)
    assert values[2] == pytest.approx(1.0)


def test_extraction_strength_is_zero_when_no_suffix_matches() -> None:
    # OpenUnlearning's loop gives 1/|y| = 0.5 here; k = |y| = 2 gives 0.
    assert extraction_strength(LOGITS, LABELS)[1].item() == 0.0


def test_extraction_strength_ignores_trailing_padding() -> None:
    # Labels 0, 1 scored then padding; predictions 2 (miss), 1 (hit), then anything: k = 1 of |y| = 2.
    labels = torch.tensor([[-100, 0, 1, -100]])
    logits = one_hot_logits([[2, 1, 0, 0]])
    assert extraction_strength(logits, labels).item() == pytest.approx(0.5)
    assert exact_memorization(logits, labels).item() == pytest.approx(0.5)


def test_memorization_accuracy_scores_every_real_token_after_the_first() -> None:
    input_ids = torch.tensor([[0, 1, 2, 1]])
    logits = one_hot_logits([[1, 0, 1, 0]])  # predicts 1 (hit), 0 (miss: 2), 1 (hit)
    assert memorization_accuracy(logits, input_ids).item() == pytest.approx(2 / 3)
    # The last token is padding: only 1 and 2 are scored.
    assert memorization_accuracy(logits, input_ids, torch.tensor([[1, 1, 1, 0]])).item() == pytest.approx(1 / 2)


def test_without_final_eos_unscores_only_a_final_eos() -> None:
    eos = 2
    labels = torch.tensor([[-100, 0, 1, 2, -100], [-100, -100, 1, 1, -100], [-100, 2, 2, -100, -100], [-100] * 5])
    assert without_final_eos(labels, eos).tolist() == [
        [-100, 0, 1, -100, -100],  # the final scored label is EOS: dropped
        [-100, -100, 1, 1, -100],  # the answer was cut before its EOS: kept
        [-100, 2, -100, -100, -100],  # only the last EOS goes
        [-100] * 5,
    ]
    assert torch.equal(without_final_eos(labels, None), labels)
    # Row 0 of LOGITS/LABELS without its final label 2: hits 0, miss 1 -> EM 1/2 and ES 0 (the last token is missed).
    trimmed = without_final_eos(LABELS, 2)
    assert exact_memorization(LOGITS, trimmed).tolist() == pytest.approx([1 / 2, 1.0, 1.0])
    assert extraction_strength(LOGITS, trimmed).tolist() == pytest.approx([0.0, 1.0, 1.0])


def test_a_sequence_without_scored_tokens_is_refused() -> None:
    with pytest.raises(ValueError, match="scored label"):
        exact_memorization(LOGITS[:1], torch.tensor([[0, -100, -100, -100]]))


def test_ngram_overlap_counts_generated_ngrams_found_in_the_reference() -> None:
    # Reference bigrams (2,3), (3,5); the generation has (1,2), (2,3), (3,4): one found, over the reference's two.
    assert ngram_overlap([1, 2, 3, 4], [2, 3, 5], 2) == pytest.approx(0.5)
    # The generation's one bigram (1,1) is found; the reference has two (repeats counted): 1/2.
    assert ngram_overlap([1, 1], [1, 1, 1], 2) == pytest.approx(0.5)
    # A looping generation counts a true n-gram each time it repeats it (Jang et al.'s code): (1,2) three times of 5.
    assert ngram_overlap([1, 2, 1, 2, 1, 2], [1, 2, 3, 4, 5, 6], 2) == pytest.approx(3 / 5)
    assert ngram_overlap([1, 2, 3], [7, 8, 9], 1) == 0.0
    assert math.isnan(ngram_overlap([1, 2], [1], 2))
    with pytest.raises(ValueError, match="n-gram length"):
        ngram_overlap([1], [1], 0)


def test_extraction_likelihood_averages_the_overlap_over_prefixes() -> None:
    sequence = [5, 6, 7, 8]
    assert el_prefix_lengths(len(sequence), 2) == [1, 2]
    # Prefix [5]: suffix bigrams (6,7), (7,8); continuation [6, 7, 9] has (6,7): 1/2.
    # Prefix [5, 6]: suffix bigram (7,8); continuation [7, 8]: 1. Mean 0.75.
    assert extraction_likelihood(sequence, [[6, 7, 9], [7, 8]], 2) == pytest.approx(0.75)
    assert math.isnan(extraction_likelihood([5, 6], [], 2))  # |x| <= n: no prefix has a suffix n-gram
    with pytest.raises(ValueError, match="needs 2 continuations"):
        extraction_likelihood(sequence, [[6, 7, 9]], 2)


@pytest.fixture(scope="module")
def target(micro_bench):
    return load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)


def test_batched_left_padded_el_matches_unbatched_generation(micro_bench, target) -> None:
    model, tokenizer = target
    rows = micro_bench.split("forget10")[:3]
    n = 4
    batched = answer_extraction_likelihood(model, tokenizer, FMT, rows, n, batch_size=64)
    for row, value in zip(rows, batched, strict=True):
        prompt, answer = FMT.prompt_ids(tokenizer, row["question"]), FMT.answer_ids(tokenizer, row["answer"])
        assert answer[-1] == tokenizer.eos_token_id
        answer = answer[:-1]  # EL_n's sequence is the answer without EOS unless score_eos
        continuations = []
        for p in el_prefix_lengths(len(answer), n):
            ids = torch.tensor([prompt + answer[:p]])
            out = model.generate(input_ids=ids, do_sample=False, max_new_tokens=len(answer) - p, pad_token_id=tokenizer.pad_token_id)
            continuations.append(out[0, ids.shape[1]:].tolist())
        assert value == pytest.approx(extraction_likelihood(answer, continuations, n))
    assert min(batched) >= 0.0 and max(batched) <= 1.0


def ga_config(**extra: object):
    return build_config(METHODS.get("ga").config, {"learning_rate": 3e-3, "num_epochs": 3, "batch_size": 4, "warmup_ratio": 0.0, **extra})


def test_stopping_rule_stops_at_the_first_check_below_the_thresholds(micro_bench) -> None:
    model, tokenizer = load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    # MA and EL are at most 1, so thresholds above 1 are met at the first check.
    callback = JangStoppingCallback(tokenizer, forget, fmt=FMT, ma_threshold=1.01, el_threshold=1.01, n=4)
    outcome = unlearn(model, tokenizer, "ga", forget, micro_bench.split("retain90"), ga_config(), FMT,
                      show_progress=False, callbacks=[callback])
    assert callback.stopped_at == 1 and len(callback.history) == 1
    assert max(entry.get("step", 0) for entry in outcome.log_history) == 1  # 6 steps were planned


def test_stopping_rule_measures_thresholds_on_unseen_data(micro_bench) -> None:
    model, tokenizer = load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)
    forget, holdout = micro_bench.split("forget10"), micro_bench.split("holdout10")
    expected = memorization_accuracy_and_el(model, tokenizer, FMT, holdout, 4)
    callback = JangStoppingCallback(tokenizer, forget, unseen=holdout, fmt=FMT, n=4, check_every=2)
    unlearn(model, tokenizer, "ga", forget, micro_bench.split("retain90"), ga_config(), FMT, show_progress=False, callbacks=[callback])
    assert (callback.ma_threshold, callback.el_threshold) == pytest.approx(expected)
    assert [entry["step"] for entry in callback.history][:1] == [2]
    below = [entry["ma"] < callback.ma_threshold and entry["el"] < callback.el_threshold for entry in callback.history]
    # Training stops exactly at the first check below both thresholds, or never.
    if callback.stopped_at is not None:
        assert below.index(True) == len(below) - 1 and callback.history[-1]["step"] == callback.stopped_at
    else:
        assert not any(below)


def test_stopping_rule_needs_thresholds_or_unseen_data(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    with pytest.raises(UnlearnkitError, match="unseen rows"):
        JangStoppingCallback(tokenizer, forget)
    with pytest.raises(UnlearnkitError, match="both"):
        JangStoppingCallback(tokenizer, forget, ma_threshold=0.5)

