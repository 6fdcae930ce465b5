"""sam_npo and me_gd: their losses by hand and against transcriptions, SAM's step against a plain autograd loop."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from unlearnkit import losses
from unlearnkit.data.encoding import PairedCollator, PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods import METHODS
from unlearnkit.methods.base import PairedDataset
from unlearnkit.methods.me_gd import sequence_labels
from unlearnkit.methods.sam_npo import noise_generator, sam_perturbation
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.parameters import is_lora_model
from unlearnkit.settings import build_config
from unlearnkit.training import training_arguments
from unlearnkit.unlearning import resolve_method, unlearn

FMT = PromptFormat("plain")
TOL = 1e-12
# The float64 micro model is not float64 throughout: Llama's RMSNorm computes in float32, so two exact formulas agree to
# about 1e-7 of a gradient (scaling a loss by 0.7 alone moves its gradient by 3e-7 relative); SAM's perturbation moves it by > 1e-3.
GRAD_RTOL = 1e-6


def relative_error(value: torch.Tensor, expected: torch.Tensor) -> float:
    """||value - expected|| / ||expected|| of one tensor."""
    return float((value - expected).detach().norm() / expected.detach().norm().clamp_min(1e-30))


def gradients_agree(values, expected, rtol: float = GRAD_RTOL) -> bool:
    return all(relative_error(value, wanted) <= rtol for value, wanted in zip(values, expected, strict=True))
# One plain SGD step of size 1 without clipping or schedule: the update is minus the accumulated gradient.
SGD_STEP = {"optimizer": "sgd", "learning_rate": 1.0, "num_epochs": 1, "batch_size": 8, "warmup_ratio": 0.0,
            "lr_scheduler": "constant", "weight_decay": 0.0, "max_grad_norm": 1e9}


# --- independent transcriptions of the papers' formulas (loops over positions, no unlearnkit.losses) ---------------


def answer_nll_per_sequence(model, batch: dict) -> torch.Tensor:
    """-log p(answer | question) per sequence: the sum over its labelled tokens, position by position."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    sums = []
    for row in range(labels.shape[0]):
        total = logits.new_zeros(())
        for position in range(1, labels.shape[1]):
            if labels[row, position] != -100:
                total = total - torch.log_softmax(logits[row, position - 1], dim=-1)[labels[row, position]]
        sums.append(total)
    return torch.stack(sums)


def token_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def npo_transcription(model, reference, batch: dict, beta: float, pooled: bool) -> torch.Tensor:
    """Zhang et al.'s NPO, -(2/beta) E log sigmoid(beta (NLL_theta - NLL_ref)); pooled: one margin of token-mean NLLs (Fan et al.)."""
    nll = answer_nll_per_sequence(model, batch)
    with torch.no_grad():
        reference_nll = answer_nll_per_sequence(reference, batch)
    if pooled:
        nll, reference_nll = nll.sum() / token_count(batch), reference_nll.sum() / token_count(batch)
    return -(2.0 / beta) * torch.log(torch.sigmoid(beta * (nll - reference_nll))).mean()


def retain_transcription(model, batch: dict) -> torch.Tensor:
    return answer_nll_per_sequence(model, batch).sum() / token_count(batch)


def sam_step_transcription(model, reference, forget: dict, retain: dict, beta: float, rho: float, alpha: float,
                           pooled: bool = False) -> list[torch.Tensor]:
    """Fan et al.'s SAM step by hand: g at theta, eps = rho g/||g||, g_f at theta + eps, g_r at theta; returns g_f + alpha g_r."""
    model = copy.deepcopy(model)
    parameters = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(npo_transcription(model, reference, forget, beta, pooled), parameters)
    norm = math.sqrt(sum(float((part ** 2).sum()) for part in g))
    with torch.no_grad():
        for parameter, part in zip(parameters, g, strict=True):
            parameter += rho * part / norm
    g_f = torch.autograd.grad(npo_transcription(model, reference, forget, beta, pooled), parameters)
    with torch.no_grad():
        for parameter, part in zip(parameters, g, strict=True):
            parameter -= rho * part / norm
    g_r = torch.autograd.grad(retain_transcription(model, retain), parameters)
    return [f + alpha * r for f, r in zip(g_f, g_r, strict=True)]


