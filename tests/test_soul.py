"""optimizer=soul: SOUL's Sophia update (Jia et al., EMNLP 2024) checked by hand, and inside unlearnkit's Trainer.

The hand-computed steps use rho * bs = 1 and betas 0.5 so that every intermediate value is exact in a few digits;
the values are written out, never recomputed with the formula under test.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tests.helpers import FMT, micro, run_cli
from unlearnkit.errors import UnlearnkitError
from unlearnkit.localization import Localization, LocatedSelection, model_signature, save_localization
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, load_model, load_tokenizer
from unlearnkit.optimizers import SoulSophia, clipped_ratio
from unlearnkit.unlearning import resolve_method, unlearn

HAND = {"lr": 0.1, "betas": (0.5, 0.5), "rho": 0.5, "batch_size": 2, "weight_decay": 0.1}
START = [1.0, -2.0, 0.5]
GRADIENTS = ([2.0, -0.5, 0.1], [1.0, 1.0, 0.1])
# Micro forget10 has 8 rows: batch 2, one epoch = 4 optimiser steps, no warm-up so that the first step moves.
SHORT = {"num_epochs": 1, "batch_size": 2, "warmup_ratio": 0.0, "optimizer": "soul", "weight_decay": 0.1}


def two_steps(**settings: object) -> torch.Tensor:
    parameter = torch.nn.Parameter(torch.tensor(START, dtype=torch.float64))
    optimizer = SoulSophia([parameter], **{**HAND, **settings})
    for gradient in GRADIENTS:
        parameter.grad = torch.tensor(gradient, dtype=torch.float64)
        optimizer.step()
    return parameter.detach()


def test_two_steps_match_the_hand_computed_update() -> None:
    # Step 1: h = 0.5 g^2 = [2, 0.125, 0.005], m = 0.5 g = [1, -0.25, 0.05], |m|/h = [0.5, 2 -> 1, 10 -> 1];
    #   theta = 0.99 theta - 0.1 sign(m) ratio = [0.99 - 0.05, -1.98 + 0.1, 0.495 - 0.1] = [0.94, -1.88, 0.395].
    # Step 2: h = [1.5, 0.5625, 0.0075], m = [1, 0.375, 0.075] (the second entry's sign flips), |m|/h = [2/3, 2/3, 10 -> 1];
    #   theta = 0.99 [0.94, -1.88, 0.395] - 0.1 [2/3, 2/3, 1] = [0.9306 - 0.0666..., -1.8612 - 0.0666..., 0.39105 - 0.1].
    expected = torch.tensor([0.9306 - 0.2 / 3, -1.8612 - 0.2 / 3, 0.29105], dtype=torch.float64)
    torch.testing.assert_close(two_steps(), expected, rtol=0, atol=1e-12)


def test_the_hessian_estimate_is_kept_between_refreshes() -> None:
    # hessian_interval=2: step 2 keeps h = [2, 0.125, 0.005], so |m|/h = [0.5, 3 -> 1, 15 -> 1].
    expected = torch.tensor([0.9306 - 0.05, -1.8612 - 0.1, 0.39105 - 0.1], dtype=torch.float64)
    torch.testing.assert_close(two_steps(hessian_interval=2), expected, rtol=0, atol=1e-12)


def test_clipping_rule() -> None:
    m = torch.tensor([0.0, 1e-3, -1e-3, 5.0, -5.0])
    h = torch.tensor([0.0, 1.0, 1.0, 1e-12, 0.0])
    ratio = clipped_ratio(m, h, rho=0.04, batch_size=5120, eps=1e-15)
    # No gradient ever: no step (0, not 0/0); large curvature: the Newton ratio |m| / (rho bs h); flat: clipped at 1.
    torch.testing.assert_close(ratio, torch.tensor([0.0, 1e-3 / 204.8, 1e-3 / 204.8, 1.0, 1.0]))
    # Whatever the gradients, no coordinate moves by more than lr besides the weight decay.
    generator = torch.Generator().manual_seed(0)
    parameter = torch.nn.Parameter(torch.zeros(1000, dtype=torch.float64))
    optimizer = SoulSophia([parameter], lr=0.01, weight_decay=0.0)
    for _ in range(5):
        before = parameter.detach().clone()
        parameter.grad = torch.randn(1000, generator=generator, dtype=torch.float64) * torch.logspace(-8, 3, 1000, dtype=torch.float64)
        optimizer.step()
        assert float((parameter.detach() - before).abs().max()) <= 0.01 + 1e-12


def test_state_dict_round_trip() -> None:
    """The state a checkpoint saves (torch.save, loaded weights-only as the Trainer does) resumes the very same updates."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = SoulSophia(model.parameters(), lr=1e-2, hessian_interval=3)
    gradients = [[torch.randn_like(p) for p in model.parameters()] for _ in range(4)]

    def step(net: torch.nn.Module, opt: SoulSophia, index: int) -> None:
        for parameter, gradient in zip(net.parameters(), gradients[index], strict=True):
            parameter.grad = gradient.clone()
        opt.step()

    for index in range(2):
        step(model, optimizer, index)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = torch.nn.Linear(4, 3)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = SoulSophia(resumed.parameters(), lr=1e-2, hessian_interval=3)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    assert resumed_optimizer.state[resumed.weight]["step"] == 2
    for index in (2, 3):  # step 3 keeps h, step 4 refreshes it: the interval's phase must survive too
        step(model, optimizer, index)
        step(resumed, resumed_optimizer, index)
    for original, copy in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(original, copy)


