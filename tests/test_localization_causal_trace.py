"""Causal tracing (ROME): its scores by hand, against a plain transcription of the paper's procedure, and on a planted fact."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from tests.helpers import blank_llama
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization import LOCALIZERS, check_fits, load_localization, save_localization, selected_parameters
from unlearnkit.localization.causal_trace import (
    TOKEN_CATEGORIES,
    CausalTraceConfig,
    answer_probability,
    average_by_category,
    category_sums,
    encode_rows,
    find_sites,
    indirect_effect,
    noise_std,
    row_noise,
    trace_row,
    window_layers,
)
from unlearnkit.localization.plots import write_heat_maps
from unlearnkit.localization.subjects import subject_token_span
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, train_tokenizer

PLAIN = PromptFormat("plain")
ROWS = [
    {"question": "Where was Zorblax Quin born?", "answer": "Tovrask", "subject": "Zorblax Quin"},
    {"question": "In which city did Mira Vell grow up?", "answer": "Tovrask", "subject": "Mira Vell"},
]
PLANTED_LAYER = 1


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in ROWS]
    return train_tokenizer(texts * 20, 400)


def localize(model, tokenizer, rows, **settings):
    return LOCALIZERS.get("causal_trace").function(model, tokenizer, rows, PLAIN, CausalTraceConfig(**settings))


# ------------------------------------------------------------------------------------------- scores by hand


def test_window_layers_follow_rome():
    # ROME: range(max(0, l - w // 2), min(L, l - (-w // 2))).
    assert list(window_layers(5, 10, 12)) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert list(window_layers(10, 10, 12)) == [5, 6, 7, 8, 9, 10, 11]
    assert list(window_layers(3, 3, 12)) == [2, 3, 4]
    assert list(window_layers(3, 1, 12)) == [3]
    for layer in range(12):
        for window in range(1, 12):
            assert list(window_layers(layer, window, 12)) == list(range(max(0, layer - window // 2), min(12, layer - (-window // 2))))


def test_indirect_effect_by_hand():
    restored = torch.tensor([[0.5, 0.3], [0.1, 0.1]])  # (R=2, S=2)
    corrupted = torch.tensor([0.2, 0.0])
    # mean restored 0.4 and 0.1, mean corrupted 0.1.
    assert torch.allclose(indirect_effect(restored, corrupted), torch.tensor([0.3, 0.0]))


def test_answer_probability_by_hand():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))  # (B=1, n=2, V=3)
    assert answer_probability(logits, torch.tensor([0, 2])).item() == pytest.approx((0.5 + 0.8) / 2)
    assert answer_probability(logits[:, :1], torch.tensor([1])).item() == pytest.approx(0.25)


def test_noise_std_is_the_entries_std_times_scale():
    embeddings = torch.tensor([[1.0, 3.0], [5.0, 7.0]])
    # Entries 1, 3, 5, 7: mean 4, unbiased variance (9 + 1 + 1 + 9) / 3.
    assert noise_std(embeddings, 3.0) == pytest.approx(3 * math.sqrt(20 / 3))


def test_token_categories_by_hand():
    effects = torch.arange(8.0).unsqueeze(1) * torch.tensor([[1.0, 10.0]])  # (T=8, L=2): token t has t, 10 t
    sums, counts = category_sums(effects, (1, 4))  # subject tokens 1, 2, 3; then 4, 5, 6; last 7
    assert counts.tolist() == [1, 1, 1, 1, 2, 1]
    assert sums[:, 0].tolist() == [1, 2, 3, 4, 5 + 6, 7]
    # A one-token subject just before the last token: first = last subject token, no middle, no further token.
    sums, counts = category_sums(effects[:4], (2, 3))
    assert counts.tolist() == [1, 0, 1, 1, 0, 1]
    assert sums[:, 1].tolist() == [20, 0, 20, 30, 0, 30]


def test_average_by_category_pools_tokens_as_rome():
    first = torch.arange(8.0).unsqueeze(1)  # further tokens 5, 6
    second = 100 + torch.arange(6.0).unsqueeze(1)  # subject (1, 2): further tokens 103, 104
    means, counts = average_by_category([first, second], [(1, 4), (1, 2)])
    assert counts.tolist() == [2, 1, 2, 2, 4, 2]
    assert means[:, 0].tolist() == pytest.approx([(1 + 101) / 2, 2, (3 + 101) / 2, (4 + 102) / 2, (5 + 6 + 103 + 104) / 4,
                                                  (7 + 105) / 2])
    means, _ = average_by_category([second], [(1, 2)])
    assert math.isnan(means[1, 0].item())  # no middle subject token: no value, not 0


# ------------------------------------------------------------------------------------------- against ROME's procedure, run by run


def _plain_trace(model, row, noise, kind, token, layer, window):
    """ROME's trace_with_patch transcribed: one corrupted run per noise sample over the whole prompt, hooks on the named modules."""
    blocks = model.model.layers
    modules = {"hidden": lambda index: blocks[index], "mlp": lambda index: blocks[index].mlp,
               "attn": lambda index: blocks[index].self_attn}[kind]
    ids = torch.tensor([row.input_ids])
    target = row.target_ids[0]
    restored_layers = [layer] if kind == "hidden" else [m for m in range(len(blocks)) if layer - window // 2 <= m < layer - (-window // 2)]
    clean_states = {}

    def first(output):
        return output[0] if isinstance(output, tuple) else output

    def recorder(index):
        def hook(module, inputs, output):
            clean_states[index] = first(output)[0, token].clone()
        return hook

    handles = [modules(index).register_forward_hook(recorder(index)) for index in restored_layers]
    with torch.no_grad():
        model(ids)
    for handle in handles:
        handle.remove()

    def probability(sample, restore):
        def corrupt(module, inputs, output):
            output = output.clone()
            output[0, row.span[0]:row.span[1]] += noise[sample]
            return output

        def patch(index):
            def hook(module, inputs, output):
                states = first(output).clone()
                states[0, token] = clean_states[index]
                return (states, *output[1:]) if isinstance(output, tuple) else states
            return hook

        handles = [model.model.embed_tokens.register_forward_hook(corrupt)]
        if restore:
            handles += [modules(index).register_forward_hook(patch(index)) for index in restored_layers]
        with torch.no_grad():
            logits = model(ids).logits[0, -1]
        for handle in handles:
            handle.remove()
        return torch.softmax(logits, dim=-1)[target].item()

    samples = range(noise.shape[0])
    return sum(probability(s, True) for s in samples) / len(samples) - sum(probability(s, False) for s in samples) / len(samples)


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_batched_trace_equals_rome_run_by_run(tokenizer, reuse_prefix):
    model = build_tiny_model(TinyModelConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2),
                             tokenizer, seed=0).eval()
    config = CausalTraceConfig(samples=3, window=2, noise_scale=3.0)
    row = encode_rows(tokenizer, ROWS[:1], PLAIN, config)[0]
    assert row.span[1] - row.span[0] >= 2  # a restoration inside the subject has noise left after it
    noise = row_noise(config, row.span[1] - row.span[0], 32, std=1.5)
    trace = trace_row(model, find_sites(model), row, noise, ("hidden", "mlp", "attn"), window=2, batch_size=5,
                      reuse_prefix=reuse_prefix)
    checked = [(kind, token, layer) for kind in ("hidden", "mlp", "attn") for token in (row.span[0] + 1, row.prompt_length - 1)
               for layer in (0, 2)]
    for kind, token, layer in checked:
        expected = _plain_trace(model, row, noise, kind, token, layer, window=2)
        assert trace.effects[kind][token, layer].item() == pytest.approx(expected, abs=1e-6), (kind, token, layer)
    # Tokens before the subject are never corrupted: restoring them changes nothing.
    assert _plain_trace(model, row, noise, "hidden", row.span[0] - 1, 1, window=2) == pytest.approx(0, abs=1e-7)
    assert torch.all(trace.effects["hidden"][: row.span[0]] == 0)
    assert any(abs(trace.effects[kind][token, layer].item()) > 1e-5 for kind, token, layer in checked)  # not all zero


