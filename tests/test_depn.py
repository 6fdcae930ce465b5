"""DEPN: integrated gradients, thresholding and voting, the privacy-neuron localizer and the neuron-zeroing method."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from tests.helpers import micro, run_cli
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization import LOCALIZERS, load_localization, save_localization
from unlearnkit.localization.depn import (
    DEPNLocalizerConfig,
    answer_targets,
    detect_privacy_neurons,
    feed_forward_projections,
    integrated_gradients,
    layer_attribution,
    threshold_neurons,
    vote_neurons,
)
from unlearnkit.methods import METHODS
from unlearnkit.methods.depn import DEPN, NEURONS_FILE, zero_neurons
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, train_tokenizer
from unlearnkit.unlearning import resolve_method


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


# --------------------------------------------------------------------------------------------- integrated gradients


def test_integrated_gradients_of_a_quadratic_is_the_hand_riemann_sum() -> None:
    # f(w) = 3 w0^2 - w1^2 at beta = (1, 2), m = 4: Att_k = (beta_k / 4) sum_j 2 c_k (j beta_k / 4) = c_k beta_k^2 (5 / 4).
    attribution = integrated_gradients(lambda w: 3 * w[:, 0] ** 2 - w[:, 1] ** 2, torch.tensor([1.0, 2.0], dtype=torch.float64), 4)
    assert attribution.tolist() == pytest.approx([3.75, -5.0], abs=1e-12)


def test_the_riemann_sum_converges_to_the_exact_integral_at_rate_one_over_m() -> None:
    # One neuron, f(w) = sigmoid(c w): the exact integrated gradient is f(beta) - f(0) = sigmoid(c beta) - 1/2.
    beta, c = 2.0, 1.5
    exact = sigmoid(c * beta) - 0.5
    errors = {}
    for steps in (10, 100, 1000):
        value = float(integrated_gradients(lambda w: torch.sigmoid(c * w[:, 0]), torch.tensor([beta], dtype=torch.float64), steps)[0])
        errors[steps] = value - exact
    assert abs(errors[1000]) < abs(errors[100]) < abs(errors[10])
    # A right Riemann sum of h(alpha) = beta c sigmoid'(alpha beta c) over [0, 1] errs by (h(1) - h(0)) / (2m) + O(1/m^2).
    h = lambda alpha: beta * c * sigmoid(alpha * beta * c) * (1 - sigmoid(alpha * beta * c))  # noqa: E731
    assert 1000 * errors[1000] == pytest.approx((h(1.0) - h(0.0)) / 2, rel=0.01)


class OneNeuronLM(nn.Module):
    """A causal-LM-shaped model over two tokens whose logit gap is c times FFN neuron 0's activation, at every position.

    The activations are the constants ``beta`` (they depend on no input), so P(token 1) = sigmoid(c a_0) exactly.
    """

    def __init__(self, beta: tuple[float, float], c: float) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=1, model_type="one-neuron")
        self.beta = torch.tensor(beta, dtype=torch.float64)
        block = nn.Module()
        block.mlp = nn.Module()
        block.mlp.down_proj = nn.Linear(2, 2, bias=False).double()
        with torch.no_grad():
            block.mlp.down_proj.weight.copy_(torch.tensor([[0.0, 0.0], [c, 0.0]]))  # neuron 1 reaches no logit
        self.layers = nn.ModuleList([block])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> SimpleNamespace:
        activation = self.beta.expand(*input_ids.shape, 2)
        return SimpleNamespace(logits=self.layers[0].mlp.down_proj(activation))


def test_the_localizer_attribution_of_an_explicit_one_neuron_model_is_the_hand_sum() -> None:
    beta, c, steps = 2.0, 1.5, 4
    model = OneNeuronLM((beta, 0.7), c)
    (projection,) = feed_forward_projections(model)
    settings = DEPNLocalizerConfig(steps=steps, reuse_prefix=False)
    # Three tokens; the answer is token 1 at position 2, predicted from position 1.
    attribution, passes = layer_attribution(model, projection, torch.tensor([0, 0, 1]), [(1, 1)], settings)
    # (beta / m) sum_j dP/da_0 at a_0 = j beta / m, with dP/da_0 = c sigmoid'(c a_0).
    by_hand = beta / steps * sum(c * sigmoid(c * j * beta / steps) * (1 - sigmoid(c * j * beta / steps)) for j in range(1, steps + 1))
    assert float(attribution[0]) == pytest.approx(by_hand, rel=1e-6)  # accumulated in float32
    assert float(attribution[1]) == 0.0 and passes == 1
    # Completeness: the attributions sum to P(actual) - P(baseline), here sigmoid(c beta) - 1/2, within the Riemann error.
    fine, _ = layer_attribution(model, projection, torch.tensor([0, 0, 1]), [(1, 1)], DEPNLocalizerConfig(steps=2000, reuse_prefix=False,
                                                                                                          interpolation_batch=2000))
    assert float(fine.sum()) == pytest.approx(sigmoid(c * beta) - 0.5, abs=1e-3)


# --------------------------------------------------------------------------------------------- a tiny Llama


def tiny_llama(seed: int = 0, layers: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


EXAMPLE = {"input_ids": [1, 9, 4, 5, 7, 2], "labels": [-100, -100, -100, -100, 7, 2]}


def probability_with(model: nn.Module, layer: int, zero_position: int | None, ids: list[int]) -> torch.Tensor:
    """Next-token probabilities (T, V) with layer ``layer``'s FFN activations at one position set to zero (None: as they are)."""

    def hook(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0].clone()
        if zero_position is not None:
            hidden[:, zero_position] = 0
        return (hidden,)

    handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            return torch.softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
    finally:
        handle.remove()


