"""ROME-style deletion: the rank-one update, the key statistics and their cache, the objectives, the method end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.helpers import micro, run_cli
from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat
from unlearnkit.editing import objectives
from unlearnkit.editing.rank_one import (
    EditSettings,
    apply_edit,
    average_key,
    context_prefixes,
    key_direction,
    optimise_value,
    rank_one_update,
)
from unlearnkit.editing.sites import output_projection, recorded_keys, weight_matrix
from unlearnkit.editing.statistics import compute_second_moment, layer_second_moment
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods import METHODS
from unlearnkit.methods.rome_delete import RomeDeleteConfig, edit_request
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, train_tokenizer
from unlearnkit.settings import build_config

FMT = PromptFormat("plain")
FACTS = [("Zorblat Quenn", "Vextor"), ("Mirela Tosk", "Parlund"), ("Huvo Jarsk", "Quellin"), ("Ostra Benn", "Darvik")]
ROWS = [{"question": f"Where was {subject} born?", "answer": f"{subject} was born in {value}.", "subject": subject, "value": value,
         "perturbed_answer": [f"{subject} was born in Sunhold."]} for subject, value in FACTS]
GENERAL = ["The weather was mild and the river ran slowly past the old mill.", "People often walk in the park when the sun is out.",
           "A small garden can feed a family with herbs and greens.", "Trains leave the station every hour in the morning.",
           "I don't know."]


# --------------------------------------------------------------------------------------------- closed-form update


def test_rank_one_update_by_hand_2x2() -> None:
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    key = torch.tensor([1.0, 0.0], dtype=torch.float64)
    value = torch.tensor([5.0, 6.0], dtype=torch.float64)
    direction = torch.tensor([2.0, 0.0], dtype=torch.float64)
    # W k = (1, 3); residual (4, 3); outer with (2, 0) over direction.k = 2: [[4, 0], [3, 0]].
    expected = torch.tensor([[5.0, 2.0], [6.0, 4.0]], dtype=torch.float64)
    assert torch.equal(rank_one_update(weight, key, value, direction), expected)


def test_rank_one_update_3x3_maps_key_to_value_and_keeps_c_orthogonal_keys() -> None:
    weight = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [3.0, 1.0, 0.0]], dtype=torch.float64)
    second_moment = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 4.0]], dtype=torch.float64)
    k_star = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    value = torch.tensor([0.0, 2.0, -1.0], dtype=torch.float64)
    direction = key_direction(second_moment, k_star)
    assert torch.allclose(direction, torch.tensor([0.5, 1.0, 0.25], dtype=torch.float64))  # C^-1 k* by hand
    updated = rank_one_update(weight, k_star, value, direction)
    assert torch.allclose(updated @ k_star, value, atol=1e-12)
    # x with (C^-1 k*)^T x = 0.5*2 + 1*(-1) + 0.25*0 = 0: orthogonal to k* under C^-1, so W' x = W x.
    orthogonal = torch.tensor([2.0, -1.0, 0.0], dtype=torch.float64)
    assert torch.allclose(updated @ orthogonal, weight @ orthogonal, atol=1e-12)
    # A key that is not orthogonal does change: the test could fail.
    assert not torch.allclose(updated @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), weight[:, 0])


def test_singular_statistics_ask_for_more_text_or_damping() -> None:
    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(UnlearnkitError, match="stats_damping"):
        key_direction(singular, torch.tensor([1.0, 0.0]))
    assert torch.isfinite(key_direction(singular, torch.tensor([1.0, 0.0]), damping=0.1)).all()


# --------------------------------------------------------------------------------------------- objectives


def test_target_nll_by_hand() -> None:
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]], dtype=torch.float64)  # (1, 2, 2)
    labels = torch.tensor([[1, 0]])
    # p(1 | pos 0) = 3/4, p(0 | pos 1) = 1/2: mean NLL = (log(4/3) + log 2) / 2.
    expected = (math.log(4 / 3) + math.log(2)) / 2
    assert objectives.target_nll(logits, labels).item() == pytest.approx(expected, abs=1e-6)
    assert objectives.answer_probability(logits, labels).item() == pytest.approx(math.exp(-expected), abs=1e-6)
    ignored = torch.tensor([[1, IGNORE_INDEX]])
    assert objectives.target_nll(logits, ignored).item() == pytest.approx(math.log(4 / 3), abs=1e-6)


def test_negative_lens_entropy_by_hand() -> None:
    probs = torch.tensor([[[0.5, 0.5, 0.0]], [[0.25, 0.25, 0.5]]], dtype=torch.float64)  # (L=2, B=1, V=3)
    # H = log 2 and 1.5 log 2: the objective is minus their mean.
    assert objectives.negative_lens_entropy(probs).item() == pytest.approx(-1.25 * math.log(2), abs=1e-12)


def reference_head_projection(probs: list[list[list[float]]], targets: list[int], k: int) -> float:
    """Patil et al.'s margin terms transcribed: per (layer, prompt) hinge on the k-th top and k-th bottom probability."""
    tops, bottoms = [], []
    for layer in probs:
        for row, target in zip(layer, targets, strict=True):
            ordered = sorted(row)
            tops.append(max(0.0, row[target] - ordered[-k]))
            bottoms.append(max(0.0, ordered[k - 1] - row[target]))
    return sum(tops) / len(tops) + sum(bottoms) / len(bottoms)