def test_restorations_run_only_from_the_first_layer_they_change(tokenizer, monkeypatch):
    """The layer-skipping path equals the whole-model reruns (checked run by run above) and computes fewer layer-tokens."""
    from unlearnkit.localization import causal_trace

    model = build_tiny_model(TinyModelConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=5, num_heads=2),
                             tokenizer, seed=1).eval()
    config = CausalTraceConfig(samples=3, window=3)
    row = encode_rows(tokenizer, ROWS[1:], PLAIN, config)[0]
    noise = row_noise(config, row.span[1] - row.span[0], 32, std=1.5)
    computed: dict[int, int] = {}  # layer -> token states it computed
    for index, block in enumerate(model.model.layers):
        block.register_forward_pre_hook(lambda module, args, index=index: computed.__setitem__(
            index, computed.get(index, 0) + args[0].shape[0] * args[0].shape[1]))

    def run():
        computed.clear()
        trace = trace_row(model, find_sites(model), row, noise, ("hidden", "mlp", "attn"), window=3, batch_size=7)
        return trace, dict(computed)

    skipping, skipping_work = run()
    monkeypatch.setattr(causal_trace, "supports_layer_skipping", lambda model: False)
    whole, whole_work = run()
    for kind in ("hidden", "mlp", "attn"):
        assert torch.allclose(skipping.effects[kind], whole.effects[kind], atol=1e-6), kind
        assert skipping.effects[kind].abs().max() > 1e-5
    assert skipping_work[4] == whole_work[4]  # the top layer runs for every restoration
    assert skipping_work[0] < whole_work[0] / 2 and sum(skipping_work.values()) < 0.8 * sum(whole_work.values())