def test_attributions_are_complete_per_layer_and_token() -> None:
    """Reference equivalence: the attributions of a layer sum to sum_t P(y_t) - P(y_t | that position's activations zeroed)."""
    model = tiny_llama()
    found = detect_privacy_neurons(model, [EXAMPLE], DEPNLocalizerConfig(steps=400, interpolation_batch=400))
    for slot, layer in enumerate((0, 1)):
        actual = probability_with(model, layer, None, EXAMPLE["input_ids"])
        expected = sum(float(actual[position, token] - probability_with(model, layer, position, EXAMPLE["input_ids"])[position, token])
                       for position, token in answer_targets(EXAMPLE["labels"]))
        assert float(found.attribution[0, slot].sum()) == pytest.approx(expected, rel=0.01, abs=1e-7)
        assert abs(expected) > 1e-6  # the check compares something


def step_by_step_attribution(model: LlamaForCausalLM, layer: int, example: dict, steps: int) -> torch.Tensor:
    """An independent transcription: one forward per step, the layer's activation at the token's position set to j beta / m."""
    ids = torch.tensor(example["input_ids"])
    expected = torch.zeros(model.config.intermediate_size, dtype=torch.float64)
    for position, token in answer_targets(example["labels"]):
        for j in range(1, steps + 1):
            kept: dict[str, torch.Tensor] = {}

            def hook(module: nn.Module, args: tuple, position: int = position, j: int = j, kept: dict = kept) -> tuple:
                hidden = args[0].detach().clone()
                kept["beta"] = hidden[0, position].clone()
                point = (hidden[0, position] * j / steps).requires_grad_(True)
                kept["point"] = point
                hidden = hidden.clone()
                hidden[0, position] = point
                return (hidden,)

            handle = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook)
            try:
                probability = torch.softmax(model(input_ids=ids[None]).logits[0, position], dim=-1)[token]
                (gradient,) = torch.autograd.grad(probability, kept["point"])
            finally:
                handle.remove()
            expected += (kept["beta"] * gradient).double() / steps
    return expected


def test_layer_attribution_matches_a_step_by_step_transcription_with_and_without_the_prefix_cache() -> None:
    model = tiny_llama(seed=1)
    steps, layer = 5, 1
    ids = torch.tensor(EXAMPLE["input_ids"])
    expected = step_by_step_attribution(model, layer, EXAMPLE, steps)
    (projection,) = feed_forward_projections(model, [layer])
    for reuse_prefix in (True, False):
        settings = DEPNLocalizerConfig(steps=steps, reuse_prefix=reuse_prefix, interpolation_batch=3)  # chunks straddle tokens
        cache = None
        if reuse_prefix:
            from unlearnkit.localization.depn import example_cache

            cache = example_cache(model, ids)
            assert cache is not None
        attribution, passes = layer_attribution(model, projection, ids, answer_targets(EXAMPLE["labels"]), settings, cache)
        assert torch.allclose(attribution.double(), expected, atol=1e-7, rtol=1e-4)
        assert passes == math.ceil(2 * steps / 3)


LONGER = {"input_ids": [1, 9, 4, 5, 7, 2, 8, 3, 6], "labels": [-100, -100, -100, 5, 7, 2, 8, -100, 6]}  # answer tokens with a gap


