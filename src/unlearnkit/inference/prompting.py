"""What the prompt-editing wrappers (ICUL, MemPrompt, ECO) share.

:class:`PromptInsertionWrapper` inserts tokens after the prompt's head and
returns logits at the original positions only; the question's text from its
tokens; hashed character n-gram features for question similarity; the prompt
format's record (a wrapper's parts store the format it was built for, since
loading gets none).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.base import PromptLayout, WrappedModel, causal_lm_logits, left_pad, strip_padding

# Queries whose inserted tokens are remembered (decoding asks for the same query once per generated token).
CACHE_SIZE = 4096


def format_record(fmt: PromptFormat) -> dict[str, str | None]:
    """The prompt format as given (not its effective values), for a wrapper's parts: load_parts gets no format otherwise."""
    return {"style": fmt.style, "system_prompt": fmt.system_prompt, "date_string": fmt.date_string}


def format_from_record(record: Mapping[str, Any]) -> PromptFormat:
    return PromptFormat(record["style"], record.get("system_prompt"), record.get("date_string"))


def question_text(tokenizer: PreTrainedTokenizerBase, question_ids: Sequence[int]) -> str:
    """The question span's text, as classifiers and retrievers see it at inference (whitespace trimmed)."""
    return tokenizer.decode(list(question_ids), skip_special_tokens=True).strip()


def question_ids_of(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, layout: PromptLayout, question: str) -> list[int]:
    """The question's tokens as they sit in its prompt (the span between the format's head and tail)."""
    prompt = fmt.prompt_ids(tokenizer, question)
    span = layout.question_span(prompt)
    if span is None:
        raise UnlearnkitError(f"The question {question!r} does not fit the prompt format's layout; rephrase it or use another format.")
    return prompt[span[0]:span[1]]


def char_ngram_features(texts: Sequence[str], dims: int, ngrams: tuple[int, int]) -> torch.Tensor:
    """L2-normalised counts of hashed character n-grams (n in ``ngrams``, inclusive), shape (N, dims), float32.

    Texts are lowercased and padded with one space each side so that word
    starts and ends form n-grams of their own. The hash is CRC-32 (the same
    in every process, unlike Python's salted ``hash``).
    """
    features = torch.zeros(len(texts), dims)
    for row, text in enumerate(texts):
        padded = f" {' '.join(text.lower().split())} "
        for n in range(ngrams[0], ngrams[1] + 1):
            for start in range(max(len(padded) - n + 1, 0)):
                features[row, zlib.crc32(padded[start:start + n].encode("utf-8")) % dims] += 1.0
    return torch.nn.functional.normalize(features, dim=-1)


def _leading_special_count(tokenizer: PreTrainedTokenizerBase, head: Sequence[int]) -> int:
    """How many tokens the tokenizer adds once before a text (BOS) that ``head`` starts with: they open a conversation,
    not a turn."""
    with_special = tokenizer("turn", add_special_tokens=True)["input_ids"]
    without = tokenizer("turn", add_special_tokens=False)["input_ids"]
    for offset in range(len(with_special) - len(without) + 1):
        if with_special[offset:offset + len(without)] == without:
            lead = list(with_special[:offset])
            return offset if list(head[:offset]) == lead else 0
    return 0


def turn_blocks(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, layout: PromptLayout, pairs: Sequence[tuple[str, str]]
) -> list[list[int]]:
    """Each (question, answer) as one answered turn inserted after the prompt's head: question + tail + answer + the
    tokens that open the next turn up to the next question.

    Non-chat formats (plain, tofu-llama2): the answer's ids with EOS (as the
    format scores it), then the head without what opens a conversation (BOS):
    ``<s>Question: q1?\\nAnswer: a1</s>Question: query?\\nAnswer:``, as
    packed training examples look. Chat formats: the text the chat template
    puts between an assistant answer and the next user message (end of turn,
    user header), so a chat model sees proper turns.
    """
    if not pairs:
        return []
    if fmt.uses_chat(tokenizer):
        answers = [tokenizer(answer, add_special_tokens=False)["input_ids"] for _, answer in pairs]
        following = tokenizer(_chat_turn_break(tokenizer, fmt), add_special_tokens=False)["input_ids"]
    else:
        answers = fmt.answer_ids_many(tokenizer, [answer for _, answer in pairs], [question for question, _ in pairs])
        following = list(layout.head[_leading_special_count(tokenizer, layout.head):])
    return [question_ids_of(tokenizer, fmt, layout, question) + list(layout.tail) + answer + following
            for (question, _), answer in zip(pairs, answers, strict=True)]


def _chat_turn_break(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> str:
    """The chat template's text between an assistant message and the next user message's content."""
    marks = ("\u2063Q1\u2063", "\u2063A1\u2063", "\u2063Q2\u2063")  # invisible separators: no template alters them
    messages = [{"role": "system", "content": fmt.effective_system_prompt}] if fmt.effective_system_prompt else []
    messages += [{"role": "user", "content": marks[0]}, {"role": "assistant", "content": marks[1]},
                 {"role": "user", "content": marks[2]}]
    date = {"date_string": fmt.effective_date_string} if fmt.effective_date_string is not None else {}
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **date)
    except Exception as error:  # noqa: BLE001 - a template raises what its author chose
        raise UnlearnkitError(f"The tokenizer's chat template refused a two-turn conversation ({error}); "
                              "use --prompt-format plain for in-context wrappers.") from None
    if not all(mark in text for mark in marks):
        raise UnlearnkitError("The tokenizer's chat template drops earlier turns of a conversation; "
                              "use --prompt-format plain for in-context wrappers.")
    return text[text.index(marks[1]) + len(marks[1]):text.index(marks[2])]