# ------------------------------------------------------------------------------------------- a planted fact


def planted_model(tokenizer) -> LlamaForCausalLM:
    """A 3-layer Llama where only layer 1's MLP writes the fact, and only from the subject's tokens.

    Residual dimensions: 0 marks the subject's tokens, 1 carries the fact, 2 is 1 on every token. Layer 1's MLP
    has one neuron, silu(2 x0) * 2 x0, that writes the fact at the subject's tokens; layer 2's attention (queries 0,
    so uniform) copies dimension 1 to every later token; the head reads dimension 1 as the answer's first token.
    Every other weight is small noise, so no other layer can produce the answer.
    """
    model = blank_llama(tokenizer, num_layers=3)
    embedding = model.model.embed_tokens.weight
    with torch.no_grad():
        for row in ROWS:
            text = f"Question: {row['question']}\nAnswer:"
            start, end = subject_token_span(tokenizer, text, row["subject"])
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            embedding[ids[start + 1:end + 1], 0] = 4.0  # +1: the BOS the plain format adds
        mlp = model.model.layers[PLANTED_LAYER].mlp
        mlp.gate_proj.weight.zero_()
        mlp.up_proj.weight.zero_()
        mlp.gate_proj.weight[0, 0] = 2.0
        mlp.up_proj.weight[0, 0] = 2.0
        mlp.down_proj.weight[:, 0] = 0.0
        mlp.down_proj.weight[1, 0] = 0.2
        attention = model.model.layers[2].self_attn
        attention.q_proj.weight.zero_()
        attention.v_proj.weight[0] = 0.0
        attention.v_proj.weight[0, 1] = 1.0
        attention.o_proj.weight[1] = 0.0
        attention.o_proj.weight[1, 0] = 10.0
        answer = PLAIN.answer_ids(tokenizer, "Tovrask")[0]
        model.lm_head.weight[answer] = 0.0
        model.lm_head.weight[answer, 1] = 3.0
    return model