@pytest.mark.parametrize("interpolation_batch", [20, 3])
def test_all_token_paths_in_one_pass_from_the_layer_up_equal_the_step_by_step_transcription(interpolation_batch: int) -> None:
    """The fast path (every answer token's path in one masked pass, lower layers skipped) against one forward per step and token."""
    model = tiny_llama(seed=4, layers=3)
    blocks = list(model.model.layers)
    steps = 7
    settings = DEPNLocalizerConfig(steps=steps, interpolation_batch=interpolation_batch)
    found = detect_privacy_neurons(model, [EXAMPLE, LONGER], settings)
    assert found.forward_passes == 2 * 3 * math.ceil(steps / interpolation_batch)  # one pass per row, layer and batch of steps
    assert list(model.model.layers) == blocks  # the skipped layers are put back
    for row, example in enumerate((EXAMPLE, LONGER)):
        for layer in range(3):
            expected = step_by_step_attribution(model, layer, example, steps)
            assert torch.allclose(found.attribution[row, layer].double(), expected, atol=1e-9, rtol=1e-4), (row, layer)
            assert expected.abs().max() > 1e-6
    # And the plain path (whole sequences, one token per pass) gives the same numbers.
    plain_settings = DEPNLocalizerConfig(steps=steps, reuse_prefix=False, interpolation_batch=steps)
    plain = detect_privacy_neurons(model, [EXAMPLE, LONGER], plain_settings)
    assert plain.forward_passes == (2 + 5) * 3  # one pass per answer token and layer
    assert torch.allclose(found.attribution, plain.attribution, atol=1e-9, rtol=1e-4)


def test_a_long_answer_is_split_into_passes_within_the_logit_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    from unlearnkit.localization import depn

    model = tiny_llama(seed=4, layers=2)
    settings = DEPNLocalizerConfig(steps=4)
    whole = detect_privacy_neurons(model, [LONGER], settings)
    monkeypatch.setattr(depn, "LOGIT_BUDGET", 2 * 4 * 40)  # 4 sequences x 2 tokens x 40 vocabulary: 5 answer tokens in 3 passes
    split = detect_privacy_neurons(model, [LONGER], settings)
    assert (whole.forward_passes, split.forward_passes) == (2, 2 * 3)
    assert torch.allclose(split.attribution, whole.attribution, atol=1e-9, rtol=1e-5)
    expected = step_by_step_attribution(model, 1, LONGER, 4)
    assert torch.allclose(split.attribution[0, 1].double(), expected, atol=1e-9, rtol=1e-4)


def test_scaling_every_answer_position_together_is_complete_for_the_joint_path() -> None:
    model = tiny_llama(seed=2)
    found = detect_privacy_neurons(model, [EXAMPLE], DEPNLocalizerConfig(steps=400, interpolation_batch=400, token_paths="together"))

    def zeroed_answer_positions(module: nn.Module, args: tuple) -> tuple:
        hidden = args[0].clone()
        hidden[:, [position for position, _ in answer_targets(EXAMPLE["labels"])]] = 0
        return (hidden,)

    actual = probability_with(model, 0, None, EXAMPLE["input_ids"])
    handle = model.model.layers[0].mlp.down_proj.register_forward_pre_hook(zeroed_answer_positions)
    try:
        baseline = probability_with(model, 0, None, EXAMPLE["input_ids"])
    finally:
        handle.remove()
    expected = sum(float(actual[p, t] - baseline[p, t]) for p, t in answer_targets(EXAMPLE["labels"]))
    assert float(found.attribution[0, 0].sum()) == pytest.approx(expected, rel=0.01, abs=1e-7)
    assert found.forward_passes == 2 * 1  # two layers, one path of 400 steps each


# --------------------------------------------------------------------------------------------- thresholding and voting


ATTRIBUTION = torch.tensor([
    [[1.0, 0.05, 0.2, -3.0]],  # max 1: >= 0.1 keeps neurons 0 and 2
    [[0.5, 0.6, 0.01, 0.0]],  # max 0.6: >= 0.06 keeps 0 and 1
    [[-1.0, -2.0, -0.5, -0.1]],  # no positive attribution: keeps none
])


def test_threshold_is_relative_to_each_examples_largest_attribution() -> None:
    selected = threshold_neurons(ATTRIBUTION, 0.1)
    assert selected[:, 0].tolist() == [[True, False, True, False], [True, True, False, False], [False, False, False, False]]


