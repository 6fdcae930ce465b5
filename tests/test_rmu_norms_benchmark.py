"""benchmarks/rmu_activation_norms.py: the norms it reports are those of the steered block's output."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.helpers import load_benchmark_script
from unlearnkit.data.encoding import PromptFormat, encode_qa
from unlearnkit.modeling import load_tokenizer


def test_norms_are_the_block_outputs_per_token(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()
    rows = micro_bench.split("forget10")[:3]
    fmt = PromptFormat("plain")
    script = load_benchmark_script("rmu_activation_norms")
    norms = script.token_norms(model, tokenizer, fmt, rows, layer=1)
    expected = []
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([encode_qa(tokenizer, fmt, row["question"], row["answer"], 512)["input_ids"]])
            # hidden_states[2] is block 1's output (the final norm only touches the last entry).
            expected.append(model(input_ids=ids, output_hidden_states=True).hidden_states[2][0].norm(dim=-1))
    torch.testing.assert_close(norms, torch.cat(expected))
    other = script.token_norms(model, tokenizer, fmt, rows, layer=0)
    assert other.shape == norms.shape and not torch.allclose(other, norms)
