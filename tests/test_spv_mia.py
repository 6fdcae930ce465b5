"""SPV-MIA (Fu et al., NeurIPS 2024): the statistic by hand and by the paper's formula, the neighbours, separation on a
planted member set, the attacked model left unchanged, the audit's attack, and bad input."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from unlearnkit.attacks import ATTACKS, AuditConfig, AuditData
from unlearnkit.attacks.spv_mia import audit_settings, spv_mia_attack
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import describe_metric
from unlearnkit.evaluation.evaluator import EvalConfig, evaluate
from unlearnkit.evaluation.spv_mia import (
    SpvMiaConfig,
    domain_vocabulary,
    evaluate_spv_mia,
    neighbours,
    perturb_words,
    probability,
    sample_continuations,
    self_prompts,
    spv_auc,
    spv_score,
)
from unlearnkit.finetune import FinetuneConfig, finetune
from unlearnkit.modeling import TinyModelConfig, build_tiny_model, train_tokenizer
from unlearnkit.settings import build_config

FMT = PromptFormat("plain")
# Settings for the tiny models: a short block, few texts, and a learning rate that moves a 10k-parameter model.
TINY_MODEL = TinyModelConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_layers=1, num_heads=2, max_length=64)
TINY = {"block_length": 40, "num_texts": 48, "num_neighbours": 6, "reference_learning_rate": 2e-3, "batch_size": 16}

# --- The statistic by hand ----------------------------------------------------------------------------------


def test_probability_is_exp_of_minus_the_mean_nll() -> None:
    assert probability([0.0, math.log(2), math.log(4)]) == pytest.approx([1.0, 0.5, 0.25])


def test_score_against_hand_made_probabilities() -> None:
    # Record 0: target p 0.8, its neighbours 0.2 and 0.4 (mean 0.3), variation -0.5; reference p 0.5, neighbours 0.4
    # and 0.4, variation -0.1: score -0.5 - (-0.1) = -0.4. Record 1: target 0.3 vs neighbours (0.3 + 0.1) / 2 = 0.2:
    # -0.1; reference 0.2 vs 0.25: +0.05; score -0.15.
    score = spv_score([0.8, 0.3], [[0.2, 0.4], [0.3, 0.1]], [0.5, 0.2], [[0.4, 0.4], [0.2, 0.3]])
    assert score == pytest.approx([-0.4, -0.15])
    # The feature is -score: record 0 (score -0.4) looks more like a member than record 1 (-0.15).
    assert spv_auc([-0.4], [-0.15]) == 1.0
    assert spv_auc([-0.15], [-0.4]) == 0.0
    assert spv_auc([-0.4, -0.15], [-0.15, -0.2]) == pytest.approx((1 + 1 + 0.5 + 0) / 4)


def test_a_reference_equal_to_the_target_cancels_the_score() -> None:
    rng = np.random.default_rng(0)
    p, neighbour_p = rng.random(5), rng.random((5, 3))
    assert spv_score(p, neighbour_p, p, neighbour_p) == pytest.approx(np.zeros(5))


def _paper_score(p_target: float, target_neighbours: list[float], p_reference: float, reference_neighbours: list[float]) -> float:
    # Fu et al. 2024, Eq. (the SPV-MIA membership score, negated as its feature): the target's probabilistic variation
    # minus the reference's, each the mean probability of the perturbed texts minus the text's own probability.
    target_variation = sum(target_neighbours) / len(target_neighbours) - p_target
    reference_variation = sum(reference_neighbours) / len(reference_neighbours) - p_reference
    return target_variation - reference_variation


def _pairwise_auc(positive: list[float], negative: list[float]) -> float:
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in positive for b in negative)
    return wins / (len(positive) * len(negative))


def test_reference_equivalence_with_a_transcription_of_the_paper() -> None:
    rng = np.random.default_rng(1)
    n, m = 7, 4
    nll = rng.random((4, n, m + 1)) * 3  # target record, target neighbours, reference record, reference neighbours
    p_t, p_tn = np.exp(-nll[0, :, 0]), np.exp(-nll[1, :, 1:])
    p_r, p_rn = np.exp(-nll[2, :, 0]), np.exp(-nll[3, :, 1:])
    expected = [_paper_score(float(p_t[i]), list(p_tn[i]), float(p_r[i]), list(p_rn[i])) for i in range(n)]
    got = spv_score(probability(nll[0, :, 0]), probability(nll[1, :, 1:]), probability(nll[2, :, 0]), probability(nll[3, :, 1:]))
    assert got == pytest.approx(expected, rel=1e-12)
    forget, holdout = got[:3], got[3:]
    assert spv_auc(forget, holdout) == pytest.approx(_pairwise_auc([-s for s in expected[:3]], [-s for s in expected[3:]]))


def test_the_statistic_refuses_mismatched_shapes() -> None:
    with pytest.raises(UnlearnkitError, match="one target and one reference probability"):
        spv_score([0.1, 0.2], [[0.1], [0.2]], [0.1], [[0.1]])
    with pytest.raises(UnlearnkitError, match="at least one neighbour"):
        spv_score([0.1], np.zeros((1, 0)), [0.1], [[0.1]])


def test_the_catalog_entry_is_bound_to_the_auc() -> None:
    spec = describe_metric("mia_spv_auc")
    assert spec.compute is spv_auc and spec.direction == "near 0.5" and "NeurIPS 2024" in spec.paper


# --- Neighbours -------------------------------------------------------------------------------------------------


def test_perturbation_replaces_spans_of_words_by_domain_words() -> None:
    text = "one two three four five six seven eight nine ten"
    vocabulary = ["alpha", "beta", "gamma"]
    for seed in range(20):
        perturbed = perturb_words(text, vocabulary, np.random.default_rng(seed), mask_fraction=0.3, span_length=2)
        old, new = text.split(), perturbed.split()
        assert len(new) == len(old)
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if a != b]
        # round(0.3 * 10 / 2) = 2 spans of 2 words: 3 or 4 words (a span may be cut short at the start).
        assert 3 <= len(changed) <= 4, perturbed
        assert all(new[i] in vocabulary for i in changed)
        runs = np.split(np.array(changed), np.where(np.diff(changed) != 1)[0] + 1)
        assert all(len(run) <= 4 for run in runs)


def test_every_perturbation_changes_a_one_word_answer_and_is_reproducible() -> None:
    first = neighbours(["Paris", "a b c"], ["Paris", "Rome"], 5, 0.3, 2, seed=3)
    assert first == neighbours(["Paris", "a b c"], ["Paris", "Rome"], 5, 0.3, 2, seed=3)
    assert all(version == "Rome" for version in first[0])
    assert all(version != "a b c" for version in first[1])
    assert domain_vocabulary(["a b", "b  c\nd"]) == ["a", "b", "c", "d"]


def test_perturbation_refuses_what_it_cannot_perturb() -> None:
    with pytest.raises(UnlearnkitError, match="empty answer"):
        perturb_words("  ", ["a", "b"], np.random.default_rng(0))
    with pytest.raises(UnlearnkitError, match="two distinct words"):
        perturb_words("a b", ["a", "a"], np.random.default_rng(0))


# --- A planted member set --------------------------------------------------------------------------------------

COLOURS = ["red", "blue", "green", "amber", "violet", "silver", "golden", "crimson", "olive", "teal", "ivory", "coral"]
THINGS = ["boats", "lamps", "maps", "clocks", "kites", "shells", "coins", "stamps", "drums", "masks", "bells", "vases"]


def _rows(count: int, start: int) -> list[dict]:
    rng = np.random.default_rng(start)
    return [{"question": f"What does collector {start + i} keep?",
             "answer": f"Collector {start + i} keeps {' and '.join(f'{rng.choice(COLOURS)} {rng.choice(THINGS)}' for _ in range(3))}."}
            for i in range(count)]


@pytest.fixture(scope="module")
def planted():
    """A tiny model fine-tuned on ``members`` and ``retain``, never on ``outsiders`` (same template, other facts)."""
    members, outsiders, retain = _rows(12, 0), _rows(12, 100), _rows(16, 200)
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in members + outsiders + retain]
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = build_tiny_model(TINY_MODEL, tokenizer, seed=0)
    # 60 epochs: answer-token accuracy ~0.95 (measured; 40 epochs at hidden 32 left it at 0.88 and SPV-MIA at 0.79).
    finetune(model, tokenizer, members + retain, FinetuneConfig(learning_rate=1e-2, max_epochs=60, batch_size=8,
                                                                target_accuracy=0.99, max_length=64), FMT, show_progress=False)
    return model, tokenizer, members, outsiders, retain


def _digest(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def test_members_are_separated_and_the_model_is_unchanged(planted) -> None:
    model, tokenizer, members, outsiders, retain = planted
    before = _digest(model)
    rng_state = torch.random.get_rng_state()
    result = evaluate_spv_mia(model, tokenizer, FMT, members, outsiders, retain, SpvMiaConfig(**TINY))
    assert result.summary["mia_spv_auc"] > 0.9
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    assert not model.training and torch.equal(torch.random.get_rng_state(), rng_state)
    # Members lose more probability under perturbation than outsiders: the target's variation carries the signal.
    drop = {name: np.mean([s["spv_target_neighbour_p"] - s["spv_target_p"] for s in samples])
            for name, samples in (("members", result.forget), ("outsiders", result.holdout))}
    assert drop["members"] < drop["outsiders"]
    assert set(result.details) >= {"generation_seconds", "reference_seconds", "scoring_seconds"}
    assert all(result.details[key] > 0 for key in ("generation_seconds", "reference_seconds", "scoring_seconds"))
    assert result.details["reference_from_base"] == 0.0 and any("copy of the attacked model" in note for note in result.notes)
    # Same seed, same numbers.
    again = evaluate_spv_mia(model, tokenizer, FMT, members, outsiders, retain, SpvMiaConfig(**TINY))
    assert [s["mia_spv"] for s in again.forget] == [s["mia_spv"] for s in result.forget]


def test_a_given_reference_base_is_used_and_left_unchanged(planted) -> None:
    model, tokenizer, members, outsiders, retain = planted
    base = build_tiny_model(TINY_MODEL, tokenizer, seed=0)
    before = _digest(base)
    result = evaluate_spv_mia(model, tokenizer, FMT, members, outsiders, retain, SpvMiaConfig(**TINY), reference_base=base)
    assert result.details["reference_from_base"] == 1.0 and not any("copy" in note for note in result.notes)
    assert all(torch.equal(before[name], value) for name, value in base.state_dict().items())
    # From an untrained base, 2 epochs give a weak reference; the target's own variation still separates.
    assert result.summary["mia_spv_auc"] > 0.6


def test_self_prompts_are_prefixes_and_samples_continue_them(planted) -> None:
    model, tokenizer, _, _, retain = planted
    prompts = self_prompts(tokenizer, FMT, retain[:3], prefix_tokens=5, count=7)
    assert len(prompts) == 7 and all(len(p) == 5 for p in prompts) and prompts[3] == prompts[0]
    texts = sample_continuations(model, tokenizer, prompts, block_length=20, temperature=1.0, batch_size=4, seed=0)
    for text, prompt in zip(texts, prompts, strict=True):
        assert text[:5] == prompt and len(text) <= 20 and tokenizer.eos_token_id not in text
    assert any(len(text) > 5 for text in texts)


def test_the_audit_attack_on_the_planted_model(planted) -> None:
    model, tokenizer, members, outsiders, retain = planted
    spec = ATTACKS.get("spv_mia")
    assert spec.family == "membership" and spec.chance == 0.5 and spec.needs == ("holdout", "retain")
    data = AuditData(forget=members, retain=retain, holdout=outsiders, fmt=FMT)
    assert spec.missing(AuditData(forget=members, holdout=outsiders, fmt=FMT), AuditConfig()) == "needs a retain set"
    outcome = spv_mia_attack(model, tokenizer, data, AuditConfig(), SpvMiaConfig(**TINY))
    assert outcome.recovery == outcome.details["mia_spv_auc"] > 0.9
    assert len(outcome.per_sample) == len(members) and "mia_spv" in outcome.per_sample[0]
    assert {"generation_seconds", "reference_seconds", "scoring_seconds"} <= set(outcome.details)


def test_the_audit_runs_the_registered_attack(planted, monkeypatch) -> None:
    import unlearnkit.attacks.spv_mia as attack
    from unlearnkit.auditing import run_attacks

    model, tokenizer, members, outsiders, retain = planted
    # The audit's own settings are the paper's (1000 texts): the tiny ones keep the test short.
    monkeypatch.setattr(attack, "audit_settings", lambda config: SpvMiaConfig(**TINY, seed=config.seed))
    data = AuditData(forget=members, retain=retain, holdout=outsiders, fmt=FMT)
    result = run_attacks({"unlearned": (model, tokenizer)}, data, ["spv_mia"], AuditConfig())
    outcome = result.outcomes["spv_mia"]["unlearned"]
    assert outcome.recovery > 0.9 and outcome.measure.startswith("SPV-MIA AUC")
    assert [row["attack"] for row in result.rows] == ["spv_mia"]


def test_the_evaluation_runs_it_on_request(planted) -> None:
    model, tokenizer, members, outsiders, retain = planted
    splits = {"forget": members, "retain": retain, "holdout": outsiders}
    off = evaluate(model, tokenizer, splits, FMT, EvalConfig(max_new_tokens=2))
    assert "mia_spv_auc" not in off.summary and "mia_spv" not in off.per_sample["forget"][0]
    on = evaluate(model, tokenizer, splits, FMT, EvalConfig(max_new_tokens=2, spv_mia=True, spv_mia_settings=TINY))
    direct = evaluate_spv_mia(model, tokenizer, FMT, members, outsiders, retain, SpvMiaConfig(**TINY))
    assert on.summary["mia_spv_auc"] == direct.summary["mia_spv_auc"] > 0.9
    assert [s["mia_spv"] for s in on.per_sample["holdout"]] == [s["mia_spv"] for s in direct.holdout]
    assert on.summary["mia_loss_auc"] == off.summary["mia_loss_auc"]
    with pytest.raises(UnlearnkitError, match="needs forget, holdout and retain"):
        evaluate(model, tokenizer, {"forget": members, "holdout": outsiders}, FMT, EvalConfig(max_new_tokens=2, spv_mia=True))
    with pytest.raises(UnlearnkitError, match="Unknown SPV-MIA setting 'neighbors'"):
        EvalConfig(spv_mia=True, spv_mia_settings={"neighbors": 3})
    with pytest.raises(UnlearnkitError, match="mask_fraction must be in"):
        EvalConfig(spv_mia=True, spv_mia_settings={"mask_fraction": "2"})


def test_audit_settings_take_the_audit_batch_and_seed() -> None:
    settings = audit_settings(AuditConfig(batch_size=5, seed=9))
    assert (settings.batch_size, settings.seed) == (5, 9)
    assert (settings.prefix_tokens, settings.block_length, settings.num_neighbours, settings.reference_epochs) == (16, 128, 10, 2)
    assert settings.reference_learning_rate == 5e-5 and settings.mask_fraction == 0.3 and settings.span_length == 2


# --- Bad input ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("overrides", "message"), [
    ({"prefix_tokens": 0}, "prefix_tokens must be >= 1"),
    ({"block_length": 16}, "must exceed prefix_tokens"),
    ({"num_neighbours": 0}, "num_neighbours must be >= 1"),
    ({"mask_fraction": 0.0}, r"mask_fraction must be in \(0, 1\]"),
    ({"mask_fraction": 1.5}, r"mask_fraction must be in \(0, 1\]"),
    ({"reference_learning_rate": 0.0}, "reference_learning_rate must be > 0"),
    ({"temperature": float("nan")}, "finite"),
    ({"reference_epochs": 0}, "reference_epochs must be >= 1"),
    ({"seed": -1}, "seed must be in"),
    ({"reference_base": " "}, "reference_base is empty"),
    ({"span_length": "2"}, "needs an int"),
])
def test_settings_out_of_range_are_refused(overrides: dict, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        SpvMiaConfig(**overrides)


def test_settings_from_strings() -> None:
    assert build_config(SpvMiaConfig, {"num_neighbours": "3", "reference_base": "none"}).num_neighbours == 3
    with pytest.raises(UnlearnkitError, match="Unknown hyperparameter 'neighbours'"):
        build_config(SpvMiaConfig, {"neighbours": "3"})


def test_too_few_or_unusable_rows_are_refused(planted) -> None:
    model, tokenizer, members, outsiders, retain = planted
    config = SpvMiaConfig(**TINY)
    with pytest.raises(UnlearnkitError, match="at least 2 holdout rows"):
        evaluate_spv_mia(model, tokenizer, FMT, members, outsiders[:1], retain, config)
    with pytest.raises(UnlearnkitError, match="at least 2 forget rows"):
        evaluate_spv_mia(model, tokenizer, FMT, [], outsiders, retain, config)
    with pytest.raises(UnlearnkitError, match="other than the rows it tests"):
        evaluate_spv_mia(model, tokenizer, FMT, members, outsiders, members[:3], config)
    with pytest.raises(UnlearnkitError, match="non-empty 'question' and 'answer' on every forget row"):
        evaluate_spv_mia(model, tokenizer, FMT, [*members, {"question": "q", "answer": ""}], outsiders, retain, config)
    with pytest.raises(UnlearnkitError, match="leaves no room"):
        evaluate_spv_mia(model, tokenizer, FMT, members, outsiders, retain, SpvMiaConfig(prefix_tokens=64, block_length=128))


def test_a_model_that_cannot_generate_is_refused(planted) -> None:
    model, tokenizer, members, outsiders, retain = planted
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    assert no_eos.eos_token_id is None
    with pytest.raises(UnlearnkitError, match="needs the tokenizer's EOS token"):
        evaluate_spv_mia(model, no_eos, FMT, members, outsiders, retain, SpvMiaConfig(**TINY))
    with pytest.raises(UnlearnkitError, match="cannot"):
        evaluate_spv_mia(model.model, tokenizer, FMT, members, outsiders, retain, SpvMiaConfig(**TINY))


def test_a_model_that_writes_nothing_is_refused(planted) -> None:
    model, tokenizer, members, outsiders, retain = planted
    silent = copy.deepcopy(model)

    def always_eos(module, inputs, output):
        output = output.clone()
        output[..., tokenizer.eos_token_id] = 1e4
        return output

    silent.lm_head.register_forward_hook(always_eos)
    with pytest.raises(UnlearnkitError, match="generated nothing"):
        evaluate_spv_mia(silent, tokenizer, FMT, members, outsiders, retain, SpvMiaConfig(**TINY))


def test_eval_command_adds_spv_mia_on_request_and_refuses_settings_without_it(micro_cache, tmp_path, monkeypatch, capsys):
    from tests.helpers import micro, run_cli

    base = ["eval", "--model", "builtin-target", "--benchmark", "forget10", *micro(micro_cache)]
    assert run_cli([*base, "--spv-set", "num_texts=8", "--output", str(tmp_path / "no")], monkeypatch) == 2
    assert "--spv-mia" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert run_cli([*base, "--spv-mia", "--spv-set", "no_such=1", "--output", str(tmp_path / "bad")], monkeypatch) == 2
    assert "no_such" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    assert run_cli([*base, "--spv-mia", "--spv-set", "num_texts=16", "--spv-set", "reference_learning_rate=1e-3",
                    "--output", str(tmp_path / "ok")], monkeypatch) == 0
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text(encoding="utf-8"))
    assert 0.0 <= summary["mia_spv_auc"] <= 1.0