class PromptInsertionWrapper(WrappedModel):
    """A wrapper that inserts tokens after the prompt's head (:attr:`PromptLayout.head`) of each prompt it recognises.

    Subclasses implement :meth:`inserted_ids` (the tokens for one question).
    Rows that are not prompts of the format, or get nothing inserted, give the
    target's logits. Inserted tokens shift the row's later positions; the
    logits returned are those at the original tokens' places, aligned with the
    given ``input_ids``: original position ``p`` reads the new position that
    predicts the same next original token (``p`` before the head's last token,
    ``p + len(inserted)`` from it on).
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, settings: Any, fmt: PromptFormat) -> None:
        super().__init__(model, tokenizer, settings)
        self.fmt = fmt
        self.layout = PromptLayout.of(tokenizer, fmt)
        self._inserted: dict[tuple[int, ...], list[int]] = {}

    def inserted_ids(self, question_ids: tuple[int, ...]) -> list[int]:
        """Tokens to insert after the head for a prompt whose question is ``question_ids`` ([] for none)."""
        raise NotImplementedError

    def _cached_insertion(self, question_ids: tuple[int, ...]) -> list[int]:
        if question_ids not in self._inserted:
            if len(self._inserted) >= CACHE_SIZE:
                self._inserted.clear()
            self._inserted[question_ids] = self.inserted_ids(question_ids)
        return self._inserted[question_ids]

    def row_insertions(self, rows: Sequence[Sequence[int]]) -> list[list[int]]:
        """The tokens inserted into each row (padding removed): [] where the row is not a prompt of the format."""
        insertions = []
        for row in rows:
            span = self.layout.question_span(row)
            insertions.append([] if span is None else self._cached_insertion(tuple(row[span[0]:span[1]])))
        return insertions

    def wrapped_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        rows = strip_padding(input_ids, attention_mask)
        insertions = self.row_insertions(rows)
        changed = [index for index, inserted in enumerate(insertions) if inserted]
        if not changed:
            return causal_lm_logits(self.model, input_ids, attention_mask)
        head = len(self.layout.head)
        new_rows = [rows[i][:head] + insertions[i] + rows[i][head:] for i in changed]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        new_ids, new_mask = left_pad(new_rows, pad, input_ids.device)
        new_logits = causal_lm_logits(self.model, new_ids, new_mask)  # (C, T', V), rows left-padded
        batch, width = input_ids.shape
        # index[c, t]: the new position read for original position t of changed row c (0 where t is padding, zeroed below).
        index = torch.zeros((len(changed), width), dtype=torch.long, device=input_ids.device)
        real = torch.zeros((len(changed), width), dtype=torch.bool, device=input_ids.device)
        for c, i in enumerate(changed):
            places = attention_mask[i].bool().nonzero().squeeze(-1)  # (L,) the row's real positions in input_ids
            length, offset = len(rows[i]), new_ids.shape[1] - len(new_rows[c])
            shift = torch.where(torch.arange(length, device=places.device) >= head - 1, len(insertions[i]), 0)
            index[c, places] = offset + torch.arange(length, device=places.device) + shift
            real[c, places] = True
        gathered = new_logits.gather(1, index[..., None].expand(-1, -1, new_logits.shape[-1]))  # (C, T, V)
        gathered = gathered * real[..., None].to(gathered.dtype)
        kept = sorted(set(range(batch)) - set(changed))
        logits = gathered.new_zeros((batch, width, new_logits.shape[-1]))
        logits = logits.index_copy(0, torch.tensor(changed, device=logits.device), gathered)
        if kept:
            # Rows left alone run as given (their own padding), so that they get exactly the target's logits.
            kept_index = torch.tensor(kept, device=logits.device)
            plain = causal_lm_logits(self.model, input_ids[kept_index], attention_mask[kept_index])
            logits = logits.index_copy(0, kept_index, plain.to(logits.dtype))
        return logits

    decodes_on_target = True  # the inserted tokens change only the prompt: the target decodes from the rebuilt one

    @property
    def latent_model(self) -> nn.Module:
        """The target: a white-box attacker reads its hidden states with prompts of their own (the change is to the prompt)."""
        return self.model

    def target_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The rebuilt prompts, left-padded: each row with its inserted tokens after the head."""
        rows = strip_padding(input_ids, attention_mask)
        head = len(self.layout.head)
        rebuilt = [row[:head] + inserted + row[head:] if inserted else row
                   for row, inserted in zip(rows, self.row_insertions(rows), strict=True)]
        return left_pad(rebuilt, pad_token_id, input_ids.device)

def check_qa_rows(rows: Sequence[dict], where: str) -> None:
    for index, row in enumerate(rows, start=1):
        for key in ("question", "answer"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise UnlearnkitError(f"Row {index} of the {where} has no '{key}' text; every row needs a question and an answer.")
