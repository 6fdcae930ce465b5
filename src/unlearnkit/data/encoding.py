"""Prompt format, tokenisation with answer-only labels, and padding collators.

The loss of every method and metric is on answer tokens only: prompt tokens get
the label -100. A question is rendered with the tokenizer's chat template when
the tokenizer has one (instruction-tuned hub models), else as
``Question: ...\\nAnswer:`` (the built-in models and base models).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from unlearnkit.errors import UnlearnkitError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt. ``style``: "auto" (chat template if any), "plain" or "chat"."""

    style: str = "auto"

    def __post_init__(self) -> None:
        if self.style not in ("auto", "plain", "chat"):
            raise UnlearnkitError(f"--prompt-format must be 'auto', 'plain' or 'chat', got {self.style!r}.")

    def uses_chat(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.style == "chat" and not has_template:
            raise UnlearnkitError("--prompt-format chat needs a tokenizer with a chat template; this one has none. Use 'plain' or 'auto'.")
        return self.style == "chat" or (self.style == "auto" and has_template)

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        if self.uses_chat(tokenizer):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )
            # The template already holds the BOS text, so add no special tokens again.
            return tokenizer(text, add_special_tokens=False)["input_ids"]
        return tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=True)["input_ids"]

    def answer_ids(self, tokenizer: PreTrainedTokenizerBase, answer: str) -> list[int]:
        return self.answer_ids_many(tokenizer, [answer])[0]

    def answer_ids_many(self, tokenizer: PreTrainedTokenizerBase, answers: Sequence[str]) -> list[list[int]]:
        """:meth:`answer_ids` of each answer, tokenised in one call (the same ids, much faster for many answers)."""
        if not answers:
            return []
        chat = self.uses_chat(tokenizer)
        texts = [answer if chat else f" {answer}" for answer in answers]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return [ids + eos for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def encode_qa(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str, answer: str, max_length: int
) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with labels on the answer only.

    Prompt and answer are tokenised separately so that the answer's tokens are
    the same in every prompt (and the prompt/answer boundary is exact). When too
    long, the prompt is cut from the left so the answer survives.
    """
    return join_qa(fmt.prompt_ids(tokenizer, question), fmt.answer_ids(tokenizer, answer), max_length)


def encode_text(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of a plain text (BOS where the tokenizer adds one, the text, EOS), cut to ``max_length``.

    Every token is scored but the first, which no position predicts.
    """
    ids = [*tokenizer(text, add_special_tokens=True)["input_ids"][: max_length - 1], tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": [IGNORE_INDEX, *ids[1:]]}


def join_qa(prompt: list[int], answer_ids: list[int], max_length: int) -> dict[str, list[int]]:
    """:func:`encode_qa` from already tokenised prompt and answer ids."""
    answer_ids = answer_ids[:max_length - 1]
    prompt = prompt[-(max_length - len(answer_ids)):]
    return {"input_ids": prompt + answer_ids, "labels": [IGNORE_INDEX] * len(prompt) + answer_ids}


def check_fits_context(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, rows: Sequence[dict], context: int | None, where: str
) -> None:
    """Refuse a row whose prompt and answer do not fit in the model's context window."""
    if not context:
        return
    for index, row in enumerate(rows, start=1):
        length = len(fmt.prompt_ids(tokenizer, row["question"])) + len(fmt.answer_ids(tokenizer, row["answer"]))
        if length > context:
            raise UnlearnkitError(
                f"Row {index} of the {where} is {length} tokens long, more than the model's context of {context} tokens. "
                "Shorten or drop it."
            )


def pad_batch(features: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids``/``labels`` and build ``attention_mask``; shapes (B, T)."""
    width = max(len(f["input_ids"]) for f in features)
    input_ids = torch.full((len(features), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        input_ids[row, :length] = torch.tensor(feature["input_ids"])
        labels[row, :length] = torch.tensor(feature["labels"])
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def left_pad_prompts(prompts: Sequence[list[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Left-pad prompt ids for batched generation; shapes (B, T)."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt):] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class LeftPaddedQACollator:
    """Left-pads encoded QA features and gives position ids that start at 0 on the first real token."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        batch = pad_batch(features, self.pad_token_id)
        lengths = batch["attention_mask"].sum(dim=1)
        width = batch["input_ids"].shape[1]
        # Roll each row right by its padding so the padding comes first.
        index = (torch.arange(width).unsqueeze(0) - (width - lengths).unsqueeze(1)) % width
        batch = {key: value.gather(1, index) for key, value in batch.items()}
        batch["position_ids"] = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
        return batch


class PairedCollator:
    """Pads paired items ``{"forget": f, "retain": r, ...}`` into ``{"forget": batch, "retain": batch, ...}``."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, dict[str, list[int]]]]) -> dict[str, dict[str, torch.Tensor]]:
        return {key: pad_batch([item[key] for item in items], self.pad_token_id) for key in items[0]}
