"""Prompt formats, tokenisation with answer-only labels, and padding collators.

The loss of every method and metric is on answer tokens only: prompt tokens get
the label -100. How a question becomes a prompt is a :class:`PromptFormat`:

* ``plain``: ``Question: ...\\nAnswer:`` and the answer after a space (the
  built-in models and base models);
* ``chat``: the tokenizer's chat template (instruction-tuned hub models), the
  answer tokenised on its own and closed by EOS;
* ``auto``: ``chat`` when the tokenizer has a chat template, else ``plain``;
* ``tofu-llama2``: TOFU's Llama-2 format (TOFU data_module.py
  convert_raw_data_to_model_format with config/model_config.yaml's llama2-7b
  tags; the same sequence as OpenUnlearning's configs/model/Llama-2-7b-chat-hf.yaml
  at d3d7cf9): ``[INST] question [/INST]answer`` tokenised as one string with
  BOS, the prompt's token count taken from ``[INST] question [/INST]`` on its own,
  EOS appended;
* ``openunlearning-chat``: the tokenizer's chat template as OpenUnlearning applies
  it (src/data/utils.py preprocess_chat_instance at d3d7cf9, with the
  template_args of configs/model/Llama-3.2-1B-Instruct.yaml and the other chat
  models' configs): system prompt "You are a helpful assistant.", date string
  "10 Apr 2025", the whole conversation tokenised at once, the prompt's token
  count from the conversation without the answer, EOS appended unless the
  conversation already ends with it.

The reference formats (``tofu-llama2``, ``openunlearning-chat``) tokenise prompt
and answer together, as their code does, so the answer's tokens are those that
follow the prompt in the joint string.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from unlearnkit.errors import UnlearnkitError

logger = logging.getLogger("unlearnkit")

IGNORE_INDEX = -100

# Every prompt format, with what it does (the CLI's help and messages list them).
PROMPT_STYLES: dict[str, str] = {
    "auto": "the tokenizer's chat template if it has one, else plain",
    "plain": "'Question: ...\\nAnswer:' and the answer after a space (built-in and base models)",
    "chat": "the tokenizer's chat template; the answer tokenised on its own, then EOS",
    "tofu-llama2": "TOFU's Llama-2 format: '[INST] question [/INST]answer', one string with BOS, then EOS",
    "openunlearning-chat": "the chat template as OpenUnlearning applies it: system prompt 'You are a helpful assistant.', "
                           "date string '10 Apr 2025', the conversation tokenised at once",
}
# The formats that render the tokenizer's chat template (``auto`` does when the tokenizer has one).
CHAT_STYLES = ("chat", "openunlearning-chat")
# The formats that tokenise prompt and answer as one string, as their reference code does.
JOINT_STYLES = ("tofu-llama2", "openunlearning-chat")
# OpenUnlearning's template_args for its chat models (configs/model/Llama-3.2-1B-Instruct.yaml at d3d7cf9; the
# Llama-3.1, Qwen2.5, Phi-3.5 and zephyr configs hold the same system prompt).
OPENUNLEARNING_SYSTEM_PROMPT = "You are a helpful assistant."
OPENUNLEARNING_DATE_STRING = "10 Apr 2025"
# TOFU's question tags for Llama-2 (config/model_config.yaml, llama2-7b; its answer tag is empty).
TOFU_LLAMA2_TAGS = ("[INST] ", " [/INST]")


@dataclass(frozen=True)
class PromptFormat:
    """How a question becomes a prompt and how prompt and answer are tokenised.

    ``style``: one of :data:`PROMPT_STYLES`. ``system_prompt`` and ``date_string``
    fill the chat template's system message and its date slot (Llama-3's
    "Today Date: ..."); None takes the format's own value (``openunlearning-chat``:
    OpenUnlearning's; ``chat``: none, so the template's own default applies), and
    an empty system prompt means no system message.
    """

    style: str = "auto"
    system_prompt: str | None = None
    date_string: str | None = None

    def __post_init__(self) -> None:
        if self.style not in PROMPT_STYLES:
            raise UnlearnkitError(f"--prompt-format must be one of {', '.join(PROMPT_STYLES)}, got {self.style!r}.")
        for option, value in (("--system-prompt", self.system_prompt), ("--date-string", self.date_string)):
            if value is not None and not isinstance(value, str):
                raise UnlearnkitError(f"{option} needs a text, got {value!r}.")
            if value is not None and self.style not in ("auto", *CHAT_STYLES):
                raise UnlearnkitError(
                    f"{option} fills a slot of the chat template, and --prompt-format {self.style} has none. "
                    f"Drop {option}, or use --prompt-format chat or openunlearning-chat."
                )
        if self.date_string is not None and not self.date_string.strip():
            raise UnlearnkitError("--date-string is empty; give the date the chat template shows (e.g. '10 Apr 2025'), or drop it.")

    @property
    def effective_system_prompt(self) -> str | None:
        """The system message sent (None: none is sent, and the template may add its own default)."""
        if self.system_prompt is not None:
            return self.system_prompt or None
        return OPENUNLEARNING_SYSTEM_PROMPT if self.style == "openunlearning-chat" else None

    @property
    def effective_date_string(self) -> str | None:
        """The date given to the template (None: the template's own default, for Llama-3 today's date)."""
        if self.date_string is not None:
            return self.date_string
        return OPENUNLEARNING_DATE_STRING if self.style == "openunlearning-chat" else None

    def record(self) -> dict[str, str | None]:
        """The format as a results folder's config.json records it."""
        return {"prompt_format": self.style, "system_prompt": self.effective_system_prompt, "date_string": self.effective_date_string}

    def uses_chat(self, tokenizer: PreTrainedTokenizerBase) -> bool:
        """Whether prompts are rendered with the tokenizer's chat template (refusing a chat format without one)."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.style in CHAT_STYLES and not has_template:
            raise UnlearnkitError(
                f"--prompt-format {self.style} needs a tokenizer with a chat template; this one has none. Use 'plain' or 'auto'."
            )
        return self.style in CHAT_STYLES or (self.style == "auto" and has_template)

    def check(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Refuse what this format cannot do with ``tokenizer``, before any output exists.

        A chat format needs a chat template; a system prompt or date string the user
        gave must appear in the rendered prompt (a template without a system role
        or a date slot would silently drop it).
        """
        chat = self.uses_chat(tokenizer)
        given = {"--system-prompt": self.system_prompt or None, "--date-string": self.date_string}
        if not chat:
            for option, value in given.items():
                if value is not None:
                    raise UnlearnkitError(f"{option} fills a slot of the chat template, and this tokenizer has none "
                                          f"(--prompt-format {self.style} renders plain prompts). Drop {option}.")
            return
        probe = self._render(tokenizer, "Which question?", None)
        for option, value in given.items():
            if value is not None and value.strip() not in probe:
                raise UnlearnkitError(f"{option} {value!r} does not appear in the prompt: this tokenizer's chat template has no "
                                      f"{'system message' if option == '--system-prompt' else 'date slot'}. Drop {option}.")
        if self.effective_date_string is None and "date_string" in str(tokenizer.chat_template):
            logger.warning("The chat template shows a date, today's by default, so prompts change from day to day; "
                           "pass --date-string (e.g. the one the model was trained with) for repeatable runs.")

    def prompt_text(self, tokenizer: PreTrainedTokenizerBase, question: str) -> str:
        """The prompt's text before tokenising (where a span of the question, e.g. its subject, is found by characters)."""
        if self.style == "tofu-llama2":
            return self._tofu_prompt(question)
        if self.uses_chat(tokenizer):
            return self._render(tokenizer, question, None)
        return f"Question: {question}\nAnswer:"

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
        """The prompt a model answers after (for generation)."""
        # The chat template holds the BOS text itself, so no special tokens are added again.
        add_special_tokens = self.style == "tofu-llama2" or not self.uses_chat(tokenizer)
        return tokenizer(self.prompt_text(tokenizer, question), add_special_tokens=add_special_tokens)["input_ids"]

    def qa_ids(self, tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids with the closing EOS) of one pair: their concatenation is the scored sequence."""
        return self.qa_ids_many(tokenizer, [(question, answer)])[0]

    def qa_ids_many(
        self, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]
    ) -> list[tuple[list[int], list[int]]]:
        """:meth:`qa_ids` of each (question, answer) pair, tokenised in bulk."""
        if not pairs:
            return []
        if self.style in JOINT_STYLES:
            return self._joint_ids(tokenizer, pairs)
        prompts = {question: self.prompt_ids(tokenizer, question) for question in dict.fromkeys(q for q, _ in pairs)}
        answers = self._separate_answer_ids(tokenizer, [answer for _, answer in pairs])
        return [(prompts[question], ids) for (question, _), ids in zip(pairs, answers, strict=True)]

    def answer_ids(self, tokenizer: PreTrainedTokenizerBase, answer: str, question: str | None = None) -> list[int]:
        """The answer's token ids with the closing EOS (see :meth:`answer_ids_many`)."""
        return self.answer_ids_many(tokenizer, [answer], None if question is None else [question])[0]

    def answer_ids_many(
        self, tokenizer: PreTrainedTokenizerBase, answers: Sequence[str], questions: Sequence[str] | None = None
    ) -> list[list[int]]:
        """:meth:`answer_ids` of each answer, tokenised in one call (the same ids, much faster for many answers).

        A joint format's answer tokens are those that follow the prompt in the joint
        string; without ``questions`` they follow an empty question's prompt, the same
        tokens wherever the prompt ends in fixed text ("[/INST]", the assistant header),
        as in these formats; pass the questions to be exact in every case.
        """
        if not answers:
            return []
        if self.style in JOINT_STYLES:
            asked = [""] * len(answers) if questions is None else list(questions)
            return [ids for _, ids in self._joint_ids(tokenizer, list(zip(asked, answers, strict=True)))]
        return self._separate_answer_ids(tokenizer, answers)

    def _separate_answer_ids(self, tokenizer: PreTrainedTokenizerBase, answers: Sequence[str]) -> list[list[int]]:
        chat = self.uses_chat(tokenizer)
        texts = [answer if chat else f" {answer}" for answer in answers]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return [ids + eos for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _joint_ids(self, tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """Tokenise prompt + answer as one string; the first ``len(prompt ids)`` tokens are the prompt, as in the references.

        TOFU appends EOS to every answer; OpenUnlearning unless the conversation already ends with it.
        """
        eos = tokenizer.eos_token_id
        if self.style == "tofu-llama2":
            prompts = [self._tofu_prompt(question) for question, _ in pairs]
            fulls = [prompt + answer for prompt, (_, answer) in zip(prompts, pairs, strict=True)]
            special = True
        else:
            prompts = [self._render(tokenizer, question, None) for question, _ in pairs]
            fulls = [self._render(tokenizer, question, answer) for question, answer in pairs]
            special = False  # the template holds the BOS text
        prompt_lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=special)["input_ids"]]
        joined = []
        for full, length in zip(tokenizer(fulls, add_special_tokens=special)["input_ids"], prompt_lengths, strict=True):
            if eos is not None and (self.style == "tofu-llama2" or not full or full[-1] != eos):
                full = [*full, eos]
            joined.append((full[:length], full[length:]))
        return joined

    @staticmethod
    def _tofu_prompt(question: str) -> str:
        start, end = TOFU_LLAMA2_TAGS
        return f"{start}{question}{end}"

    def _render(self, tokenizer: PreTrainedTokenizerBase, question: str, answer: str | None) -> str:
        """The chat template's text of the question (with the assistant header) or of the whole exchange."""
        messages = [{"role": "system", "content": self.effective_system_prompt}] if self.effective_system_prompt else []
        messages.append({"role": "user", "content": question})
        if answer is not None:
            messages.append({"role": "assistant", "content": answer})
        date = {"date_string": self.effective_date_string} if self.effective_date_string is not None else {}
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=answer is None, **date)
        except Exception as error:  # noqa: BLE001 - a template raises what its author chose (TemplateError, ValueError, ...)
            hint = " Drop --system-prompt, or pass --system-prompt '' for none." if self.effective_system_prompt else ""
            raise UnlearnkitError(f"The tokenizer's chat template refused the prompt: {error}.{hint}") from None


