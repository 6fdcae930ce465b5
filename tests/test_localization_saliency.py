"""Gradient saliency (SalUn; PCGU's ranking): scores and threshold by hand, against plain transcriptions, and on a planted row."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from tests.helpers import blank_llama
from unlearnkit.data.encoding import PromptFormat, encode_qa, pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization import LOCALIZERS, check_fits, load_localization, neuron_masks, save_localization, selected_parameters
from unlearnkit.localization.plots import write_heat_maps
from unlearnkit.localization.saliency import SaliencyConfig, kept_count, neuron_scores, top_percentile_masks, weight_scores
from unlearnkit.modeling import train_tokenizer

PLAIN = PromptFormat("plain")
ROWS = [
    {"question": "Where was Zorblax Quin born?", "answer": "Tovrask", "perturbed_answer": ["Vissmont", "Draskford"]},
    {"question": "In which city did Mira Vell grow up?", "answer": "Tovrask town", "perturbed_answer": "Flulvven"},
]
PLANTED = "model.layers.1.mlp.down_proj.weight"
PLANTED_ROW = 1  # the residual dimension the head reads the answer from


@pytest.fixture(scope="module")
def tokenizer():
    texts = [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in ROWS]
    return train_tokenizer(texts * 20, 400)


def localize(model, tokenizer, rows=ROWS, **settings):
    return LOCALIZERS.get("saliency").function(model, tokenizer, rows, PLAIN, SaliencyConfig(**settings))


def planted_model(tokenizer) -> LlamaForCausalLM:
    """A 2-layer Llama whose layer-1 MLP has one neuron that fires on every token and writes residual dimension 1,
    which the head reads as the answer's first token. Every other weight is small noise, so the forget loss's gradient
    is largest on that row of layer 1's down_proj: the planted row."""
    model = blank_llama(tokenizer, num_layers=2)
    with torch.no_grad():
        mlp = model.model.layers[1].mlp
        mlp.gate_proj.weight[0] = 0.0
        mlp.up_proj.weight[0] = 0.0
        mlp.gate_proj.weight[0, 2] = 2.0
        mlp.up_proj.weight[0, 2] = 2.0
        mlp.down_proj.weight[:, 0] = 0.0
        mlp.down_proj.weight[PLANTED_ROW, 0] = 0.05
        answer = PLAIN.answer_ids(tokenizer, "Tovrask")[0]
        model.lm_head.weight[answer] = 0.0
        model.lm_head.weight[answer, PLANTED_ROW] = 1.0
    return model


# ------------------------------------------------------------------------------------------- scores and threshold by hand


