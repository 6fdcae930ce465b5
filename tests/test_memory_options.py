"""Memory-lean options: reference caching, gradient checkpointing, mixed precision, gradient accumulation, the scale benchmark."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers import FMT, matrix_config
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods.base import ReferenceCache, UnlearnTrainer
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.parameters import decoder_layers
from unlearnkit.training import training_arguments
from unlearnkit.unlearning import resolve_method, unlearn

ROOT = Path(__file__).resolve().parents[1]


def _unlearn(micro_bench, method: str, model=None, **settings):
    """A short run on the micro benchmark; returns (trained weights, logged losses, model)."""
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = model if model is not None else load_model(micro_bench.target_dir)
    config = matrix_config(method, **{"num_epochs": 2, **settings})
    torch.manual_seed(0)  # LoRA's initial A factors come from the global generator
    outcome = unlearn(model, tokenizer, method, micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                      show_progress=False)
    weights = {name: p.detach().clone() for name, p in outcome.model.named_parameters()}
    return weights, [entry["loss"] for entry in outcome.log_history if "loss" in entry], outcome.model


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[name] - b[name]).abs().max()) for name in a)


# --- reference caching ------------------------------------------------------------------------


def test_reference_cache_looks_up_rows_by_their_unpadded_tokens() -> None:
    cache = ReferenceCache({((1, 2, 3), (-100, 2, 3)): 0.5, ((4, 5), (-100, 5)): 2.25})
    batch = {  # the second row right-padded with id 0
        "input_ids": torch.tensor([[1, 2, 3], [4, 5, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]]),
        "labels": torch.tensor([[-100, 2, 3], [-100, 5, -100]]),
    }
    assert cache.lookup(batch).tolist() == [0.5, 2.25]
    # Same tokens, other labels (a different answer span): not the cached sequence.
    batch["labels"] = torch.tensor([[-100, -100, 3], [-100, 5, -100]])
    with pytest.raises(RuntimeError, match="cache_reference=false"):
        cache.lookup(batch)


@pytest.mark.parametrize("method", ["npo", "idk_dpo"])
def test_cached_reference_needs_no_reference_model(method: str) -> None:
    assert not resolve_method(method, {}).needs_reference()
    assert resolve_method(method, {"cache_reference": "false"}).needs_reference()
    if method == "npo":  # the token-level KL retain term still reads the reference
        assert resolve_method("npo", {"retain_loss": "kl"}).needs_reference()


@pytest.mark.parametrize("lora_rank", [0, 4])
@pytest.mark.parametrize("method", ["npo", "idk_dpo"])
def test_cached_reference_trains_as_the_uncached_run(micro_bench, monkeypatch, method: str, lora_rank: int) -> None:
    """Same first loss and same weights after two epochs (IDK-DPO draws new refusals in epoch 2)."""
    uncached, uncached_losses, _ = _unlearn(micro_bench, method, lora_rank=lora_rank, cache_reference=False)

    def no_reference_forward(self, batch, **kwargs):
        raise AssertionError("a cached run must not run the reference during training")

    monkeypatch.setattr(UnlearnTrainer, "reference_outputs", no_reference_forward)
    cached, cached_losses, _ = _unlearn(micro_bench, method, lora_rank=lora_rank, cache_reference=True)
    assert len(cached_losses) == len(uncached_losses) >= 2
    assert cached_losses[0] == pytest.approx(uncached_losses[0], abs=1e-5)
    assert _max_difference(cached, uncached) < 1e-5


# --- gradient checkpointing --------------------------------------------------------------------


@pytest.mark.parametrize(("method", "lora_rank"), [("npo", 4), ("rmu", 0), ("eul", 0), ("pcgu", 0)])
def test_gradient_checkpointing_gives_the_same_training(micro_bench, method: str, lora_rank: int) -> None:
    """RMU (a forward hook that cuts the forward), EUL (hooks inside the layers), PCGU (autograd.grad) and LoRA."""
    plain_calls, checkpointed_calls = [], []
    plain, plain_losses, _ = _unlearn(micro_bench, method, model=_counting_layer_calls(micro_bench, plain_calls), lora_rank=lora_rank,
                                      num_epochs=1)
    checkpointed, checkpointed_losses, _ = _unlearn(
        micro_bench, method, model=_counting_layer_calls(micro_bench, checkpointed_calls), lora_rank=lora_rank, num_epochs=1,
        gradient_checkpointing=True
    )
    assert len(checkpointed_calls) > len(plain_calls), "checkpointing recomputes the layer in the backward pass"
    assert checkpointed_losses == pytest.approx(plain_losses, abs=1e-6)
    assert _max_difference(checkpointed, plain) < 1e-6


def _counting_layer_calls(micro_bench, calls: list) -> torch.nn.Module:
    """The micro target with a hook noting every forward of its first layer's attention (recomputations included)."""
    model = load_model(micro_bench.target_dir)
    _, blocks = decoder_layers(model)
    blocks[0].self_attn.register_forward_hook(lambda module, args, output: calls.append(1))
    return model


# --- mixed precision ------------------------------------------------------------------------------


