"""``unlearnkit serve``: serve a model or a wrapped model over an OpenAI-compatible HTTP endpoint (docs/serving.md)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from unlearnkit.cli.app import app
from unlearnkit.cli.options import DateString, PromptStyle, RemoteCode, SystemPrompt, Threads
from unlearnkit.errors import Interrupted, UnlearnkitError

if TYPE_CHECKING:
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.serving.app import Server, ServeSettings

# The API key clients must send, when set: read from the environment, never from the command line (which `ps` shows).
API_KEY_VARIABLE = "UNLEARNKIT_API_KEY"


@app.command()
def serve(
    model: Annotated[str, typer.Option(
        help="The model to serve: a model folder, a wrapped-model folder (`unlearnkit wrap`), a pretrained name (see "
             "`unlearnkit models`) or a hub name.")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", help="Log folder: serve.json and requests.jsonl, one line per request with the guard's decision "
                               "(must be new or empty unless --overwrite).")],
    port: Annotated[int, typer.Option(help="TCP port to listen on (0: any free port; the URL is printed).")] = 8000,
    host: Annotated[str, typer.Option(
        help="Address to listen on. The default answers this machine only; another address (e.g. 0.0.0.0) exposes the model "
             f"to the network: set ${API_KEY_VARIABLE} to require a key.")] = "127.0.0.1",
    name: Annotated[str | None, typer.Option(help="Model name clients send as 'model' (default: the model folder's name).")] = None,
    max_queue: Annotated[int, typer.Option(min=1, help="Requests that may wait for the model; one more gets 503 (busy).")] = 64,
    batch_size: Annotated[int, typer.Option(min=1, help="Waiting requests decoded together in one batch.")] = 8,
    default_max_tokens: Annotated[int, typer.Option(
        min=1, help="A chat request's max_tokens when it sends none (cut to the context's room); /v1/completions: 16.")] = 256,
    log_prompts: Annotated[bool, typer.Option(
        "--log-prompts", help="Log prompt and completion texts (by default only the prompt's SHA-256 is logged).")] = False,
    chat_only: Annotated[bool, typer.Option(
        "--chat-only", help="Serve /v1/chat/completions only: every prompt goes through the prompt format (no raw text).")] = False,
    prompt_format: PromptStyle = "auto",
    system_prompt: SystemPrompt = None,
    date_string: DateString = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier serve log in --output (a folder holding anything else is refused).")] = False,
    threads: Threads = None,
    trust_remote_code: RemoteCode = False,
) -> None:
    """Serve a model (or a wrapped model) over an OpenAI-compatible HTTP API; Ctrl-C or SIGTERM stops it."""
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.serving.app import LOOPBACK, ServeSettings, bind_socket
    from unlearnkit.serving.log import check_log_folder

    settings = ServeSettings(name=name or Path(model.rstrip("/\\")).name, host=host, port=port, max_queue=max_queue,
                             batch_size=batch_size, default_max_tokens=default_max_tokens, log_prompts=log_prompts,
                             chat_only=chat_only)
    fmt = PromptFormat(prompt_format, system_prompt, date_string)
    _check_model_named(model)
    check_log_folder(output, overwrite, model)
    if threads is not None:
        from unlearnkit.runtime import set_threads

        set_threads(threads)
    api_key = os.environ.get(API_KEY_VARIABLE) or None
    sock = bind_socket(host, port)  # before the model loads: a port in use fails in a second, not after the loading
    try:
        server = _load_server(model, output, settings, fmt, api_key, sock, trust_remote_code)
    except BaseException:
        sock.close()
        raise
    if host not in LOOPBACK:
        typer.echo(f"warning: listening on {host}: other machines can reach this model"
                   + ("" if api_key else f" without a key (set ${API_KEY_VARIABLE} to require one)") + ".", err=True)
    typer.echo(f"Serving {server.name} at {server.url} (log: {output / 'requests.jsonl'}); Ctrl-C stops.")
    try:
        server.run()
    except Interrupted as stop:  # uvicorn shut down gracefully on the signal, then passed it on: a clean stop
        typer.echo(f"Stopped by {stop.signal_name}; {server.counts['answered']} request(s) answered, "
                   f"{server.counts['refused']} refused. Log: {output}")
        return
    typer.echo(f"Stopped; log: {output}")


def _check_model_named(model: str) -> None:
    """A model that names a missing folder (neither a pretrained nor a hub name) is refused before anything else."""
    from unlearnkit.modeling import is_hub_name
    from unlearnkit.pretrained import is_pretrained_name

    if not Path(model).expanduser().exists() and not is_pretrained_name(model) and not is_hub_name(model):
        raise UnlearnkitError(f"Model folder {model} does not exist; pass --model a model folder, a wrapped-model folder, a "
                              "pretrained name (`unlearnkit models`) or a hub name.")


def _load_server(model: str, output: Path, settings: ServeSettings, fmt: PromptFormat, api_key: str | None,
                 sock: socket.socket, trust_remote_code: bool) -> Server:
    """Load the model (a wrapped model brings its tokenizer) and build the server on the bound socket."""
    from unlearnkit.inference.base import WrappedModel
    from unlearnkit.inference.loading import load_any_model
    from unlearnkit.modeling import load_tokenizer
    from unlearnkit.runs.inputs import model_source
    from unlearnkit.serving.app import Server

    source = model_source(model)  # a pretrained name: its converted folder (converted on first use)
    loaded = load_any_model(source, trust_remote_code)
    tokenizer = loaded.tokenizer if isinstance(loaded, WrappedModel) else load_tokenizer(source, trust_remote_code)
    return Server(loaded, tokenizer, output, settings, fmt, source, api_key, sock)
