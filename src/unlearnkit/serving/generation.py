"""From a request to a completion: the prompt's tokens, batched generation on one worker thread, the answer's end.

The model is not thread-safe, so one worker thread makes every model call.
Requests wait in a bounded queue; the worker takes the oldest and, with it, up
to ``batch_size - 1`` more that decode the same way (greedy ones together,
sampled ones of equal temperature and top_p together; a seeded request alone),
left-pads their prompts into one batch (B, T) and generates up to the largest
``max_tokens`` among them; each row is then cut to its own limit, at EOS or at
its first stop string. A greedy row's tokens are those the request alone gets:
left padding is masked and positions are counted over real tokens only (as in
:func:`unlearnkit.evaluation.scoring.greedy_answers`), so up to floating-point
rounding the batch changes nothing (``benchmarks/serve_load.py`` checks every
answer under load against the single-request one).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.inference.base import WrappedModel, left_pad

logger = logging.getLogger("unlearnkit")

# Roles a chat request may use: OpenAI's "developer" is its newer name for the system message.
SYSTEM_ROLES = ("system", "developer")
CHAT_ROLES = (*SYSTEM_ROLES, "user", "assistant")
# Where the model config names its context window, by architecture (Llama and most: max_position_embeddings; GPT-2: n_positions).
CONTEXT_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")


class RequestError(Exception):
    """A request the server refuses: HTTP ``status``, a message naming the fix, the offending ``param`` and a ``code``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


class QueueFull(RequestError):
    """More requests wait than ``--max-queue`` allows: 503, the client should retry later."""


