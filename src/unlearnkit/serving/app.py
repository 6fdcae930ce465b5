"""The OpenAI-compatible HTTP endpoint: a FastAPI app served by uvicorn, on one worker thread that calls the model.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``
(and ``/v1/models/{name}``), ``GET /health``. Every error is a JSON body in
OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with a 4xx
status for what the client can fix (400 a bad body or a prompt too long for the
context, 401 a missing key, 404 another model's name, 413 a body over 1 MiB) and
503 when more than ``max_queue`` requests wait. Every request to the generation
routes, answered or refused, is one line of the request log (:mod:`.log`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import nn
from transformers import PreTrainedTokenizerBase

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference.base import WrappedModel
from unlearnkit.serving.generation import Completion, Engine, Job, RequestError, Worker
from unlearnkit.serving.log import RequestLog, now_iso, prompt_digest
from unlearnkit.serving.schemas import ChatRequest, CompletionRequest
from unlearnkit.settings import check_field_types, require_at_least

logger = logging.getLogger("unlearnkit")

SERVE_FORMAT = 1
MAX_BODY_BYTES = 1 << 20  # a request body over 1 MiB is refused (413) before it is read: no prompt fits a context that long
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
LOOPBACK = ("127.0.0.1", "::1", "localhost")
GENERATION_ROUTES = ("/v1/chat/completions", "/v1/completions")


@dataclass
class ServeSettings:
    """How the server runs: where it listens, its name, its queue and batches, what it logs."""

    name: str = field(default="", metadata={"help": "Model name clients send ('model'); default: the model folder's name."})
    host: str = field(default="127.0.0.1", metadata={"help": "Address to listen on (loopback by default; another needs --host)."})
    port: int = field(default=8000, metadata={"help": "TCP port (0: any free port)."})
    max_queue: int = field(default=64, metadata={"help": "Requests that may wait for the model; one more is answered 503."})
    batch_size: int = field(default=8, metadata={"help": "Waiting requests decoded together in one batch."})
    default_max_tokens: int = field(default=256, metadata={
        "help": "A chat request's max_tokens when it sends none (cut to the context's room); /v1/completions: 16, as OpenAI's."})
    log_prompts: bool = field(default=False, metadata={"help": "Log prompt and completion texts, not only the prompt's SHA-256."})
    chat_only: bool = field(default=False, metadata={
        "help": "Serve /v1/chat/completions only: clients cannot send raw prompt text past the prompt format."})

    def __post_init__(self) -> None:
        check_field_types(self)
        if not 0 <= self.port <= 65535:
            raise UnlearnkitError(f"--port must be in [0, 65535] (0: any free port), got {self.port}.")
        if not self.host.strip():
            raise UnlearnkitError("--host is empty; give an address to listen on (default 127.0.0.1).")
        require_at_least(1, max_queue=self.max_queue, batch_size=self.batch_size, default_max_tokens=self.default_max_tokens)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on (host, port), bound now (before the model loads) so that a port in use fails at once."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as error:
        raise UnlearnkitError(f"--host {host} is not an address this machine can listen on ({error.strerror}).") from None
    sock = socket.socket(family, kind, proto)
    # As uvicorn does: a port left in TIME_WAIT by a stopped server can be bound again; one another program listens on cannot.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise UnlearnkitError(f"Cannot listen on {host} port {port}: {error.strerror}. Another program may use the port: "
                              "choose another with --port (0: any free port), or stop that program.") from None
    sock.set_inheritable(True)
    return sock


def base_url(sock: socket.socket) -> str:
    """The OpenAI base URL (``http://host:port/v1``) of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 503: "server_busy"}.get(
        status, "invalid_request_error" if status < 500 else "server_error")
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def _validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """One line for a body pydantic refused: where and why (the first problem), and the field it names."""
    first = error.errors()[0] if error.errors() else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    if first.get("type") == "json_invalid":
        return f"The request body is not valid JSON ({first.get('ctx', {}).get('error', 'malformed')}).", None
    where = ".".join(location) or "the body"
    return f"Invalid request body: {where}: {first.get('msg', 'invalid')}.", (location[0] if location else None)


