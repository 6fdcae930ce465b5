"""Quantization attacks (Zhang et al., ICLR 2025): bitsandbytes' FP4/NF4 and int8 rounding by hand, the quantised copy, the attack."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from unlearnkit.attacks import ATTACKS, AuditConfig, AuditData
from unlearnkit.attacks.knowledge import recall_rows
from unlearnkit.attacks.quantization import (
    FP4_CODE,
    NF4_CODE,
    absmax_codebook_quantize,
    int8_rowwise_quantize,
    quantize_model,
    quantize_weight,
    quantized_layers,
    quantized_share,
)
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_model, load_tokenizer, train_tokenizer
from unlearnkit.parameters import Selection, apply_lora


def test_fp4_code_is_bitsandbytes_fp4_over_its_maximum():
    # 1 sign, 2 exponent, 1 mantissa bit, bias 2: 0, 0.0625 (subnormal), 2, 3, 4, 6, 8, 12, and their negatives.
    magnitudes = sorted({abs(value) * 12 for value in FP4_CODE})
    assert magnitudes == pytest.approx([0, 0.0625, 2, 3, 4, 6, 8, 12])
    assert len(NF4_CODE) == 16 and NF4_CODE[0] == -1.0 and NF4_CODE[7] == 0.0 and NF4_CODE[-1] == 1.0


def test_fp4_rounds_each_value_to_the_nearest_code_by_hand():
    # One block, absmax 12: in units of 1/12 the codes are 0, ±0.0625, ±2, ±3, ±4, ±6, ±8, ±12.
    weight = torch.tensor([[12.0, 7.2, 4.9, 2.4, -1.2, 0.02, 0.05, -12.0]])
    out = absmax_codebook_quantize(weight, FP4_CODE, blocksize=8)
    assert torch.allclose(out, torch.tensor([[12.0, 8.0, 4.0, 2.0, -2.0, 0.0, 0.0625, -12.0]]), atol=1e-6)


def test_nf4_rounds_to_the_normal_float_codes_by_hand():
    out = absmax_codebook_quantize(torch.tensor([1.0, 0.7, -0.5, 0.1]), NF4_CODE, blocksize=4)
    assert out.tolist() == pytest.approx([1.0, 0.7229568362236023, -0.5250730514526367, 0.07958029955625534])


def test_blocks_follow_memory_order_across_rows():
    weight = torch.tensor([[12.0, 0.0, 0.0], [0.5, 1.0, 1.0]])
    # Blocks of 4 in row-major order: [12, 0, 0, 0.5] (absmax 12: 0.5/12 is nearest 0.0625/12) and [1, 1].
    assert torch.allclose(absmax_codebook_quantize(weight, FP4_CODE, 4), torch.tensor([[12.0, 0.0, 0.0], [0.0625, 1.0, 1.0]]))
    # Blocks of 3 are the rows: 0.5 = 6/12 is a code of the second row's block.
    assert torch.allclose(absmax_codebook_quantize(weight, FP4_CODE, 3), weight)


def test_int8_rowwise_by_hand():
    weight = torch.tensor([[127.0, 63.4, -1.6, 0.0], [0.0, 0.0, 0.0, 0.0], [2.54, 1.0, -0.01, 0.0]])
    out = int8_rowwise_quantize(weight)
    # Row 1: scale 1. Row 2: all zero, kept. Row 3: scale 2.54/127 = 0.02: 1.0 -> round(50) = 50 steps, -0.01 -> round(-0.5) = -0 steps.
    assert torch.allclose(out, torch.tensor([[127.0, 63.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0], [2.54, 1.0, 0.0, 0.0]]), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_quantisation_keeps_dtype(dtype):
    weight = torch.tensor([[12.0, 7.2, 4.9, 2.4]], dtype=dtype)
    for bits in (4, 8):
        assert quantize_weight(weight, bits, blocksize=4).dtype == dtype


def test_quantisation_rejects_bad_input():
    with pytest.raises(UnlearnkitError, match="bits must be 4 or 8"):
        quantize_weight(torch.zeros(2, 4), bits=2)
    with pytest.raises(UnlearnkitError, match="block size"):
        quantize_weight(torch.zeros(2, 4), bits=4, blocksize=0)
    with pytest.raises(UnlearnkitError, match="floating-point"):
        quantize_weight(torch.zeros(2, 4, dtype=torch.int64), bits=4)
    with pytest.raises(UnlearnkitError, match="fp4"):
        quantize_weight(torch.zeros(2, 4), bits=4, four_bit_type="int4")


def test_gpt2_conv1d_layers_are_quantised_in_the_linear_layout():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    names = {name for name, _ in quantized_layers(model)}
    assert {"transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_proj"} <= names and "lm_head" not in names
    quantized = quantize_model(model, 4, blocksize=16)
    conv = model.transformer.h[0].attn.c_attn.weight  # (in_features, out_features) = (16, 48)
    expected = quantize_weight(conv.T, 4, 16).T  # blocks along the nn.Linear layout (out, in)
    assert torch.equal(quantized.transformer.h[0].attn.c_attn.weight, expected)
    assert not torch.equal(expected, quantize_weight(conv, 4, 16))  # blocks along the stored layout would differ
    assert torch.equal(quantized.transformer.wte.weight, model.transformer.wte.weight)


def _tokenizer():
    return train_tokenizer(["Question: Where was Ana born?\nAnswer: Ana was born in Tovrask."] * 20, 300)


def test_quantize_model_copy_leaves_original_and_head():
    config = TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_length=64)
    model = build_tiny_model(config, _tokenizer(), seed=0)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    quantized = quantize_model(model, bits=4, blocksize=16)
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    q_proj = quantized.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(q_proj, quantize_weight(model.model.layers[0].self_attn.q_proj.weight, 4, 16))
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
    quantized = quantize_model(model, bits=4, blocksize=8)
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
    quantized = quantize_model(model, bits=4, blocksize=8)
    assert not any("lora" in name for name, _ in quantized.named_parameters())
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    merged = copy.deepcopy(model).merge_and_unload()
    q_proj = merged.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(quantized.model.layers[0].self_attn.q_proj.weight, quantize_weight(q_proj, 4, 8))


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
        assert set(outcome.per_sample[0]) == {"question", "generation", "recalled", "recall_rule"}
        assert outcome.details["bits"] == bits and outcome.details.get("blocksize") == (32 if bits == 4 else None)
        assert 0 < outcome.details["quantized_share"] < 1
        assert outcome.recovery == sum(s["recalled"] for s in outcome.per_sample) / len(data.forget)
    # 8-bit rounding (steps of 1/127 of a row's absmax) keeps what the target recalls.
    recalled, _ = recall_rows(model, tokenizer, data.fmt, data.forget, [row["question"] for row in data.forget], 16, 16)
    assert any(recalled)
    assert [s["recalled"] for s in outcomes[8].per_sample] == recalled


def test_audit_config_chooses_the_4bit_code_as_bitsandbytes_does() -> None:
    config = AuditConfig()
    assert config.quantization_group_size == 64 and config.quantization_4bit_type == "fp4"  # bitsandbytes' load_in_4bit defaults
    with pytest.raises(UnlearnkitError, match="quantization_4bit_type must be one of fp4, nf4"):
        AuditConfig(quantization_4bit_type="int4")


def test_the_4bit_attack_uses_the_configured_code(micro_bench, monkeypatch):
    import unlearnkit.attacks.quantization as quantization

    chosen = []

    def record(model, bits, blocksize, code):  # stands in for quantize_model
        chosen.append((bits, blocksize, code))
        return model

    monkeypatch.setattr(quantization, "quantize_model", record)
    model = load_model(micro_bench.target_dir)
    tokenizer = load_tokenizer(micro_bench.target_dir)
    data = AuditData(forget=micro_bench.split("forget10")[:2], fmt=PromptFormat("plain"))
    ATTACKS.get("quantization_4bit").run(model, tokenizer, data, AuditConfig(max_new_tokens=2, quantization_4bit_type="nf4"))
    assert chosen == [(4, 64, "nf4")]
