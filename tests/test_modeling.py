from __future__ import annotations

import json
from pathlib import Path

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import load_model, load_tokenizer, train_tokenizer


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


def _results_folder(root: Path, command: str, with_model: bool) -> Path:
    folder = root / command
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"command": command, "model": "somewhere"}), encoding="utf-8")
    (folder / "summary.json").write_text("{}", encoding="utf-8")
    if with_model:
        (folder / "model").mkdir()
    return folder


@pytest.mark.parametrize("load", [load_model, load_tokenizer])
def test_a_results_folder_given_as_a_model_points_to_its_model(load, tmp_path: Path) -> None:
    """`eval --model RESULTS_FOLDER`: the message names RESULTS_FOLDER/model, not a conversion of pickled weights."""
    folder = _results_folder(tmp_path, "unlearn", with_model=True)
    with pytest.raises(UnlearnkitError) as caught:
        load(folder)
    message = str(caught.value)
    assert "results folder of `unlearnkit unlearn`" in message and f"its model is in {folder / 'model'}" in message
    assert "unpickles" not in message and "convert" not in message


def test_a_results_folder_without_a_model_says_so(tmp_path: Path) -> None:
    with pytest.raises(UnlearnkitError, match="results folder of `unlearnkit eval`, which holds no model"):
        load_model(_results_folder(tmp_path, "eval", with_model=False))


def test_a_bench_folder_given_as_a_model_points_to_a_run(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    (bench / "ga-forget10-seed0" / "model").mkdir(parents=True)
    (bench / "bench.json").write_text(json.dumps({"command": "bench", "runs": []}), encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"each run's model is in its run folder's model/ \(e.g. .*ga-forget10-seed0/model\)"):
        load_model(bench)
