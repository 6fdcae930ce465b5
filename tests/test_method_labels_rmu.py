"""random_labels, adversarial_labels, ga_mismatch and rmu: their losses by hand, their draws, RMU's layer handling."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from unlearnkit import losses
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.losses import activation_mse, adversarial_labels, ga_mismatch_loss, random_labels
from unlearnkit.methods.ga_mismatch import GAMismatch, GAMismatchConfig, stack_batches
from unlearnkit.methods.random_labels import RandomLabelsConfig, label_generator, non_special_ids
from unlearnkit.methods.rmu import RMUConfig, block_output, control_vector
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.parameters import changed_parameter_names
from unlearnkit.settings import build_config
from unlearnkit.unlearning import unlearn

FMT = PromptFormat("plain")
TOL = 1e-12


def f64(values: list) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# --- random labels -----------------------------------------------------------------------------------------------


def test_random_labels_with_one_candidate_is_fully_determined() -> None:
    labels = torch.tensor([[-100, 3, 9, 2], [-100, -100, 2, 6]])
    # Every scored label not in keep_ids becomes the only candidate; -100 and kept ids (2) stay.
    result = random_labels(labels, torch.tensor([4]), torch.Generator().manual_seed(0), keep_ids=torch.tensor([2]))
    assert result.tolist() == [[-100, 4, 4, 2], [-100, -100, 2, 4]]
    assert labels.tolist() == [[-100, 3, 9, 2], [-100, -100, 2, 6]], "the input is left alone"


def test_random_labels_draw_one_uniform_index_per_position() -> None:
    labels = torch.tensor([[-100, 3, 9, 2, 5]])
    candidates = torch.tensor([10, 20, 30])
    result = random_labels(labels, candidates, torch.Generator().manual_seed(5))
    # The same draw by hand: one index into the candidates for each of the 5 positions.
    draws = torch.randint(3, (1, 5), generator=torch.Generator().manual_seed(5))
    expected = [-100] + [[10, 20, 30][i] for i in draws[0, 1:].tolist()]
    assert result.tolist() == [expected]
    with pytest.raises(ValueError, match="non-empty 1-D"):
        random_labels(labels, torch.tensor([], dtype=torch.long), torch.Generator())


def test_random_labels_never_special_and_reproducible_per_seed_and_step(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    special = set(tokenizer.all_special_ids)
    candidates = non_special_ids(tokenizer, model_vocab_size=len(tokenizer))
    assert special and not special & set(candidates.tolist())
    assert len(candidates) == len(tokenizer) - len(special)
    labels = torch.full((16, 64), 7)

    def draw(seed: int, step: int, micro_batch: int = 0) -> torch.Tensor:
        return random_labels(labels, candidates, label_generator(seed, step, micro_batch), keep_ids=torch.tensor(sorted(special)))

    first = draw(seed=0, step=3)
    assert not special & set(first.unique().tolist())
    assert torch.equal(first, draw(seed=0, step=3)), "the same (seed, step) draws the same labels"
    assert not torch.equal(first, draw(seed=0, step=4))
    assert not torch.equal(first, draw(seed=1, step=3))
    assert not torch.equal(first, draw(seed=0, step=3, micro_batch=1)), "micro-batches of one step differ"


def test_random_labels_training_reproduces_its_draws(micro_bench, monkeypatch) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    special = set(tokenizer.all_special_ids)
    drawn: list[torch.Tensor] = []
    original = losses.random_labels

    def recording(labels, candidate_ids, generator, keep_ids=None):
        result = original(labels, candidate_ids, generator, keep_ids)
        drawn.append(result.clone())
        return result

    monkeypatch.setattr(losses, "random_labels", recording)
    forget = micro_bench.split("forget10")

    def run(seed: int) -> list[torch.Tensor]:
        drawn.clear()
        config = RandomLabelsConfig(learning_rate=1e-3, num_epochs=1, batch_size=4, seed=seed)
        unlearn(load_model(micro_bench.target_dir), tokenizer, "random_labels", forget, [], config, FMT, show_progress=False)
        return list(drawn)

    first, again, other = run(0), run(0), run(1)
    assert len(first) == 2  # 8 forget rows, batches of 4
    for batch in first:
        scored = batch[batch != -100]
        answer_ends = scored == tokenizer.eos_token_id  # the closing EOS label is kept, as the authors keep specials
        assert answer_ends.sum() == 4 and not special & set(scored[~answer_ends].tolist())
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


class _Interrupted(Exception):
    pass


def test_random_labels_resumed_run_draws_what_the_straight_run_drew(micro_bench, monkeypatch, tmp_path) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    config = RandomLabelsConfig(learning_rate=1e-3, num_epochs=2, batch_size=4)  # 4 steps, a checkpoint after step 2
    drawn: list[torch.Tensor] = []
    stop_at_draw: list[int] = []
    original = losses.random_labels

    def recording(labels, candidate_ids, generator, keep_ids=None):
        if stop_at_draw and len(drawn) == stop_at_draw[0]:
            raise _Interrupted
        drawn.append(original(labels, candidate_ids, generator, keep_ids))
        return drawn[-1]

    monkeypatch.setattr(losses, "random_labels", recording)

    def run(folder: str) -> dict[str, torch.Tensor]:
        outcome = unlearn(load_model(micro_bench.target_dir), tokenizer, "random_labels", forget, [], config, FMT,
                          show_progress=False, checkpoint_dir=tmp_path / folder, checkpoint_every=2)
        return {name: p.detach().clone() for name, p in outcome.model.named_parameters()}

    straight_weights = run("straight")
    straight = list(drawn)
    assert len(straight) == 4
    drawn.clear()
    stop_at_draw.append(2)  # interrupted as step 3 starts, after the checkpoint of step 2
    with pytest.raises(_Interrupted):
        run("interrupted")
    drawn.clear()
    stop_at_draw.clear()
    resumed_weights = run("interrupted")  # finds the checkpoint and resumes from step 2
    assert len(drawn) == 2
    assert all(torch.equal(a, b) for a, b in zip(drawn, straight[2:], strict=True))
    assert all(torch.equal(straight_weights[name], resumed_weights[name]) for name in straight_weights)


# --- adversarial labels ------------------------------------------------------------------------------------------

# One sequence, T = 3, V = 4. logits[0] predicts labels[1] (2), logits[1] predicts labels[2] (1); the last row
# predicts nothing and holds a large value that would win if the shift were off by one.
ADV_LOGITS = [[[1.0, 3.0, 5.0, 2.0], [4.0, 6.0, 0.0, 5.0], [0.0, 0.0, 0.0, 99.0]]]
ADV_LABELS = [[-100, 2, 1]]


def test_adversarial_labels_mask_the_ground_truth() -> None:
    logits, labels = f64(ADV_LOGITS), torch.tensor(ADV_LABELS)
    # Position 1: without the true token 2, [1, 3, -, 2] -> token 1. Position 2: without 1, [4, -, 0, 5] -> token 3.
    assert adversarial_labels(logits, labels).tolist() == [[-100, 1, 3]]
    # Excluding token 3 as well, position 2 falls back to token 0 (logit 4).
    assert adversarial_labels(logits, labels, torch.tensor([3, 1000])).tolist() == [[-100, 1, 0]]
    assert logits.tolist() == ADV_LOGITS, "the caller's logits are not masked in place"


def test_adversarial_labels_skip_unscored_positions_and_refuse_an_empty_choice() -> None:
    logits = f64(ADV_LOGITS)
    assert adversarial_labels(logits, torch.tensor([[-100, -100, 1]])).tolist() == [[-100, -100, 3]]
    with pytest.raises(ValueError, match="at least 2 must remain"):
        adversarial_labels(logits, torch.tensor(ADV_LABELS), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="no scored token"):
        adversarial_labels(logits, torch.tensor([[5, -100, -100]]))


# --- GA with random mismatch -------------------------------------------------------------------------------------


def test_ga_mismatch_loss_by_hand() -> None:
    forget_nll, mismatch_nll, normal_kl = f64([2.0]).squeeze(), f64([3.0]).squeeze(), f64([0.5]).squeeze()
    forget_nll.requires_grad_(True)
    # Authors' weights: -0.5 * 2 + 1 * 3 + 1 * 0.5 = 2.5.
    loss = ga_mismatch_loss(forget_nll, mismatch_nll, normal_kl)
    assert loss.item() == pytest.approx(2.5, abs=TOL)
    loss.backward()
    assert forget_nll.grad.item() == pytest.approx(-0.5, abs=TOL), "gradient ascent: the forget NLL is pushed up"
    # Other weights: -0.25 * 2 + 2 * 3 + 4 * 0.5 = 7.5.
    assert ga_mismatch_loss(forget_nll, mismatch_nll, normal_kl, 0.25, 2.0, 4.0).item() == pytest.approx(7.5, abs=TOL)
    with pytest.raises(ValueError, match="normal_weight must be a finite number >= 0"):
        ga_mismatch_loss(forget_nll, mismatch_nll, normal_kl, normal_weight=-1.0)
    with pytest.raises(ValueError, match="must be scalars"):
        ga_mismatch_loss(f64([2.0, 1.0]), mismatch_nll, normal_kl)


def test_ga_mismatch_pair_extras_draws_k_answers_from_rng() -> None:
    config = GAMismatchConfig(num_mismatched=3)
    retain = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(10)]
    forget_row = {"question": "Who?", "answer": "Her."}
    extras = GAMismatch.pair_extras(config, random.Random(7), forget_row, retain)
    # The same draw by hand: three distinct retain rows from an rng seeded alike.
    expected_rows = random.Random(7).sample(range(10), 3)
    assert extras == {f"mismatch_{k}": ("Who?", f"a{row}") for k, row in enumerate(expected_rows)}
    assert GAMismatch.pair_extras(config, random.Random(7), forget_row, retain) == extras
    assert GAMismatch.pair_extras(config, random.Random(8), forget_row, retain) != extras
    with pytest.raises(UnlearnkitError, match=r"num_mismatched=3 .* has 2 row"):
        GAMismatch.pair_extras(config, random.Random(7), forget_row, retain[:2])


def test_ga_mismatch_refuses_too_few_retain_rows_before_training(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    config = GAMismatchConfig(num_epochs=1, batch_size=4)
    retain = micro_bench.split("retain90")[:3]
    with pytest.raises(UnlearnkitError, match="num_mismatched=5"):
        unlearn(load_model(micro_bench.target_dir), tokenizer, "ga_mismatch", micro_bench.split("forget10"), retain, config,
                FMT, show_progress=False)
    with pytest.raises(UnlearnkitError, match="num_mismatched must be >= 1"):
        GAMismatchConfig(num_mismatched=0)
    with pytest.raises(UnlearnkitError, match="bad_weight must be >= 0"):
        GAMismatchConfig(bad_weight=-0.5)
    assert GAMismatchConfig().stop_forget_nll == 100.0


def test_stack_batches_pads_on_the_right() -> None:
    short = {"input_ids": torch.tensor([[5, 6]]), "labels": torch.tensor([[-100, 6]]), "attention_mask": torch.tensor([[1, 1]])}
    long = {"input_ids": torch.tensor([[7, 8, 9]]), "labels": torch.tensor([[-100, 8, 9]]), "attention_mask": torch.tensor([[1, 1, 1]])}
    stacked = stack_batches([short, long])
    assert stacked["input_ids"].tolist() == [[5, 6, 0], [7, 8, 9]]
    assert stacked["labels"].tolist() == [[-100, 6, -100], [-100, 8, 9]]
    assert stacked["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


# --- RMU: the loss -----------------------------------------------------------------------------------------------


def test_activation_mse_by_hand() -> None:
    activations = f64([[[1.0, 2.0], [3.0, 4.0]]])  # (B=1, T=2, D=2)
    vector = f64([0.0, 1.0])
    # Token 0: ((1-0)² + (2-1)²)/2 = 1; token 1: ((3-0)² + (4-1)²)/2 = 9.
    assert activation_mse(activations, vector, torch.tensor([[1, 0]])).item() == pytest.approx(1.0, abs=TOL)
    assert activation_mse(activations, vector, torch.tensor([[1, 1]])).item() == pytest.approx(5.0, abs=TOL)
    # Without padding it is F.mse_loss, the authors' loss.
    assert activation_mse(activations, vector, torch.tensor([[1, 1]])).item() == pytest.approx(
        F.mse_loss(activations, vector.expand_as(activations)).item(), abs=TOL
    )
    frozen = f64([[[1.0, 0.0], [3.0, 3.0]]])
    # Tokens weigh equally across sequences: (2²/2 + 1²/2) / 2 = 1.25 with both tokens real.
    assert activation_mse(activations, frozen, torch.tensor([[1, 1]])).item() == pytest.approx(1.25, abs=TOL)
    # Batch of two rows of different lengths: the padded position of row 1 does not count.
    two = torch.cat([activations, activations + 1.0])  # row 1: [[2, 3], [4, 5]]
    mask = torch.tensor([[1, 1], [1, 0]])
    # Row 1 token 0 against u=[0, 1]: (4 + 4)/2 = 4; mean over the three real tokens (1 + 9 + 4)/3.
    assert activation_mse(two, vector, mask).item() == pytest.approx(14.0 / 3.0, abs=TOL)
    with pytest.raises(ValueError, match="no real token"):
        activation_mse(activations, vector, torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="must broadcast"):
        activation_mse(activations, f64([1.0, 2.0, 3.0]), torch.tensor([[1, 1]]))


def test_control_vector_is_unit_norm_and_reproducible() -> None:
    u = control_vector(32, seed=42)
    assert u.shape == (32,)
    assert u.norm().item() == pytest.approx(1.0, abs=1e-6)
    assert (u >= 0).all(), "uniform on [0, 1) before scaling"
    assert torch.equal(u, control_vector(32, seed=42))
    assert not torch.equal(u, control_vector(32, seed=43))


# --- RMU: layers, modules, hooks ---------------------------------------------------------------------------------


def test_rmu_selection_defaults_to_three_layers_ending_at_layer() -> None:
    assert RMUConfig().selection().layers == (5, 6, 7)
    assert RMUConfig().selection().target_modules == ("down_proj",)
    assert RMUConfig(layer=1).selection().layers == (0, 1)
    assert RMUConfig(layer=0).selection().layers == (0,)
    assert RMUConfig(layer=7, layers="3").selection().layers == (3,), "an explicit layers wins"
    with pytest.raises(UnlearnkitError, match="layer must be >= 0"):
        RMUConfig(layer=-1)
    with pytest.raises(UnlearnkitError, match="steering_coeff must be > 0"):
        RMUConfig(steering_coeff=0.0)


def test_rmu_refuses_a_layer_past_the_model_depth(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)  # one decoder layer
    config = RMUConfig(layer=3)
    with pytest.raises(UnlearnkitError, match=r"^layer asks for layer\(s\) 3.*Change --set layer="):
        config.check_model(model)
    with pytest.raises(UnlearnkitError, match=r"^layer asks for layer\(s\) 3"):
        unlearn(model, tokenizer, "rmu", micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                show_progress=False)


def tiny_llama(tokenizer, layers: int) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config)


def tiny_gpt2(tokenizer, layers: int) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=16, n_layer=layers, n_head=2, n_positions=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


RMU_SHORT_RUN = {"learning_rate": 1e-2, "num_epochs": 1, "batch_size": 4}


def test_rmu_trains_only_the_down_proj_of_layers_before_layer(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = tiny_llama(tokenizer, layers=4)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = build_config(RMUConfig, {**RMU_SHORT_RUN, "layer": 2})
    outcome = unlearn(model, tokenizer, "rmu", micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                      show_progress=False)
    changed = sorted(changed_parameter_names(outcome.model, before))
    assert changed == [f"model.layers.{i}.mlp.down_proj.weight" for i in (0, 1, 2)]
    u = outcome.artifacts["rmu_control_vector.safetensors"]["control_vector"]
    assert torch.equal(u, control_vector(16, config.seed)), "the control vector is saved with the model"
    steps = [entry for entry in outcome.log_history if "loss" in entry]
    assert steps and all("forget_loss" in entry and "retain_loss" in entry for entry in steps)


def test_rmu_on_gpt2_names_the_mlp_output_projection(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    model = tiny_gpt2(tokenizer, layers=3)
    suggestion = r"has no down_proj\. Its MLP output projection is 'mlp\.c_proj': set target_modules=mlp\.c_proj"
    with pytest.raises(UnlearnkitError, match=suggestion):
        unlearn(model, tokenizer, "rmu", forget, retain, build_config(RMUConfig, {**RMU_SHORT_RUN, "layer": 1}), FMT,
                show_progress=False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = build_config(RMUConfig, {**RMU_SHORT_RUN, "layer": 1, "target_modules": "mlp.c_proj"})
    outcome = unlearn(model, tokenizer, "rmu", forget, retain, config, FMT, show_progress=False)
    changed = sorted(changed_parameter_names(outcome.model, before))
    # The MLP's c_proj of layers 0 and 1 only: not the attention's c_proj, not layer 2.
    assert changed == [f"transformer.h.{i}.mlp.c_proj.{kind}" for i in (0, 1) for kind in ("bias", "weight")]


def test_block_output_is_the_residual_stream_and_cuts_the_forward_short(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = tiny_llama(tokenizer, layers=3).eval()
    batch = {"input_ids": torch.tensor([[1, 5, 9, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    later_calls = []
    model.model.layers[2].register_forward_hook(lambda *args: later_calls.append(1))
    with torch.no_grad():
        states = block_output(model, 1, lambda: model(**batch))
        assert not later_calls, "the blocks above the captured one do not run"
        # hidden_states[i + 1] is block i's output; only the last entry has the final norm applied.
        reference = model(**batch, output_hidden_states=True).hidden_states[2]
    assert torch.allclose(states, reference)


def test_block_output_under_lora_with_adapters_off_is_the_base_model(micro_bench) -> None:
    from peft import LoraConfig, get_peft_model

    tokenizer = load_tokenizer(micro_bench.target_dir)
    base = tiny_llama(tokenizer, layers=2).eval()
    batch = {"input_ids": torch.tensor([[1, 5, 9, 4]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        expected = block_output(base, 1, lambda: base(**batch)).clone()
    wrapped = get_peft_model(base, LoraConfig(r=2, target_modules=["down_proj"], init_lora_weights=False)).eval()

    def base_forward() -> None:
        with wrapped.disable_adapter():
            wrapped(**batch)

    with torch.no_grad():
        adapted = block_output(wrapped, 1, lambda: wrapped(**batch))
        frozen = block_output(wrapped, 1, base_forward)
        adapted_again = block_output(wrapped, 1, lambda: wrapped(**batch))
    assert torch.allclose(frozen, expected)
    assert not torch.allclose(adapted, expected), "the adapters (initialised non-zero) change the block's output"
    assert torch.equal(adapted_again, adapted), "the cut-short forward switches the adapters back on"


def test_rmu_steering_target_fixed_and_adaptive_by_hand() -> None:
    u = torch.tensor([0.6, 0.8])
    assert torch.equal(losses.rmu_steering_target(u, 5.0), torch.tensor([3.0, 4.0]))
    # Frozen activations with norms 5 and 1 (shape (1, 2, 2)): targets beta * norm * u.
    frozen = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    target = losses.rmu_steering_target(u, 2.0, frozen)
    assert target.shape == (1, 2, 2)
    assert torch.allclose(target, torch.tensor([[[6.0, 8.0], [1.2, 1.6]]]))
    with pytest.raises(ValueError, match="control_vector must have shape"):
        losses.rmu_steering_target(u.view(1, 2), 1.0)


def test_rmu_answer_positions_are_those_predicting_answer_tokens() -> None:
    from types import SimpleNamespace

    from unlearnkit.methods.rmu import RMU

    # Prompt of 3 tokens, answer of 2, then padding: the outputs at positions 2 and 3 predict the answer.
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0]]),
             "labels": torch.tensor([[-100, -100, -100, 7, 8, -100]])}
    answer = RMU.positions_mask(SimpleNamespace(method_config=SimpleNamespace(positions="answer")), batch)
    assert answer.tolist() == [[0, 0, 1, 1, 0, 0]]
    every = RMU.positions_mask(SimpleNamespace(method_config=SimpleNamespace(positions="all")), batch)
    assert every.tolist() == [[1, 1, 1, 1, 1, 0]]
    with pytest.raises(UnlearnkitError, match="positions must be one of all, answer"):
        build_config(RMUConfig, {"positions": "tokens"})