class OptimizerSpy(TrainerCallback):
    """Keeps the optimiser the Trainer built and the names of the parameters it steps (read at the start of training)."""

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs):
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps it
        names = {id(parameter): name for name, parameter in model.named_parameters()}
        self.stepped = [names[id(parameter)] for group in optimizer.param_groups for parameter in group["params"]]


@pytest.fixture(scope="module")
def micro_data(micro_bench):
    return load_tokenizer(micro_bench.target_dir), micro_bench.split("forget10"), micro_bench.split("retain90")[:16]


def test_unlearn_with_soul_changes_the_weights_and_logs_finite_losses(micro_bench, micro_data) -> None:
    tokenizer, forget, retain = micro_data
    model = load_model(micro_bench.target_dir)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    spy = OptimizerSpy()
    outcome = unlearn(model, tokenizer, "graddiff", forget, retain, resolve_method("graddiff", {**SHORT, "learning_rate": 1e-3}),
                      FMT, show_progress=False, callbacks=[spy])
    assert isinstance(spy.optimizer, SoulSophia)
    assert spy.optimizer.param_groups[0]["weight_decay"] == 0.1  # the Trainer's decay group (biases/norms: 0)
    losses = [line["loss"] for line in outcome.log_history if "loss" in line]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    moved = [name for name, parameter in outcome.model.named_parameters() if not torch.equal(parameter.detach(), before[name])]
    assert len(moved) == len(before)


def test_soul_trains_only_the_lora_adapters(micro_bench, micro_data) -> None:
    tokenizer, forget, _ = micro_data
    spy = OptimizerSpy()
    config = resolve_method("ga", {**SHORT, "learning_rate": 1e-2, "lora_rank": 2})
    unlearn(load_model(micro_bench.target_dir), tokenizer, "ga", forget, [], config, FMT, show_progress=False, callbacks=[spy])
    assert isinstance(spy.optimizer, SoulSophia)
    assert spy.stepped and all("lora_" in name for name in spy.stepped)
    stepped = [parameter for group in spy.optimizer.param_groups for parameter in group["params"]]
    assert all(spy.optimizer.state[parameter]["step"] == 4 for parameter in stepped)


