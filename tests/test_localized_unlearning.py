"""Unlearning restricted to a localization: only the selection changes, every other weight is bit-identical.

The localizations are planted by hand (layers, neuron rows and columns, single weights) on a fresh
two-layer tiny Llama with the micro benchmark's tokenizer, so that each test knows exactly what may change.
Weight decay is on in every full fine-tuning run: AdamW's decoupled decay moves a weight whose gradient is
zero, so a gradient mask alone would fail these tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import FMT
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization import Localization, LocatedSelection, model_signature, save_localization
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_tokenizer
from unlearnkit.unlearning import method_localization, resolve_method, unlearn

# Two optimiser steps (8 forget rows, batch 4) with a learning rate large enough that every trained weight moves.
SETTINGS = {"learning_rate": 1e-2, "num_epochs": 1, "batch_size": 4, "warmup_ratio": 0.0, "weight_decay": 0.1}
DOWN_1 = "model.layers.1.mlp.down_proj.weight"
Q_0 = "model.layers.0.self_attn.q_proj.weight"
UP_0 = "model.layers.0.mlp.up_proj.weight"


@pytest.fixture(scope="module")
def setting(micro_bench):
    tokenizer = load_tokenizer(micro_bench.target_dir)
    return tokenizer, micro_bench.split("forget10"), micro_bench.split("retain90")[:16]


def fresh_model(tokenizer, hidden: int = 32):
    config = TinyModelConfig(vocab_size=512, hidden_size=hidden, intermediate_size=64, num_layers=2, num_heads=2, max_length=96)
    return build_tiny_model(config, tokenizer, seed=0)


def plant(folder: Path, model, selection: LocatedSelection, scores: dict[str, torch.Tensor] | None = None) -> Path:
    localization = Localization("planted", {}, {"effect": torch.arange(6.0).reshape(2, 3), **(scores or {})}, selection,
                                model_signature(model))
    save_localization(localization, folder)
    return folder


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


def run(setting, model, folder: Path, method: str = "graddiff", **extra):
    tokenizer, forget, retain = setting
    config = resolve_method(method, {**SETTINGS, **extra, "localize": str(folder)})
    return unlearn(model, tokenizer, method, forget, retain, config, FMT, show_progress=False).model


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, parameter in model.named_parameters() if not torch.equal(parameter.detach(), before[name])}


def test_layer_selection_trains_only_that_layer(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    before = snapshot(model)
    trained = run(setting, model, plant(tmp_path / "loc", model, LocatedSelection(layers=(1,))))
    moved = changed(trained, before)
    layer_1 = {name for name in before if name.startswith("model.layers.1.")}
    assert moved and moved <= layer_1
    assert {name for name in layer_1 if name.endswith("proj.weight")} <= moved  # every linear weight of the layer trained


def test_layer_and_module_selection(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    before = snapshot(model)
    trained = run(setting, model, plant(tmp_path / "loc", model, LocatedSelection(layers=(1,), target_modules=("down_proj",))))
    assert changed(trained, before) == {DOWN_1}


def masked_entries_kept(trained, before: dict[str, torch.Tensor], name: str, mask: torch.Tensor) -> None:
    """Outside ``mask`` the weight is bit-identical; inside, every entry moved (the test could not pass by training nothing)."""
    after = dict(trained.named_parameters())[name].detach()
    assert torch.equal(after[~mask], before[name][~mask])
    assert bool((after[mask] != before[name][mask]).all())


def test_neuron_rows_change_alone(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    before = snapshot(model)
    trained = run(setting, model, plant(tmp_path / "loc", model, LocatedSelection(rows={UP_0: (0, 5, 17)})))
    assert changed(trained, before) == {UP_0}
    mask = torch.zeros_like(before[UP_0], dtype=torch.bool)
    mask[[0, 5, 17]] = True
    masked_entries_kept(trained, before, UP_0, mask)


def test_neuron_columns_change_alone(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    before = snapshot(model)
    trained = run(setting, model, plant(tmp_path / "loc", model, LocatedSelection(columns={DOWN_1: (2, 40)})))
    assert changed(trained, before) == {DOWN_1}
    mask = torch.zeros_like(before[DOWN_1], dtype=torch.bool)
    mask[:, [2, 40]] = True
    masked_entries_kept(trained, before, DOWN_1, mask)


def test_weight_masks_change_alone_under_sgd_with_momentum_too(setting, tmp_path: Path) -> None:
    """Single weights; AdamW, then SGD (coupled weight decay and momentum also move weights with a zero gradient)."""
    generator = torch.Generator().manual_seed(0)
    for optimizer in ("adamw_torch", "sgd"):
        model = fresh_model(setting[0])
        before = snapshot(model)
        mask = torch.rand(before[Q_0].shape, generator=generator) < 0.1
        folder = plant(tmp_path / optimizer, model, LocatedSelection(weight_masks=(Q_0,)), {f"mask/{Q_0}": mask.float()})
        trained = run(setting, model, folder, optimizer=optimizer, **({"learning_rate": 1.0} if optimizer == "sgd" else {}))
        assert changed(trained, before) == {Q_0}, optimizer
        masked_entries_kept(trained, before, Q_0, mask)


def test_model_is_handed_back_without_hooks(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    trained = run(setting, model, plant(tmp_path / "loc", model, LocatedSelection(rows={UP_0: (1,)})))
    assert all(not parameter._backward_hooks for parameter in trained.parameters())
    assert all(parameter.requires_grad for parameter in trained.parameters())


def test_lora_on_the_located_layer_and_module(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    before = snapshot(model)
    folder = plant(tmp_path / "loc", model, LocatedSelection(layers=(1,), target_modules=("down_proj", "up_proj")))
    trained = run(setting, model, folder, lora_rank=4, learning_rate=5e-2)
    assert changed(trained, before) == {DOWN_1, "model.layers.1.mlp.up_proj.weight"}


def test_lora_refuses_a_neuron_selection(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    folder = plant(tmp_path / "loc", model, LocatedSelection(rows={UP_0: (1,)}))
    with pytest.raises(UnlearnkitError, match="LoRA's low-rank factors have no rows"):
        run(setting, model, folder, lora_rank=4)


def test_a_localization_from_another_model_is_refused(setting, tmp_path: Path) -> None:
    other = fresh_model(setting[0], hidden=16)
    folder = plant(tmp_path / "loc", other, LocatedSelection(layers=(1,)))
    with pytest.raises(UnlearnkitError, match=r"made on another model .*hidden_size 16 vs 32"):
        run(setting, fresh_model(setting[0]), folder)


def test_a_selection_with_nothing_to_train_is_refused(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    folder = plant(tmp_path / "loc", model, LocatedSelection(layers=(0,), rows={DOWN_1: (1,)}))
    with pytest.raises(UnlearnkitError, match="selects no parameter"):
        run(setting, model, folder)


@pytest.mark.parametrize("method", ["rmu", "eul", "pcgu"])
def test_methods_that_choose_their_own_weights_refuse_it(tmp_path: Path, setting, method: str) -> None:
    model = fresh_model(setting[0])
    config = resolve_method(method, {"localize": str(plant(tmp_path / "loc", model, LocatedSelection(layers=(1,))))})
    with pytest.raises(UnlearnkitError, match=f"Method '{method}' chooses the weights it changes itself"):
        method_localization(method, config)


@pytest.mark.parametrize("option", [{"layers": "1"}, {"target_modules": "down_proj"}])
def test_localize_with_a_hand_made_selection_is_refused(tmp_path: Path, option: dict) -> None:
    with pytest.raises(UnlearnkitError, match=f"already chooses the layers and modules to train; drop {next(iter(option))}"):
        resolve_method("graddiff", {"localize": str(tmp_path), **option})


def test_missing_partial_and_damaged_folders_are_refused(setting, tmp_path: Path) -> None:
    model = fresh_model(setting[0])
    config = resolve_method("graddiff", {"localize": str(tmp_path / "nowhere")})
    with pytest.raises(UnlearnkitError, match="does not exist"):
        method_localization("graddiff", config)
    partial = plant(tmp_path / "partial", model, LocatedSelection(layers=(1,)))
    (partial / "scores.safetensors").unlink()
    with pytest.raises(UnlearnkitError, match=r"incomplete: scores\.safetensors is missing"):
        method_localization("graddiff", resolve_method("graddiff", {"localize": str(partial)}))
    damaged = plant(tmp_path / "damaged", model, LocatedSelection(layers=(1,)))
    (damaged / "scores.safetensors").write_bytes(b"\x00" * 12)
    with pytest.raises(UnlearnkitError, match="damaged"):
        method_localization("graddiff", resolve_method("graddiff", {"localize": str(damaged)}))
    not_json = plant(tmp_path / "not-json", model, LocatedSelection(layers=(1,)))
    (not_json / "localization.json").write_text("{", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="not readable JSON"):
        method_localization("graddiff", resolve_method("graddiff", {"localize": str(not_json)}))