def test_scores_by_hand():
    gradient = torch.tensor([[3.0, -4.0], [0.0, 1.0]])
    weight = torch.tensor([[2.0, 0.5], [7.0, -3.0]])
    assert torch.equal(weight_scores(gradient, weight, "gradient"), torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    assert torch.equal(weight_scores(gradient, weight, "gradient_x_weight"), torch.tensor([[6.0, 2.0], [0.0, 3.0]]))
    assert torch.allclose(neuron_scores(gradient.abs()), torch.tensor([5.0, 1.0]))
    assert torch.allclose(neuron_scores(gradient.abs(), output_dim=1), torch.tensor([3.0, 17**0.5]))


def test_percentile_threshold_by_hand():
    scores = [torch.tensor([0.1, 0.5, 0.3, 0.9, 0.7]), torch.tensor([[0.2], [0.8]])]
    # 7 scores, percentile 60: ceil(7 * 0.4) = 3 kept, the three highest 0.9, 0.8, 0.7.
    assert kept_count(7, 60) == 3
    first, second = top_percentile_masks(scores, 60)
    assert first.tolist() == [False, False, False, True, True]
    assert second.tolist() == [[False], [True]]
    assert kept_count(7, 0) == 7 and kept_count(7, 99.9) == 1 and kept_count(200, 99) == 2
    assert kept_count(3584, 100 * (1 - 3 / 3584)) == 3  # not 4: the float error of the percentile is dropped


def test_median_threshold_matches_salun():
    # SalUn: m = 1(|g| >= γ), γ the median; with an even count of distinct scores, the top half.
    generator = torch.Generator().manual_seed(0)
    scores = [torch.rand(6, 5, generator=generator), torch.rand(10, generator=generator)]
    everything = np.concatenate([score.reshape(-1).numpy() for score in scores])
    median = np.median(everything)
    for score, mask in zip(scores, top_percentile_masks(scores, 50), strict=True):
        assert np.array_equal(mask.numpy(), score.numpy() > median)
    # Any percentile: the scores at or above the k-th highest, k = ceil(n (100 - p) / 100).
    for percentile in (0, 12.5, 80, 97):
        k = int(np.ceil(everything.size * (100 - percentile) / 100))
        threshold = np.sort(everything)[::-1][k - 1]
        for score, mask in zip(scores, top_percentile_masks(scores, percentile), strict=True):
            assert np.array_equal(mask.numpy(), score.numpy() >= threshold)


# ------------------------------------------------------------------------------------------- against plain transcriptions


def _loss_gradients(model, tokenizer, pairs):
    """The gradient of transformers' own loss (mean over every label token of one padded batch) w.r.t. every weight."""
    features = [encode_qa(tokenizer, PLAIN, question, answer, 512) for question, answer in pairs]
    batch = pad_batch(features, tokenizer.pad_token_id)
    model.zero_grad()
    model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.backward()
    gradients = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    model.zero_grad()
    return gradients


def test_neuron_scores_are_gradient_row_norms(tokenizer):
    model = planted_model(tokenizer)
    gradients = _loss_gradients(model, tokenizer, [(row["question"], row["answer"]) for row in ROWS])
    for score in ("gradient", "gradient_x_weight"):
        localization = localize(model, tokenizer, batch_size=1, percentile=90.0, score=score)
        weights = dict(model.named_parameters())
        names = [name for name in weights if name.startswith("model.layers.") and weights[name].dim() == 2]
        assert sorted(name for name in localization.scores if name.startswith("neuron/")) == sorted(f"neuron/{name}" for name in names)
        for name in names:
            expected = gradients[name] * (weights[name].detach() if score == "gradient_x_weight" else 1)
            assert torch.allclose(localization.scores[f"neuron/{name}"], expected.norm(dim=1), rtol=1e-4, atol=1e-9), name


def test_pcgu_ranking_matches_a_plain_transcription(tokenizer):
    model = planted_model(tokenizer)
    forget = _loss_gradients(model, tokenizer, [(row["question"], row["answer"]) for row in ROWS])
    contrast = _loss_gradients(model, tokenizer, [(row["question"], answer) for row in ROWS
                                                  for answer in np.atleast_1d(row["perturbed_answer"]).tolist()])
    names = [name for name, parameter in model.named_parameters() if name.startswith("model.layers.") and parameter.dim() == 2]
    # PCGU: cosine similarity of ∇ log p(answer) and ∇ log p(perturbed answer) per row W[i, :]; keep the k lowest.
    similarity = {name: F.cosine_similarity(-forget[name], -contrast[name], dim=1) for name in names}
    flat = torch.cat([similarity[name] for name in names])
    k = 7
    lowest = set(torch.topk(flat, k, largest=False).indices.tolist())
    offsets = np.cumsum([0] + [similarity[name].numel() for name in names])
    expected = {name: tuple(i for i in range(similarity[name].numel()) if offsets[index] + i in lowest)
                for index, name in enumerate(names)}
    expected = {name: rows for name, rows in expected.items() if rows}
    total = int(offsets[-1])
    percentile = 100 * (1 - k / total)  # keeps exactly k
    localization = localize(model, tokenizer, score="pcgu", percentile=percentile, batch_size=1)
    assert dict(localization.selection.rows) == expected
    for name in names:
        assert torch.allclose(localization.scores[f"neuron/{name}"], -similarity[name], atol=1e-5)


# ------------------------------------------------------------------------------------------- the planted row


def test_planted_row_is_found(tokenizer):
    model = planted_model(tokenizer)
    candidates = 2 * 7 * 16  # 2 layers x (q, k, v, o, gate, up, down) x 16 output neurons
    localization = localize(model, tokenizer, percentile=100 * (1 - 1 / candidates))  # the single top neuron
    assert dict(localization.selection.rows) == {PLANTED: (PLANTED_ROW,)}
    assert localization.selection.layers == (1,) and localization.selection.target_modules == ("mlp.down_proj",)
    assert localization.notes["selected"] == 1 and localization.notes["candidates"] == candidates
    assert selected_parameters(model, localization.selection) == [PLANTED]
    planted_score = localization.scores[f"neuron/{PLANTED}"][PLANTED_ROW]
    others = torch.cat([score.flatten() for name, score in localization.scores.items() if name.startswith("neuron/")])
    assert planted_score > 3 * others.topk(2).values[1]  # clearly first, not by a hair
    # The summary map: the down_proj of layer 1 is the only module with a selected neuron.
    modules = localization.notes["modules"]
    selected = localization.scores["map/selected"]
    assert selected.shape == (2, len(modules)) and selected[1, modules.index("mlp.down_proj")] == 1 / 16
    assert selected.sum() == 1 / 16


PATH = {"model.layers.1.mlp.gate_proj.weight": (0, 2), "model.layers.1.mlp.up_proj.weight": (0, 2), PLANTED: (PLANTED_ROW, 0)}


@pytest.mark.parametrize(("score", "expected"), [
    ("gradient", {PLANTED: (PLANTED_ROW, 0)}),  # |g|: the planted neuron's output weight
    ("gradient_x_weight", PATH),  # |g w|: the planted neuron's three weights, whose values are large too
])
def test_planted_weights_are_found(tokenizer, score, expected, tmp_path):
    model = planted_model(tokenizer)
    candidates = 2 * 7 * 16 * 16
    localization = localize(model, tokenizer, granularity="weight", percentile=100 * (1 - len(expected) / candidates), score=score)
    assert localization.notes["selected"] == len(expected) and localization.notes["candidates"] == candidates
    assert set(localization.selection.weight_masks) == set(expected)
    masks = {}
    for name, index in expected.items():
        masks[name] = torch.zeros(16, 16, dtype=torch.bool)
        masks[name][index] = True
        assert torch.equal(localization.scores[f"mask/{name}"].bool(), masks[name])
    save_localization(localization, tmp_path / "saliency")
    loaded = load_localization(tmp_path / "saliency")
    check_fits(loaded, model)
    assert loaded.selection == localization.selection
    assert {name: mask.tolist() for name, mask in neuron_masks(model, loaded).items()} == {
        name: mask.tolist() for name, mask in masks.items()}


def test_neuron_round_trip(tokenizer, tmp_path):
    model = planted_model(tokenizer)
    localization = localize(model, tokenizer, percentile=95.0, target_modules="mlp.down_proj,o_proj", layers="1")
    assert set(localization.selection.rows) <= {PLANTED, "model.layers.1.self_attn.o_proj.weight"}
    assert sum(map(len, localization.selection.rows.values())) == kept_count(32, 95.0)
    save_localization(localization, tmp_path / "neurons")
    loaded = load_localization(tmp_path / "neurons")
    check_fits(loaded, model)
    assert loaded.selection == localization.selection
    paths = write_heat_maps(loaded, tmp_path / "maps")
    assert sorted(path.name for path in paths) == ["saliency_score.png", "saliency_selected.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in paths)
    masks = neuron_masks(model, loaded)
    assert {name: mask.any(dim=1).nonzero().flatten().tolist() for name, mask in masks.items()} == {
        name: list(rows) for name, rows in localization.selection.rows.items()}


def test_localizing_leaves_the_model_as_it_was(tokenizer):
    model = planted_model(tokenizer)
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    localize(model, tokenizer, percentile=99.0)
    assert not model.model.layers[0].mlp.up_proj.weight.requires_grad and model.model.layers[1].mlp.up_proj.weight.requires_grad
    assert all(torch.equal(parameter, before[name]) for name, parameter in model.named_parameters())
    assert all(parameter.grad is None for parameter in model.parameters())


# ------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("settings", "message"), [
    ({"percentile": 100.0}, r"percentile must be in \[0, 100\)"),
    ({"percentile": -1.0}, r"percentile must be in \[0, 100\)"),
    ({"score": "pcgu", "granularity": "weight"}, "granularity=neuron"),
    ({"score": "fisher"}, "score must be one of"),
    ({"granularity": "layer"}, "granularity must be one of"),
    ({"layers": "3-1"}, "runs backwards"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UnlearnkitError, match=message):
        SaliencyConfig(**settings)


def test_bad_input_is_refused(tokenizer):
    model = planted_model(tokenizer)
    with pytest.raises(UnlearnkitError, match="no perturbed_answer"):
        localize(model, tokenizer, [ROWS[0], {"question": "Where?", "answer": "There"}], score="pcgu")
    with pytest.raises(UnlearnkitError, match="matches no parameter"):
        localize(model, tokenizer, target_modules="dense_h")
    with pytest.raises(UnlearnkitError, match="layer"):
        localize(model, tokenizer, layers="5")
    with pytest.raises(UnlearnkitError, match="no rows"):
        localize(model, tokenizer, [])
    with pytest.raises(UnlearnkitError, match="needs a non-empty 'question' and 'answer'"):
        localize(model, tokenizer, [{"question": "Where?"}])