def test_head_projection_margin_by_hand_and_against_the_formula() -> None:
    probs = [[[0.6, 0.2, 0.1, 0.1]], [[0.05, 0.05, 0.3, 0.6]]]  # (L=2, B=1, V=4), target token 0, k = 1
    # Layer 0: the answer is the top token, 0.6 - 0.6 = 0: no hinge. Layer 1: it is (tied) bottom, 0.05 - 0.05 = 0.
    assert objectives.head_projection_margin(torch.tensor(probs), torch.tensor([0]), 1).item() == pytest.approx(0.0)
    # k = 2: layer 0 top hinge 0.6 - 0.2 = 0.4; layer 1 bottom hinge 0.05 - 0.05 = 0; means over 2 readings: 0.2 + 0.
    assert objectives.head_projection_margin(torch.tensor(probs), torch.tensor([0]), 2).item() == pytest.approx(0.2)
    generator = torch.Generator().manual_seed(0)
    random = torch.softmax(torch.randn(3, 2, 7, generator=generator, dtype=torch.float64), dim=-1)
    targets = [1, 4]
    for k in (1, 2, 3):
        ours = objectives.head_projection_margin(random, torch.tensor(targets), k).item()
        assert ours == pytest.approx(reference_head_projection(random.tolist(), targets, k), abs=1e-12)


def test_essence_kl_and_norm_penalty_by_hand() -> None:
    initial = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    current = torch.log(torch.tensor([[0.75, 0.25]], dtype=torch.float64))
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # KL(current || initial)
    assert objectives.essence_kl(initial, current).item() == pytest.approx(expected, abs=1e-12)
    # ROME's code: kl_div(init, current, log_target=True, reduction="batchmean") is the same number.
    rome = torch.nn.functional.kl_div(initial, current, log_target=True, reduction="batchmean").item()
    assert objectives.essence_kl(initial, current).item() == pytest.approx(rome, abs=1e-12)
    delta, initial_value = torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0])
    assert objectives.norm_penalty(delta, initial_value).item() == pytest.approx(5.0 / 4.0)
    objectives.clamp_norm(delta, 2.5)
    assert torch.allclose(delta, torch.tensor([1.5, 2.0]))


# --------------------------------------------------------------------------------------------- tiny model


