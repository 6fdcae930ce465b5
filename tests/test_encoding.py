from __future__ import annotations

import torch

from unlearnkit.data.encoding import IGNORE_INDEX, PairedCollator, PromptFormat, encode_qa, encode_text, left_pad_prompts, pad_batch
from unlearnkit.modeling import train_tokenizer


def _tokenizer():
    return train_tokenizer(["Question: Where was Ana born?\nAnswer: Ana was born in Tovrask."] * 20, 300)


def test_labels_cover_answer_and_eos_only() -> None:
    tokenizer = _tokenizer()
    fmt = PromptFormat("plain")
    features = encode_qa(tokenizer, fmt, "Where was Ana born?", "Ana was born in Tovrask.", 128)
    prompt = fmt.prompt_ids(tokenizer, "Where was Ana born?")
    answer = tokenizer(" Ana was born in Tovrask.", add_special_tokens=False)["input_ids"]
    assert features["input_ids"] == prompt + answer + [tokenizer.eos_token_id]
    assert features["labels"] == [IGNORE_INDEX] * len(prompt) + answer + [tokenizer.eos_token_id]
    assert prompt[0] == tokenizer.bos_token_id


def test_truncation_keeps_the_answer() -> None:
    tokenizer = _tokenizer()
    features = encode_qa(tokenizer, PromptFormat("plain"), "Where was Ana born? " * 20, "Tovrask.", 16)
    assert len(features["input_ids"]) == 16
    answer = tokenizer(" Tovrask.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert features["labels"][-len(answer):] == answer


def test_padding_and_masks() -> None:
    batch = pad_batch([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [5], "labels": [5]}], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    left = left_pad_prompts([[5, 6], [7]], pad_token_id=0)
    assert left["input_ids"].tolist() == [[5, 6], [0, 7]]
    assert left["attention_mask"].tolist() == [[1, 1], [0, 1]]


def test_paired_collator_pads_each_part() -> None:
    items = [
        {"forget": {"input_ids": [1, 2], "labels": [1, 2]}, "retain": {"input_ids": [3], "labels": [3]}},
        {"forget": {"input_ids": [4], "labels": [4]}, "retain": {"input_ids": [5, 6, 7], "labels": [5, 6, 7]}},
    ]
    batch = PairedCollator(pad_token_id=0)(items)
    assert set(batch) == {"forget", "retain"}
    assert batch["forget"]["input_ids"].shape == torch.Size([2, 2])
    assert batch["retain"]["input_ids"].shape == torch.Size([2, 3])


def test_left_padded_collator_aligns_answers_at_the_end() -> None:
    from unlearnkit.data.encoding import LeftPaddedQACollator

    batch = LeftPaddedQACollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]},
                                                  {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 8, 9]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, -100, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]


def test_text_rows_score_every_token_but_the_first() -> None:
    tokenizer = _tokenizer()
    body = tokenizer("Born in Tovik.", add_special_tokens=True)["input_ids"]
    encoded = encode_text(tokenizer, "Born in Tovik.", max_length=64)
    assert encoded["input_ids"] == [*body, tokenizer.eos_token_id]
    assert encoded["labels"] == [IGNORE_INDEX, *body[1:], tokenizer.eos_token_id]
    short = encode_text(tokenizer, "Born in Tovik.", max_length=3)
    assert len(short["input_ids"]) == 3 and short["input_ids"][-1] == tokenizer.eos_token_id
