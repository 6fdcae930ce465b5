"""Model queries the metrics are computed from: answer NLLs and greedy answers.

Both work in batches sorted by length (little padding) and return results in
the caller's order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat, encode_qa, left_pad_prompts, pad_batch
from unlearnkit.losses import sequence_nll, sequence_token_count


@torch.no_grad()
def answer_nll(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 64,
    max_length: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Per (question, answer) pair: the answer's summed NLL and its token count, shapes (N,), (N,)."""
    features = [encode_qa(tokenizer, fmt, question, answer, max_length) for question, answer in pairs]
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    nll_sum = np.zeros(len(features))
    tokens = np.zeros(len(features))
    device = model.device
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in pad_batch([features[i] for i in chosen], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        nll_sum[chosen] = sequence_nll(logits, batch["labels"]).cpu().numpy()
        tokens[chosen] = sequence_token_count(batch["labels"]).cpu().numpy()
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


@torch.no_grad()
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
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = {k: v.to(model.device) for k, v in left_pad_prompts([prompts[i] for i in chosen], tokenizer.pad_token_id).items()}
        generated = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        # generated: (B, prompt_width + new); the new tokens start after the padded prompt.
        new_tokens = generated[:, batch["input_ids"].shape[1]:]
        for row, index in enumerate(chosen):
            answers[index] = tokenizer.decode(new_tokens[row], skip_special_tokens=True).strip()
    return answers
