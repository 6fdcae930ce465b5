"""The server's request log: one JSON line per request, with the guard's decision, and the server's own record.

A deployment that must not reveal certain data needs to know what was asked
and what the guard decided, without the log becoming a copy of the questions:
each line holds the SHA-256 digest of the prompt the model saw (the text after
the chat template), not the text, unless ``--log-prompts`` asks for the texts
(prompt and completion). A digest is not anonymisation: whoever holds a
candidate prompt can hash it and find it in the log, which is what an auditor
needs; short prompts can be guessed.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs.inputs import check_outputs

REQUESTS_FILE = "requests.jsonl"
SERVE_FILE = "serve.json"
# What a serve log folder holds: what --overwrite may replace (and nothing else).
SERVE_FILES = (SERVE_FILE, REQUESTS_FILE)


def now_iso() -> str:
    """The current time, UTC, ISO 8601 with milliseconds (what every log line's ``time`` holds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def prompt_digest(text: str) -> str:
    """The prompt's SHA-256 (hex) over its UTF-8 text, as the log records it in place of the text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def jsonable(value: Any) -> Any:
    """``value`` with tensors, numpy scalars and tuples turned into JSON values (a guard's decision may hold them)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / infinity
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def check_log_folder(output: Path, overwrite: bool, model: str | None) -> None:
    """Refuse a log folder that would destroy anything, before the model loads or the port is taken.

    New or empty: fine (the usual results-folder checks apply: not an input,
    not the current or home folder, writable). Holding files: refused unless
    ``overwrite`` and it is an earlier serve log (``serve.json``) with nothing
    else in it; only then are that log's files replaced, never anything else.
    """
    output = Path(output).expanduser()
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise UnlearnkitError(f"Log folder {output} already holds files (an earlier server's log?). "
                                  "Choose a new --output, or pass --overwrite to replace an earlier serve log.")
        others = sorted(path.name for path in output.iterdir() if path.name not in SERVE_FILES)
        if not (output / SERVE_FILE).is_file() or others:
            raise UnlearnkitError(f"Log folder {output} holds files that are not an unlearnkit serve log "
                                  f"({', '.join(others) or 'no ' + SERVE_FILE}); --overwrite replaces only an earlier "
                                  "serve log. Choose a new --output.")
        check_outputs(None, False, files={"--output": output}, model=model)
        return
    check_outputs(output, False, model=model)


class RequestLog:
    """Appends one JSON line per request to ``folder/requests.jsonl`` (thread-safe, flushed per line)."""

    def __init__(self, folder: Path, log_prompts: bool = False) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for name in SERVE_FILES:  # an earlier log that --overwrite replaces (check_log_folder allowed only ours)
            (folder / name).unlink(missing_ok=True)
        self.folder = folder
        self.path = folder / REQUESTS_FILE
        self.log_prompts = log_prompts
        self.lines = 0
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, entry: Mapping[str, Any]) -> None:
        """One line: ``entry`` (time first), with ``prompt`` / ``completion`` texts dropped unless --log-prompts.

        Without --log-prompts a guard's decision keeps its numbers and flags, and each of its texts (a memory's query
        and key, which are the very questions to be forgotten) becomes its SHA-256, so the log never holds them.
        """
        record = {"time": now_iso(), **{key: value for key, value in entry.items()
                                        if self.log_prompts or key not in ("prompt", "completion")}}
        if not self.log_prompts and isinstance(record.get("decision"), Mapping):
            record["decision"] = {key: {"sha256": prompt_digest(value)} if isinstance(value, str) else value
                                  for key, value in record["decision"].items()}
        line = json.dumps(jsonable(record), ensure_ascii=False)
        with self._lock:
            if self._file.closed:
                return
            self._file.write(line + "\n")
            self._file.flush()
            self.lines += 1

    def write_record(self, record: Mapping[str, Any]) -> None:
        """The server's own record (``serve.json``): what is served, how, since when; rewritten when it stops."""
        (self.folder / SERVE_FILE).write_text(json.dumps(jsonable(dict(record)), indent=2) + "\n", encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()
