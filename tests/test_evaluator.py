"""The evaluator composes batched scoring and the metric functions; check it against a direct, unbatched computation."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import ks_2samp

from unlearnkit.data.encoding import PromptFormat, encode_qa
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate, oracle_reference
from unlearnkit.modeling import load_model, load_tokenizer

FMT = PromptFormat("plain")


def direct_avg_nll(model, tokenizer, question: str, answer: str) -> float:
    """One unpadded sequence, log-softmax by hand: mean -log p over the answer tokens."""
    features = encode_qa(tokenizer, FMT, question, answer, 512)
    ids = torch.tensor([features["input_ids"]])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
    losses = [-log_probs[t - 1, token].item() for t, token in enumerate(features["labels"]) if token != -100]
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def target(micro_bench):
    return load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)


def test_per_sample_values_match_direct_computation(micro_bench, target) -> None:
    model, tokenizer = target
    rows = micro_bench.split("forget10")[:4]
    result = evaluate(model, tokenizer, {"forget": rows}, FMT, EvalConfig(batch_size=3, max_new_tokens=8))
    for row, sample in zip(rows, result.per_sample["forget"], strict=False):
        answer = direct_avg_nll(model, tokenizer, row["question"], row["answer"])
        assert sample["probability"] == pytest.approx(math.exp(-answer), rel=1e-4)
        paraphrased = direct_avg_nll(model, tokenizer, row["question"], row["paraphrased_answer"])
        perturbed = [direct_avg_nll(model, tokenizer, row["question"], p) for p in row["perturbed_answer"]]
        expected_ratio = math.exp(sum(perturbed) / len(perturbed) - paraphrased)
        assert sample["truth_ratio"] == pytest.approx(expected_ratio, rel=1e-4)
    ratios = [s["truth_ratio"] for s in result.per_sample["forget"]]
    assert result.summary["forget_truth_ratio"] == pytest.approx(sum(min(r, 1 / r) for r in ratios) / len(ratios))


def test_forget_quality_uses_the_oracle_reference(micro_bench, target) -> None:
    model, tokenizer = target
    rows = micro_bench.split("forget10")
    oracle_ratios = [0.5 + 0.1 * i for i in range(len(rows))]
    reference = oracle_reference(rows, oracle_ratios, "forget10")
    result = evaluate(model, tokenizer, {"forget": rows}, FMT, EvalConfig(max_new_tokens=4), reference)
    model_ratios = [s["truth_ratio"] for s in result.per_sample["forget"]]
    assert result.summary["forget_quality"] == pytest.approx(ks_2samp(model_ratios, oracle_ratios).pvalue)


def test_reference_for_another_forget_set_is_refused(micro_bench, target) -> None:
    model, tokenizer = target
    rows = micro_bench.split("forget10")
    reference = oracle_reference(rows[:2], [1.0, 1.0], "forget01")
    with pytest.raises(UnlearnkitError, match="different forget set"):
        evaluate(model, tokenizer, {"forget": rows}, FMT, EvalConfig(max_new_tokens=4), reference)


def test_model_utility_needs_all_nine_and_fact_splits_use_normalised_probability(micro_bench, target) -> None:
    model, tokenizer = target
    splits = {name: rows[:3] for name, rows in micro_bench.eval_splits("forget10").items()}
    result = evaluate(model, tokenizer, splits, FMT, EvalConfig(max_new_tokens=8))
    assert "model_utility" in result.summary
    row = splits["world_facts"][0]
    true_p = math.exp(-direct_avg_nll(model, tokenizer, row["question"], row["answer"]))
    false_p = sum(math.exp(-direct_avg_nll(model, tokenizer, row["question"], p)) for p in row["perturbed_answer"])
    assert result.per_sample["world_facts"][0]["probability"] == pytest.approx(true_p / (true_p + false_p), rel=1e-4)
    partial = evaluate(model, tokenizer, {"retain": splits["retain"]}, FMT, EvalConfig(max_new_tokens=4))
    assert "model_utility" not in partial.summary
