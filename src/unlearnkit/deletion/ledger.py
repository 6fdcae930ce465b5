"""The ledger of deletion requests: what was forgotten when, and whether it is still forgotten.

Requests arrive one after another; each unlearns the model the previous one produced (``--after DIR``). Unlearning
B can bring A back (the relearning found by MUSE's sustainability test, Shi et al., ICLR 2025), so each request
re-asks every earlier request's questions on its new model. The ledger is written anew into each request's
folder (the earlier folder is an input and never changes): the newest folder holds the whole history.

``ledger.json``: ``requests`` (one entry per request, oldest first: its number, names, times, rows forgotten, model
digests, verdict) and ``reevaluated`` (at the newest request, one row per earlier request: its recall then and now
and whether it is still forgotten).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unlearnkit.errors import UnlearnkitError

LEDGER_FILE = "ledger.json"


def check_ledger(ledger: Any, where: str) -> list[dict[str, Any]]:
    """The requests of a ledger read from ``where``; anything but a list of numbered requests with names is refused."""
    requests = ledger.get("requests") if isinstance(ledger, dict) else None
    if not isinstance(requests, list) or not requests:
        raise UnlearnkitError(f"{where} holds no ledger of requests; --after takes a folder written by `unlearnkit forget`.")
    for position, entry in enumerate(requests, start=1):
        names = entry.get("names") if isinstance(entry, dict) else None
        if (not isinstance(entry, dict) or entry.get("number") != position or not isinstance(names, list) or not names
                or not all(isinstance(name, str) and name.strip() for name in names)):
            raise UnlearnkitError(f"{where}: request {position} of the ledger is damaged (it needs its number and names); "
                                  "--after takes a folder written by `unlearnkit forget`, unchanged.")
    return requests


def ledger_entry(number: int, record: Mapping[str, Any]) -> dict[str, Any]:
    """A request's line in the ledger, from its audit record."""
    request, data, model = record["request"], record["data"], record["model"]
    return {
        "number": number, "request_id": request.get("request_id"), "entity": request["entity"], "names": request["names"],
        "received": request["received"], "completed": request["completed"], "forget_rows": data["forget_rows"],
        "forget_sha256": data["forget_sha256"], "model_before_sha256": model["before_sha256"],
        "model_after_sha256": model["after_sha256"], "method": record["method"]["name"],
        "recall_after": record["checks"]["forgotten"]["after"], "verdict": record["verdict"]["verdict"],
        "passed": record["verdict"]["passed"],
    }


def reevaluation(entry: Mapping[str, Any], rows: int, recall_now: float | None, limit: float) -> dict[str, Any]:
    """An earlier request re-asked on the newest model: recall then and now, and whether it is still at most ``limit``.

    ``rows`` 0 (its names match no row of today's corpus): nothing to re-ask, recorded as such.
    """
    still = None if recall_now is None else recall_now <= limit
    return {"number": entry["number"], "entity": entry["entity"], "rows": rows, "recall_then": entry.get("recall_after"),
            "recall_now": recall_now, "limit": limit, "still_forgotten": still}


def extended(previous: Sequence[Mapping[str, Any]], entry: Mapping[str, Any],
             reevaluated: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The newest ledger: the earlier requests, this one, and the earlier ones re-evaluated at this one."""
    return {"requests": [*map(dict, previous), dict(entry)], "reevaluated": [dict(row) for row in reevaluated]}
