"""Quantization attacks (Zhang et al., ICLR 2025): RTN rounding checked by hand, the quantised copy, the attack on the micro model."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from unlearnkit.attacks import ATTACKS, AuditConfig, AuditData
from unlearnkit.attacks.knowledge import recall_rows
from unlearnkit.attacks.quantization import quantize_model, quantized_share, rtn_quantize
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_model, load_tokenizer, train_tokenizer
from unlearnkit.parameters import Selection, apply_lora


def test_rtn_exact_grid_is_kept():
    # [0, 1, 2, 3] at 2 bits: scale 1, zero 0, every value on the grid.
    weight = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    assert torch.equal(rtn_quantize(weight, bits=2, group_size=4), weight)


def test_rtn_one_bit_rounds_by_hand():
    # [0, 0.4, 1] at 1 bit: scale 1, zero 0, round(0.4) = 0.
    out = rtn_quantize(torch.tensor([[0.0, 0.4, 1.0]]), bits=1, group_size=3)
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0]]))


def test_rtn_negative_minimum_uses_zero_point():
    # [-1, -0.2, 0.6, 2] at 2 bits: scale 3/3 = 1, zero = round(1) = 1; q = [0, 1, 2, 3] -> [-1, 0, 1, 2].
    out = rtn_quantize(torch.tensor([[-1.0, -0.2, 0.6, 2.0]]), bits=2, group_size=4)
    assert torch.allclose(out, torch.tensor([[-1.0, 0.0, 1.0, 2.0]]))


def test_rtn_groups_and_partial_last_group():
    # Groups of 4 at 1 bit: [0, 1, 2, 3] has scale 3 -> [0, 0, 3, 3]; the partial group [0, 0.4, 1] has scale 1 -> [0, 0, 1].
    weight = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.0, 0.4, 1.0]])
    assert torch.allclose(rtn_quantize(weight, bits=1, group_size=4), torch.tensor([[0.0, 0.0, 3.0, 3.0, 0.0, 0.0, 1.0]]))
    # One group of all 7 (scale 3) would round the last three to 0: the grouping matters.
    assert torch.allclose(rtn_quantize(weight, bits=1, group_size=7), torch.tensor([[0.0, 0.0, 3.0, 3.0, 0.0, 0.0, 0.0]]))
    # A group size past the row is one partial group.
    assert torch.allclose(rtn_quantize(weight, bits=1, group_size=100), rtn_quantize(weight, bits=1, group_size=7))


def test_rtn_constant_group_kept_and_rows_independent():
    weight = torch.tensor([[5.3, 5.3, 5.3, 5.3], [0.0, 0.4, 1.0, 1.0]])
    out = rtn_quantize(weight, bits=1, group_size=4)
    assert torch.equal(out[0], weight[0])
    assert torch.equal(out[1], torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_rtn_idempotent_and_8bit_error_within_half_step():
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(8, 70, generator=generator)
    once = rtn_quantize(weight, bits=4, group_size=32)
    assert not torch.allclose(once, weight)
    assert torch.allclose(rtn_quantize(once, bits=4, group_size=32), once, atol=1e-6, rtol=0)
    eight = rtn_quantize(weight, bits=8, group_size=32)
    for start in range(0, 70, 32):
        group, rounded = weight[:, start:start + 32], eight[:, start:start + 32]
        scale = (group.amax(dim=1, keepdim=True) - group.amin(dim=1, keepdim=True)) / 255
        assert bool(((group - rounded).abs() <= scale / 2 + 1e-6).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_rtn_keeps_dtype(dtype):
    weight = torch.tensor([[0.0, 0.4, 1.0]], dtype=dtype)
    out = rtn_quantize(weight, bits=1, group_size=3)
    assert out.dtype == dtype
    assert torch.equal(out, torch.tensor([[0.0, 0.0, 1.0]], dtype=dtype))


def test_rtn_rejects_bad_input():
    with pytest.raises(UnlearnkitError, match="bits"):
        rtn_quantize(torch.zeros(2, 4), bits=0, group_size=4)
    with pytest.raises(UnlearnkitError, match="group_size"):
        rtn_quantize(torch.zeros(2, 4), bits=4, group_size=0)
    with pytest.raises(UnlearnkitError, match="floating-point"):
        rtn_quantize(torch.zeros(2, 4, dtype=torch.int64), bits=4, group_size=4)


def _tokenizer():
    return train_tokenizer(["Question: Where was Ana born?\nAnswer: Ana was born in Tovrask."] * 20, 300)


def test_quantize_model_copy_leaves_original_and_head():
    config = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_length=64)
    model = build_tiny_model(config, _tokenizer(), seed=0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    quantized = quantize_model(model, bits=4, group_size=16)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    q_proj = quantized.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q_proj, rtn_quantize(model.model.layers[0].self_attn.q_proj.weight, 4, 16))
    assert not torch.equal(q_proj, model.model.layers[0].self_attn.q_proj.weight)
    # The tied head/embedding and the norms are untouched.
    assert torch.equal(quantized.lm_head.weight, model.lm_head.weight)
    assert torch.equal(quantized.model.embed_tokens.weight, model.model.embed_tokens.weight)
    assert torch.equal(quantized.model.norm.weight, model.model.norm.weight)
    # Linear weights: 2 layers x (4 * 32*32 attention + 3 * 32*64 MLP) = 20480; the rest are the embedding and the norms.
    total = sum(p.numel() for p in model.parameters())
    assert quantized_share(model) == pytest.approx(20480 / total)


def test_untied_head_not_quantised():
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    quantized = quantize_model(model, bits=2, group_size=8)
    assert torch.equal(quantized.lm_head.weight, model.lm_head.weight)
    assert not torch.equal(quantized.model.layers[0].mlp.down_proj.weight, model.model.layers[0].mlp.down_proj.weight)


def test_lora_model_is_merged_then_quantised():
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2)
    torch.manual_seed(0)
    model = apply_lora(LlamaForCausalLM(config), Selection(), rank=4, alpha=8, dropout=0.0)
    with torch.no_grad():  # peft starts lora_B at 0: make the adapter change the weights
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.fill_(0.1)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    quantized = quantize_model(model, bits=4, group_size=8)
    assert not any("lora" in name for name, _ in quantized.named_parameters())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    merged = copy.deepcopy(model).merge_and_unload()
    q_proj = merged.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(quantized.model.layers[0].self_attn.q_proj.weight, rtn_quantize(q_proj, 4, 8))


def test_quantization_attacks_on_micro_target(micro_bench):
    model = load_model(micro_bench.target_dir)
    tokenizer = load_tokenizer(micro_bench.target_dir)
    data = AuditData(forget=micro_bench.split("forget10"), fmt=PromptFormat("plain"))
    config = AuditConfig(max_new_tokens=16, batch_size=16, quantization_group_size=32)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    outcomes = {bits: ATTACKS.get(f"quantization_{bits}bit").run(model, tokenizer, data, config) for bits in (8, 4)}
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    for bits, outcome in outcomes.items():
        assert len(outcome.per_sample) == len(data.forget)
        assert set(outcome.per_sample[0]) == {"question", "generation", "recalled"}
        assert outcome.details["bits"] == bits and outcome.details["group_size"] == 32
        assert 0 < outcome.details["quantized_share"] < 1
        assert outcome.recovery == sum(s["recalled"] for s in outcome.per_sample) / len(data.forget)
    # 8-bit rounding (steps of 1/255 of a group's range) keeps what the target recalls.
    recalled, _ = recall_rows(model, tokenizer, data.fmt, data.forget, [row["question"] for row in data.forget], 16, 16)
    assert any(recalled)
    assert [s["recalled"] for s in outcomes[8].per_sample] == recalled
