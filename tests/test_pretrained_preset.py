"""The built-in benchmark on a pretrained base model (preset ``smollm2``): settings, wiring, and (slow) its discrimination."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.helpers import run_cli
from unlearnkit import __version__
from unlearnkit.builtin import FORGET_SPLITS, PRESETS, BuiltinBenchmark, prepare
from unlearnkit.cli import app
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import tokenizer_sha256
from unlearnkit.finetune import FinetuneConfig
from unlearnkit.modeling import build_tiny_model, load_tokenizer, save_model

runner = CliRunner()


def _key_before_later_settings(config: BuiltinBenchmark) -> str:
    """The cache key as it was computed before base models, prompt styles, oracle lists and LoRA fine-tuning existed."""
    content = {
        "world": asdict(config.world),
        "model": asdict(config.model),
        "training": {key: value for key, value in asdict(config.training).items() if key != "lora_rank"},
        "retain_eval_size": config.retain_eval_size,
        "utility_size": config.utility_size,
        "utility_repeats": config.utility_repeats,
        "biographies": config.biographies,
    }
    payload = json.dumps({"version": __version__, **content}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def test_caches_prepared_before_the_later_settings_stay_valid() -> None:
    for name in ("default", "micro"):
        assert PRESETS[name].cache_key() == _key_before_later_settings(PRESETS[name])


def test_settings_that_change_the_models_change_the_key_and_a_description_does_not() -> None:
    base = PRESETS["micro"]
    assert replace(base, description="another line").cache_key() == base.cache_key()
    changed = [
        replace(base, base_model="smollm2-135m"),
        replace(base, base_model="smollm2-135m", prompt_style="chat"),
        replace(base, forget_splits=("forget10",)),
        replace(base, training=replace(base.training, lora_rank=8)),
    ]
    keys = {config.cache_key() for config in changed}
    assert len(keys) == len(changed) and base.cache_key() not in keys


@pytest.mark.parametrize(("settings", "message"), [
    ({"prompt_style": "chat"}, "does not fit base_model None"),
    ({"base_model": "smollm2-13m"}, "smollm2-135m"),
    ({"base_model": "smollm2-135m", "prompt_style": "llama"}, "prompt_style 'llama'"),
    ({"forget_splits": ("forget02",)}, "forget02"),
])
def test_a_preset_with_impossible_settings_is_refused(settings: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        BuiltinBenchmark(**settings)


def test_a_negative_lora_rank_is_refused() -> None:
    with pytest.raises(UnlearnkitError, match="lora_rank"):
        FinetuneConfig(lora_rank=-1)


@pytest.fixture()
def stand_in_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A small saved model standing in for the converted SmolLM2 (training the real one takes minutes)."""
    micro = PRESETS["micro"]
    from unlearnkit.builtin import benchmark_tokenizer

    tokenizer = benchmark_tokenizer(micro)
    folder = tmp_path / "base"
    save_model(build_tiny_model(micro.model, tokenizer, seed=7), tokenizer, folder)
    monkeypatch.setattr("unlearnkit.builtin.ensure_converted", lambda name, cache=None: folder)
    return folder


