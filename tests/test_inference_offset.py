"""The logit-offset wrappers: δ-unlearning (Huang et al. 2024) and ULD (Ji et al., NeurIPS 2024), on hand-made logits and micro models."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import FMT
from unlearnkit import losses
from unlearnkit.attacks import ATTACKS
from unlearnkit.attacks.base import AuditConfig, AuditData
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_nll, greedy_answers
from unlearnkit.inference import WRAPPERS, WrapData
from unlearnkit.inference.base import causal_lm_logits, left_pad
from unlearnkit.inference.delta_unlearning import DeltaUnlearning, DeltaUnlearningConfig, offset_logits
from unlearnkit.inference.loading import load_wrapped, save_wrapped
from unlearnkit.inference.offsets import check_same_tokenizer
from unlearnkit.inference.uld import ULD, ULDConfig, assistant_from, training_sets, uld_logits
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.settings import build_config

# Short builds that do move the micro models (the authors' learning rates take thousands of steps on them).
DELTA_QUICK = {"learning_rate": 1e-3, "num_epochs": 5, "batch_size": 4, "gradient_accumulation_steps": 1, "warmup_ratio": 0.0}
ULD_QUICK = {"learning_rate": 1e-2, "num_epochs": 5, "batch_size": 4, "gradient_accumulation_steps": 1, "warmup_ratio": 0.0}


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def mean_forget_nll(model, tokenizer, rows) -> float:
    total, tokens = answer_nll(model, tokenizer, FMT, [(row["question"], row["answer"]) for row in rows])
    return float((total / tokens).mean())


@pytest.fixture(scope="module")
def target(micro_bench):
    return load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir)


@pytest.fixture(scope="module")
def built(micro_bench, target):
    """Each wrapper built once on micro forget10 (retain90 as retain), with the target's weights hashed before."""
    model, tokenizer = target
    data = WrapData(micro_bench.split("forget10"), micro_bench.split("retain90"), FMT)
    before = weights_hash(model)
    delta = DeltaUnlearning.build(model, tokenizer, data, DeltaUnlearningConfig(**DELTA_QUICK)).eval()
    uld = ULD.build(model, tokenizer, data, ULDConfig(**ULD_QUICK)).eval()
    return {"delta_unlearning": delta, "uld": uld, "hash_before": before}


def prompt_batch(tokenizer, rows, answers: bool = False):
    """A left-padded batch of prompts (or prompt + answer) of different lengths."""
    texts = [FMT.prompt_ids(tokenizer, row["question"]) for row in rows]
    if answers:
        texts = [ids + tokenizer(" " + row["answer"], add_special_tokens=False)["input_ids"] for ids, row in zip(texts, rows, strict=True)]
    return left_pad(texts, tokenizer.pad_token_id, torch.device("cpu"))


# --- the arithmetic on hand-made logits ----------------------------------------------------------------------------


def test_delta_offset_is_base_plus_weighted_difference_of_the_small_models() -> None:
    base = torch.tensor([[1.0, 2.0, 3.0]])
    unlearned = torch.tensor([[0.5, 0.0, -1.0]])
    original = torch.tensor([[0.0, 0.0, 1.0]])
    assert torch.equal(offset_logits(base, unlearned, original, 1.0), torch.tensor([[1.5, 2.0, 1.0]]))
    assert torch.equal(offset_logits(base, unlearned, original, 2.0), torch.tensor([[2.0, 2.0, -1.0]]))
    assert torch.equal(offset_logits(base, unlearned, original, 0.0), base)
    assert torch.equal(offset_logits(base, original, original, 1.0), base)  # no offset: the base itself
    with pytest.raises(ValueError, match="one shape"):
        offset_logits(base, unlearned[:, :2], original, 1.0)


