"""Defaults that do nothing on a small model are flagged, and RMU's tiny-model settings are a named preset."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.helpers import FMT, run_cli
from unlearnkit.builtin import PRESETS
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.unlearning import FEW_STEPS, STALLED_FORGET_LOSS, forget_loss_movement, resolve_method, training_warnings, unlearn


def _summary_line(log: list[dict]) -> dict:
    """The Trainer's closing line of a training log (runtime, mean loss), where a run's warnings are recorded."""
    return next(line for line in log if "train_runtime" in line)


def test_a_run_whose_forget_loss_barely_moves_warns_and_records_it(micro_bench, tmp_path: Path, monkeypatch, capsys) -> None:
    forget = tmp_path / "forget.json"
    forget.write_text(json.dumps(micro_bench.split("forget10")), encoding="utf-8")
    out = tmp_path / "run"
    assert run_cli(["unlearn", "--method", "ga", "--model", str(micro_bench.target_dir), "--forget", str(forget),
                    "--set", "learning_rate=1e-9", "--no-eval", "--output", str(out)], monkeypatch) == 0
    text = " ".join(capsys.readouterr().err.split())
    assert "The forget loss barely moved" in text and "learning_rate=1e-09" in text
    assert "raise learning_rate" in text and "Starting points per model size" in text
    # 8 forget rows in batches of 32, 5 epochs: one optimiser step per epoch.
    assert "The run took 5 optimiser step(s)" in text
    recorded = _summary_line(json.loads((out / "training_log.json").read_text()))["warnings"]
    assert len(recorded) == 2 and any("barely moved" in warning for warning in recorded)
    assert "barely moved" in (out / "log.txt").read_text()  # the run's own log keeps it too


def test_settings_that_move_the_model_raise_no_warning(micro_bench) -> None:
    forget = micro_bench.split("forget10")
    config = resolve_method("ga", {"learning_rate": 2e-3, "batch_size": 1, "num_epochs": 2, "warmup_ratio": 0})
    outcome = unlearn(load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir), "ga", forget, [], config, FMT,
                      show_progress=False)
    assert outcome.warnings == [] and _summary_line(outcome.log_history)["warnings"] == []
    start, end = forget_loss_movement(outcome.log_history)
    assert abs(end - start) > STALLED_FORGET_LOSS * abs(start)


def test_forget_loss_movement_compares_first_and_last_pass() -> None:
    # Two steps per epoch, three epochs: the first pass's mean against the last pass's mean.
    log = [{"forget_loss": value, "epoch": (index + 1) / 2, "loss": value} for index, value in enumerate([1.0, 3.0, 2.0, 2.0, 2.1, 1.9])]
    assert forget_loss_movement([*log, {"train_runtime": 1.0, "epoch": 3.0}]) == (2.0, 2.0)
    # One pass or less: the first logged step against the last.
    assert forget_loss_movement(log[:2]) == (1.0, 3.0)
    assert forget_loss_movement(log[:1]) is None
    config = resolve_method("npo", {})
    warnings = training_warnings(log, 6, config, 12)
    assert len(warnings) == 2 and f"fewer than {FEW_STEPS}" in warnings[0] and "2 -> 2 (0.0%" in warnings[1]
    assert training_warnings(log[:2], FEW_STEPS, config, 12) == []  # moved 200%, enough steps
    rmu = training_warnings(log, 6, resolve_method("rmu", {}), 12)
    assert "--set preset=tiny" in rmu[0]  # a method with presets names them


def test_rmu_tiny_preset_is_what_the_benchmark_runs(monkeypatch, capsys) -> None:
    preset = resolve_method("rmu", {"preset": "tiny"})
    expected = {"layer": 1, "positions": "answer", "adaptive_coeff": 1.0, "alpha": 100.0, "learning_rate": 5e-3, "num_epochs": 5.0,
                "batch_size": 32, "preset": "tiny"}
    assert {key: getattr(preset, key) for key in expected} == expected
    # The default benchmark runs RMU with the preset (its shared lr 5e-4 does not win over the preset's).
    assert asdict(resolve_method("rmu", PRESETS["default"].overrides_for("rmu"))) == asdict(preset)
    # A value set alongside wins; an unknown preset, or a preset on a method without any, is refused.
    assert resolve_method("rmu", {"preset": "tiny", "alpha": "50"}).alpha == 50.0
    assert resolve_method("rmu", {"preset": "none"}).layer == 7
    with pytest.raises(UnlearnkitError, match=r"preset must be one of tiny; got 'tiy'\. Did you mean: tiny"):
        resolve_method("rmu", {"preset": "tiy"})
    with pytest.raises(UnlearnkitError, match="Unknown hyperparameter 'preset'"):
        resolve_method("ga", {"preset": "tiny"})
    assert run_cli(["methods", "--verbose"], monkeypatch) == 0
    assert "preset (str | None, default None): Named starting settings" in capsys.readouterr().out


def test_rmu_preset_goes_over_a_benchmarks_settings() -> None:
    # On the micro benchmark (one decoder layer, alpha 10, lr 2e-3, batch 8) the user asks for the preset and layer 0.
    config = resolve_method("rmu", {"preset": "tiny", "layer": "0"}, defaults=PRESETS["micro"].overrides_for("rmu"))
    assert (config.layer, config.alpha, config.learning_rate, config.batch_size, config.adaptive_coeff) == (0, 100.0, 5e-3, 32, 1.0)
    assert resolve_method("rmu", {}, defaults=PRESETS["micro"].overrides_for("rmu")).alpha == 10.0


def test_rmu_preset_on_an_own_model_from_the_command_line(micro_bench, tmp_path: Path, monkeypatch, capsys) -> None:
    forget, retain = tmp_path / "forget.json", tmp_path / "retain.json"
    forget.write_text(json.dumps(micro_bench.split("forget10")), encoding="utf-8")
    retain.write_text(json.dumps(micro_bench.split("retain90")[:16]), encoding="utf-8")
    common = ["unlearn", "--method", "rmu", "--model", str(micro_bench.target_dir), "--forget", str(forget), "--retain", str(retain),
              "--set", "preset=tiny", "--no-eval"]
    out = tmp_path / "rmu"
    # The micro model has one decoder layer: the preset's layer 1 is refused before anything is written, naming the option.
    assert run_cli([*common, "--output", str(out)], monkeypatch) == 2
    assert "layer" in capsys.readouterr().err and not out.exists()
    assert run_cli([*common, "--set", "layer=0", "--set", "num_epochs=1", "--output", str(out)], monkeypatch) == 0
    hyperparameters = json.loads((out / "config.json").read_text())["hyperparameters"]
    assert hyperparameters["preset"] == "tiny" and hyperparameters["layer"] == 0
    assert (hyperparameters["alpha"], hyperparameters["adaptive_coeff"], hyperparameters["learning_rate"]) == (100.0, 1.0, 5e-3)