def test_fp16_refused_on_cpu(micro_bench) -> None:
    assert not torch.cuda.is_available()
    with pytest.raises(UnlearnkitError, match="fp16 needs a CUDA GPU"):
        training_arguments(
            learning_rate=1e-3, num_epochs=1, batch_size=2, gradient_accumulation_steps=1, weight_decay=0.0, warmup_ratio=0.0,
            lr_scheduler="constant", max_grad_norm=1.0, seed=0, show_progress=False, mixed_precision="fp16",
        )
    with pytest.raises(UnlearnkitError, match="fp16 needs a CUDA GPU"):
        _unlearn(micro_bench, "ga", mixed_precision="fp16")


def test_mixed_precision_values_checked() -> None:
    with pytest.raises(UnlearnkitError, match="mixed_precision must be one of no, bf16, fp16"):
        resolve_method("npo", {"mixed_precision": "fp32"})
    with pytest.raises(UnlearnkitError, match="PCGU writes its masked gradients"):
        resolve_method("pcgu", {"mixed_precision": "fp16", "weight_decay": 0})


@pytest.mark.parametrize(("method", "lora_rank"), [("npo", 0), ("graddiff", 4), ("whp", 0)])
def test_bf16_runs_with_finite_losses(micro_bench, method: str, lora_rank: int) -> None:
    _, fp32_losses, _ = _unlearn(micro_bench, method, lora_rank=lora_rank, num_epochs=1)
    _, bf16_losses, model = _unlearn(micro_bench, method, lora_rank=lora_rank, num_epochs=1, mixed_precision="bf16")
    assert bf16_losses and all(math.isfinite(value) for value in bf16_losses)
    assert bf16_losses != fp32_losses, "bf16 autocast changes the forward's rounding"
    assert next(model.parameters()).dtype == torch.float32, "weights stay in their dtype"


# --- gradient accumulation ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["npo", "idk_dpo"])
def test_gradient_accumulation_matches_one_big_batch(micro_bench, method: str) -> None:
    """2 micro-batches of 4 = one batch of 8 for per-sequence-mean losses (retain term off: its token mean is not).

    Plain SGD without clipping, so that a gradient of the wrong scale (micro-batch losses
    summed, not averaged) changes the update; Adam would hide it.
    """
    settings = {"num_epochs": 1, "alpha": 0.0, "lr_scheduler": "constant", "warmup_ratio": 0.0, "optimizer": "sgd", "max_grad_norm": 1e6,
                "weight_decay": 0.0}
    accumulated, accumulated_losses, _ = _unlearn(micro_bench, method, batch_size=4, gradient_accumulation_steps=2, **settings)
    single, single_losses, _ = _unlearn(micro_bench, method, batch_size=8, gradient_accumulation_steps=1, **settings)
    assert accumulated_losses == pytest.approx(single_losses, abs=1e-5)
    assert _max_difference(accumulated, single) < 1e-6


# --- the scale benchmark ------------------------------------------------------------------------------


def test_scale_benchmark_smoke(tmp_path: Path) -> None:
    output = tmp_path / "scale.md"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "scale_methods.py"), "--methods", "ga", "--hidden", "32", "--layers", "1",
        "--vocab", "128", "--seq-len", "16", "--batch-size", "2", "--steps", "2", "--threads", "1", "--output", str(output),
    ]
    subprocess.run(command, check=True, cwd=tmp_path, timeout=300)
    rows = json.loads(output.with_suffix(".json").read_text())["rows"]
    assert {(row["form"], row["gradient_checkpointing"]) for row in rows} == {
        ("full", False), ("full", True), ("lora", False), ("lora", True)}
    assert all(row["seconds_per_step"] > 0 and row["peak_memory_mib"] > 0 for row in rows)
    table = output.read_text()
    assert "| ga | full |" in table and "| ga | lora |" in table


# --- scratch output folder ---------------------------------------------------------------------


def _scratch_folders(folder: Path) -> list[Path]:
    return sorted(folder.glob("unlearnkit-trainer-*"))


def test_scratch_output_folder_goes_with_the_arguments(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = training_arguments(
        learning_rate=1e-3, num_epochs=1, batch_size=2, gradient_accumulation_steps=1, weight_decay=0.0, warmup_ratio=0.0,
        lr_scheduler="constant", max_grad_norm=1.0, seed=0, show_progress=False,
    )
    assert _scratch_folders(tmp_path) == [Path(args.output_dir)]
    del args
    gc.collect()
    assert _scratch_folders(tmp_path) == []
    checkpointed = training_arguments(
        learning_rate=1e-3, num_epochs=1, batch_size=2, gradient_accumulation_steps=1, weight_decay=0.0, warmup_ratio=0.0,
        lr_scheduler="constant", max_grad_norm=1.0, seed=0, show_progress=False, checkpoint_dir=tmp_path / "ckpt", checkpoint_every=5,
    )
    assert checkpointed.output_dir == str(tmp_path / "ckpt")
    assert _scratch_folders(tmp_path) == []


def test_unlearning_without_checkpoints_leaves_no_folder(micro_bench, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _unlearn(micro_bench, "ga", num_epochs=1)
    gc.collect()
    assert _scratch_folders(tmp_path) == []
