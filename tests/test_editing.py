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
from unlearnkit.editing.statistics import (
    compute_second_moment,
    layer_second_moment,
    sample_passages,
    sampled_passages,
    statistics_digest,
    statistics_path,
)
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


def test_damping_adds_a_ridge_of_the_mean_diagonal_by_hand() -> None:
    second_moment = torch.tensor([[1.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    key = torch.tensor([1.0, 0.0], dtype=torch.float64)
    # mean(diag C) = 2; damping 0.5 adds 1 to the diagonal: [[2, 1], [1, 4]], det 7, inverse [[4, -1], [-1, 2]] / 7.
    assert torch.allclose(key_direction(second_moment, key, damping=0.5), torch.tensor([4 / 7, -1 / 7], dtype=torch.float64))
    # Without damping: C^-1 = [[3, -1], [-1, 1]] / 2, so C^-1 k = (1.5, -0.5): the ridge changed the direction.
    assert torch.allclose(key_direction(second_moment, key), torch.tensor([1.5, -0.5], dtype=torch.float64))


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


def test_head_projection_margin_offset_by_hand() -> None:
    # (L=1, B=1, V=8); ascending: 0.02, 0.03, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3. The answer, token 1 (0.2), ranks 2nd.
    probs = torch.tensor([[[0.3, 0.2, 0.15, 0.12, 0.1, 0.08, 0.03, 0.02]]], dtype=torch.float64)
    # k = 2, offset 0 (Patil et al.): the 2nd largest is the answer itself, 0.2 - 0.2 = 0; the 2nd smallest 0.03 < 0.2: no
    # hinge. The loss is zero with the answer inside the top 2 that the attack searches.
    assert objectives.head_projection_margin(probs, torch.tensor([1]), 2).item() == 0.0
    # offset 1: against the 3rd largest, 0.2 - 0.15 = 0.05; the 3rd smallest 0.08 < 0.2: no bottom hinge.
    assert objectives.head_projection_margin(probs, torch.tensor([1]), 2, offset=1).item() == pytest.approx(0.05)
    # An answer ranked 3rd (token 2, 0.15) is outside the top 2: zero with offset 1 too.
    assert objectives.head_projection_margin(probs, torch.tensor([2]), 2, offset=1).item() == pytest.approx(0.0)
    with pytest.raises(UnlearnkitError, match="lens_margin_offset"):
        build_config(RomeDeleteConfig, {"lens_margin_offset": -1})


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


# --------------------------------------------------------------------------------------------- text the model samples


def test_sampled_text_is_deterministic_and_leaves_the_random_state(taught: tuple) -> None:
    model, tokenizer = taught
    state = torch.random.get_rng_state()
    first = sample_passages(model, tokenizer, tokens=100, length=20, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert sample_passages(model, tokenizer, tokens=100, length=20, seed=3) == first
    assert sample_passages(model, tokenizer, tokens=100, length=20, seed=4) != first
    assert sum(len(passage) for passage in first) >= 100
    assert all(1 <= len(passage) <= 20 for passage in first)
    assert tokenizer.eos_token_id not in {token for passage in first for token in passage}
    # Passages start from ROME's seed words, in turn per batch of 16.
    assert tokenizer.decode(first[0], skip_special_tokens=True).startswith("The")


def test_sampled_text_cached_keyed_and_damaged_file_resampled(taught: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer = taught
    first = sampled_passages(model, tokenizer, 60, 16, 0, cache=tmp_path)
    assert not first.from_cache and first.passages == sample_passages(model, tokenizer, 60, 16, 0)
    files = list((tmp_path / "editing-text").glob("*.safetensors"))
    assert len(files) == 1

    def no_sampling(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached text should have been used")

    with monkeypatch.context() as patch:
        patch.setattr("unlearnkit.editing.statistics.sample_passages", no_sampling)
        again = sampled_passages(model, tokenizer, 60, 16, 0, cache=tmp_path)
    assert again.from_cache and again.passages == first.passages and again.tokens == first.tokens
    # Another seed is another text: a new file, sampled.
    assert not sampled_passages(model, tokenizer, 60, 16, 1, cache=tmp_path).from_cache
    assert len(list((tmp_path / "editing-text").glob("*.safetensors"))) == 2
    for damage in (lambda raw: raw[: len(raw) // 2], lambda raw: raw[:-8] + b"\x01" * 8):
        files[0].write_bytes(damage(files[0].read_bytes()))
        redone = sampled_passages(model, tokenizer, 60, 16, 0, cache=tmp_path)
        assert not redone.from_cache and redone.passages == first.passages
        assert sampled_passages(model, tokenizer, 60, 16, 0, cache=tmp_path).from_cache  # rewritten intact


def test_statistics_of_token_ids_equal_those_of_the_text_and_are_cached_apart(taught: tuple, tmp_path: Path) -> None:
    model, tokenizer = taught
    site = output_projection(model, 0)
    ids = [tokenizer(passage)["input_ids"] for passage in GENERAL]
    from_ids, tokens = compute_second_moment(model, tokenizer, site, ids, 64)
    from_text, text_tokens = compute_second_moment(model, tokenizer, site, GENERAL, 64)
    assert tokens == text_tokens and torch.allclose(from_ids, from_text)
    # The same keys from another source still get their own cache entry: a change of source recomputes.
    assert statistics_digest(model, tokenizer, site, ids, 64) != statistics_digest(model, tokenizer, site, GENERAL, 64)
    layer_second_moment(model, tokenizer, site, ids, 64, cache=tmp_path)
    assert not layer_second_moment(model, tokenizer, site, GENERAL, 64, cache=tmp_path).from_cache
    assert statistics_path(tmp_path, model, site, statistics_digest(model, tokenizer, site, ids, 64)).is_file()
    assert len(list((tmp_path / "editing-stats").glob("*.safetensors"))) == 2


def test_statistics_source_option(taught: tuple, tmp_path: Path) -> None:
    model, tokenizer = taught
    assert RomeDeleteConfig().statistics_source() == "model_samples"
    text = tmp_path / "text.txt"
    text.write_text("One paragraph of prose.\n\nAnother paragraph of prose.\n")
    assert RomeDeleteConfig(stats_text=str(text)).statistics_source() == "general_text"
    assert RomeDeleteConfig(stats_text=str(text)).statistics_passages(model, tokenizer) == ["One paragraph of prose.",
                                                                                           "Another paragraph of prose."]
    with pytest.raises(UnlearnkitError, match="stats_source=general_text"):
        RomeDeleteConfig(stats_source="model_samples", stats_text=str(text))
    with pytest.raises(UnlearnkitError, match="stats_source"):
        build_config(RomeDeleteConfig, {"stats_source": "wikipedia"})
    config = RomeDeleteConfig(stats_tokens=50, stats_max_length=200, stats_cache=str(tmp_path))
    assert config.sample_length(model) == 64  # within the tiny model's positions
    passages = config.statistics_passages(model, tokenizer)
    assert sum(len(passage) for passage in passages) >= 50 and all(isinstance(token, int) for token in passages[0])
    assert list((tmp_path / "editing-text").glob("*.safetensors"))


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


# --------------------------------------------------------------------------------------------- pretrained model


def smollm2_facts(probes: list[dict], count: int) -> list[dict]:
    """benchmarks/editing_smollm2.py's rule: forget qa probes naming their entity, with cloze and mcq forms, in turn per entity.

    The answer is the fact's cloze sentence (the chat model restates before it answers: right after the prompt the fact
    is unlikely and the logit-lens attacks find nothing there to delete).
    """
    from unlearnkit.data.real_knowledge import cloze_prefix, editable_facts, forms_by_fact

    forms = forms_by_fact(probes)
    chosen = editable_facts(probes, count)
    return [{"question": probe["question"], "answer": f"{cloze_prefix(forms[probe['id']]['cloze']['text'])} {probe['answer']}",
             "value": probe["answer"], "subject": probe["entity"]} for probe in chosen]


LENS_MARGIN_OFFSET = 1


@pytest.mark.slow
def test_head_projection_defence_hides_facts_from_the_head_projection_attack_better_than_dummy_on_smollm2() -> None:
    """Patil et al.'s finding, checked where ROME's mechanism holds: SmolLM2-135M-Instruct, real facts it knows.

    Why slow and on SmolLM2: the tiny models this file trains from scratch do not recall facts through the MLP at the
    subject's last token (docs/editing.md), so no edit there moves the attack, and a tiny model with a planted MLP
    recall was not built. This loads the converted SmolLM2 (offline, cached) and samples its statistics text once
    (cached under $UNLEARNKIT_CACHE); then minutes of editing on one CPU thread.
    Asserts: before editing the head-projection attack finds every fact (so the comparison can fail); after a
    head_projection edit it finds fewer of them than after a dummy edit. The defence runs with lens_margin_offset=1:
    with Patil et al.'s own hinge (offset 0) the loss is already zero with the answer at rank k, inside the attack's
    top k, and on SmolLM2 the attack then found every fact (docs/editing_smollm2.md).
    """
    import copy

    from unlearnkit.attacks.base import AuditConfig, AuditData
    from unlearnkit.attacks.logit_lens import logit_lens_head
    from unlearnkit.data.real_knowledge import load_probes
    from unlearnkit.modeling import load_model, load_tokenizer

    model, tokenizer = load_model("smollm2-135m").eval(), load_tokenizer("smollm2-135m")
    model.requires_grad_(False)
    fmt = PromptFormat("chat")
    facts = smollm2_facts(load_probes(), 2)
    data = AuditData(forget=facts, fmt=fmt)
    assert logit_lens_head(model, tokenizer, data, AuditConfig()).recovery == 1.0
    recovery = {}
    for objective in ("dummy", "head_projection"):
        edited = copy.deepcopy(model)
        config = RomeDeleteConfig(objective=objective, prefixes_per_length=5, value_prefixes=5, lens_margin_offset=LENS_MARGIN_OFFSET)
        site = output_projection(edited, config.edit_layer(edited))
        stats = layer_second_moment(edited, tokenizer, site, config.statistics_passages(edited, tokenizer), config.stats_max_length)
        prefixes = context_prefixes(edited, tokenizer, config.lengths(), config.prefixes_per_length, config.seed)
        settings = EditSettings(objective, config.value_steps, config.value_learning_rate, config.value_weight_decay,
                                config.clamp_norm_factor, config.kl_factor, config.read_layers(edited), config.lens_k,
                                config.lens_margin_offset)
        for index, fact in enumerate(facts, start=1):
            request = edit_request(tokenizer, fmt, fact, config, index)
            average, bare = average_key(edited, tokenizer, site, request, prefixes)
            with torch.enable_grad():
                value, _, _ = optimise_value(edited, tokenizer, site, request, prefixes[:config.value_prefixes], settings)
            apply_edit(site, value, average, bare, stats.matrix, config.stats_damping)
        recovery[objective] = logit_lens_head(edited, tokenizer, data, AuditConfig()).recovery
        del edited
    assert recovery["head_projection"] < recovery["dummy"], recovery