def test_a_pretrained_preset_fine_tunes_its_base_with_its_tokenizer(tmp_path: Path, stand_in_base: Path) -> None:
    micro = PRESETS["micro"]
    config = replace(micro, base_model="smollm2-135m", utility_repeats=0, forget_splits=("forget10",),
                     training=replace(micro.training, max_epochs=2, lora_rank=4))
    bench = prepare(config, tmp_path / "cache", show_progress=False, jobs=1)
    # Only the preset's own oracle is trained.
    assert bench.oracle_dir("forget10").is_dir() and not bench.oracle_dir("forget05").exists()
    assert tokenizer_sha256(load_tokenizer(bench.root / "tokenizer")) == tokenizer_sha256(load_tokenizer(stand_in_base))
    base = load_file(stand_in_base / "model.safetensors")
    target = load_file(bench.target_dir / "model.safetensors")
    assert set(target) == set(base)  # LoRA merged away: an ordinary model of the same architecture
    # Started from the base (LoRA leaves the embeddings alone) and trained (the adapted projections moved).
    assert torch.equal(target["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert not torch.equal(target["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"])
    training = json.loads((bench.target_dir / "training.json").read_text())
    assert training["splits"] == ["full"]  # the utility sets measure what the base knew: not trained
    assert bench.reference_path("forget10").is_file()


def test_prepare_trains_the_presets_own_oracles_unless_told() -> None:
    assert PRESETS["default"].forget_splits == FORGET_SPLITS
    assert PRESETS["smollm2"].forget_splits == ("forget10",)
    assert PRESETS["smollm2"].prompt_format.style == "chat"


def test_presets_command_lists_every_preset(tmp_path: Path) -> None:
    result = runner.invoke(app, ["presets", "--cache", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in PRESETS:
        assert f"{name}\n" in result.output
    assert "smollm2-135m fine-tuned (LoRA r16)" in result.output and "nothing yet" in result.output


def test_prepare_refuses_an_unknown_split_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["prepare", "--preset", "smollm2", "--splits", "forget02", "--cache", str(tmp_path / "cache")], monkeypatch) == 2
    assert "forget02" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


def _smollm2_summaries() -> tuple[dict, dict]:
    """The prepared preset's target and oracle evaluated on forget10 (prepares it first: 48 minutes on 2 busy cores)."""
    from unlearnkit.builtin import evaluate_cached_model
    from unlearnkit.evaluation.evaluator import load_reference

    bench = prepare(PRESETS["smollm2"], show_progress=False)
    reference = load_reference(bench.reference_path("forget10"))
    target = evaluate_cached_model(bench, bench.target_dir, "forget10", reference).summary
    oracle = evaluate_cached_model(bench, bench.oracle_dir("forget10"), "forget10", reference).summary
    return target, oracle


@pytest.mark.slow
def test_the_smollm2_preset_tells_the_target_from_the_oracle() -> None:
    target, oracle = _smollm2_summaries()
    assert target["forget_quality"] < 0.01
    assert oracle["forget_quality"] == pytest.approx(1.0)


@pytest.mark.slow
def test_the_smollm2_target_and_oracle_keep_the_same_utility() -> None:
    target, oracle = _smollm2_summaries()
    assert abs(target["model_utility"] - oracle["model_utility"]) <= 0.05 * oracle["model_utility"]


def test_finetune_lora_rank_saves_an_ordinary_model(micro_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    output = tmp_path / "lora-target"
    args = ["finetune", "--model", "tiny", "--data", "forget10", "--lora-rank", "2", "--max-epochs", "1", "--output", str(output),
            "--preset", "micro", "--cache", str(micro_cache)]
    assert run_cli(args, monkeypatch) == 0
    weights = load_file(output / "model" / "model.safetensors")
    assert weights and not any("lora" in name for name in weights)
    assert json.loads((output / "config.json").read_text())["training"]["lora_rank"] == 2


def test_finetune_refuses_a_negative_lora_rank(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli(["finetune", "--data", "forget10", "--lora-rank", "-1", "--output", str(tmp_path / "x")], monkeypatch) == 2
    assert not (tmp_path / "x").exists()


def test_a_pretrained_preset_does_not_advise_more_epochs(
    tmp_path: Path, stand_in_base: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its epochs are its schedule: ending below the early-stopping accuracy is expected, not a mistake to fix."""
    micro = PRESETS["micro"]
    base = replace(micro, forget_splits=("forget10",), training=replace(micro.training, max_epochs=1))
    with caplog.at_level("WARNING", logger="unlearnkit"):
        prepare(replace(base, base_model="smollm2-135m"), tmp_path / "pretrained", show_progress=False, jobs=1)
    assert "raise max_epochs" not in caplog.text
    with caplog.at_level("WARNING", logger="unlearnkit"):
        prepare(base, tmp_path / "tiny", show_progress=False, jobs=1)  # one epoch: a tiny model from scratch falls short
    assert "raise max_epochs" in caplog.text


def test_lora_fine_tuning_starts_from_its_seed_whatever_the_global_random_state(micro_bench) -> None:
    """The preset's LoRA fine-tune is reproducible: the adapters' random start comes from the seed, not from torch's
    per-process random state (two preparations of the smollm2 preset once ended with different weights that way)."""
    import torch

    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.finetune import finetune
    from unlearnkit.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(micro_bench.target_dir)
    rows = micro_bench.split("forget10")[:4]
    config = FinetuneConfig(learning_rate=1e-2, max_epochs=2, batch_size=2, warmup_ratio=0.0, target_accuracy=1.0, seed=3, lora_rank=2)
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)  # another process, another random state
        model = load_model(micro_bench.target_dir)
        finetune(model, tokenizer, rows, config, PromptFormat("plain"), show_progress=False)
        weights.append({name: tensor.clone() for name, tensor in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    original = load_model(micro_bench.target_dir).state_dict()
    assert any(not torch.equal(original[name], weights[0][name]) for name in original)  # the fine-tune did change the model
