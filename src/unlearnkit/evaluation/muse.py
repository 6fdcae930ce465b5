"""MUSE's memorization criteria: VerbMem (verbatim continuation) and KnowMem (few-shot QA).

Source: Shi, Lee, Huang, Malladi, Zhao, Holtzman, Liu, Zettlemoyer, Smith and
Zhang, "MUSE: Machine Unlearning Six-Way Evaluation for Language Models",
ICLR 2025; the definitions follow its code (``verbmem/get_rouge.py``,
``knowmem/get_rouge_qa.py``).

* **VerbMem** (C1, lower is better on forget text): greedy generation of
  ``max_new_tokens`` (128) tokens from each text prefix (``prompt``); ROUGE-L F1
  of the generation against the true continuation (``gt``) truncated to the
  same number of tokens. As in MUSE, the continuation is tokenised *with* the
  tokenizer's special tokens before the cut, so with a BOS token it keeps
  ``max_new_tokens − 1`` text tokens.
* **KnowMem** (C2 on forget QA: lower is better; C4 on retain QA: higher is
  better): the prompt is the in-context examples ``Question: q\\nAnswer: a\\n\\n``
  followed by ``Question: q\\nAnswer: `` (MUSE's trailing space kept);
  greedy generation of ``max_new_tokens`` (32) tokens, cut before the first
  ``"\\n\\n"``, ``"\\nQuestion"`` or ``"Question:"``; ROUGE-L F1 against the answer.

Both use ROUGE-L **F1** (``fmeasure``), unlike TOFU's ROUGE-L recall, and MUSE
scores without stemming; ``use_stemmer=True`` gives OpenUnlearning's numbers.

Generation is batched with left padding. A prompt that would not leave room for
``max_new_tokens`` in the model's context is cut from the left (VerbMem: the
continuation depends mostly on the text just before it) or refused (KnowMem:
cutting would break the few-shot format; lower ``num_shots``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.encoding import text_windows  # noqa: F401 - VerbMem's windows; muse.text_windows is public
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import AS_IS, MUSE, metric
from unlearnkit.evaluation.metrics import rouge_l_f1
from unlearnkit.evaluation.scoring import greedy_texts
from unlearnkit.settings import check_field_types, require_at_least

logger = logging.getLogger("unlearnkit")

KNOWMEM_STOP_STRINGS: tuple[str, ...] = ("\n\n", "\nQuestion", "Question:")
"""MUSE cuts a KnowMem answer before the first of these (its ``get_prefix_before_words_occur``)."""


@dataclass(frozen=True)
class MuseConfig:
    """Settings of the MUSE criteria (defaults: MUSE's)."""

    verbmem_max_new_tokens: int = field(default=128, metadata={"help": "Greedy tokens generated per text prefix (MUSE: 128)."})
    knowmem_max_new_tokens: int = field(default=32, metadata={"help": "Greedy tokens generated per question (MUSE: 32)."})
    num_shots: int | None = field(
        default=None,
        metadata={"help": "In-context examples per KnowMem prompt (None: all given; MUSE uses its whole ICL file)."},
    )
    use_stemmer: bool = field(default=False, metadata={"help": "Porter stemming in ROUGE (MUSE: off; OpenUnlearning: on)."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(1, verbmem_max_new_tokens=self.verbmem_max_new_tokens,
                         knowmem_max_new_tokens=self.knowmem_max_new_tokens, batch_size=self.batch_size)
        if self.num_shots is not None and self.num_shots < 0:
            raise UnlearnkitError(f"num_shots must be >= 0 (or None for all examples), got {self.num_shots}.")


@dataclass
class MuseScore:
    """A criterion's mean over samples and the per-sample values behind it."""

    value: float
    per_sample: list[dict[str, Any]]


# --- Pure functions ---------------------------------------------------------------------


def cut_at_stop_strings(text: str, stops: Sequence[str] = KNOWMEM_STOP_STRINGS) -> str:
    """The part of ``text`` before the first occurrence of any of ``stops`` (all of it if none occurs)."""
    for stop in stops:
        text = text.split(stop)[0]
    return text


def knowmem_prompt(question: str, examples: Sequence[dict]) -> str:
    """MUSE's few-shot prompt: each example as ``Question: q\\nAnswer: a\\n\\n``, then the question."""
    shots = "".join(f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n" for shot in examples)
    return f"{shots}Question: {question}\nAnswer: "


def truncate_to_tokens(tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int) -> str:
    """``text`` cut to its first ``max_tokens`` tokens, counted as MUSE does (special tokens included)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_tokens]
    return tokenizer.decode(ids, skip_special_tokens=True)


def context_length(model: PreTrainedModel) -> int | None:
    """The model's context window in tokens, when its config states one."""
    return getattr(model.config, "max_position_embeddings", None)


# --- Model queries ----------------------------------------------------------------------
# verbmem() and knowmem() carry the catalog entries of the summary keys they are reported under (see
# unlearnkit.sequential); each returns a MuseScore whose value, the mean over samples, is the number.


@metric("verbmem_forget", "lower", "ROUGE-L F1 of a greedy continuation (128 new tokens) of each forget-text prefix "
        "against the true continuation cut to as many tokens", MUSE, "muse", label="VerbMem (forget)", aggregation=AS_IS)
@metric("verbmem_stage_forget", "lower", "VerbMem on windows of the texts unlearned so far in a scalability or "
        "sustainability run (prefix = first tokens of each window)", MUSE, "muse", label="VerbMem (stage texts)", aggregation=AS_IS)
def verbmem(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[dict],
    config: MuseConfig = MuseConfig(),
) -> MuseScore:
    """VerbMem: mean ROUGE-L F1 of greedy continuations of ``items``' ``prompt`` against their ``gt``."""
    if not items:
        raise UnlearnkitError("VerbMem needs at least one text with a prompt and a continuation.")
    model.eval()
    new_tokens = config.verbmem_max_new_tokens
    room = _prompt_room(model, new_tokens, "verbmem_max_new_tokens")
    prompts, dropped = [], []
    for item in items:
        ids = tokenizer(item["prompt"], add_special_tokens=True)["input_ids"]
        kept = _keep_last(ids, room, tokenizer.bos_token_id)
        prompts.append(kept)
        dropped.append(len(ids) - len(kept))
    if any(dropped):
        logger.warning("VerbMem: %d prompt(s) cut from the left to leave room for %d new tokens in the model's context",
                       sum(1 for d in dropped if d), new_tokens)
    generations = greedy_texts(model, tokenizer, prompts, new_tokens, config.batch_size)
    references = [truncate_to_tokens(tokenizer, item["gt"], new_tokens) for item in items]
    scores = rouge_l_f1(generations, references, use_stemmer=config.use_stemmer)
    per_sample = [
        {"prompt": item["prompt"], "gt": reference, "generation": generation, "rouge_l_f1": float(score),
         "prompt_tokens_dropped": cut}
        for item, reference, generation, score, cut in zip(items, references, generations, scores, dropped, strict=True)
    ]
    return MuseScore(value=float(np.mean(scores)), per_sample=per_sample)


@metric("knowmem_forget", "lower", "ROUGE-L F1 of few-shot greedy answers (32 new tokens, cut before a new "
        "question) to forget-set questions", MUSE, "muse", label="KnowMem (forget)", aggregation=AS_IS)
@metric("knowmem_retain", "higher", "ROUGE-L F1 of few-shot greedy answers (32 new tokens, cut before a new "
        "question) to retain-set questions: utility", MUSE, "muse", label="KnowMem (retain)", aggregation=AS_IS)
def knowmem(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[dict],
    examples: Sequence[dict] = (),
    config: MuseConfig = MuseConfig(),
) -> MuseScore:
    """KnowMem: mean ROUGE-L F1 of few-shot greedy answers to ``rows``' questions against their answers.

    ``examples``: the in-context QA pairs (MUSE: the ``*_qa_icl`` split of the same
    set); the first ``config.num_shots`` are used (all when None).
    """
    if not rows:
        raise UnlearnkitError("KnowMem needs at least one question with an answer.")
    model.eval()
    shots = list(examples)[: config.num_shots] if config.num_shots is not None else list(examples)
    new_tokens = config.knowmem_max_new_tokens
    room = _prompt_room(model, new_tokens, "knowmem_max_new_tokens")
    prompts = []
    for index, row in enumerate(rows, start=1):
        ids = tokenizer(knowmem_prompt(row["question"], shots), add_special_tokens=True)["input_ids"]
        if room is not None and len(ids) > room:
            raise UnlearnkitError(
                f"KnowMem prompt {index} is {len(ids)} tokens with {len(shots)} in-context example(s); with "
                f"{new_tokens} new tokens it exceeds the model's context of {context_length(model)} tokens. Lower num_shots."
            )
        prompts.append(ids)
    raw = greedy_texts(model, tokenizer, prompts, new_tokens, config.batch_size)
    answers = [cut_at_stop_strings(text) for text in raw]
    scores = rouge_l_f1(answers, [row["answer"] for row in rows], use_stemmer=config.use_stemmer)
    per_sample = [
        {"question": row["question"], "answer": row["answer"], "generation": answer, "rouge_l_f1": float(score)}
        for row, answer, score in zip(rows, answers, scores, strict=True)
    ]
    return MuseScore(value=float(np.mean(scores)), per_sample=per_sample)


def _prompt_room(model: PreTrainedModel, new_tokens: int, option: str) -> int | None:
    """Prompt tokens that fit in the context beside ``new_tokens`` generated ones (None: no stated limit)."""
    context = context_length(model)
    if context is None:
        return None
    if new_tokens >= context:
        raise UnlearnkitError(f"{option}={new_tokens} leaves no room for a prompt in the model's context of {context} tokens; lower it.")
    return context - new_tokens


def _keep_last(ids: list[int], room: int | None, bos_id: int | None) -> list[int]:
    """Keep the last ``room`` tokens of a prompt, and its leading BOS token when it has one."""
    if room is None or len(ids) <= room:
        return ids
    if bos_id is not None and ids and ids[0] == bos_id:
        return [bos_id, *ids[len(ids) - room + 1:]]
    return ids[len(ids) - room:]
