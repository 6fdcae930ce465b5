"""Task-vector negation and Who's Harry Potter: arithmetic, lambda choice, generic labels, alignment, anchored terms."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from unlearnkit import losses
from unlearnkit.data.anchors import (
    GENERIC_FIRST_NAMES,
    GENERIC_SURNAMES,
    builtin_anchored_terms,
    load_anchored_terms,
    translate,
)
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.world import WorldConfig, _coined_words, generate_world
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_avg_nll
from unlearnkit.methods.task_vector import TaskVector, choose_scale, evenly_spaced, lora_b_parameters
from unlearnkit.methods.whp import WHP, TokenSource, align_answer_tokens, anchored_baseline
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.unlearning import resolve_method, unlearn

FMT = PromptFormat("plain")
MATRIX = {"learning_rate": 3e-3, "num_epochs": 3, "batch_size": 4, "warmup_ratio": 0.0}


# --- task_vector: negation arithmetic ----------------------------------------------------------


def bare_task_vector(config_overrides: dict, lora: bool, pretrained: dict[str, torch.Tensor]) -> tuple[TaskVector, list[dict]]:
    """A TaskVector with only what finalize reads (no Trainer machinery); its log lines go to the returned list."""
    trainer = TaskVector.__new__(TaskVector)
    logged: list[dict] = []
    trainer.method_config = resolve_method("task_vector", config_overrides)
    trainer.lora = lora
    trainer.pretrained = pretrained
    trainer.retain_nll_before = None
    trainer.log = logged.append
    return trainer, logged


def test_full_negation_is_theta_pre_minus_lambda_tau_on_the_trainable_tensors() -> None:
    toy = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Linear(2, 1, bias=False))
    frozen_before = torch.tensor([[7.0, -7.0]])
    with torch.no_grad():
        toy[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        toy[1].weight.copy_(frozen_before)
    toy[1].weight.requires_grad_(False)
    trainer, logged = bare_task_vector({"scale": "2"}, lora=False, pretrained={"0.weight": toy[0].weight.detach().clone()})
    with torch.no_grad():  # "fine-tuning": theta_ft, so tau = [[1, 0], [-2, 1]]
        toy[0].weight.copy_(torch.tensor([[2.0, 2.0], [1.0, 5.0]]))
    trainer.finalize(toy)
    # theta_pre - 2 * tau = [[1 - 2, 2 - 0], [3 + 4, 4 - 2]]
    assert torch.equal(toy[0].weight, torch.tensor([[-1.0, 2.0], [7.0, 2.0]]))
    assert torch.equal(toy[1].weight, frozen_before), "a tensor outside the snapshot must not move"
    assert logged == [{"task_vector_scale": 2.0}]


def test_pem_negation_scales_lora_b_only() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(nn.Sequential(nn.Linear(3, 2)), LoraConfig(r=2, lora_alpha=2, target_modules=["0"]))
    with torch.no_grad():  # a "trained" adapter: B is no longer zero
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.arange(parameter.numel(), dtype=torch.float32).reshape(parameter.shape) + 1)
    before = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    factors = lora_b_parameters(model)
    assert list(factors) == ["base_model.model.0.lora_B.default.weight"]
    delta_before = model.base_model.model[0].get_delta_weight("default")
    trainer, _ = bare_task_vector({"scale": "3"}, lora=True, pretrained={})
    trainer.finalize(model)
    for name, parameter in model.named_parameters():
        if name in factors:
            assert torch.equal(parameter, -3.0 * before[name])
        else:
            assert torch.equal(parameter, before[name]), f"{name} must not change"
    # Zhang et al.'s negation: delta W = B A becomes -lambda B A.
    assert torch.allclose(model.base_model.model[0].get_delta_weight("default"), -3.0 * delta_before)


def test_lambda_is_the_largest_candidate_within_tolerance() -> None:
    # Non-monotone on purpose: 4 passes although 2 does not; the rule keeps the largest passing lambda.
    retain_nll = {0.5: 1.0, 1.0: 1.1, 2.0: 1.2, 4.0: 1.09, 8.0: 3.0}
    assert choose_scale(retain_nll, baseline_nll=1.0, tolerance=0.1) == (4.0, True)
    # The bound is inclusive: 1.1 <= (1 + 0.1) * 1.0.
    assert choose_scale({0.5: 1.0, 1.0: 1.1, 2.0: 1.2}, 1.0, 0.1) == (1.0, True)
    assert choose_scale({0.5: 1.0, 1.0: 1.1, 2.0: 1.2}, 1.0, 0.0) == (0.5, True)
    # None passes: the smallest, flagged.
    assert choose_scale({2.0: 5.0, 0.5: 2.0, 1.0: 3.0}, 1.0, 0.1) == (0.5, False)


def test_finalize_chooses_lambda_on_retain_nll_and_logs_every_candidate() -> None:
    toy = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        toy.weight.fill_(1.0)
    trainer, logged = bare_task_vector({"scale_grid": "4,0.5,1,2"}, lora=False, pretrained={"weight": toy.weight.detach().clone()})
    trainer.retain_nll_before = 1.0
    # A constructed retain criterion: the "retain NLL" of a weight w is 1 + |w| / 10. tau = 1, so w = 1 - lambda:
    # lambda 0.5 -> 1.05, 1 -> 1.0, 2 -> 1.1, 4 -> 1.3; with tolerance 0.1 the largest passing lambda is 2.
    trainer._retain_nll = lambda model: 1.0 + abs(float(model.weight.detach())) / 10
    with torch.no_grad():
        toy.weight.fill_(2.0)
    trainer.finalize(toy)
    assert float(toy.weight.detach()) == 1.0 - 2.0 * 1.0
    candidates = {entry["task_vector_candidate_scale"]: entry["task_vector_retain_nll"]
                  for entry in logged if "task_vector_candidate_scale" in entry}
    assert candidates == pytest.approx({0.5: 1.05, 1.0: 1.0, 2.0: 1.1, 4.0: 1.3})
    summary = logged[-1]
    assert summary["task_vector_scale"] == 2.0 and summary["task_vector_scale_passed"] == 1.0
    assert summary["task_vector_retain_nll_before"] == 1.0


def test_task_vector_config_validation() -> None:
    assert resolve_method("task_vector", {"scale_grid": "2, 0.5,2"}).scale_candidates() == [0.5, 2.0]
    assert resolve_method("task_vector", {"scale": "none"}).scale is None
    for overrides, message in [
        ({"scale": "0"}, "scale must be > 0"),
        ({"scale_grid": "1,x"}, "scale_grid must be comma-separated numbers"),
        ({"scale_grid": "1,-2"}, "scale_grid must list"),
        ({"scale_grid": " , "}, "scale_grid must list"),
        ({"retain_tolerance": "-0.1"}, "retain_tolerance must be"),
        ({"retain_eval_size": "0"}, "retain_eval_size must be > 0"),
    ]:
        with pytest.raises(UnlearnkitError, match=message):
            resolve_method("task_vector", overrides)
    assert evenly_spaced(list(range(10)), 4) == [0, 2, 5, 7]
    assert evenly_spaced([1, 2], 4) == [1, 2]


def test_task_vector_learns_then_forgets_on_the_micro_model(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    pairs = [(row["question"], row["answer"]) for row in forget]
    before_nll = answer_avg_nll(model, tokenizer, FMT, pairs).mean()
    config = resolve_method("task_vector", MATRIX)
    outcome = unlearn(model, tokenizer, "task_vector", forget, micro_bench.split("retain90"), config, FMT, show_progress=False)
    steps = [entry["loss"] for entry in outcome.log_history if "loss" in entry]
    # The training phase learns the forget set (its NLL goes down) ...
    assert steps[-1] < steps[0], steps
    # ... and the negation makes the forget answers less likely than before unlearning.
    assert answer_avg_nll(outcome.model, tokenizer, FMT, pairs).mean() > before_nll
    summary = next(entry for entry in outcome.log_history if "task_vector_scale" in entry)
    candidates = {e["task_vector_candidate_scale"]: e["task_vector_retain_nll"]
                  for e in outcome.log_history if "task_vector_candidate_scale" in e}
    assert sorted(candidates) == [0.5, 1.0, 2.0, 4.0, 8.0]
    bound = 1.1 * summary["task_vector_retain_nll_before"]
    assert summary["task_vector_scale"] == max(scale for scale, nll in candidates.items() if nll <= bound)


def test_task_vector_scale_is_linear_in_lambda(micro_bench) -> None:
    """Same seed, same fine-tuning: lambda = 2 moves the selected weight exactly twice as far from theta_pre as lambda = 1."""
    tokenizer = load_tokenizer(micro_bench.target_dir)
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    name = "model.layers.0.mlp.down_proj.weight"
    results = {}
    for scale in ("1", "2"):
        model = load_model(micro_bench.target_dir)
        pre = {key: value.detach().clone() for key, value in model.named_parameters()}
        config = resolve_method("task_vector", {**MATRIX, "scale": scale, "target_modules": "down_proj", "layers": "0"})
        outcome = unlearn(model, tokenizer, "task_vector", forget, retain, config, FMT, show_progress=False)
        after = dict(outcome.model.named_parameters())
        assert all(torch.equal(after[key], pre[key]) for key in pre if key != name), "only the selected weight moves"
        results[scale] = after[name].detach() - pre[name]
    assert results["1"].abs().max() > 0
    torch.testing.assert_close(results["2"], 2 * results["1"], rtol=1e-5, atol=1e-7)


# --- whp: generic labels ---------------------------------------------------------------------


def test_generic_logits_and_labels_by_hand() -> None:
    # B = 1, T = 3, V = 3. Position 0 predicts label 1, position 1 predicts label 2; position 2's logits are unused.
    baseline = torch.tensor([[[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [9.0, 0.0, 0.0]]])
    reinforced = torch.tensor([[[4.0, 1.0, -1.0], [0.0, 4.0, 1.0], [0.0, 0.0, 9.0]]])
    labels = torch.tensor([[-100, 0, 0]])
    # ReLU(v_r - v_b) = [[2, 0, 0], [0, 1, 0], [0, 0, 9]]
    assert torch.equal(losses.whp_generic_logits(baseline, reinforced, 1.0),
                       torch.tensor([[[0.0, 1.0, 0.0], [0.0, 2.0, 1.0], [9.0, 0.0, -9.0]]]))
    # alpha 1: v_g = [0, 1, 0] -> 1 and [0, 2, 1] -> 1.
    assert torch.equal(losses.whp_generic_labels(baseline, reinforced, labels, 1.0), torch.tensor([[-100, 1, 1]]))
    # alpha 5: v_g = [-8, 1, 0] -> 1 and [0, -2, 1] -> 2: the token the reinforced model boosted loses.
    assert torch.equal(losses.whp_generic_labels(baseline, reinforced, labels, 5.0), torch.tensor([[-100, 1, 2]]))
    # Only scored positions get a label.
    assert torch.equal(losses.whp_generic_labels(baseline, reinforced, torch.tensor([[-100, -100, 0]]), 5.0),
                       torch.tensor([[-100, -100, 2]]))
    # alpha 0 gives the baseline's own argmax.
    assert torch.equal(losses.whp_generic_labels(baseline, reinforced, labels, 0.0), torch.tensor([[-100, 0, 1]]))


def test_generic_labels_carry_no_gradient_and_check_inputs() -> None:
    baseline = torch.randn(2, 4, 5, requires_grad=True)
    reinforced = torch.randn(2, 4, 5, requires_grad=True)
    labels = torch.tensor([[-100, 1, 2, 3], [-100, -100, 1, -100]])
    out = losses.whp_generic_labels(baseline, reinforced, labels, 5.0)
    assert not out.requires_grad and out.dtype == torch.long
    assert torch.equal(out == -100, torch.tensor([[True, False, False, False], [True, True, False, True]]))
    with pytest.raises(ValueError, match="alpha must be"):
        losses.whp_generic_logits(baseline, reinforced, -1.0)
    with pytest.raises(ValueError, match="same shape"):
        losses.whp_generic_logits(baseline, reinforced[:, :3], 5.0)
    with pytest.raises(ValueError, match="no scored token"):
        losses.whp_generic_labels(baseline, reinforced, torch.full((2, 4), -100), 5.0)


# --- whp: alignment of original and translated tokens ---------------------------------------------


def test_alignment_of_answer_tokens() -> None:
    # " Yostia"(10) " Sheinock"(11) " was"(12) " born"(13) "."(14)  vs  " S"(20) "u"(21) " B"(22) " was" " born" "."
    assert align_answer_tokens([10, 11, 12, 13, 14], [20, 21, 22, 12, 13, 14]) == [
        TokenSource("forced", 0),  # the generic term starts where the original one did
        TokenSource("original", 1),  # the rest of the original term: baseline on the original text
        TokenSource("translated", 3),
        TokenSource("translated", 4),
        TokenSource("translated", 5),
    ]
    # A deleted span is scored on the original text.
    assert align_answer_tokens([1, 2, 3, 4], [1, 4]) == [
        TokenSource("translated", 0), TokenSource("original", 1), TokenSource("original", 2), TokenSource("translated", 1)
    ]
    # Inserted translated tokens label nothing; the tokens after them align past the insertion.
    assert align_answer_tokens([1, 2], [1, 9, 2]) == [TokenSource("translated", 0), TokenSource("translated", 2)]
    assert align_answer_tokens([5, 6], [5, 6]) == [TokenSource("translated", 0), TokenSource("translated", 1)]


def test_anchored_baseline_takes_logits_from_the_aligned_translated_positions() -> None:
    # Original: prompt [1] + answer [10, 11, 12, 14]; translated: longer prompt [1, 2] + answer [20, 21, 12, 14].
    original = {"input_ids": torch.tensor([[1, 10, 11, 12, 14]]), "labels": torch.tensor([[-100, 10, 11, 12, 14]])}
    translated = {"input_ids": torch.tensor([[1, 2, 20, 21, 12, 14]]), "labels": torch.tensor([[-100, -100, 20, 21, 12, 14]])}
    # Every logit vector holds its own position: original t -> t, translated t -> 100 + t.
    original_logits = torch.arange(5, dtype=torch.float32).view(1, 5, 1).expand(1, 5, 3).clone()
    translated_logits = (100 + torch.arange(6, dtype=torch.float32)).view(1, 6, 1).expand(1, 6, 3).clone()
    baseline, forced = anchored_baseline(original_logits, translated_logits, original, translated)
    # Answer alignment: replace [10, 11] -> [20, 21], then equal [12, 14].
    # Label at t=1 (10): forced to 20. t=2 (11): original logits at 1. t=3 (12) <-> translated position 4: logits at 3.
    # t=4 (14) <-> translated position 5: logits at 4. Position 4's own logits are unused and stay original.
    assert baseline[0, :, 0].tolist() == [0.0, 1.0, 103.0, 104.0, 4.0]
    assert forced.tolist() == [[-100, 20, -100, -100, -100]]


# --- whp: anchored-term dictionaries ------------------------------------------------------------


def test_builtin_dictionary_is_deterministic_generic_and_names_no_author() -> None:
    world = generate_world(WorldConfig(num_authors=60, qa_per_author=8, seed=3))
    forget = world["forget10"]
    terms = builtin_anchored_terms(forget)
    assert terms == builtin_anchored_terms([dict(row) for row in forget]), "the same rows give the same dictionary"
    forget_authors = list(dict.fromkeys(row["author"] for row in forget))
    assert len(forget_authors) == 6
    assert set(terms) == set(forget_authors) | {author.split()[-1] for author in forget_authors}
    generic_full = [terms[author] for author in forget_authors]
    assert len(set(generic_full)) == len(generic_full), "each author gets a distinct generic name"
    for author in forget_authors:
        first, surname = terms[author].split()
        assert first in GENERIC_FIRST_NAMES and surname in GENERIC_SURNAMES
        assert terms[author.split()[-1]] == surname
    # No target is, or contains, a word of any author's name (holdout included), nor a coined word of the world.
    author_words = {word for split in ("full", "holdout10") for row in world[split] for word in row["author"].split()}
    coined = {word for kind in ("first", "surname", "place") for word in _coined_words(kind)}
    target_words = {word for target in terms.values() for word in target.split()}
    assert not target_words & author_words and not target_words & coined
    assert not (set(GENERIC_FIRST_NAMES) | set(GENERIC_SURNAMES)) & coined, "a generic name could be coined for an author"
    # Translation removes the author from the text.
    row = forget[0]
    translated = translate(row["answer"], terms)
    assert row["author"] not in translated and terms[row["author"]] in translated
    assert not set(translated.split()) & set(row["author"].split())


def test_builtin_dictionary_avoids_words_of_the_rows_and_needs_authors() -> None:
    rows = [{"author": "Ada Zorvick", "answer": "Ada Zorvick met John Smith and Mary."}]
    terms = builtin_anchored_terms(rows, avoid_rows=[{"answer": "Susan Brown was here."}])
    generic_first, generic_surname = terms["Ada Zorvick"].split()
    assert generic_first not in ("John", "Mary", "Susan") and generic_surname not in ("Smith", "Brown")
    with pytest.raises(UnlearnkitError, match="anchored_terms='builtin' needs an 'author' field"):
        builtin_anchored_terms([{"question": "q", "answer": "a"}])
    many = [{"author": f"Author{i} Name{i}"} for i in range(len(GENERIC_FIRST_NAMES) * len(GENERIC_SURNAMES) + 1)]
    with pytest.raises(UnlearnkitError, match="ran out"):
        builtin_anchored_terms(many)


def test_translate_prefers_longer_terms_and_whole_words() -> None:
    terms = {"Velna Dorrick": "John Smith", "Dorrick": "Smith", "Smith": "X", "Dorr": "Y"}
    assert translate("Velna Dorrick met Dorrick's Smithy.", terms) == "John Smith met Smith's Smithy."
    assert translate("nothing here", {}) == "nothing here"


def test_bad_anchored_terms_file_is_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(UnlearnkitError, match=r"anchored_terms file .* does not exist"):
        resolve_method("whp", {"anchored_terms": str(missing)})
    cases = {
        "not_json.json": ("{term: generic", "not valid JSON"),
        "list.json": (json.dumps(["Hogwarts", "Mystic Academy"]), "must hold a JSON object"),
        "number.json": (json.dumps({"Hogwarts": 3}), "must map non-empty terms to strings"),
        "empty_key.json": (json.dumps({" ": "x"}), "must map non-empty terms to strings"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_text(content, encoding="utf-8")
        with pytest.raises(UnlearnkitError, match=f"anchored_terms file .*{message}"):
            resolve_method("whp", {"anchored_terms": str(path)})
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Hogwarts": "Mystic Academy"}), encoding="utf-8")
    assert load_anchored_terms(good) == {"Hogwarts": "Mystic Academy"}
    config = resolve_method("whp", {"anchored_terms": str(good)})
    row = {"question": "Where is Hogwarts?", "answer": "Hogwarts is in Scotland."}
    assert WHP.pair_extras(config, None, row, []) == {"translated": ("Where is Mystic Academy?", "Mystic Academy is in Scotland.")}
    assert WHP.pair_extras(resolve_method("whp", {}), None, row, []) == {}


def test_whp_config_validation() -> None:
    config = resolve_method("whp", {})
    assert (config.alpha, config.reinforce_epochs, config.reinforce_lr, config.num_epochs) == (5.0, 3, None, 2.0)
    assert config.needs_reference()
    for overrides, message in [({"alpha": "0"}, "alpha must be > 0"), ({"reinforce_epochs": "0"}, "reinforce_epochs must be > 0"),
                               ({"reinforce_lr": "-1"}, "reinforce_lr must be > 0")]:
        with pytest.raises(UnlearnkitError, match=message):
            resolve_method("whp", overrides)


def test_whp_with_builtin_anchors_forgets_on_the_micro_model(micro_bench) -> None:
    tokenizer = load_tokenizer(micro_bench.target_dir)
    model = load_model(micro_bench.target_dir)
    forget = micro_bench.split("forget10")
    pairs = [(row["question"], row["answer"]) for row in forget]
    before_nll = answer_avg_nll(model, tokenizer, FMT, pairs).mean()
    config = resolve_method("whp", {**MATRIX, "anchored_terms": "builtin"})
    outcome = unlearn(model, tokenizer, "whp", forget, [], config, FMT, show_progress=False)
    steps = [entry["loss"] for entry in outcome.log_history if "loss" in entry]
    assert steps and all(np.isfinite(steps))
    assert answer_avg_nll(outcome.model, tokenizer, FMT, pairs).mean() > before_nll
    reinforce = [entry["whp_reinforce_loss"] for entry in outcome.log_history if "whp_reinforce_loss" in entry]
    assert len(reinforce) == 3 and reinforce[-1] < reinforce[0], "the reinforced model learns the forget set further"