def me_transcription(logits: torch.Tensor, scored: torch.Tensor, floor: float) -> torch.Tensor:
    """Yuan et al.'s ME loss: KL(U || softmax) at each scored next-token position, averaged; written as sum_v u (log u - log(p + floor))."""
    vocab = logits.shape[-1]
    terms = []
    for row in range(scored.shape[0]):
        for position in range(1, scored.shape[1]):
            if scored[row, position]:
                p = torch.softmax(logits[row, position - 1], dim=-1)
                terms.append(sum((1.0 / vocab) * (math.log(1.0 / vocab) - torch.log(p[v] + floor)) for v in range(vocab)))
    return torch.stack(terms).mean()


# --- fixtures: the micro target in float64, one batch of all forget10 pairs -----------------------------------------


@pytest.fixture
def model64(micro_bench):
    return load_model(micro_bench.target_dir).double()


def direct_trainer(micro_bench, method: str, model, **settings):
    """A method's trainer built as unlearn() builds it, for calling gradient_step / compute_loss by hand; and its one batch."""
    spec = METHODS.get(method)
    settings = {**SGD_STEP, **settings}
    if "cache_reference" in spec.config.__dataclass_fields__:
        settings.setdefault("cache_reference", False)  # the cache is built by train(), which these tests do not call
    config = build_config(spec.config, settings)
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    dataset = PairedDataset(tokenizer, FMT, forget, retain, [], config.max_length, config.seed)
    collator = PairedCollator(tokenizer.pad_token_id)
    args = training_arguments(learning_rate=1.0, num_epochs=1, batch_size=8, gradient_accumulation_steps=1, weight_decay=0.0,
                              warmup_ratio=0.0, lr_scheduler="constant", max_grad_norm=1e9, seed=0, show_progress=False, optimizer="sgd")
    reference = copy.deepcopy(model).requires_grad_(False) if config.needs_reference() else None
    trainer = spec.trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, method_config=config,
                           reference_model=reference)
    trainer.setup()
    trainer.current_gradient_accumulation_steps = 1
    return trainer, collator([dataset[index] for index in range(len(dataset))])


# --- losses by hand -------------------------------------------------------------------------------------------------