def context_length(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> int | None:
    """The model's context window in tokens (None when neither the config nor the tokenizer names one)."""
    config = getattr(model, "config", None)
    for name in CONTEXT_FIELDS:
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else None  # transformers' "no limit" is ~1e30


@dataclass
class Job:
    """One request's generation: its prompt ids, how to decode, and the future its handler awaits."""

    request_id: str
    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    stop: tuple[str, ...] = ()
    seed: int | None = None
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def greedy(self) -> bool:
        # top_p 0 keeps only the most probable token: the greedy limit (sampling with an empty nucleus is undefined).
        return self.temperature == 0 or self.top_p == 0

    def batch_key(self) -> tuple[Any, ...]:
        """Jobs of equal keys decode together; a seeded job is alone (its random stream is its own)."""
        if self.greedy:
            return ("greedy",)
        if self.seed is not None:
            return ("seeded", self.request_id)
        return ("sample", self.temperature, self.top_p)


@dataclass(frozen=True)
class Completion:
    """What a job produced: the text, its token count, why it ended, the guard's decision and timings."""

    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (EOS or a stop string) or "length" (max_tokens reached)
    decision: dict[str, Any] | None  # the wrapper's decisions() row; None for a plain model (no guard)
    batch_size: int
    queue_s: float
    compute_s: float


class Engine:
    """The served model and its tokenizer: prompts to ids, and one batch of jobs to completions (worker thread only)."""

    def __init__(self, model: nn.Module, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.wrapped = isinstance(model, WrappedModel)
        self.context = context_length(model, tokenizer)
        self.chat = fmt.uses_chat(tokenizer)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # Stop at the tokenizer's EOS (what the evaluation stops at) and at every EOS the generation config names
        # (instruction models end a turn with their own, e.g. <|im_end|>).
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
        self.eos_ids = list(dict.fromkeys([i for i in [tokenizer.eos_token_id, *configured] if i is not None]))
        # Tokenizers are used from the event loop (encoding) and the worker (decoding): one at a time.
        self._tokenizer_lock = threading.Lock()

    # Prompts --------------------------------------------------------------------------------------------------------
    def chat_prompt(self, messages: Sequence[tuple[str, str]]) -> str:
        """The prompt text of a conversation of (role, content) pairs, ending with the user's turn.

        A model with a chat template gets the conversation through it (with the
        format's system prompt and date when the request sends no system
        message). A model without one is asked as it was trained: the prompt
        format's "Question: ...\\nAnswer:" of one user message; a system message
        or earlier turns have no place in that format and are refused.
        """
        if not messages or messages[-1][0] != "user":
            raise RequestError(400, "The last message must be the user's (role 'user'): the model answers it.", "messages")
        if not self.chat:
            if len(messages) > 1:
                roles = ", ".join(role for role, _ in messages)
                raise RequestError(400, f"This model has no chat template (prompt format '{self.fmt.style}'): it answers one "
                                        f"user message, with no system message or earlier turns (got roles {roles}). Send "
                                        "one user message, or use /v1/completions with your own prompt text.", "messages")
            return self.fmt.prompt_text(self.tokenizer, messages[0][1])
        conversation = [{"role": "system" if role in SYSTEM_ROLES else role, "content": content} for role, content in messages]
        if conversation[0]["role"] != "system" and self.fmt.effective_system_prompt:
            conversation.insert(0, {"role": "system", "content": self.fmt.effective_system_prompt})
        date = {"date_string": self.fmt.effective_date_string} if self.fmt.effective_date_string is not None else {}
        try:
            with self._tokenizer_lock:
                return str(self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **date))
        except Exception as error:  # noqa: BLE001 - a template raises what its author chose (TemplateError, ValueError, ...)
            raise RequestError(400, f"The model's chat template refused these messages: {error}", "messages") from None

    def encode(self, text: str, *, chat: bool) -> list[int]:
        """A prompt's ids: a chat template's text holds its own BOS, plain text gets the tokenizer's special tokens (as
        :meth:`PromptFormat.prompt_ids` does, so a plain-format prompt is the one the evaluation asks)."""
        special = not chat or self.fmt.style == "tofu-llama2"
        with self._tokenizer_lock:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def check_length(self, prompt_tokens: int, max_tokens: int | None, default_max_tokens: int, param: str = "prompt") -> int:
        """The request's ``max_tokens`` (its own, or the default cut to the room left), refusing a prompt too long for the context."""
        if prompt_tokens == 0:
            raise RequestError(400, "The prompt is empty (no tokens); send some text.", param)
        if self.context is None:
            return max_tokens or default_max_tokens
        if prompt_tokens >= self.context:
            raise RequestError(400, f"The prompt is {prompt_tokens} tokens long; this model's context is {self.context} tokens "
                                    f"(prompt and completion together), so the prompt must be at most {self.context - 1} "
                                    "tokens. Shorten it.", param, "context_length_exceeded")
        room = self.context - prompt_tokens
        if max_tokens is None:
            return min(default_max_tokens, room)
        if max_tokens > room:
            raise RequestError(400, f"This model's context is {self.context} tokens; the prompt takes {prompt_tokens}, so "
                                    f"max_tokens may be at most {room} (got {max_tokens}). Lower max_tokens or shorten the "
                                    "prompt.", "max_tokens", "context_length_exceeded")
        return max_tokens

    # Generation -----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def run(self, jobs: Sequence[Job]) -> list[Completion]:
        """Generate for ``jobs`` (one batch, equal decoding) and cut each row to its own completion."""
        started = time.perf_counter()
        first = jobs[0]
        ids, mask = left_pad([job.prompt_ids for job in jobs], self.pad_token_id, self.model.device)  # (B, T) each
        decisions: list[Any] = self.model.decisions(ids, mask) if self.wrapped else [None] * len(jobs)
        limit = max(job.max_tokens for job in jobs)
        sampling: dict[str, Any] = {"do_sample": False}
        generator = None
        if not first.greedy:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                generator = torch.Generator(device=ids.device).manual_seed(first.seed)
                torch.manual_seed(first.seed)  # transformers' generate samples from the global generator
        if self.wrapped:
            generated = self.model.generate(ids, mask, max_new_tokens=limit, pad_token_id=self.pad_token_id,
                                            eos_token_id=self.eos_ids, generator=generator, **sampling)
        else:
            if sampling["do_sample"]:
                sampling["top_k"] = 0  # OpenAI's sampling has no top-k: switch off a generation config's default
            generated = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=limit, pad_token_id=self.pad_token_id,
                                            eos_token_id=self.eos_ids, use_cache=True, **sampling)
        continuations = generated[:, ids.shape[1]:].tolist()  # (B, new): the new tokens follow the left-padded prompts
        compute_s = time.perf_counter() - started
        results = []
        for job, tokens, decision in zip(jobs, continuations, decisions, strict=True):
            text, count, reason = self.finish(tokens[:job.max_tokens], job.stop)
            results.append(Completion(text, count, reason, decision, len(jobs), started - job.queued_at, compute_s))
        return results

    def finish(self, tokens: Sequence[int], stop: Sequence[str]) -> tuple[str, int, str]:
        """(text, completion tokens, finish reason) of one row's new tokens (cut to its max_tokens).

        EOS ends the text ("stop"; EOS counts as a generated token, padding after
        it does not). A stop string ends it where it first appears, the string
        left out, as OpenAI does ("stop"; the tokens up to the one completing
        it count). Otherwise the limit ended it ("length").
        """
        end = next((index for index, token in enumerate(tokens) if token in self.eos_ids), None)
        kept = list(tokens[:end]) if end is not None else list(tokens)
        count, reason = (end + 1, "stop") if end is not None else (len(kept), "length")
        with self._tokenizer_lock:
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            cut = min((index for index in (text.find(s) for s in stop) if index >= 0), default=-1)
            if cut >= 0:
                text = text[:cut]
                # The first prefix of the tokens whose text holds a stop string: what the model generated before stopping.
                count = next(k for k in range(1, len(kept) + 1)
                             if any(s in self.tokenizer.decode(kept[:k], skip_special_tokens=True) for s in stop))
                reason = "stop"
        return text, count, reason