def test_uld_mask_keeps_the_assistant_at_and_above_the_threshold_and_zeroes_it_below() -> None:
    f = 0.01
    log_f = math.log(f)
    # Target logits in float64: token 1 sits exactly at max log-prob + log f, token 2 just below, token 3 just above.
    target = torch.tensor([0.0, log_f, log_f - 1e-9, log_f + 1e-9, -20.0], dtype=torch.float64)
    assistant = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0], dtype=torch.float64)
    combined = uld_logits(target, assistant, -0.8, f)
    expected = torch.tensor([-0.8, log_f - 1.6, log_f - 1e-9, log_f + 1e-9 - 3.2, -20.0], dtype=torch.float64)
    assert torch.allclose(combined, expected, rtol=0, atol=1e-12)
    # The weight scales the kept assistant logits, and only those.
    assert torch.allclose(uld_logits(target, assistant, -1.0, f) - target, torch.tensor([-1.0, -2.0, 0.0, -4.0, 0.0], dtype=torch.float64))
    assert torch.equal(uld_logits(target, assistant, 0.0, f), target)
    # A looser threshold (f = 0.1, the authors' default) drops tokens 1-3 as well; f = 1 keeps the top token alone.
    assert torch.allclose(uld_logits(target, assistant, -0.8, 0.1) - target,
                          torch.tensor([-0.8, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    assert torch.allclose(uld_logits(target, assistant, -0.8, 1.0) - target,
                          torch.tensor([-0.8, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64))
    # The mask is the target's log-probabilities, not its raw logits: shifting the target's logits changes nothing.
    assert torch.allclose(uld_logits(target + 7.0, assistant, -0.8, f) - 7.0, combined, atol=1e-12)


def test_uld_mask_is_per_position_over_the_vocabulary() -> None:
    # Two positions (1, 2, 3): the first peaked on token 0, the second flat; the mask differs per position.
    target = torch.tensor([[[10.0, 0.0, 0.0], [1.0, 1.0, 1.0]]])
    assistant = torch.ones(1, 2, 3)
    combined = uld_logits(target, assistant, -1.0, 0.01)
    assert torch.equal(combined, torch.tensor([[[9.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]))


def test_uniform_kl_is_zero_for_a_uniform_prediction_and_matches_the_definition() -> None:
    labels = torch.tensor([[-100, 1, 2]])
    flat = torch.zeros(1, 3, 4)
    assert abs(float(losses.uniform_kl_loss(flat, labels))) < 1e-6
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [2.0, 0.0, -1.0, 0.5], [0.3, 0.1, 0.0, -2.0]]])
    # Positions 0 and 1 predict the two answer tokens: KL(U || p) = sum_v (1/V) (log(1/V) - log p(v)).
    log_p = torch.log_softmax(logits[0, :2], dim=-1)
    expected = ((math.log(1 / 4) - log_p) / 4).sum(dim=-1).mean()
    assert torch.allclose(losses.uniform_kl_loss(logits, labels), expected)


# --- settings and bad input ----------------------------------------------------------------------------------------


def test_settings_defaults_are_the_papers_and_bad_values_are_refused() -> None:
    delta = DeltaUnlearningConfig()
    assert (delta.weight, delta.learning_rate, delta.batch_size, delta.gradient_accumulation_steps) == (1.0, 1e-5, 2, 8)
    uld = ULDConfig()
    assert (uld.assistant_layers, uld.weight, uld.mask_threshold, uld.uniform_weight, uld.retain_rows) == (8, -0.8, 0.01, 5.0, 400)
    assert (uld.lora_rank, uld.lora_alpha, uld.lora_dropout, uld.learning_rate, uld.batch_size, uld.gradient_accumulation_steps) \
        == (16, 32.0, 0.05, 1e-3, 8, 2)
    with pytest.raises(UnlearnkitError, match="loss must be one of ga, gd, npo, npo_rt"):
        build_config(DeltaUnlearningConfig, {"loss": "dpo"})
    with pytest.raises(UnlearnkitError, match=r"mask_threshold must be in \(0, 1\]"):
        build_config(ULDConfig, {"mask_threshold": "0"})
    with pytest.raises(UnlearnkitError, match="assistant_layers must be >= 1"):
        ULDConfig(assistant_layers=0)
    with pytest.raises(UnlearnkitError, match="small_model is empty"):
        DeltaUnlearningConfig(small_model=" ")
    assert WRAPPERS.get("delta_unlearning").family == WRAPPERS.get("uld").family == "logits"


def test_a_small_model_with_another_tokenizer_is_refused(micro_bench, target, tmp_path: Path) -> None:
    model, tokenizer = target
    other = tmp_path / "other"
    model.save_pretrained(other, safe_serialization=True)
    changed = load_tokenizer(micro_bench.target_dir)
    changed.add_tokens(["<an-extra-token>"])
    changed.save_pretrained(other)
    data = WrapData(micro_bench.split("forget10"), micro_bench.split("retain90"), FMT)
    with pytest.raises(UnlearnkitError, match="does not share the target's tokenizer: their vocabularies differ"):
        DeltaUnlearning.build(model, tokenizer, data, DeltaUnlearningConfig(small_model=str(other), **DELTA_QUICK))
    # Same vocabulary, another end-of-sequence token: refused too.
    moved = load_tokenizer(micro_bench.target_dir)
    moved.eos_token = moved.bos_token
    with pytest.raises(UnlearnkitError, match="eos_token_id is 2 for the target but 1"):
        check_same_tokenizer(tokenizer, moved, model, model, "the small model")
    # Same tokenizer, a model with more output logits: refused.
    wider = copy.deepcopy(model)
    wider.resize_token_embeddings(520)
    with pytest.raises(UnlearnkitError, match="the target has 512 output logits but the small model 520"):
        check_same_tokenizer(tokenizer, tokenizer, model, wider, "the small model")


def test_builds_refuse_missing_data(micro_bench, target) -> None:
    model, tokenizer = target
    forget = micro_bench.split("forget10")
    with pytest.raises(UnlearnkitError, match="loss=gd has a retain term but no retain rows"):
        DeltaUnlearning.build(model, tokenizer, WrapData(forget, (), FMT), DeltaUnlearningConfig())
    bare = [{"question": row["question"], "answer": row["answer"]} for row in forget]
    with pytest.raises(UnlearnkitError, match="ULD needs retain rows"):
        ULD.build(model, tokenizer, WrapData(bare, (), FMT), ULDConfig())


def test_uld_training_sets_add_paraphrases_to_forget_and_perturbed_answers_to_retain(micro_bench) -> None:
    forget, retain = micro_bench.split("forget10"), micro_bench.split("retain90")
    forget_plus, retain_plus = training_sets(WrapData(forget, retain, FMT), ULDConfig(retain_rows=10))
    assert forget_plus[:len(forget)] == [(row["question"], row["answer"]) for row in forget]
    assert forget_plus[len(forget):] == [(row["question"], row["paraphrased_answer"]) for row in forget]
    assert len(retain_plus) == 10 + sum(len(row["perturbed_answer"]) for row in forget)
    assert set(retain_plus[:10]) <= {(row["question"], row["answer"]) for row in retain}
    assert retain_plus[10] == (forget[0]["question"], forget[0]["perturbed_answer"][0])


# --- zero offset, training, equality of decoding -------------------------------------------------------------------


def test_a_zero_offset_gives_the_targets_logits(micro_bench, target) -> None:
    model, tokenizer = target
    rows = micro_bench.split("forget10")[:4]
    ids, mask = prompt_batch(tokenizer, rows, answers=True)  # left-padded
    expected = causal_lm_logits(model, ids, mask)
    delta = DeltaUnlearning(model, tokenizer, DeltaUnlearningConfig(), copy.deepcopy(model), copy.deepcopy(model)).eval()
    uld = ULD(model, tokenizer, ULDConfig(weight=0.0), assistant_from(model, 8)).eval()
    with torch.no_grad():
        for wrapped in (delta, uld):
            assert torch.equal(wrapped(input_ids=ids, attention_mask=mask).logits, expected)
        # Right padding, as answer scoring pads: the real positions are the plain model's.
        right = torch.stack([torch.cat([row[m.bool()], row[~m.bool()]]) for row, m in zip(ids, mask, strict=True)])
        right_mask = mask.flip(1)
        plain = model(input_ids=right, attention_mask=right_mask).logits
        for wrapped in (delta, uld):
            logits = wrapped(input_ids=right, attention_mask=right_mask).logits
            assert torch.allclose(logits[right_mask.bool()], plain[right_mask.bool()], atol=1e-5)


def test_the_assistant_is_a_copy_of_the_targets_first_layers(target) -> None:
    model, _ = target
    assistant = assistant_from(model, 8)  # the micro target has one layer: the assistant is all of it
    assert assistant.config.num_hidden_layers == model.config.num_hidden_layers == 1
    assert all(torch.equal(assistant.state_dict()[name], tensor) for name, tensor in model.state_dict().items())
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(assistant.parameters(), model.parameters(), strict=True))
    deeper = copy.deepcopy(model)
    deeper.config.num_hidden_layers = 2
    deeper.model.layers.append(copy.deepcopy(deeper.model.layers[0]))
    torch.nn.init.normal_(deeper.model.layers[1].mlp.down_proj.weight)
    first = assistant_from(deeper, 1)
    assert first.config.num_hidden_layers == 1 and len(first.model.layers) == 1
    assert torch.equal(first.model.layers[0].mlp.down_proj.weight, deeper.model.layers[0].mlp.down_proj.weight)
    assert torch.equal(first.lm_head.weight, deeper.lm_head.weight) and torch.equal(first.model.norm.weight, deeper.model.norm.weight)


def test_building_changes_only_the_small_model_or_the_assistant_and_forgets(micro_bench, target, built) -> None:
    model, tokenizer = target
    assert weights_hash(model) == built["hash_before"]
    delta, uld = built["delta_unlearning"], built["uld"]
    assert weights_hash(delta.model) == weights_hash(delta.small_original) == built["hash_before"]  # the original: the target's copy
    assert weights_hash(delta.small_unlearned) != built["hash_before"]
    assert weights_hash(uld.model) == built["hash_before"]
    assert weights_hash(uld.assistant) != weights_hash(assistant_from(model, 8))
    assert not any(p.requires_grad for p in delta.small_unlearned.parameters())
    forget = micro_bench.split("forget10")
    before = mean_forget_nll(model, tokenizer, forget)
    for name in ("delta_unlearning", "uld"):
        after = mean_forget_nll(built[name], tokenizer, forget)
        assert after > before + 0.2, (name, before, after)


def test_delta_unlearning_with_npo_and_a_small_model_folder(micro_bench, target) -> None:
    model, tokenizer = target
    small = str(micro_bench.oracle_dir("forget10"))  # another micro model of the same tokenizer
    data = WrapData(micro_bench.split("forget10"), (), FMT)
    wrapped = DeltaUnlearning.build(model, tokenizer, data, DeltaUnlearningConfig(small_model=small, loss="npo", **DELTA_QUICK))
    assert weights_hash(wrapped.small_original) == weights_hash(load_model(small))
    forget = micro_bench.split("forget10")
    assert mean_forget_nll(wrapped.eval(), tokenizer, forget) > mean_forget_nll(model, tokenizer, forget) + 0.1


@pytest.mark.parametrize("name", ["delta_unlearning", "uld"])
def test_greedy_generation_is_argmax_decoding_of_the_wrapped_logits_with_caches(micro_bench, target, built, name) -> None:
    _, tokenizer = target
    wrapped = built[name]
    ids, mask = prompt_batch(tokenizer, micro_bench.split("forget10")[:5])
    widths = []
    hook = wrapped.model.register_forward_hook(lambda module, args, kwargs, output: widths.append(kwargs["input_ids"].shape[1]),
                                               with_kwargs=True)
    try:
        generated = wrapped.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id,
                                     eos_token_id=tokenizer.eos_token_id)
    finally:
        hook.remove()
    assert widths[0] == ids.shape[1] and set(widths[1:]) == {1}  # the prompt once, then one new token per step
    assert wrapped.decoder.ids is None  # the caches are dropped once generation ends
    # Reference: the whole sequence through wrapped_logits at every step, argmax of the last position.
    steps = generated.shape[1] - ids.shape[1]
    reference, reference_mask = ids, mask
    finished = torch.zeros(ids.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for _ in range(steps):
            full = wrapped.wrapped_logits(reference, reference_mask)[:, -1]
            assert torch.allclose(full, wrapped.next_token_logits(reference, reference_mask), atol=1e-4)
            token = torch.where(finished, torch.full_like(full[:, 0], tokenizer.pad_token_id, dtype=torch.long), full.argmax(-1))
            reference = torch.cat([reference, token[:, None]], dim=1)
            reference_mask = torch.cat([reference_mask, (~finished).long()[:, None]], dim=1)
            finished |= token == tokenizer.eos_token_id
    assert torch.equal(generated, reference)


# --- saving, loading, and the wrapped model under the metrics and audits --------------------------------------------


@pytest.mark.parametrize("name", ["delta_unlearning", "uld"])
def test_save_and_load_give_identical_logits(micro_bench, target, built, name, tmp_path: Path) -> None:
    _, tokenizer = target
    wrapped = built[name]
    folder = tmp_path / name
    save_wrapped(wrapped, str(micro_bench.target_dir), folder)
    record = json.loads((folder / "wrapper.json").read_text())
    part = "small_unlearned" if name == "delta_unlearning" else "assistant"
    assert record["wrapper"] == name and (folder / record["parts"][part] / "model.safetensors").is_file()
    loaded = load_wrapped(folder)
    assert type(loaded) is type(wrapped)
    ids, mask = prompt_batch(tokenizer, micro_bench.split("forget10")[:4], answers=True)
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, wrapped(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("name", ["delta_unlearning", "uld"])
def test_scoring_and_weight_attacks_run_on_the_wrapped_model(micro_bench, target, built, name) -> None:
    _, tokenizer = target
    wrapped = built[name]
    forget = micro_bench.split("forget10")
    total, tokens = answer_nll(wrapped, tokenizer, FMT, [(row["question"], row["answer"]) for row in forget])
    assert total.shape == (len(forget),) and (tokens > 0).all() and (total > 0).all()
    answers = greedy_answers(wrapped, tokenizer, FMT, [row["question"] for row in forget], 16)
    assert len(answers) == len(forget) and all(isinstance(answer, str) for answer in answers)
    before = weights_hash(wrapped)
    data = AuditData(forget=forget, fmt=FMT)
    config = AuditConfig(max_new_tokens=16, relearn_learning_rate=1e-3, relearn_epochs=2, quantization_group_size=32)
    for attack in ("relearning", "quantization_8bit", "quantization_4bit"):
        outcome = ATTACKS.get(attack).run(wrapped, tokenizer, data, config)
        assert 0.0 <= outcome.recovery <= 1.0
    assert weights_hash(wrapped) == before  # the attacks work on copies
