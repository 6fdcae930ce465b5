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


def test_each_split_generates_up_to_its_own_cap(micro_bench, target, monkeypatch) -> None:
    from unlearnkit.evaluation import evaluator

    model, tokenizer = target
    asked: dict[int, int] = {}

    def recording(model, tokenizer, fmt, questions, max_new_tokens, batch_size):
        asked[len(questions)] = max_new_tokens
        return ["x"] * len(questions)

    monkeypatch.setattr(evaluator, "greedy_answers", recording)
    splits = {"forget": micro_bench.split("forget10")[:2], "retain": micro_bench.split("retain90")[:3]}
    config = EvalConfig(split_max_new_tokens={"forget": 200, "retain": 48})
    evaluate(model, tokenizer, splits, FMT, config)
    assert asked == {2: 200, 3: 48} and config.caps([*splits, "holdout"]) == {"forget": 200, "retain": 48}
    evaluate(model, tokenizer, splits, FMT, EvalConfig(max_new_tokens=7, split_max_new_tokens={"forget": 200}))
    assert asked == {2: 7, 3: 7}  # an explicit cap wins over every source's
    assert EvalConfig().max_new_tokens_for("forget") == 200  # a split of unknown source: the TOFU/OpenUnlearning value


@pytest.mark.parametrize(("caps", "message"), [
    ({"forget": 0}, r"split_max_new_tokens\[forget\] must be >= 1"),
    ({"forget": True}, r"split_max_new_tokens\[forget\] needs an int"),
    ({"forgot": 48}, "split_max_new_tokens split must be one of forget"),
])
def test_bad_split_caps_are_refused(caps: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        EvalConfig(split_max_new_tokens=caps)


def test_eos_scoring_and_gradient_norm_form_reach_the_membership_attacks(micro_bench, target, monkeypatch) -> None:
    from unlearnkit.evaluation import evaluator

    seen = {}

    def record(*args, **kwargs):  # stands in for evaluate_membership: only what it is asked matters here
        seen.update(score_eos=kwargs["score_eos"], gradient_norm_form=kwargs["gradient_norm_form"])
        raise RuntimeError("recorded")

    monkeypatch.setattr(evaluator, "evaluate_membership", record)
    model, tokenizer = target
    splits = {"forget": micro_bench.split("forget10")[:2], "holdout": micro_bench.split("holdout10")[:2]}
    for config, expected in ((EvalConfig(), (False, "mean_per_tensor")), (EvalConfig(score_eos=True, gradient_norm_form="global"),
                                                                           (True, "global"))):
        with pytest.raises(RuntimeError, match="recorded"):
            evaluate(model, tokenizer, splits, PromptFormat("plain"), config)
        assert (seen["score_eos"], seen["gradient_norm_form"]) == expected
    with pytest.raises(UnlearnkitError, match="gradient_norm_form must be one of mean_per_tensor, global"):
        EvalConfig(gradient_norm_form="max")
