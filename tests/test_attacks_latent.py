"""Latent-knowledge attacks: logit lens (Patil et al., ICLR 2024) and linear truth probes (Lynch et al., 2024)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from unlearnkit.attacks import ATTACKS, AuditConfig, AuditData
from unlearnkit.attacks.linear_probe import fit_logistic_probe, pairwise_accuracy, probe_scores, statement_features
from unlearnkit.attacks.logit_lens import (
    candidate_tokens,
    lens_distributions,
    lens_inputs,
    lens_target_rule,
    probability_deltas,
    recorded_layers,
    value_token_index,
)
from unlearnkit.data.encoding import PromptFormat, encode_qa
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_model, load_tokenizer, train_tokenizer
from unlearnkit.parameters import final_norm

PLAIN = PromptFormat("plain")


# ---- logit lens: pure parts ----

def test_candidates_top_and_bottom_by_hand():
    # k = 1 takes the most and the least likely token: 0 and 2; token 1 (in the middle) is missed.
    mask = candidate_tokens(torch.tensor([[0.7, 0.2, 0.1]]), k=1)
    assert mask.tolist() == [True, False, True]
    # Union over layers: layer 1 adds nothing new here ({2, 0}).
    assert candidate_tokens(torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]]), k=1).tolist() == [True, False, True]
    # k at least V takes every token.
    assert candidate_tokens(torch.tensor([[0.7, 0.2, 0.1]]), k=5).all()


def test_probability_delta_finds_what_head_projection_misses():
    distributions = torch.tensor([[0.40, 0.30, 0.20, 0.10], [0.45, 0.05, 0.35, 0.15]])
    # Head projection, k = 1: layer 0 gives {0 top, 3 bottom}, layer 1 {0 top, 1 bottom}: token 2 is never extreme.
    assert candidate_tokens(distributions, k=1).tolist() == [True, True, False, True]
    # D1 - D0 = [0.05, -0.25, 0.15, 0.05]: top 2, bottom 1.
    deltas = probability_deltas(distributions)
    assert torch.allclose(deltas, torch.tensor([[0.05, -0.25, 0.15, 0.05]]))
    assert candidate_tokens(deltas, k=1).tolist() == [False, True, True, False]


def test_value_token_index_by_offsets():
    offsets = [(0, 4), (4, 8), (8, 11), (11, 13), (13, 16)]
    assert value_token_index(offsets, 12, 20) == 3  # starts inside token 3 (a token with a leading space)
    assert value_token_index(offsets, 13, 16) == 4
    with pytest.raises(UnlearnkitError):
        value_token_index(offsets, 16, 18)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = train_tokenizer(["Question: Where was Ana born?\nAnswer: Ana was born in Tovrask."] * 20, 300)
    config = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_length=64)
    return build_tiny_model(config, tokenizer, seed=0).eval(), tokenizer


def test_lens_inputs_stop_before_the_value(tiny):
    _, tokenizer = tiny
    row = {"question": "Where was Ana born?", "answer": "Ana was born in Tovrask.", "value": "Tovrask"}
    ids, target = lens_inputs(tokenizer, PLAIN, row)
    full = encode_qa(tokenizer, PLAIN, row["question"], row["answer"], 64)["input_ids"]
    # The lens prefix and its target are the start of the training sequence, and the target begins the value.
    assert full[: len(ids) + 1] == [*ids, target]
    assert tokenizer.decode(ids).endswith("Answer: Ana was born in")
    assert tokenizer.decode([target]).strip() and "Tovrask".startswith(tokenizer.decode([target]).strip())
    assert lens_target_rule(row) == "value"
    # Without a value, perturbed answers locate the fact: the first answer word no wrong answer has ('Tovrask').
    plain_tofu = {"question": row["question"], "answer": row["answer"],
                  "perturbed_answer": ["Ana was born in Rome.", "Ana was born in Oslo."]}
    assert lens_inputs(tokenizer, PLAIN, plain_tofu) == (ids, target) and lens_target_rule(plain_tofu) == "fact_span"
    # With neither (or a value not in the answer), the answer's first token is the target.
    for other in ({"question": row["question"], "answer": row["answer"]}, {**row, "value": "Elsewhere"}):
        prefix, first = lens_inputs(tokenizer, PLAIN, other)
        assert prefix == PLAIN.prompt_ids(tokenizer, row["question"]) and first == full[len(prefix)]
        assert lens_target_rule(other) == "first_answer_token"


def test_final_norm_found_generically(tiny):
    model, _ = tiny
    assert final_norm(model) is model.model.norm
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=2, n_head=2))
    assert final_norm(gpt2) is gpt2.transformer.ln_f
    model = copy.deepcopy(model)
    del model.model.norm
    with pytest.raises(UnlearnkitError, match="final norm"):
        final_norm(model)


def test_recorded_layers_match_hidden_states():
    tokenizer = train_tokenizer(["Question: Where was Ana born?\nAnswer: Ana was born in Tovrask."] * 20, 300)
    model = build_tiny_model(TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2,
                                             max_length=64), tokenizer, seed=1).eval()
    ids = torch.tensor([tokenizer("Ana was born in Tovrask.")["input_ids"]])
    layer = model.model.layers[0]
    with torch.no_grad():
        reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    hooks = (set(layer._forward_hooks), set(layer._forward_pre_hooks))  # transformers may keep its own
    with recorded_layers(model, [0], lambda h: h.clone(), inputs_of=[0]) as (outputs, inputs), torch.no_grad():
        model(input_ids=ids)
    assert torch.allclose(inputs[0], reference[0]) and torch.allclose(outputs[0], reference[1])
    assert (set(layer._forward_hooks), set(layer._forward_pre_hooks)) == hooks


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_lens_last_layer_is_the_model_distribution_in_batches(tiny, architecture):
    model, tokenizer = tiny
    if architecture == "gpt2":  # decoder layers that return tuples, a LayerNorm called ln_f
        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=16, n_layer=2, n_head=2)).eval()
    rows = [{"question": "Where was Ana born?", "answer": "Ana was born in Tovrask.", "value": "Tovrask"},
            {"question": "Who?", "answer": "Ana.", "value": "Ana"},
            {"question": "Where was Ana born? Tell me.", "answer": "In Tovrask."}]
    data = AuditData(forget=rows, fmt=PLAIN)
    lens = list(lens_distributions(model, tokenizer, data, AuditConfig(batch_size=2)))
    for row, reading in zip(rows, lens, strict=True):
        ids, target = lens_inputs(tokenizer, PLAIN, row)
        with torch.no_grad():
            expected = torch.softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], dim=-1)
        assert reading.distributions.shape == (2, len(tokenizer)) and reading.labels == [0, 1] and reading.target == target
        assert torch.allclose(reading.distributions[-1], expected, atol=1e-5)
    # One selected layer and the delta reading: its input (the embeddings for layer 0) comes first, labelled -1.
    single = list(lens_distributions(model, tokenizer, data, AuditConfig(lens_layers="0"), with_input=True))
    assert single[0].labels == [-1, 0] and single[0].distributions.shape[0] == 2
    with pytest.raises(UnlearnkitError, match="lens_layers"):
        next(lens_distributions(model, tokenizer, data, AuditConfig(lens_layers="5")))


def _micro(micro_bench, directory):
    return load_model(directory), load_tokenizer(micro_bench.target_dir)


def test_logit_lens_attacks_on_micro(micro_bench):
    data = AuditData(forget=micro_bench.split("forget10"), fmt=PLAIN)
    config = AuditConfig()
    model, tokenizer = _micro(micro_bench, micro_bench.target_dir)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    head = ATTACKS.get("logit_lens_head").run(model, tokenizer, data, config)
    delta = ATTACKS.get("logit_lens_delta").run(model, tokenizer, data, config)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert len(head.per_sample) == len(data.forget)
    assert set(head.per_sample[0]) == {"question", "target", "recall_rule", "success", "hit_layers"}
    assert head.recall_rules == {"value": len(data.forget)}  # the built-in rows' value locates every target token
    # The micro model has one layer: head projection reads 1 distribution, the delta 1 difference (layer 0 minus embeddings).
    assert head.details["budget"] == 2 * config.lens_k == delta.details["budget"]
    assert head.details["mean_candidates"] <= head.details["budget"]
    assert head.recovery == sum(s["success"] for s in head.per_sample) / len(data.forget)
    # The target knows its forget facts: the value's first token is among the top-k of its last layer on most rows,
    # well above the oracle that never saw them.
    oracle, _ = _micro(micro_bench, micro_bench.oracle_dir("forget10"))
    oracle_head = ATTACKS.get("logit_lens_head").run(oracle, tokenizer, data, config)
    assert head.recovery >= 0.75 and head.recovery > oracle_head.recovery


# ---- linear probe ----

def test_pairwise_accuracy_by_hand():
    true = torch.tensor([1.0, 0.0])
    false = torch.tensor([[0.5, 2.0, 1.0], [-1.0, math.nan, math.nan]])
    # Row 0: 0.5 below (1), 2.0 above (0), 1.0 tied (0.5) -> 1.5 / 3; row 1: one statement, below -> 1.
    assert torch.allclose(pairwise_accuracy(true, false), torch.tensor([0.5, 1.0]))


def test_probe_finds_a_planted_direction():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=generator)
    scale = torch.linspace(0.1, 10.0, 16)  # unequal feature scales: standardisation must cope

    def sample(n):
        x = torch.randn(n, 16, generator=generator)
        return (x * scale + 3.0), (x @ direction > direction.norm()).long()  # shifted, imbalanced (about 16% true)

    train_x, train_y = sample(600)
    test_x, test_y = sample(2000)
    assert 0.1 < train_y.float().mean() < 0.4
    probe = fit_logistic_probe(train_x, train_y, l2=1e-3)
    accuracy = ((probe_scores(test_x, probe) > 0).long() == test_y).float().mean()
    assert accuracy > 0.95
    with pytest.raises(UnlearnkitError, match="both true and false"):
        fit_logistic_probe(train_x, torch.ones(600), l2=1e-3)


def test_statement_features_mean_pool_the_statement_tokens(tiny):
    model, tokenizer = tiny
    texts = ["Ana was born in Tovrask.", "Ana."]
    features = statement_features(model, tokenizer, texts, layer=0, batch_size=2)
    for text, feature in zip(texts, features, strict=True):
        ids = torch.tensor([tokenizer(text)["input_ids"]])  # <s> first: left out of the mean
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[1][0]
        assert torch.allclose(feature, hidden[1:].mean(dim=0), atol=1e-5)


def test_linear_probe_on_micro(micro_bench):
    model, tokenizer = _micro(micro_bench, micro_bench.target_dir)
    data = AuditData(forget=micro_bench.split("forget10"), retain=micro_bench.split("retain90"), fmt=PLAIN)
    outcome = ATTACKS.get("linear_probe").run(model, tokenizer, data, AuditConfig())
    assert ATTACKS.get("linear_probe").needs == ("retain",)
    assert len(outcome.per_sample) == len(data.forget) and 0 <= outcome.recovery <= 1
    assert outcome.recovery == pytest.approx(sum(s["pairwise_accuracy"] for s in outcome.per_sample) / len(data.forget))
    assert all(len(s["false_scores"]) == len(row["perturbed_answer"]) for s, row in zip(outcome.per_sample, data.forget, strict=True))
    assert outcome.details["layer"] == 0 and outcome.details["train_balanced_accuracy"] > 0.5
    with pytest.raises(UnlearnkitError, match="probe_layer"):
        ATTACKS.get("linear_probe").run(model, tokenizer, data, AuditConfig(probe_layer=3))
    bare = AuditData(forget=[{k: v for k, v in row.items() if k != "perturbed_answer"} for row in data.forget], retain=data.retain)
    with pytest.raises(UnlearnkitError, match="perturbed_answer"):
        ATTACKS.get("linear_probe").run(model, tokenizer, bare, AuditConfig())