class Worker:
    """The one thread that calls the model: a bounded queue of jobs, taken in order and batched by decoding."""

    def __init__(self, engine: Engine, batch_size: int, max_queue: int) -> None:
        self.engine = engine
        self.batch_size = batch_size
        self.max_queue = max_queue
        self._waiting: collections.deque[Job] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="unlearnkit-serve-worker", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._waiting)

    def submit(self, job: Job) -> Future:
        """Queue ``job``; refuse it (503) when ``max_queue`` requests already wait, or the server is stopping."""
        with self._condition:
            if self._stopping:
                raise QueueFull(503, "The server is shutting down; retry against a running server.", code="server_shutting_down")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(503, f"The server is busy: {len(self._waiting)} requests already wait (--max-queue "
                                     f"{self.max_queue}). Retry later.", code="queue_full")
            self._waiting.append(job)
            self._condition.notify()
        return job.future

    def stop(self) -> None:
        """Finish the batch in hand, refuse what still waits (503), and end the thread."""
        with self._condition:
            self._stopping = True
            left, self._waiting = list(self._waiting), collections.deque()
            self._condition.notify_all()
        for job in left:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(QueueFull(503, "The server stopped before this request ran; retry.", code="server_stopped"))
        self._thread.join()

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest live job and the next ones that decode like it, up to batch_size; None to stop."""
        with self._condition:
            while True:
                while not self._waiting and not self._stopping:
                    self._condition.wait()
                if self._stopping:
                    return None
                key = self._waiting[0].batch_key()
                batch, rest = [], collections.deque()
                for job in self._waiting:
                    if len(batch) < self.batch_size and job.batch_key() == key:
                        if job.future.set_running_or_notify_cancel():  # a job whose client left is dropped here
                            batch.append(job)
                    else:
                        rest.append(job)
                self._waiting = rest
                if batch:
                    return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                results = self.engine.run(batch)
            except Exception as error:  # a failing model call fails its requests (500), never the server
                logger.exception("Generation failed for %d request(s)", len(batch))
                for job in batch:
                    job.future.set_exception(RequestError(500, f"The model failed on this request: {type(error).__name__}: {error}",
                                                          code="generation_failed"))
                continue
            for job, result in zip(batch, results, strict=True):
                job.future.set_result(result)