def encode_qa(
    tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, question: str, answer: str, max_length: int
) -> dict[str, list[int]]:
    """Token ids of prompt + answer + EOS, with labels on the answer only.

    Prompt and answer are tokenised as ``fmt`` says (:meth:`PromptFormat.qa_ids`):
    apart in the built-in formats, so that the answer's tokens are the same in
    every prompt; as one string in the reference formats, as their code does. When
    too long, the prompt is cut from the left so the answer survives.
    """
    return join_qa(*fmt.qa_ids(tokenizer, question, answer), max_length)


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
        length = sum(map(len, fmt.qa_ids(tokenizer, row["question"], row["answer"])))
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


def text_windows(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], prefix_tokens: int, window_tokens: int
) -> list[dict[str, Any]]:
    """Cut texts into consecutive windows of ``window_tokens`` tokens: ``{"prompt", "gt", "text_index"}`` each.

    The first ``prefix_tokens`` tokens of a window are its prompt, the rest its
    true continuation (VerbMem's ``prompt``/``gt`` form). A window shorter than
    ``prefix_tokens + 1`` tokens (the tail of a text) is dropped.
    """
    if not 0 < prefix_tokens < window_tokens:
        raise UnlearnkitError(f"A text window of {window_tokens} tokens cannot hold a prefix of {prefix_tokens} tokens and a continuation.")
    windows = []
    for index, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), window_tokens):
            window = ids[start:start + window_tokens]
            if len(window) <= prefix_tokens:
                continue
            windows.append({
                "prompt": tokenizer.decode(window[:prefix_tokens], skip_special_tokens=True),
                "gt": tokenizer.decode(window[prefix_tokens:], skip_special_tokens=True),
                "text_index": index,
            })
    return windows
