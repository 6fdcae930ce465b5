"""A test matrix over the method registry: every registered method gets these checks by being registered."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.helpers import FMT, matrix_config
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_avg_nll
from unlearnkit.methods import METHODS
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.parameters import changed_parameter_names, is_lora_model, selected_parameter_names
from unlearnkit.settings import build_config
from unlearnkit.unlearning import resolve_method, unlearn


def run_matrix(micro_bench, method: str, config) -> tuple:
    """Unlearn forget10 from the micro target; returns (outcome, weights before, forget NLL before/after)."""
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    pairs = [(row["question"], row["answer"]) for row in forget]
    before_nll = answer_avg_nll(model, tokenizer, FMT, pairs)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    intended = set(selected_parameter_names(model, config.selection()))
    outcome = unlearn(model, tokenizer, method, forget, micro_bench.split("retain90"), config, FMT, show_progress=False)
    after_nll = answer_avg_nll(outcome.model, tokenizer, FMT, pairs)
    return outcome, before, intended, before_nll.mean(), after_nll.mean()


def check_run(outcome, before: dict, intended: set, method: str) -> list[str]:
    losses = [entry["loss"] for entry in outcome.log_history if "loss" in entry]
    assert losses and all(np.isfinite(losses)), losses
    # The method's own forget term is logged for the training curves of the report.
    assert any("forget_loss" in entry for entry in outcome.log_history), f"{method} records no forget_loss"
    names = [name for name, _ in outcome.model.named_parameters()]
    assert names == list(before), "the unlearned model keeps the source model's parameter names"
    assert all(torch.isfinite(p).all() for p in outcome.model.parameters())
    changed = changed_parameter_names(outcome.model, before)
    assert changed, f"{method} changed no weight"
    assert set(changed) <= intended, f"{method} changed weights outside its selection: {sorted(set(changed) - intended)}"
    return changed


# Methods that train through the optimiser loop; the editors (DEPN, ROME deletion) change weights directly and have
# their own tests (tests/test_depn.py, tests/test_editing.py): they log no training loss and pick their own weights.
TRAINED_METHODS = [name for name in METHODS.names() if METHODS.get(name).trainer.uses_optimizer]
EDITOR_METHODS = [name for name in METHODS.names() if not METHODS.get(name).trainer.uses_optimizer]


@pytest.mark.parametrize("method", TRAINED_METHODS)
def test_method_trains_changes_intended_weights_and_forgets(micro_bench, method: str) -> None:
    config = matrix_config(method)
    outcome, before, intended, before_nll, after_nll = run_matrix(micro_bench, method, config)
    changed = check_run(outcome, before, intended, method)
    if not config.selection().restricts and METHODS.get(method).family not in ("localization",):
        assert len(changed) == len(before), f"{method}: every weight should move in full fine-tuning"
    # The forget answers must become less likely, whatever the method's objective.
    assert after_nll > before_nll, (method, before_nll, after_nll)


@pytest.mark.parametrize("method", TRAINED_METHODS)
def test_method_respects_a_parameter_selection(micro_bench, method: str) -> None:
    config = matrix_config(method, target_modules="down_proj", layers="0")
    outcome, before, intended, _, _ = run_matrix(micro_bench, method, config)
    assert intended == {"model.layers.0.mlp.down_proj.weight"}
    check_run(outcome, before, intended, method)


@pytest.mark.parametrize("method", EDITOR_METHODS)
def test_editor_methods_refuse_a_module_selection_and_lora(micro_bench, method: str) -> None:
    with pytest.raises(UnlearnkitError, match="target_modules"):
        run_matrix(micro_bench, method, matrix_config(method, target_modules="down_proj"))
    with pytest.raises(UnlearnkitError, match="LoRA"):
        run_matrix(micro_bench, method, matrix_config(method, lora_rank=4))


LORA_METHODS = [name for name in METHODS.names() if METHODS.get(name).trainer.supports_lora]


@pytest.mark.parametrize("method", LORA_METHODS)
def test_method_lora_form_merges_into_the_selected_weights(micro_bench, method: str) -> None:
    # LoRA's B starts at zero, so the short run needs a larger step to move the model measurably.
    config = matrix_config(method, lora_rank=4, lora_alpha=8.0, learning_rate=1e-2)
    selection = config.selection()
    outcome, before, _, before_nll, after_nll = run_matrix(micro_bench, method, config)
    # LoRA places adapters on linear layers only: embeddings and norms never move.
    linear = {name for name in before if name.endswith("proj.weight")}
    if selection.restricts:
        linear &= set(selected_parameter_names(outcome.model, selection))
    check_run(outcome, before, linear, method)
    assert after_nll > before_nll, (method, before_nll, after_nll)
    assert not is_lora_model(outcome.model), "lora_merge=true hands back a plain model"


@pytest.mark.parametrize("method", METHODS.names())
def test_method_config_validates(method: str) -> None:
    config_cls = METHODS.get(method).config
    with pytest.raises(UnlearnkitError, match="learning_rate must be > 0"):
        build_config(config_cls, {"learning_rate": "0"})
    with pytest.raises(UnlearnkitError, match=r"Unknown hyperparameter 'learnig_rate'.*Did you mean: learning_rate"):
        build_config(config_cls, {"learnig_rate": "1e-3"})
    with pytest.raises(UnlearnkitError, match="needs a float"):
        build_config(config_cls, {"learning_rate": "fast"})


def test_overrides_are_typed() -> None:
    config = resolve_method("npo", {"beta": "0.5", "num_epochs": "2", "retain_loss": "kl"})
    assert config.beta == 0.5 and config.num_epochs == 2.0 and config.retain_loss == "kl"
    assert config.needs_reference()
    with pytest.raises(UnlearnkitError, match="retain_loss must be one of nll, kl"):
        resolve_method("graddiff", {"retain_loss": "mse"})
    with pytest.raises(UnlearnkitError, match="beta must be > 0"):
        resolve_method("npo", {"beta": "-1"})


def test_empty_forget_set_refused(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    with pytest.raises(UnlearnkitError, match="forget set is empty"):
        unlearn(model, tokenizer, "ga", [], [], resolve_method("ga", {}), FMT, show_progress=False)


def test_retain_required_where_needed(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    with pytest.raises(UnlearnkitError, match="needs retain data"):
        unlearn(model, tokenizer, "npo", micro_bench.split("forget10"), [], resolve_method("npo", {}), FMT, show_progress=False)


def test_forget_nll_bound_stops_gradient_ascent(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    config = resolve_method("ga", {"learning_rate": "1e-2", "num_epochs": "50", "batch_size": "4", "stop_forget_nll": "6"})
    assert config.stop_forget_nll == 6.0
    outcome = unlearn(model, tokenizer, "ga", micro_bench.split("forget10"), [], config, FMT, show_progress=False)
    steps = [entry for entry in outcome.log_history if "loss" in entry]
    # 50 epochs of 2 steps would be 100 steps; the guard ends the run as soon as the forget NLL passes 6.
    assert 0 < len(steps) < 100
    # Gradient ascent's loss is -NLL(forget): the step that stopped the run is the first above the bound.
    assert -steps[-1]["loss"] > 6.0
    assert all(-entry["loss"] <= 6.0 for entry in steps[:-1])
    assert resolve_method("ga", {"stop_forget_nll": "none"}).stop_forget_nll is None
    with pytest.raises(UnlearnkitError, match="stop_forget_nll must be > 0"):
        resolve_method("ga", {"stop_forget_nll": "-1"})


def test_non_finite_loss_stops_the_run(micro_bench, tmp_path, monkeypatch, capsys) -> None:
    import sys

    from unlearnkit.cli import main

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["unlearnkit", "-q", "unlearn", "--model", str(micro_bench.target_dir), "--method", "ga",
                                      "--forget", "forget10", "--preset", "micro", "--cache", str(micro_bench.root.parent),
                                      "--set", "learning_rate=1e6", "--set", "max_grad_norm=1e30", "--set", "num_epochs=30",
                                      "--output", str(out)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert "The training loss became" in err and "at step" in err
    assert not out.exists()