class Server:
    """One served model: the engine (model calls), the worker thread, the request log and the uvicorn server."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        output: Path,
        settings: ServeSettings,
        fmt: PromptFormat = PromptFormat(),
        source: str | None = None,
        api_key: str | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        fmt.check(tokenizer)
        self._closed = False
        self.settings = settings
        self.source = source
        self.name = settings.name or (Path(source).name if source else type(model).__name__)
        self.api_key = api_key
        self.engine = Engine(model, tokenizer, fmt)
        self.sock = sock or bind_socket(settings.host, settings.port)
        self.url = base_url(self.sock)
        self.log = RequestLog(Path(output), settings.log_prompts)
        self.worker = Worker(self.engine, settings.batch_size, settings.max_queue)
        self.created = int(time.time())
        self.started_at = now_iso()
        self.counts = {"answered": 0, "refused": 0}
        self._counts_lock = threading.Lock()
        self.app = self._build_app()
        config = uvicorn.Config(self.app, log_config=None, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self.log.write_record(self.record())

    # What is served ---------------------------------------------------------------------------------------------------
    def record(self, stopped: str | None = None) -> dict[str, Any]:
        """``serve.json``: model, wrapper, prompt format, address and settings (never the API key), start and stop."""
        model = self.engine.model
        wrapper = None
        if isinstance(model, WrappedModel):
            wrapper = {"wrapper": model.name, "settings": asdict(model.settings) if is_dataclass(model.settings) else None}
        return {"format": SERVE_FORMAT, "name": self.name, "model": self.source, "wrapper": wrapper,
                "prompt_format": self.engine.fmt.record(), "context_tokens": self.engine.context, "url": self.url,
                "settings": asdict(self.settings), "api_key_required": self.api_key is not None, "started": self.started_at,
                "stopped": stopped, "requests": dict(self.counts)}

    # Running ----------------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGINT / SIGTERM (uvicorn's graceful shutdown: requests in hand are answered), then close."""
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.close()

    def start(self) -> str:
        """Serve from a background thread; returns the base URL once the server accepts connections."""
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="unlearnkit-serve", daemon=True)
        self._thread.start()
        while not self.server.started:
            if not self._thread.is_alive():
                self.close()
                raise UnlearnkitError(f"The server on {self.url} stopped while starting; see the log above.")
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        """Stop a :meth:`start`-ed server (gracefully: requests in hand are answered) and close the log."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join()
        self.close()

    def close(self) -> None:
        """Stop the worker (what still waits is refused), release the port, write serve.json's stop time, close the log."""
        if not self._closed:
            self._closed = True
            self.worker.stop()
            self.sock.close()
            self.log.write_record(self.record(stopped=now_iso()))
            self.log.close()

    # The app ----------------------------------------------------------------------------------------------------------
    def _build_app(self) -> FastAPI:
        app = FastAPI(title="unlearnkit serve", docs_url=None, redoc_url=None, openapi_url=None)

        @app.middleware("http")
        async def guard(request: Request, call_next: Any) -> Any:
            length = request.headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                return _error(413, f"The request body is {int(length)} bytes; this server reads at most {MAX_BODY_BYTES}.")
            if self.api_key is not None and request.url.path.startswith("/v1/"):
                given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
                if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                    return _error(401, "Missing or wrong API key: send 'Authorization: Bearer <key>' with the key the server "
                                       "was started with ($UNLEARNKIT_API_KEY).", code="invalid_api_key")
            return await call_next(request)

        @app.exception_handler(RequestValidationError)
        async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
            message, param = _validation_message(error)
            if request.url.path in GENERATION_ROUTES:
                self._log_request(str(uuid.uuid4().hex), request.url.path, 400, time.perf_counter(), error=message)
            return _error(400, message, param)

        @app.exception_handler(StarletteHTTPException)
        async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
            return _error(error.status_code, str(error.detail))

        @app.exception_handler(RequestError)
        async def refused(_request: Request, error: RequestError) -> JSONResponse:
            return _error(error.status, error.message, error.param, error.code)

        @app.get("/health")
        async def health() -> dict[str, Any]:
            return {"status": "ok", "model": self.name, "waiting": self.worker.waiting, "max_queue": self.settings.max_queue,
                    "batch_size": self.settings.batch_size}

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            return {"object": "list", "data": [self._model_card()]}

        @app.get("/v1/models/{name:path}")
        async def model(name: str) -> dict[str, Any]:
            self._check_model(name)
            return self._model_card()

        @app.post("/v1/chat/completions")
        async def chat(body: ChatRequest) -> dict[str, Any]:
            request_id = f"chatcmpl-{uuid.uuid4().hex}"

            def prompt() -> tuple[str, list[int]]:
                text = self.engine.chat_prompt(body.conversation())
                return text, self.engine.encode(text, chat=self.engine.chat)

            result, usage = await self._complete(request_id, "/v1/chat/completions", body, prompt, self.settings.default_max_tokens)
            return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": self.name,
                    "system_fingerprint": None, "usage": usage,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                 "logprobs": None, "finish_reason": result.finish_reason}]}

        @app.post("/v1/completions")
        async def completions(body: CompletionRequest) -> dict[str, Any]:
            request_id = f"cmpl-{uuid.uuid4().hex}"

            def prompt() -> tuple[str, list[int]]:
                if self.settings.chat_only:
                    raise RequestError(404, "This server answers chat requests only (started with --chat-only): use "
                                            "/v1/chat/completions.", code="route_disabled")
                given = body.prompt_input()
                if isinstance(given, str):
                    return given, self.engine.encode(given, chat=False)
                vocabulary = len(self.engine.tokenizer)
                if any(not 0 <= token < vocabulary for token in given):
                    raise RequestError(400, f"prompt holds token ids outside this model's vocabulary [0, {vocabulary}).", "prompt")
                with self.engine._tokenizer_lock:
                    return self.engine.tokenizer.decode(given), list(given)

            result, usage = await self._complete(request_id, "/v1/completions", body, prompt, COMPLETIONS_DEFAULT_MAX_TOKENS)
            return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": self.name,
                    "system_fingerprint": None, "usage": usage,
                    "choices": [{"index": 0, "text": result.text, "logprobs": None, "finish_reason": result.finish_reason}]}

        return app

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "unlearnkit"}

    def _check_model(self, name: str) -> None:
        if name != self.name:
            raise RequestError(404, f"The model {name!r} is not served here; this server serves {self.name!r}: send "
                                    f"model={self.name!r}.", "model", "model_not_found")

    async def _complete(self, request_id: str, route: str, body: ChatRequest | CompletionRequest, prompt: Any,
                        default_max_tokens: int) -> tuple[Completion, dict[str, int]]:
        """Check the request, queue its job, await the worker; log the outcome either way."""
        started = time.perf_counter()
        text, ids = None, None
        try:
            self._check_model(body.model)
            text, ids = prompt()  # first, so that a refused request's prompt is logged (as its digest) too
            body.check()
            requested = body.requested_max_tokens()
            max_tokens = self.engine.check_length(len(ids), requested, default_max_tokens,
                                                  "messages" if route == GENERATION_ROUTES[0] else "prompt")
            temperature = 1.0 if body.temperature is None else body.temperature  # OpenAI's defaults: sampling at 1, top_p 1
            top_p = 1.0 if body.top_p is None else body.top_p
            job = Job(request_id, ids, max_tokens, temperature, top_p, body.stop_strings(), body.seed)
            result: Completion = await asyncio.wrap_future(self.worker.submit(job))
        except RequestError as error:
            self._log_request(request_id, route, error.status, started, text=text, ids=ids, error=error.message)
            raise
        usage = {"prompt_tokens": len(ids), "completion_tokens": result.completion_tokens,
                 "total_tokens": len(ids) + result.completion_tokens}
        self._log_request(request_id, route, 200, started, text=text, ids=ids, result=result)
        return result, usage

    def _log_request(self, request_id: str, route: str, status: int, started: float, *, text: str | None = None,
                     ids: list[int] | None = None, result: Completion | None = None, error: str | None = None) -> None:
        entry: dict[str, Any] = {"id": request_id, "route": route, "status": status,
                                 "prompt_sha256": prompt_digest(text) if text is not None else None, "prompt": text,
                                 "decision": result.decision if result else None,
                                 "prompt_tokens": len(ids) if ids is not None else None}
        if result is not None:
            entry.update(completion=result.text, completion_tokens=result.completion_tokens, finish_reason=result.finish_reason,
                         batch_size=result.batch_size, queue_s=round(result.queue_s, 4))
        if error is not None:
            entry["error"] = error
        entry["latency_s"] = round(time.perf_counter() - started, 4)
        with self._counts_lock:
            self.counts["answered" if status == 200 else "refused"] += 1
        self.log.write(entry)


@contextlib.contextmanager
def serving(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    output: Path,
    settings: ServeSettings | None = None,
    fmt: PromptFormat = PromptFormat(),
    source: str | None = None,
    api_key: str | None = None,
) -> Iterator[str]:
    """Serve ``model`` from a background thread while the block runs; yields the OpenAI base URL (``http://host:port/v1``).

    ``settings`` defaults to loopback on any free port. A wrapped model brings its own tokenizer. On leaving the
    block the server stops gracefully (requests in hand are answered) and the log is closed.
    """
    settings = settings or ServeSettings(port=0)
    if tokenizer is None:
        if not isinstance(model, WrappedModel):
            raise UnlearnkitError("serving() needs the tokenizer of a plain model (tokenizer=...).")
        tokenizer = model.tokenizer
    server = Server(model, tokenizer, output, settings, fmt, source, api_key)
    try:
        yield server.start()
    finally:
        server.stop()