def test_voting_keeps_the_neurons_most_examples_select_and_caps_their_number() -> None:
    selected = threshold_neurons(ATTRIBUTION, 0.1)  # votes: neuron 0: 2, neuron 1: 1, neuron 2: 1, neuron 3: 0
    assert vote_neurons(selected, ATTRIBUTION, 0.5, None) == [(0, 0)]  # 2 >= 0.5 x 3; 1 < 1.5
    # 0.3 x 3 = 0.9: three pass; the tie between neurons 1 and 2 goes to the larger summed attribution (-0.29 > -1.35).
    assert vote_neurons(selected, ATTRIBUTION, 0.3, None) == [(0, 0), (0, 2), (0, 1)]
    assert vote_neurons(selected, ATTRIBUTION, 0.3, 2) == [(0, 0), (0, 2)]
    assert vote_neurons(selected, ATTRIBUTION, 0.0, None) == [(0, 0), (0, 2), (0, 1)]  # never a neuron nobody selected


# --------------------------------------------------------------------------------------------- a planted privacy neuron


PLANTED_LAYER, PLANTED_NEURON, TRIGGER, SECRET = 0, 17, 5, 7
PLANTED_ROWS = [{"input_ids": [1, a, b, TRIGGER, SECRET, 2], "labels": [-100] * 4 + [SECRET, 2]} for a, b in ((9, 4), (11, 30), (23, 8))]


def planted_model() -> LlamaForCausalLM:
    """A tiny Llama in which FFN neuron 17 of layer 0 alone makes token 7 follow token 5.

    Layer 0's attention writes nothing, so that layer's MLP input at a position is a function of its token
    alone; neuron 17 fires on token 5's input and writes the direction the head reads as token 7.
    """
    model = tiny_llama(seed=3)
    block = model.model.layers[PLANTED_LAYER]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        key = block.post_attention_layernorm(model.model.embed_tokens.weight[TRIGGER])
        key = key / key.norm() ** 2
        block.mlp.gate_proj.weight[PLANTED_NEURON] = 6 * key
        block.mlp.up_proj.weight[PLANTED_NEURON] = 6 * key
        direction = torch.randn(32)
        direction /= direction.norm()
        block.mlp.down_proj.weight[:, PLANTED_NEURON] = 0.01 * direction
        model.lm_head.weight[SECRET] = 2 * direction
    return model


def test_the_localizer_finds_the_planted_privacy_neuron() -> None:
    model = planted_model()
    for row in PLANTED_ROWS:  # the plant works: the secret follows the trigger
        assert probability_with(model, 0, None, row["input_ids"])[3, SECRET] > 0.9
    found = detect_privacy_neurons(model, PLANTED_ROWS, DEPNLocalizerConfig())
    assert found.neurons == [(PLANTED_LAYER, PLANTED_NEURON)]
    assert int(found.votes[0, PLANTED_NEURON]) == 3
    assert found.counts() == {"0": 1, "1": 0} and found.shares() == {"0": 1 / 64, "1": 0.0}


def test_zeroing_touches_the_selected_columns_alone_and_removes_the_secret() -> None:
    model = planted_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    found = detect_privacy_neurons(model, PLANTED_ROWS, DEPNLocalizerConfig(threshold_ratio=0.0, vote_share=0.0, max_neurons=3))
    assert (PLANTED_LAYER, PLANTED_NEURON) in found.neurons and len(found.neurons) == 3
    zero_neurons(found)
    for name, tensor in model.state_dict().items():
        if name.endswith("mlp.down_proj.weight"):
            layer = int(name.split(".")[2])
            columns = [neuron for chosen_layer, neuron in found.neurons if chosen_layer == layer]
            assert torch.equal(tensor[:, columns], torch.zeros_like(tensor[:, columns]))
            untouched = [index for index in range(tensor.shape[1]) if index not in columns]
            assert torch.equal(tensor[:, untouched], before[name][:, untouched])  # bit-identical
        else:
            assert torch.equal(tensor, before[name]), name
    assert probability_with(model, 0, None, PLANTED_ROWS[0]["input_ids"])[3, SECRET] < 0.5