def test_soul_keeps_masked_entries_bit_identical(micro_data, tmp_path: Path) -> None:
    """A neuron-level localization: decoupled weight decay moves zero-gradient entries; the write-back undoes it."""
    tokenizer, forget, retain = micro_data
    config = TinyModelConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_length=96)
    model = build_tiny_model(config, tokenizer, seed=0)
    name = "model.layers.0.mlp.up_proj.weight"
    before = model.get_parameter(name).detach().clone()
    save_localization(Localization("planted", {}, {"effect": torch.zeros(1)}, LocatedSelection(rows={name: (0, 5)}),
                                   model_signature(model)), tmp_path / "loc")
    settings = {**SHORT, "learning_rate": 1e-2, "localize": str(tmp_path / "loc")}
    trained = unlearn(model, tokenizer, "graddiff", forget, retain, resolve_method("graddiff", settings), FMT, show_progress=False).model
    after = trained.get_parameter(name).detach()
    mask = torch.zeros_like(before, dtype=torch.bool)
    mask[[0, 5]] = True
    assert torch.equal(after[~mask], before[~mask])
    assert not torch.equal(after[mask], before[mask])


def test_a_resumed_run_ends_where_the_uninterrupted_one_does(micro_bench, micro_data, tmp_path: Path) -> None:
    """Checkpoint at step 3 of 4, resume: the last SOUL step needs m, h and the step count from the checkpoint."""
    tokenizer, forget, retain = micro_data
    config = resolve_method("npo", {**SHORT, "learning_rate": 1e-2, "soul_hessian_interval": 2})
    straight = unlearn(load_model(micro_bench.target_dir), tokenizer, "npo", forget, retain, config, FMT, show_progress=False).model
    checkpoints = tmp_path / "checkpoints"
    unlearn(load_model(micro_bench.target_dir), tokenizer, "npo", forget, retain, config, FMT, show_progress=False,
            checkpoint_dir=checkpoints, checkpoint_every=3, callbacks=[StopAfter(3)])  # the interruption
    saved = torch.load(checkpoints / "checkpoint-3" / "optimizer.pt", weights_only=True)
    assert {"exp_avg", "hessian", "step"} <= set(saved["state"][0]) and saved["state"][0]["step"] == 3
    resumed = unlearn(load_model(micro_bench.target_dir), tokenizer, "npo", forget, retain, config, FMT, show_progress=False,
                      checkpoint_dir=checkpoints, checkpoint_every=3).model
    for (name, parameter), other in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(parameter, other), name


class StopAfter(TrainerCallback):
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.steps:
            control.should_training_stop = True


@pytest.mark.parametrize(("settings", "message"), [
    ({"optimizer": "soul", "soul_rho": "-1"}, "soul_rho must be > 0"),
    ({"optimizer": "soul", "soul_beta2": "1"}, "soul_beta2 must be in [0, 1)"),
    ({"optimizer": "soul", "soul_hessian_interval": "0"}, "soul_hessian_interval must be >= 1"),
    ({"soul_rho": "0.1"}, "soul_rho is a setting of optimizer=soul, but optimizer is adamw_torch: add --set optimizer=soul"),
    ({"optimizer": "sol"}, "did you mean"),
])
def test_bad_settings_are_refused(settings: dict[str, str], message: str) -> None:
    with pytest.raises(UnlearnkitError) as error:
        resolve_method("ga", settings)
    assert message.lower() in str(error.value).lower()


def test_the_command_line_refuses_a_soul_setting_without_soul(micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "run"
    code = run_cli(["unlearn", "--method", "ga", "--forget", "forget10", *micro(micro_cache), "--set", "soul_beta1=0.8",
                    "--output", str(output)], monkeypatch)
    assert code == 2 and not output.exists()
    assert "optimizer=soul" in capsys.readouterr().err


def test_the_command_line_runs_soul(micro_cache: Path, tmp_path: Path, monkeypatch) -> None:
    output = tmp_path / "run"
    code = run_cli(["unlearn", "--method", "ga", "--forget", "forget10", *micro(micro_cache), "--set", "optimizer=soul",
                    "--set", "num_epochs=1", "--set", "warmup_ratio=0", "--output", str(output)], monkeypatch)
    assert code == 0
    assert json.loads((output / "config.json").read_text())["hyperparameters"]["optimizer"] == "soul"