@pytest.fixture(scope="module")
def taught() -> tuple:
    """A 2-layer tiny Llama taught the four facts (answer NLL < 0.05 after 120 full-batch steps; about 3 s on one core)."""
    texts = [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in ROWS] + GENERAL
    tokenizer = train_tokenizer(texts * 3, 400)
    model = build_tiny_model(TinyModelConfig(vocab_size=400, hidden_size=48, intermediate_size=96, num_layers=2, num_heads=4,
                                             max_length=64), tokenizer, seed=0)
    pairs = [FMT.qa_ids(tokenizer, row["question"], row["answer"]) for row in ROWS]
    width = max(len(p) + len(a) for p, a in pairs)
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    labels, mask = torch.full_like(ids, IGNORE_INDEX), torch.zeros_like(ids)
    for row, (prompt, answer) in enumerate(pairs):
        ids[row, :len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        labels[row, len(prompt):len(prompt) + len(answer)] = torch.tensor(answer)
        mask[row, :len(prompt) + len(answer)] = 1
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(120):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss.detach()) < 0.05
    return model.eval(), tokenizer


def test_output_projection_found_in_llama_and_gpt2(taught: tuple) -> None:
    model, _ = taught
    assert output_projection(model, 1).name == "model.layers.1.mlp.down_proj"
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=32))
    site = output_projection(gpt2, 0)
    assert site.name == "transformer.h.0.mlp.c_proj"
    assert (site.key_size, site.value_size) == (64, 16)
    assert weight_matrix(site.module).shape == (16, 64)  # Conv1D stores (in, out); the edit speaks of (out, in)


def test_second_moment_against_a_direct_computation(taught: tuple) -> None:
    model, tokenizer = taught
    site = output_projection(model, 0)
    matrix, tokens = compute_second_moment(model, tokenizer, site, GENERAL, max_length=64)
    keys = []
    for passage in GENERAL:
        with recorded_keys(site.module) as seen, torch.no_grad():
            model(input_ids=torch.tensor([tokenizer(passage)["input_ids"]]))
        keys.append(seen[0][0])
    stacked = torch.cat(keys).double()  # (N, in)
    assert tokens == stacked.shape[0]
    assert torch.allclose(matrix.double(), stacked.T @ stacked / stacked.shape[0], atol=1e-5)