def test_the_method_zeroes_the_privacy_neurons_logs_the_effect_and_saves_the_tables() -> None:
    model = planted_model()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = DEPN.__new__(DEPN)  # only what finalize reads: no Trainer machinery
    logged: list[dict] = []
    trainer.method_config = resolve_method("depn", {"batch_size": 4})
    trainer.train_dataset = SimpleNamespace(forget=PLANTED_ROWS, retain=[{"input_ids": [1, 9, 4, 6, 8, 2], "labels": [-100] * 4 + [8, 2]}],
                                            tokenizer=SimpleNamespace(pad_token_id=0))
    trainer.log = logged.append
    trainer.artifacts = {}
    trainer.finalize(model)
    changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
    assert changed == [f"model.layers.{PLANTED_LAYER}.mlp.down_proj.weight"]
    weight = model.model.layers[PLANTED_LAYER].mlp.down_proj.weight
    assert torch.equal(weight[:, PLANTED_NEURON], torch.zeros(32))
    (record,) = logged
    assert record["depn_privacy_neurons"] == 1.0
    assert record["depn_forget_nll_after"] > record["depn_forget_nll_before"] + 1.0
    assert "depn_retain_nll_before" in record and "depn_retain_nll_after" in record
    tables = trainer.artifacts[NEURONS_FILE]
    assert tables["selected"].shape == (2, 64) and float(tables["selected"].sum()) == 1.0
    assert tables["neurons_per_layer"].tolist() == [1.0, 0.0] and tables["share_per_layer"].tolist() == [1 / 64, 0.0]


def test_gpt2_neurons_are_rows_of_the_conv1d_projection() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32)).eval()
    (projection,) = feed_forward_projections(model)
    assert projection.weight_name == "transformer.h.0.mlp.c_proj.weight" and projection.neuron_dim == 0 and projection.width == 64
    found = detect_privacy_neurons(model, [EXAMPLE], DEPNLocalizerConfig(steps=200, interpolation_batch=200, vote_share=0.0, max_neurons=2))
    # Completeness through GPT-2's cache as well.
    with torch.no_grad():
        actual = torch.softmax(model(input_ids=torch.tensor([EXAMPLE["input_ids"]])).logits[0].double(), dim=-1)
    expected = 0.0
    for position, token in answer_targets(EXAMPLE["labels"]):
        def zero(module: nn.Module, args: tuple, position: int = position) -> tuple:
            hidden = args[0].clone()
            hidden[:, position] = 0
            return (hidden,)
        handle = projection.module.register_forward_pre_hook(zero)
        with torch.no_grad():
            zeroed = torch.softmax(model(input_ids=torch.tensor([EXAMPLE["input_ids"]])).logits[0].double(), dim=-1)
        handle.remove()
        expected += float((actual[position, token] - zeroed[position, token]).detach())
    assert float(found.attribution[0, 0].sum()) == pytest.approx(expected, rel=0.02, abs=1e-7)
    before = model.transformer.h[0].mlp.c_proj.weight.detach().clone()
    zero_neurons(found)
    rows = [neuron for _, neuron in found.neurons]
    weight = model.transformer.h[0].mlp.c_proj.weight
    assert torch.equal(weight[rows], torch.zeros(2, 16))
    assert torch.equal(weight[[i for i in range(64) if i not in rows]], before[[i for i in range(64) if i not in rows]])


# --------------------------------------------------------------------------------------------- the registered localizer


def test_the_registered_localizer_returns_columns_of_the_down_projection_and_round_trips(tmp_path: Path) -> None:
    texts = ["Question: Where was Ana born?\nAnswer: In Tovrask.", "Question: What does Ana write?\nAnswer: Poems about rivers."]
    tokenizer = train_tokenizer(texts * 10, 300)
    model = build_tiny_model(TinyModelConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=2), tokenizer, 0)
    spec = LOCALIZERS.get("depn")
    assert "EMNLP 2023" in spec.citation and "DEPN" in spec.citation
    rows = [{"question": "Where was Ana born?", "answer": "In Tovrask."}, {"question": "What does Ana write?", "answer": "Poems."}]
    config = DEPNLocalizerConfig(steps=4, vote_share=0.0, max_neurons=5)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    localization = spec.function(model, tokenizer, rows, PromptFormat("plain"), config)
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())  # the model is unchanged
    selection = localization.selection
    assert set(selection.columns) <= {f"model.layers.{layer}.mlp.down_proj.weight" for layer in (0, 1)}
    assert sum(len(columns) for columns in selection.columns.values()) == 5 == localization.notes["privacy_neurons"]
    assert selection.target_modules == ("mlp.down_proj",) and not selection.rows
    assert localization.scores["attribution"].shape == (2, 48) and localization.scores["votes"].shape == (2, 48)
    assert localization.notes["examples"] == 2 and localization.notes["forward_passes"] > 0
    save_localization(localization, tmp_path / "loc")
    loaded = load_localization(tmp_path / "loc")
    assert loaded.selection == selection and torch.equal(loaded.scores["attribution"], localization.scores["attribution"])
    assert json.loads((tmp_path / "loc" / "localization.json").read_text())["settings"]["steps"] == 4
    with torch.no_grad():  # FFNs that write nothing: every attribution is 0, so no neuron can pass
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.zero_()
    with pytest.raises(UnlearnkitError, match="no privacy neuron"):
        spec.function(model, tokenizer, rows, PromptFormat("plain"), DEPNLocalizerConfig(steps=2, layers="0"))


