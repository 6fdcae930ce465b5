from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import load_tokenizer, train_tokenizer


def _save_without(tmp_path: Path, *tokens: str) -> Path:
    tokenizer = train_tokenizer(["Question: Where was Ana born?\nAnswer: In Tovrask."] * 10, 300)
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    for token in tokens:
        config.pop(token, None)
    config_path.write_text(json.dumps(config))
    return folder


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path: Path) -> None:
    tokenizer = load_tokenizer(_save_without(tmp_path, "pad_token"))
    assert tokenizer.pad_token_id == tokenizer.eos_token_id is not None


def test_tokenizer_without_pad_or_eos_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError, match="neither a pad nor an EOS token"):
        load_tokenizer(_save_without(tmp_path, "pad_token", "eos_token"))