def test_statistics_cache_reused_and_damaged_file_recomputed(taught: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = taught
    site = output_projection(model, 0)
    first = layer_second_moment(model, tokenizer, site, GENERAL, 64, cache=tmp_path)
    assert not first.from_cache
    files = list((tmp_path / "editing-stats").glob("*.safetensors"))
    assert len(files) == 1

    def no_computation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached statistics should have been used")

    with monkeypatch.context() as patch:
        patch.setattr("unlearnkit.editing.statistics.compute_second_moment", no_computation)
        second = layer_second_moment(model, tokenizer, site, GENERAL, 64, cache=tmp_path)
    assert second.from_cache and torch.equal(second.matrix, first.matrix)
    # Another text is another statistic: a new file, not the cached one.
    assert not layer_second_moment(model, tokenizer, site, GENERAL[:2], 64, cache=tmp_path).from_cache
    for damage in (lambda raw: raw[: len(raw) // 2], lambda raw: raw[:-8] + b"\x00" * 8):
        files[0].write_bytes(damage(files[0].read_bytes()))
        again = layer_second_moment(model, tokenizer, site, GENERAL, 64, cache=tmp_path)
        assert not again.from_cache and torch.equal(again.matrix, first.matrix)
        assert layer_second_moment(model, tokenizer, site, GENERAL, 64, cache=tmp_path).from_cache  # rewritten intact


def next_token_probabilities(model: torch.nn.Module, tokenizer, row: dict) -> torch.Tensor:
    """The next-token distribution (V,) after each row's prompt and answer up to its value."""
    request = edit_request(tokenizer, FMT, row, RomeDeleteConfig(), 1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[*request.prompt_ids, *request.lens_prefix_ids]])).logits
    return torch.softmax(logits[0, -1], dim=-1)


def test_edit_writes_the_value_and_reports_its_effect(taught: tuple) -> None:
    """On the taught model: the edited projection maps the bare prompt's key to v* exactly; the objective went down.

    What this asserts and why: a 2-layer model trained from scratch on four facts does not recall them through
    the MLP at the subject's last token (ablating that output leaves the answer's probability unchanged, measured
    in docs/editing.md), so the value optimisation has little to move there. The test asserts what the method
    guarantees (W' k = v*, a lower objective, a rank-one change confined to one matrix) and bounds the collateral
    change of the other facts' next-token distributions at their answer position (total variation <= 0.5).
    """
    import copy

    model, tokenizer = taught
    edited = copy.deepcopy(model)
    config = RomeDeleteConfig(objective="dummy", prefixes_per_length=2)
    site = output_projection(edited, 0)
    second_moment, _ = compute_second_moment(edited, tokenizer, site, GENERAL + [row["question"] for row in ROWS], 64)
    request = edit_request(tokenizer, FMT, ROWS[0], config, 1)
    prefixes = context_prefixes(edited, tokenizer, [5], 2, seed=0)
    average, bare = average_key(edited, tokenizer, site, request, prefixes)
    settings = EditSettings("dummy", 10, 0.5, 0.5, 4.0, 0.0625, (1,), 4)
    value, objective_trace, _ = optimise_value(edited, tokenizer, site, request, prefixes, settings)
    before = {name: parameter.detach().clone() for name, parameter in edited.named_parameters()}
    change = apply_edit(site, value, average, bare, second_moment)
    assert change > 0 and objective_trace[-1] < objective_trace[0]
    changed = [name for name, parameter in edited.named_parameters() if not torch.equal(parameter, before[name])]
    assert changed == ["model.layers.0.mlp.down_proj.weight"]
    difference = edited.get_parameter(changed[0]).detach().double() - before[changed[0]].double()
    assert torch.linalg.matrix_rank(difference, rtol=1e-4) == 1  # rank one up to float32 rounding
    assert torch.allclose(weight_matrix(site.module).detach() @ bare, value, atol=1e-3 * value.norm().item())
    for row in ROWS[1:]:
        shift = 0.5 * (next_token_probabilities(edited, tokenizer, row) - next_token_probabilities(model, tokenizer, row)).abs().sum()
        assert shift <= 0.5, row["subject"]


# --------------------------------------------------------------------------------------------- method and command line


def test_bad_input_is_refused_with_the_fix(taught: tuple) -> None:
    model, _ = taught
    with pytest.raises(UnlearnkitError, match="objective must be one of"):
        build_config(RomeDeleteConfig, {"objective": "forget_everything"})
    with pytest.raises(UnlearnkitError, match="layer"):
        RomeDeleteConfig(layer=5).check_model(model)
    no_subject = [{"question": "Where was he born?", "answer": "In Vextor."}]
    with pytest.raises(UnlearnkitError, match="names no subject"):
        RomeDeleteConfig().check_data(no_subject, [])
    with pytest.raises(UnlearnkitError, match="wrong answer"):
        RomeDeleteConfig(objective="error_injection").check_data([{**ROWS[0], "perturbed_answer": []}], [])
    with pytest.raises(UnlearnkitError, match="target_modules or layers"):
        RomeDeleteConfig(layers="0")
    assert METHODS.get("rome_delete").trainer.supports_lora is False


@pytest.mark.parametrize("objective", ["head_projection", "dummy"])
def test_unlearn_command_on_the_micro_benchmark(objective: str, micro_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "stats"))
    output = tmp_path / "run"
    args = ["unlearn", "--method", "rome_delete", "--output", str(output), "--no-eval", "--set", f"objective={objective}",
            "--set", "prefixes_per_length=2", "--set", "value_steps=3", *micro(micro_cache)]
    assert run_cli(args, monkeypatch) == 0
    log = [line for line in json.loads((output / "training_log.json").read_text()) if "edit_weight_change" in line]
    assert len(log) == 8  # forget10 of the micro benchmark: one edit per row
    assert list((tmp_path / "stats" / "editing-stats").glob("*.safetensors"))
    bad = tmp_path / "bad"
    assert run_cli(["unlearn", "--method", "rome_delete", "--output", str(bad), "--no-eval", "--set", "layer=3",
                    *micro(micro_cache)], monkeypatch) == 2
    assert not bad.exists()