# --------------------------------------------------------------------------------------------- end to end


def test_unlearn_with_depn_on_the_micro_benchmark_edits_only_down_projection_columns(
    micro_cache: Path, micro_bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "depn"
    assert run_cli(["unlearn", "--method", "depn", "--forget", "forget10", "--set", "vote_share=0.25", "--set", "steps=8",
                    "--output", str(out), *micro(micro_cache)], monkeypatch) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "forget_quality" in summary
    run_log = (out / "log.txt").read_text()
    assert "depn: zeroed" in run_log and "optimiser step" not in run_log  # no warning about steps a non-training method never takes
    log = json.loads((out / "training_log.json").read_text())
    (record,) = [line for line in log if "depn_privacy_neurons" in line]
    assert record["depn_privacy_neurons"] >= 1
    assert record["depn_forget_nll_after"] != record["depn_forget_nll_before"]
    tables = load_file(str(out / "model" / NEURONS_FILE))
    edited = load_file(str(out / "model" / "model.safetensors"))
    target = load_file(str(micro_bench.target_dir / "model.safetensors"))
    selected = tables["selected"].bool()
    assert int(selected.sum()) == record["depn_privacy_neurons"]
    for name, tensor in edited.items():
        if name.endswith("mlp.down_proj.weight"):
            columns = selected[int(name.split(".")[2])]
            assert torch.equal(tensor[:, columns], torch.zeros_like(tensor[:, columns]))
            assert torch.equal(tensor[:, ~columns], target[name][:, ~columns])
        else:
            assert torch.equal(tensor, target[name]), name


# --------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("settings", "message"), [
    ({"steps": 0}, "steps must be >= 1"),
    ({"threshold_ratio": 1.5}, "threshold_ratio must be in"),
    ({"threshold_ratio": -0.1}, "threshold_ratio must be in"),
    ({"vote_share": 2.0}, "vote_share must be in"),
    ({"max_neurons": 0}, "max_neurons must be >= 1"),
    ({"token_paths": "every"}, "token_paths must be one of"),
    ({"interpolation_batch": 0}, "interpolation_batch must be >= 1"),
])
def test_bad_settings_are_refused_by_the_localizer_and_the_method(settings: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        DEPNLocalizerConfig(**settings)
    with pytest.raises(UnlearnkitError, match=message):
        resolve_method("depn", {key: str(value) for key, value in settings.items()})


def test_lora_and_module_choices_are_refused_with_the_fix() -> None:
    assert not METHODS.get("depn").trainer.supports_lora and "EMNLP 2023" in METHODS.get("depn").paper
    with pytest.raises(UnlearnkitError, match="no LoRA form; set lora_rank=0"):
        resolve_method("depn", {"lora_rank": "4"})
    with pytest.raises(UnlearnkitError, match="drop target_modules"):
        resolve_method("depn", {"target_modules": "q_proj"})


def test_a_model_without_a_recognisable_mlp_or_layer_is_refused() -> None:
    model = OneNeuronLM((1.0, 1.0), 1.0)
    model.layers[0].mlp.fc_out = model.layers[0].mlp.down_proj
    del model.layers[0].mlp.down_proj
    with pytest.raises(UnlearnkitError, match=r"no linear layer named mlp\.down_proj"):
        feed_forward_projections(model)
    with pytest.raises(UnlearnkitError, match=r"no linear layer named mlp\.down_proj"):
        resolve_method("depn", {}).check_model(model)
    with pytest.raises(UnlearnkitError, match="layer"):
        resolve_method("depn", {"layers": "5"}).check_model(tiny_llama())
    with pytest.raises(UnlearnkitError, match="no answer token"):
        detect_privacy_neurons(tiny_llama(), [{"input_ids": [1, 2, 3], "labels": [-100, -100, -100]}], DEPNLocalizerConfig())
