from __future__ import annotations

import hashlib
import json
from pathlib import Path

from unlearnkit.provenance import environment, rows_sha256, weights_sha256


def test_rows_digest_is_canonical_json_per_line() -> None:
    rows = [{"question": "Q?", "answer": "A."}, {"answer": "B.", "question": "R?"}]
    expected = hashlib.sha256(b'{"answer":"A.","question":"Q?"}\n{"answer":"B.","question":"R?"}\n').hexdigest()
    assert rows_sha256(rows) == expected
    # Key order does not matter; content does.
    assert rows_sha256([{"answer": "A.", "question": "Q?"}, rows[1]]) == expected
    assert rows_sha256(rows[:1]) != expected


def test_weights_digest_covers_safetensors_files_only(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    expected = hashlib.sha256(b"model.safetensors" + b"weights").hexdigest()
    assert weights_sha256(tmp_path) == expected
    (tmp_path / "config.json").write_text('{"changed": true}')
    assert weights_sha256(tmp_path) == expected
    assert weights_sha256("owner/hub-model") is None


def test_environment_names_the_libraries() -> None:
    assert {"unlearnkit", "torch", "transformers", "peft", "datasets", "accelerate", "python"} <= set(environment())


def test_same_command_gives_byte_identical_summary(micro_cache: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.helpers import micro, run_cli

    outputs = [tmp_path / "first", tmp_path / "second"]
    for out in outputs:
        args = ["unlearn", "--method", "npo", "--forget", "forget10", "--set", "num_epochs=2", "--output", str(out), *micro(micro_cache)]
        assert run_cli(args, monkeypatch) == 0
    first, second = ((out / "summary.json").read_bytes() for out in outputs)
    assert first == second
    configs = [json.loads((out / "config.json").read_text()) for out in outputs]
    assert configs[0]["sha256"] == configs[1]["sha256"]
    assert configs[0]["sha256"]["output_model"] == weights_sha256(outputs[0] / "model")
    assert configs[0]["sha256"]["source_model"] != configs[0]["sha256"]["output_model"]