def one_position(values: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (1, n + 1, V) whose positions 0..n-1 predict the n scored labels 1..n."""
    logits = torch.tensor([[*values, [0.0] * len(values[0])]], dtype=torch.float64)
    labels = torch.tensor([[-100] + [0] * len(values)])
    return logits, labels


def test_uniform_kl_loss_by_hand_on_a_three_token_vocabulary() -> None:
    # p = (1/6, 2/6, 3/6): KL(U || p) = -log 3 - (1/3)(log 1/6 + log 1/3 + log 1/2) = (2/3) log 6 - log 3 = 0.0958940...
    logits, labels = one_position([[0.0, math.log(2.0), math.log(3.0)]])
    assert losses.uniform_kl_loss(logits, labels).item() == pytest.approx(0.09589402415059, abs=1e-12)
    # A uniform position adds 0: the mean over the two positions halves it.
    logits, labels = one_position([[0.0, math.log(2.0), math.log(3.0)], [5.0, 5.0, 5.0]])
    assert losses.uniform_kl_loss(logits, labels).item() == pytest.approx(0.09589402415059 / 2, abs=1e-12)
    # With a floor of 0.1: -log 3 - (1/3)(log(1/6 + 0.1) + log(1/3 + 0.1) + log(1/2 + 0.1)).
    logits, labels = one_position([[0.0, math.log(2.0), math.log(3.0)]])
    by_hand = -math.log(3.0) - (math.log(1 / 6 + 0.1) + math.log(1 / 3 + 0.1) + math.log(0.6)) / 3
    assert losses.uniform_kl_loss(logits, labels, probability_floor=0.1).item() == pytest.approx(by_hand, abs=1e-12)
    # The authors' floor of 1e-12 changes nothing measurable where no probability is that small.
    assert losses.uniform_kl_loss(logits, labels, probability_floor=1e-12).item() == pytest.approx(0.09589402415059, abs=1e-10)
    with pytest.raises(ValueError, match="probability_floor"):
        losses.uniform_kl_loss(logits, labels, probability_floor=-1.0)


@pytest.mark.parametrize("floor", [0.0, 1e-12, 0.05])
def test_uniform_kl_loss_equals_a_transcription_of_kl_from_uniform(floor: float) -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 7, generator=generator, dtype=torch.float64) * 3
    labels = torch.tensor([[-100, -100, 4, 1, 0, -100], [-100, 2, 2, 6, 5, 3]])
    expected = me_transcription(logits, labels != -100, floor)
    assert losses.uniform_kl_loss(logits, labels, floor).item() == pytest.approx(expected.item(), abs=TOL)
    if floor == 0.0:
        shifted = losses.uniform_cross_entropy_loss(logits, labels) - math.log(7)
        assert losses.uniform_kl_loss(logits, labels).item() == pytest.approx(shifted.item(), abs=TOL)


def test_pooled_npo_loss_by_hand_and_against_token_mean_cross_entropy() -> None:
    # Pooled NLLs 8/4 = 2 and 4/4 = 1: margin 1, beta 0.5 -> -(2/0.5) log sigmoid(0.5) = 4 log(1 + e^-0.5) = 1.8963...
    value = losses.pooled_npo_loss(torch.tensor([6.0, 2.0]), torch.tensor([2.0, 2.0]), torch.tensor([3.0, 1.0]), beta=0.5)
    assert value.item() == pytest.approx(4 * math.log(1 + math.exp(-0.5)), abs=1e-6)
    # Equal pooled means give (2/beta) log 2 whatever the per-sequence split (per-sequence NPO would not).
    value = losses.pooled_npo_loss(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0]), beta=0.1)
    assert value.item() == pytest.approx(20 * math.log(2), abs=1e-5)
    # Against outputs.loss-style means: F.cross_entropy over the flattened shifted batch, ignore_index -100.
    generator = torch.Generator().manual_seed(1)
    logits, reference = (torch.randn(2, 5, 9, generator=generator, dtype=torch.float64) for _ in range(2))
    labels = torch.tensor([[-100, 3, 1, -100, -100], [-100, -100, 8, 0, 2]])

    def token_mean(values: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(values[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1), ignore_index=-100)

    expected = -(2 / 0.3) * torch.log(torch.sigmoid(0.3 * (token_mean(logits) - token_mean(reference))))
    value = losses.pooled_npo_loss(losses.sequence_nll(logits, labels), losses.sequence_nll(reference, labels),
                                   losses.sequence_token_count(labels), beta=0.3)
    assert value.item() == pytest.approx(expected.item(), abs=TOL)


def test_sam_perturbation_has_radius_rho_along_the_gradient() -> None:
    gradients = [torch.tensor([3.0, 0.0]), None, torch.tensor([[4.0]])]
    epsilon = sam_perturbation(gradients, rho=0.5)  # ||g|| = 5 over both tensors
    assert epsilon[1] is None
    assert torch.allclose(epsilon[0], torch.tensor([0.3, 0.0])) and torch.allclose(epsilon[2], torch.tensor([[0.4]]))
    assert sam_perturbation([torch.zeros(3), None], rho=0.5) == [None, None], "a zero gradient has no direction: no step"
    assert sam_perturbation(gradients, rho=0.0) == [None, None, None]


def test_sequence_labels_score_every_real_token() -> None:
    batch = {"input_ids": torch.tensor([[5, 6, 7], [8, 9, 0]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    assert sequence_labels(batch).tolist() == [[5, 6, 7], [8, 9, -100]]


# --- SAM's step on the micro model ----------------------------------------------------------------------------------


@pytest.mark.parametrize("forget_nll", ["sequence", "pooled"])
def test_sam_gradient_equals_the_hand_written_step_and_theta_is_restored(micro_bench, model64, forget_nll: str) -> None:
    trainer, batch = direct_trainer(micro_bench, "sam_npo", model64, rho=0.05, alpha=0.7, beta=0.3, forget_nll=forget_nll)
    reference = copy.deepcopy(model64).requires_grad_(False)
    expected = sam_step_transcription(model64, reference, batch["forget"], batch["retain"], beta=0.3, rho=0.05, alpha=0.7,
                                      pooled=forget_nll == "pooled")
    before = [p.detach().clone() for p in model64.parameters()]
    trainer.gradient_step(model64, batch)
    assert all(torch.equal(p, b) for p, b in zip(model64.parameters(), before, strict=True)), "theta restored bit for bit"
    assert gradients_agree([p.grad for p in model64.parameters()], expected)
    # The perturbation matters: plain NPO's gradient at theta is measurably different.
    plain = sam_step_transcription(model64, reference, batch["forget"], batch["retain"], beta=0.3, rho=1e-30, alpha=0.7,
                                   pooled=forget_nll == "pooled")
    assert max(relative_error(a, b) for a, b in zip(plain, expected, strict=True)) > 1e-3


def test_sam_accumulates_micro_batches_each_with_its_own_perturbation(micro_bench, model64) -> None:
    trainer, batch = direct_trainer(micro_bench, "sam_npo", model64, rho=0.05)
    halves = [{key: {name: value[rows] for name, value in part.items()} for key, part in batch.items()}
              for rows in (slice(0, 4), slice(4, 8))]
    reference = copy.deepcopy(model64).requires_grad_(False)
    expected = [sam_step_transcription(model64, reference, half["forget"], half["retain"], beta=0.1, rho=0.05, alpha=1.0)
                for half in halves]
    trainer.current_gradient_accumulation_steps = 2
    for half in halves:
        trainer.gradient_step(model64, half)
    mean = [(first + second) / 2 for first, second in zip(*expected, strict=True)]
    assert gradients_agree([p.grad for p in model64.parameters()], mean)


def test_sam_costs_three_forward_passes_per_step(micro_bench, model64) -> None:
    calls: list[int] = []
    trainer, batch = direct_trainer(micro_bench, "sam_npo", model64, cache_reference=True)
    trainer._reference_cache = type("Cache", (), {"lookup": lambda self, b: torch.zeros(len(b["input_ids"]), dtype=torch.float64)})()
    model64.register_forward_hook(lambda module, args, output: calls.append(1))
    trainer.gradient_step(model64, batch)
    assert len(calls) == 3, "forget at theta, forget at theta + eps, retain at theta (reference NLLs cached)"


def test_one_sgd_step_of_the_run_is_minus_the_hand_written_update(micro_bench, model64) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    reference = copy.deepcopy(model64).requires_grad_(False)
    config = build_config(METHODS.get("sam_npo").config, {**SGD_STEP})  # cached reference NLLs, the default
    _, batch = direct_trainer(micro_bench, "sam_npo", copy.deepcopy(model64))
    expected = sam_step_transcription(model64, reference, batch["forget"], batch["retain"], beta=0.1, rho=0.01, alpha=1.0)
    before = [p.detach().clone() for p in model64.parameters()]
    outcome = unlearn(model64, tokenizer, "sam_npo", forget, retain, config, FMT, show_progress=False)
    assert outcome.model.dtype == torch.float64 and sum("loss" in entry for entry in outcome.log_history) == 1
    # The cached reference NLLs are float32 numbers: agreement to about 1e-6 of a step.
    steps = [after - start for after, start in zip(outcome.model.parameters(), before, strict=True)]
    assert gradients_agree(steps, [-gradient for gradient in expected], rtol=1e-5)


def test_rho_zero_gives_plain_npo_update(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    results = {}
    for method, extra in (("npo", {}), ("sam_npo", {"rho": 0.0})):
        model = load_model(micro_bench.target_dir).double()
        config = build_config(METHODS.get(method).config, {**SGD_STEP, "num_epochs": 2, **extra})
        results[method] = unlearn(model, tokenizer, method, forget, retain, config, FMT, show_progress=False).model
    start = load_model(micro_bench.target_dir).double()
    assert min(relative_error(npo, first) for npo, first in zip(results["npo"].parameters(), start.parameters(), strict=True)) > 1e-4
    for npo, sam in zip(results["npo"].parameters(), results["sam_npo"].parameters(), strict=True):
        assert torch.allclose(npo, sam, rtol=1e-10, atol=1e-12)


def test_randomized_smoothing_averages_seeded_gaussian_perturbations(micro_bench, model64) -> None:
    trainer, batch = direct_trainer(micro_bench, "sam_npo", model64, smoothing="rs", rs_samples=2, rs_sigma=0.01)
    reference = copy.deepcopy(model64).requires_grad_(False)
    copy_ = copy.deepcopy(model64)
    parameters = list(copy_.parameters())
    theta = [p.detach().clone() for p in parameters]
    generator = noise_generator(seed=0, step=0, micro_batch=0)
    g_f = [torch.zeros_like(p) for p in parameters]
    for _ in range(2):
        with torch.no_grad():
            for parameter, value in zip(parameters, theta, strict=True):
                parameter.copy_(value + 0.01 * torch.randn(parameter.shape, generator=generator).double())
        for total, part in zip(g_f, torch.autograd.grad(npo_transcription(copy_, reference, batch["forget"], 0.1, False), parameters),
                               strict=True):
            total += part / 2
    with torch.no_grad():
        for parameter, value in zip(parameters, theta, strict=True):
            parameter.copy_(value)
    g_r = torch.autograd.grad(retain_transcription(copy_, batch["retain"]), parameters)
    plain = torch.autograd.grad(npo_transcription(copy_, reference, batch["forget"], 0.1, False), parameters)
    assert max(relative_error(a, b) for a, b in zip(g_f, plain, strict=True)) > 1e-3, "the noise changes the forget gradient"
    trainer.gradient_step(model64, batch)
    assert all(torch.equal(parameter, value) for parameter, value in zip(model64.parameters(), theta, strict=True))
    assert gradients_agree([p.grad for p in model64.parameters()], [f + r for f, r in zip(g_f, g_r, strict=True)])


def test_lora_run_changes_only_the_adapters(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = build_config(METHODS.get("sam_npo").config, {"lora_rank": 4, "lora_alpha": 8.0, "learning_rate": 1e-2, "num_epochs": 2,
                                                          "batch_size": 4, "warmup_ratio": 0.0, "lora_merge": False})
    outcome = unlearn(model, tokenizer, "sam_npo", micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                      show_progress=False)
    assert is_lora_model(outcome.model)
    changed = {name for name, p in outcome.model.named_parameters() if "lora_" in name and p.abs().sum() > 0 and "lora_B" in name}
    assert changed, "the B factors (zero at start) moved"
    for name, parameter in outcome.model.named_parameters():
        if "lora_" not in name:
            base = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(parameter, before[base]), f"{name} is a base weight and must stay bit-identical"


def test_sam_runs_in_bf16_and_with_gradient_checkpointing(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    runs = {}
    for name, extra in (("plain", {}), ("checkpointing", {"gradient_checkpointing": True}), ("bf16", {"mixed_precision": "bf16"})):
        config = build_config(METHODS.get("sam_npo").config, {**SGD_STEP, "learning_rate": 0.1, "num_epochs": 2, **extra})
        runs[name] = unlearn(load_model(micro_bench.target_dir), tokenizer, "sam_npo", forget, retain, config, FMT, show_progress=False)
    # Recomputing activations in the backward pass changes no number (step 1's torch.autograd.grad included).
    for plain, recomputed in zip(runs["plain"].model.parameters(), runs["checkpointing"].model.parameters(), strict=True):
        assert torch.allclose(plain, recomputed, rtol=1e-5, atol=1e-7)
    bf16 = [entry["loss"] for entry in runs["bf16"].log_history if "loss" in entry]
    assert bf16 and all(math.isfinite(value) for value in bf16)
    assert next(runs["bf16"].model.parameters()).dtype == torch.float32, "weights stay in their dtype"
    assert any("sharpness" in entry for entry in runs["bf16"].log_history), "the SAM term is logged"


# --- ME+GD ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("positions", ["sequence", "answer"])
def test_me_gd_loss_equals_its_transcription(micro_bench, model64, positions: str) -> None:
    trainer, batch = direct_trainer(micro_bench, "me_gd", model64, forget_positions=positions, forget_weight=0.3, alpha=0.5)
    loss = trainer.compute_loss(model64, batch)
    forget = batch["forget"]
    logits = model64(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    scored = forget["attention_mask"].bool() if positions == "sequence" else forget["labels"] != -100
    expected = 0.3 * me_transcription(logits, scored, 1e-12) + 0.5 * retain_transcription(model64, batch["retain"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-10)


def test_me_gd_drives_forget_predictions_towards_uniform(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    config = build_config(METHODS.get("me_gd").config, {"learning_rate": 3e-3, "num_epochs": 3, "batch_size": 4, "warmup_ratio": 0.0})
    outcome = unlearn(model, tokenizer, "me_gd", micro_bench.split("forget10"), micro_bench.split("retain90"), config, FMT,
                      show_progress=False)
    forget_terms = [entry["forget_loss"] for entry in outcome.log_history if "forget_loss" in entry]
    assert forget_terms[-1] < forget_terms[0], forget_terms


# --- settings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "message"), [
    ({"rho": "-0.1"}, "rho must be >= 0"),
    ({"smoothing": "gp"}, "smoothing must be one of sam, rs"),
    ({"forget_nll": "mean"}, "forget_nll must be one of sequence, pooled"),
    ({"smoothing": "rs", "rs_samples": "0"}, "rs_samples must be >= 1"),
    ({"smoothing": "rs", "rs_sigma": "0"}, "rs_sigma must be > 0"),
    ({"smoothing": "rs", "rho": "0.05"}, "rho is a setting of smoothing=sam, but smoothing is rs"),
    ({"rs_samples": "5"}, "rs_samples is a setting of smoothing=rs, but smoothing is sam"),
    ({"mixed_precision": "fp16"}, "Use mixed_precision=bf16"),
    ({"beta": "0"}, "beta must be > 0"),
])
def test_sam_npo_settings_checked(settings: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        resolve_method("sam_npo", settings)


def test_sam_npo_defaults_are_npo_plus_the_smoothing() -> None:
    sam, npo = resolve_method("sam_npo", {}), resolve_method("npo", {})
    assert (sam.beta, sam.alpha, sam.learning_rate, sam.num_epochs, sam.warmup_ratio) == (npo.beta, npo.alpha, npo.learning_rate,
                                                                                         npo.num_epochs, npo.warmup_ratio)
    assert (sam.smoothing, sam.rho, sam.forget_nll, sam.cache_reference) == ("sam", 0.01, "sequence", True)
    assert not sam.needs_reference()
    assert resolve_method("sam_npo", {"smoothing": "rs", "rs_samples": "2"}).rs_samples == 2


@pytest.mark.parametrize(("settings", "message"), [
    ({"forget_weight": "0"}, "forget_weight must be > 0"),
    ({"alpha": "-1"}, "alpha must be >= 0"),
    ({"probability_floor": "1"}, "probability_floor must be below 1"),
    ({"probability_floor": "-1e-12"}, "probability_floor must be >= 0"),
    ({"forget_positions": "question"}, "forget_positions must be one of sequence, answer"),
])
def test_me_gd_settings_checked(settings: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        resolve_method("me_gd", settings)


def test_me_gd_defaults_are_the_authors_tofu_script() -> None:
    config = resolve_method("me_gd", {})
    optimisation = (config.learning_rate, config.num_epochs, config.batch_size, config.weight_decay, config.warmup_ratio)
    assert optimisation == (1e-5, 5.0, 32, 0.01, 0.2)
    assert (config.forget_weight, config.alpha, config.forget_positions, config.probability_floor) == (0.1, 1.0, "sequence", 1e-12)
    assert not config.needs_reference() and resolve_method("me_gd", {"retain_loss": "kl"}).needs_reference()
