"""The request bodies the server accepts (OpenAI's chat and completion requests) and their checks.

Fields this server does not implement are refused when a request sets them to
anything but their default (a silently ignored ``logprobs`` or ``n`` would give
a client something other than what it asked for); fields that change nothing
(``user``, ``metadata``, ...) are accepted and ignored.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from unlearnkit.serving.generation import CHAT_ROLES, RequestError

# Fields of OpenAI's requests that this server does not implement, with the values that ask for nothing (accepted).
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "parallel_tool_calls": (None, True, False),
    "response_format": (None, {"type": "text"}),
    "stream_options": (None,),
    "prediction": (None,),
    "audio": (None,),
    "modalities": (None, ["text"]),
}
MAX_STOP_STRINGS = 4  # OpenAI's limit
SEED_LIMIT = 2**63


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: str
    text: str | None = None


class Message(_Open):
    role: str
    content: str | list[ContentPart] | None = None


class _Request(_Open):
    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stop: str | list[str] | None = None
    seed: int | None = None

    def check(self) -> None:
        """Refuse what this server cannot honour, naming the field (400)."""
        for key, accepted in UNSUPPORTED.items():
            if key in (self.model_extra or {}) and self.model_extra[key] not in accepted:
                raise RequestError(400, f"'{key}' is not supported by this server; leave it out.", key, "unsupported_parameter")
        if self.n is not None and self.n != 1:
            raise RequestError(400, f"n must be 1 (got {self.n}): this server returns one completion per request; send "
                                    "several requests for several completions.", "n")
        if self.stream:
            raise RequestError(400, "Streaming is not supported (stream=true): send stream=false (or leave it out) and read "
                                    "the whole completion from the response.", "stream", "unsupported_parameter")
        if self.temperature is not None and not (math.isfinite(self.temperature) and 0 <= self.temperature <= 2):
            raise RequestError(400, f"temperature must be between 0 and 2 (0: greedy), got {self.temperature}.", "temperature")
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0 <= self.top_p <= 1):
            raise RequestError(400, f"top_p must be between 0 and 1, got {self.top_p}.", "top_p")
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise RequestError(400, f"seed must be in [0, 2**63 - 1], got {self.seed}.", "seed")
        stops = self.stop_strings()
        if len(stops) > MAX_STOP_STRINGS or any(not stop for stop in stops):
            raise RequestError(400, f"stop takes up to {MAX_STOP_STRINGS} non-empty strings, got {self.stop!r}.", "stop")

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def requested_max_tokens(self) -> int | None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise RequestError(400, f"max_tokens must be at least 1, got {self.max_tokens}.", "max_tokens")
        return self.max_tokens


class ChatRequest(_Request):
    messages: list[Message]
    max_completion_tokens: int | None = None  # the newer name of max_tokens in chat requests

    def requested_max_tokens(self) -> int | None:
        own = super().requested_max_tokens()
        newer = self.max_completion_tokens
        if newer is not None and newer < 1:
            raise RequestError(400, f"max_completion_tokens must be at least 1, got {newer}.", "max_completion_tokens")
        if own is not None and newer is not None and own != newer:
            raise RequestError(400, f"max_tokens ({own}) and max_completion_tokens ({newer}) disagree; send one of them.",
                               "max_completion_tokens")
        return newer if newer is not None else own

    def conversation(self) -> list[tuple[str, str]]:
        """(role, text) per message: text parts joined by newlines; other parts (images, audio) refused."""
        if not self.messages:
            raise RequestError(400, "messages is empty; send at least one user message.", "messages")
        turns = []
        for index, message in enumerate(self.messages):
            if message.role not in CHAT_ROLES:
                raise RequestError(400, f"messages[{index}].role {message.role!r} is not supported; use one of "
                                        f"{', '.join(CHAT_ROLES)}.", f"messages[{index}].role")
            content = message.content
            if isinstance(content, list):
                kinds = sorted({part.type for part in content if part.type != "text" or part.text is None})
                if kinds:
                    raise RequestError(400, f"messages[{index}].content holds parts of type {', '.join(kinds)}; this model "
                                            "reads text parts only ({'type': 'text', 'text': ...}).", f"messages[{index}].content")
                content = "\n".join(str(part.text) for part in content)
            if content is None:
                raise RequestError(400, f"messages[{index}] has no content.", f"messages[{index}].content")
            turns.append((message.role, content))
        return turns


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int]

    def prompt_input(self) -> str | list[int]:
        """The one prompt: a text, or token ids; a list of several prompts is refused (one completion per request)."""
        prompt = self.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(item, str) for item in prompt):
            if len(prompt) != 1:
                raise RequestError(400, f"prompt holds {len(prompt)} prompts; this server completes one per request: send "
                                        "one request per prompt.", "prompt")
            return str(prompt[0])
        if isinstance(prompt, list) and not prompt:
            raise RequestError(400, "prompt is an empty list; send a text.", "prompt")
        return prompt  # type: ignore[return-value]
