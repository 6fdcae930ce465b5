"""Model queries the metrics are computed from: answer NLLs and greedy answers.

Both work in batches sorted by length (little padding) and return results in
the caller's order. What makes them fast without changing a value:

* each distinct question's prompt is tokenised once, and all answers in one call;
* the output layer runs only from the first position that predicts an answer
  token on (``logits_to_keep``), where the model supports it: the prompt
  positions' logits are never used;
* greedy generation always uses the key/value cache and stops when every row
  has ended.

Changing which positions reach the output layer changes float32 results only
in their last bits (relative differences below 1e-6), as a change of batch
size does.

Under ``accelerate launch`` with several processes, each process scores a
contiguous share of the rows and all get every row's result, in order
(:func:`unlearnkit.distributed.sharded_rows`): every process must make the call.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import distributed
from unlearnkit.data.encoding import IGNORE_INDEX, PromptFormat, join_qa, left_pad_prompts, pad_batch
from unlearnkit.losses import sequence_nll, sequence_token_count


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, pairs: Sequence[tuple[str, str]], max_length: int = 512
) -> list[dict[str, list[int]]]:
    """:func:`unlearnkit.data.encoding.encode_qa` of each (question, answer) pair, the same ids, tokenised in bulk."""
    return [join_qa(prompt, answer, max_length) for prompt, answer in fmt.qa_ids_many(tokenizer, pairs)]


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    """Whether the causal LM (under a PEFT wrapper: its base model) can compute logits for the last positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _answer_logits(model: PreTrainedModel, batch: dict[str, torch.Tensor], partial: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (B, K, V) from the position before the batch's earliest answer token on, and the labels (B, K) they align with."""
    labels = batch["labels"]
    if not partial:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, labels
    scored = labels != IGNORE_INDEX
    # (B,) index of each row's first answer token; the logits of the position before it predict it.
    first_answer = torch.where(scored.any(dim=1), scored.int().argmax(dim=1), torch.full_like(labels[:, 0], labels.shape[1]))
    start = max(int(first_answer.min()) - 1, 0)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   logits_to_keep=labels.shape[1] - start).logits
    return logits, labels[:, start:]


def answer_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    max_length: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Per (question, answer) pair: the answer's summed NLL and its token count, shapes (N,), (N,)."""
    return distributed.sharded_rows(lambda share: _answer_nll(model, tokenizer, fmt, share, batch_size, max_length), pairs)


@torch.no_grad()
def _answer_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    pairs: Sequence[tuple[str, str]],
    batch_size: int,
    max_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    features = encode_pairs(tokenizer, fmt, pairs, max_length)
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    nll_sum = np.zeros(len(features))
    tokens = np.zeros(len(features))
    device = model.device
    partial = _accepts_logits_to_keep(model)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([features[i] for i in chosen], tokenizer.pad_token_id).items()}
        logits, labels = _answer_logits(model, batch, partial)
        nll_sum[chosen] = sequence_nll(logits.float(), labels).cpu().numpy()
        tokens[chosen] = sequence_token_count(labels).cpu().numpy()
    return nll_sum, tokens


def answer_avg_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
) -> np.ndarray:
    """Per pair: mean NLL over the answer's tokens ("avg-loss"), shape (N,)."""
    nll_sum, tokens = answer_nll(model, tokenizer, fmt, pairs, batch_size)
    return nll_sum / np.maximum(tokens, 1)


def greedy_token_continuations(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    pad_token_id: int,
    eos_token_id: int | None = None,
    batch_size: int = 64,
) -> list[list[int]]:
    """Greedy continuation token ids of each prompt, in the caller's order; batched by length with left padding.

    ``max_new_tokens`` is one limit or one per prompt (each row is cut to its
    own). A row that reaches EOS is padded after it, as ``generate`` does;
    ``eos_token_id`` None uses the model's generation config.
    """
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    jobs = list(zip(prompts, limits, strict=True))
    return distributed.sharded_rows(lambda share: _greedy_continuations(model, share, pad_token_id, eos_token_id, batch_size), jobs)


@torch.no_grad()
def _greedy_continuations(
    model: PreTrainedModel, jobs: Sequence[tuple[Sequence[int], int]], pad_token_id: int, eos_token_id: int | None, batch_size: int
) -> list[list[int]]:
    """:func:`greedy_token_continuations` of (prompt, limit) pairs, in one process."""
    prompts = [prompt for prompt, _ in jobs]
    limits = [limit for _, limit in jobs]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in left_pad_prompts([list(prompts[i]) for i in chosen], pad_token_id).items()}
        generated = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max(limits[i] for i in chosen),
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            use_cache=True,
        )
        # generated: (B, prompt_width + new); the new tokens start after the left-padded prompts.
        continuation = generated[:, batch["input_ids"].shape[1]:].cpu().tolist()
        for row, index in enumerate(chosen):
            outputs[index] = continuation[row][: limits[index]]
    return outputs


def greedy_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[str]:
    """Greedy continuation of each prompt (token ids), cut at EOS and decoded without special tokens."""
    ids = greedy_token_continuations(model, prompts, max_new_tokens, tokenizer.pad_token_id, tokenizer.eos_token_id, batch_size)
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in ids]


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    questions: Sequence[str],
    max_new_tokens: int,
    batch_size: int = 64,
) -> list[str]:
    """Greedy generation from each question's prompt (left padding), cut at EOS."""
    prompts = [fmt.prompt_ids(tokenizer, question) for question in questions]
    return [answer.strip() for answer in greedy_texts(model, tokenizer, prompts, max_new_tokens, batch_size)]