def test_planted_fact_is_found_in_its_layer(tokenizer, tmp_path):
    model = planted_model(tokenizer)
    prompts = [f"Question: {row['question']}\nAnswer:" for row in ROWS]
    subject_ids = set()
    for row, prompt in zip(ROWS, prompts, strict=True):
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        start, end = subject_token_span(tokenizer, prompt, row["subject"])
        subject_ids.update(ids[start + 1:end + 1])
        outside = ids[:start + 1] + ids[end + 1:]
        assert not subject_ids & set(outside), "a subject token occurs outside its subject: the plant would fire there too"
    localization = localize(model, tokenizer, ROWS, window=1, samples=10)
    scores = localization.scores
    assert localization.selection.layers == (PLANTED_LAYER,)
    assert localization.selection.target_modules == ("mlp.down_proj",)
    p_clean, p_corrupted = scores["p_clean"], scores["p_corrupted"]
    assert torch.all(p_clean > 0.5) and torch.all(p_corrupted < p_clean - 0.2)
    last_subject, last = TOKEN_CATEGORIES.index("last subject token"), TOKEN_CATEGORIES.index("last token")
    mlp, hidden, attention = scores["ie/mlp"], scores["ie/hidden"], scores["ie/attn"]
    assert mlp[last_subject, PLANTED_LAYER] > 0.1
    assert mlp[last_subject].abs().topk(2).values[1] < 0.02  # the other layers' MLPs carry nothing
    assert mlp[last].abs().max() < 0.02  # nor does the planted MLP at the last token, where the subject is not
    # ROME's picture: the subject's hidden state matters until the fact is copied (layer 2), the last token's after.
    assert hidden[last_subject, :2].min() > 0.1 and hidden[last_subject, 2].abs() < 0.02
    assert hidden[last, 2] > 0.3 and hidden[last, :2].abs().max() < 0.02
    assert attention[last, 2] > 0.3 and attention[last, :2].abs().max() < 0.02
    assert torch.equal(scores["layer_scores"], mlp[last_subject])
    paths = write_heat_maps(localization, tmp_path)
    assert sorted(path.name for path in paths) == ["causal_trace_attn.png", "causal_trace_hidden.png", "causal_trace_mlp.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 5000 for path in paths)
    assert scores["row/1/ie/mlp"].shape == (localization.notes["rows"][1]["prompt_length"], 3)


def test_last_subject_token_only_is_the_same_trace(tokenizer):
    model = planted_model(tokenizer)
    full = localize(model, tokenizer, ROWS, window=1, samples=3, kinds="mlp")
    last_only = localize(model, tokenizer, ROWS, window=1, samples=3, kinds="mlp", tokens="subject_last")
    last_subject = TOKEN_CATEGORIES.index("last subject token")
    assert torch.allclose(last_only.scores["ie/mlp"][last_subject], full.scores["ie/mlp"][last_subject], atol=1e-6)
    assert last_only.selection == full.selection
    assert last_only.scores["category_counts"].tolist() == [0, 0, 2, 0, 0, 0]
    row = last_only.scores["row/0/ie/mlp"]
    start, end = last_only.notes["rows"][0]["subject_span"]
    assert torch.all(row[:start] == 0) and torch.all(row[start:end - 1].isnan()) and torch.all(row[end:].isnan())
    assert torch.allclose(row[end - 1], full.scores["row/0/ie/mlp"][end - 1], atol=1e-6)


def test_round_trip_and_selected_weights(tokenizer, tmp_path):
    model = planted_model(tokenizer)
    localization = localize(model, tokenizer, ROWS, window=1, samples=2, kinds="mlp", select_modules="mlp")
    save_localization(localization, tmp_path / "trace")
    loaded = load_localization(tmp_path / "trace")
    assert loaded.selection == localization.selection
    assert loaded.localizer == "causal_trace" and loaded.settings["kinds"] == "mlp"
    assert set(loaded.scores) == set(localization.scores)
    for name, tensor in localization.scores.items():
        assert torch.allclose(loaded.scores[name], tensor, equal_nan=True)
    check_fits(loaded, model)
    paths = write_heat_maps(loaded, tmp_path / "maps")
    assert [path.name for path in paths] == ["causal_trace_mlp.png"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    assert selected_parameters(model, loaded.selection) == [
        f"model.layers.{PLANTED_LAYER}.mlp.{name}.weight" for name in ("gate_proj", "up_proj", "down_proj")]


# ------------------------------------------------------------------------------------------- bad input


def test_bad_rows_are_refused(tokenizer):
    model = planted_model(tokenizer)
    with pytest.raises(UnlearnkitError, match="names no subject"):
        localize(model, tokenizer, [{"question": "Where was Zorblax Quin born?", "answer": "Tovrask"}])
    with pytest.raises(UnlearnkitError, match="does not occur in its question"):
        localize(model, tokenizer, [{**ROWS[0], "subject": "Mira Vell"}])
    with pytest.raises(UnlearnkitError, match="'entity' field"):
        localize(model, tokenizer, ROWS, subject_field="entity")
    with pytest.raises(UnlearnkitError, match="no rows"):
        localize(model, tokenizer, [])
    with pytest.raises(UnlearnkitError, match="top_layers=4"):
        localize(model, tokenizer, ROWS, top_layers=4)


@pytest.mark.parametrize(("settings", "message"), [
    ({"kinds": "hidden,attn"}, "lacks mlp"),
    ({"kinds": "mlp,residual"}, "kinds must be one of"),
    ({"samples": 0}, "samples must be >= 1"),
    ({"noise_scale": -1.0}, "noise_scale must be > 0"),
    ({"target": "first"}, "target must be one of"),
    ({"window": 0}, "window must be >= 1"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UnlearnkitError, match=message):
        CausalTraceConfig(**settings)
