"""Enron e-mails: real private correspondence, for the private-data track.

Klimt & Yang, "The Enron Corpus: A New Dataset for Email Classification Research", ECML 2004.
A local copy only, in one of three forms (``@PATH``):

* the CMU ``maildir`` tree (``PATH/maildir/USER/FOLDER/N.`` or ``PATH`` itself): every file is one
  RFC 822 message;
* a CSV file with columns ``file`` and ``message`` (the raw RFC 822 text), as in the common Kaggle
  ``emails.csv`` — ``PATH`` is the file or a folder holding ``emails.csv``;
* JSON Lines (or a JSON list) of rows with the same two fields, ``emails.jsonl``.

Each message becomes a row ``{text, file, sender, sender_name, to, subject, date}`` (``text`` is the body;
``sender_name`` is the ``X-From`` header, the sender's display name; messages whose body is empty are skipped).
"""

from __future__ import annotations

import email
from email.message import Message
from pathlib import Path

from unlearnkit.data.catalog.checks import check_rows
from unlearnkit.data.catalog.reading import read_file
from unlearnkit.data.catalog.spec import TEXT, Config, DatasetSpec, Paper, register
from unlearnkit.errors import UnlearnkitError

TABLE_NAMES = ("emails.csv", "emails.jsonl", "emails.json")
LAYOUTS = "a maildir folder, a CSV/JSON Lines file with columns file and message, or a folder holding emails.csv"


def read_enron(path: Path, config: str, split: str) -> list[dict]:
    if path.is_file():
        return _from_table(path)
    for name in TABLE_NAMES:
        if (path / name).is_file():
            return _from_table(path / name)
    root = path / "maildir" if (path / "maildir").is_dir() else path
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise UnlearnkitError(f"{path} holds no e-mail: pass {LAYOUTS}.")
    rows = [_row(_read_message(p), str(p.relative_to(root))) for p in files]
    return [row for row in rows if row is not None]


def _from_table(path: Path) -> list[dict]:
    if not path.name.lower().endswith((".csv", ".jsonl", ".json")):
        raise UnlearnkitError(f"{path} is not a .csv, .jsonl or .json file; pass {LAYOUTS}.")
    rows = check_rows(read_file(path), {"file": "str", "message": "str"}, {}, {}, str(path))
    parsed = [_row(email.message_from_string(row["message"]), row["file"]) for row in rows]
    return [row for row in parsed if row is not None]


def _read_message(path: Path) -> Message:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # the 2004 corpus predates UTF-8 mail clients; latin-1 decodes every byte
    return email.message_from_string(text)


def _row(message: Message, file: str) -> dict | None:
    body = _body(message).strip()
    if not body:
        return None
    row = {"text": body, "file": file, "sender": message.get("From", ""), "to": message.get("To", ""),
           "subject": message.get("Subject", ""), "date": message.get("Date", "")}
    display_name = (message.get("X-From") or "").strip()  # only the CMU maildir copy has it
    return {**row, "sender_name": display_name} if display_name else row


def _body(message: Message) -> str:
    if message.is_multipart():
        return "\n".join(_body(part) for part in message.get_payload() if isinstance(part, Message))
    payload = message.get_payload()
    return payload if isinstance(payload, str) else ""


def enron_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    return rows


register(DatasetSpec(
    name="enron",
    title="Enron e-mails (CMU maildir or the file/message CSV)",
    paper=Paper("The Enron Corpus: A New Dataset for Email Classification Research", "Klimt & Yang", "ECML", 2004),
    licence="no licence stated; made public by the US FERC investigation, distributed by CMU",
    hub_id=None,
    configs={"emails": Config(("train",))},
    schema={"text": "str", "file": "str"},
    optional={"sender": "str", "sender_name": "str", "subject": "str"},
    row_form=TEXT,
    use="private-data track: real e-mails (names, addresses) to forget or to probe for leakage",
    local_copy=f"Download the CMU Enron corpus (enron_mail_20150507.tar.gz) and unpack it, or the Kaggle emails.csv; pass {LAYOUTS}.",
    convert=enron_rows,
    example={"text": "Here is our forecast", "file": "allen-p/_sent_mail/1.", "sender": "phillip.allen@enron.com",
             "to": "tim.belden@enron.com", "subject": "", "date": "Mon, 14 May 2001 16:39:00 -0700 (PDT)"},
    read_local=read_enron,
))
