"""The wrapper interface: a wrapped model is a causal LM to its callers (forward, loss, generate), and prompts are split right."""

from __future__ import annotations

import pytest
import torch

from unlearnkit.data.encoding import PromptFormat, left_pad_prompts
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.scoring import answer_nll, greedy_answers
from unlearnkit.inference.base import (
    PromptLayout,
    WrappedModel,
    causal_lm_logits,
    left_pad,
    position_ids_of,
    read_wrapper_record,
    sample_token,
    strip_padding,
)
from unlearnkit.modeling import load_model, load_tokenizer

FMT = PromptFormat("plain")


class Unchanged(WrappedModel):
    """The target's own logits: whatever the interface adds must leave them as the model computes them."""

    def wrapped_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return causal_lm_logits(self.model, input_ids, attention_mask)


class Shifted(Unchanged):
    """Adds 5 to one token's logit everywhere: a change generation and scoring must see."""

    token = 7

    def wrapped_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = super().wrapped_logits(input_ids, attention_mask).clone()
        logits[..., self.token] += 50.0
        return logits


@pytest.fixture(scope="module")
def target(micro_bench):
    return load_model(micro_bench.target_dir).eval(), load_tokenizer(micro_bench.target_dir)


def test_position_ids_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    assert position_ids_of(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 1, 2, 2, 2]]


def test_left_pad_and_strip_padding_invert_each_other():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_token_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert strip_padding(ids, mask) == [[5, 6, 7], [8]]


def test_prompt_layout_finds_the_question_between_head_and_tail(target):
    _, tokenizer = target
    layout = PromptLayout.of(tokenizer, FMT)
    question = "Where was Yostia Sheinock born?"
    prompt = FMT.prompt_ids(tokenizer, question)
    start, end = layout.question_span(prompt)
    assert tokenizer.decode(prompt[start:end]).strip() == question
    assert list(prompt[:start]) == list(layout.head) and list(prompt[end:]) == list(layout.tail)
    # With an answer after the prompt, the span is still the question's.
    answer = FMT.answer_ids(tokenizer, "In Vellmark.", question)
    assert layout.question_span(prompt + answer) == (start, end)
    assert layout.question_span(prompt[1:]) is None  # no head: not a prompt of this format
    assert PromptLayout.from_record(layout.record()) == layout


def test_forward_equals_the_model_on_right_padded_batches_with_loss_and_logits_to_keep(target):
    model, tokenizer = target
    wrapped = Unchanged(model, tokenizer, None).eval()
    ids = torch.tensor([[1, 40, 41, 42, 43], [1, 50, 51, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, 41, 42, 43], [-100, -100, 51, -100, -100]])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, labels=labels)
        got = wrapped(input_ids=ids, attention_mask=mask, labels=labels)
        kept = wrapped(input_ids=ids, attention_mask=mask, logits_to_keep=2)
    real = mask.bool()  # padding positions' logits are never read
    torch.testing.assert_close(got.logits[real], expected.logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kept.logits[0], expected.logits[0, -2:], rtol=1e-5, atol=1e-5)


def test_greedy_generate_equals_the_models_generate_on_left_padded_prompts(target, micro_bench):
    model, tokenizer = target
    wrapped = Unchanged(model, tokenizer, None).eval()
    prompts = [FMT.prompt_ids(tokenizer, row["question"]) for row in micro_bench.split("forget10")[:6]]
    batch = left_pad_prompts(prompts, tokenizer.pad_token_id)
    options = {"max_new_tokens": 10, "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    expected = model.generate(**batch, do_sample=False, **options)
    got = wrapped.generate(**batch, **options)
    assert torch.equal(got, expected[:, :got.shape[1]])
    assert bool((expected[:, got.shape[1]:] == tokenizer.pad_token_id).all())  # generate only padded on after every row ended


def test_metrics_see_the_wrappers_logits_not_the_models(target, micro_bench):
    model, tokenizer = target
    rows = micro_bench.split("forget10")[:4]
    pairs = [(row["question"], row["answer"]) for row in rows]
    plain_nll, tokens = answer_nll(model, tokenizer, FMT, pairs)
    same_nll, same_tokens = answer_nll(Unchanged(model, tokenizer, None).eval(), tokenizer, FMT, pairs)
    shifted_nll, _ = answer_nll(Shifted(model, tokenizer, None).eval(), tokenizer, FMT, pairs)
    assert same_tokens.tolist() == tokens.tolist()
    assert same_nll == pytest.approx(plain_nll, rel=1e-5)
    assert (shifted_nll > plain_nll + 10).all()  # every answer token now loses to the boosted token
    answers = greedy_answers(Shifted(model, tokenizer, None).eval(), tokenizer, FMT, [row["question"] for row in rows], 4)
    boosted = tokenizer.decode([Shifted.token] * 4, skip_special_tokens=True).strip()
    assert answers == [boosted] * len(rows)


def test_sampling_keeps_to_the_nucleus_and_zero_temperature_is_greedy():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    generator = torch.Generator().manual_seed(0)
    draws = {int(sample_token(logits, 1.0, 0.7, generator)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 alone is short of 0.7; 0.5 + 0.3 reaches it
    assert {int(sample_token(logits, 1.0, 1.0, generator)) for _ in range(400)} == {0, 1, 2, 3}
    assert int(sample_token(logits, 0.0, 1.0)) == 0


def test_a_damaged_wrapper_record_is_refused_with_the_fix(tmp_path):
    (tmp_path / "wrapper.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="unlearnkit wrap"):
        read_wrapper_record(tmp_path)
    (tmp_path / "wrapper.json").write_text('{"format": 1, "wrapper": "icul", "settings": {}, "parts": {}}', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="lacks 'target'"):
        read_wrapper_record(tmp_path)


def test_a_wrapped_folder_is_refused_where_weights_are_trained(tmp_path):
    from unlearnkit.modeling import check_model_folder

    (tmp_path / "wrapper.json").write_text("{}", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="wrapped model"):
        check_model_folder(tmp_path)
