"""Damaged state: a damaged checkpoint is skipped or explained, a full disk is reported, a damaged model is refused.

Every refusal goes through the real command line: one message, exit status 2
(4 when results could not be written), no traceback, nothing written, and the
damaged input left exactly as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
import subprocess
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from tests.helpers import run_cli
from unlearnkit import modeling, training
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.io import partial_dir
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.provenance import weights_sha256
from unlearnkit.runs.folder import CHECKPOINTS, INCOMPLETE_MARKER
from unlearnkit.training import CHECKPOINT_SEAL, checkpoint_damage, disk_full_error, last_checkpoint, newest_intact_checkpoint
from unlearnkit.unlearning import resolve_method, unlearn

EXIT_BAD_INPUT, EXIT_CANNOT_WRITE = 2, 4


def tree_digest(folder: Path) -> str:
    """Every path under ``folder`` with its bytes: any change at all changes the digest."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    index = len(data) // 2 if offset is None else offset
    data[index] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def edit_config(folder: Path, **changes: object) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def poison_weight(folder: Path, value: float) -> None:
    tensors = load_file(str(folder / "model.safetensors"))
    name = sorted(tensors)[-1]
    tensors[name].view(-1)[3] = value
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def logged_losses(results: Path) -> list[float]:
    """The training log's losses, step by step (its last line also holds run times, which differ)."""
    losses = [entry["loss"] for entry in json.loads((results / "training_log.json").read_text()) if "loss" in entry]
    assert losses
    return losses


def write_forget(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps({"question": r["question"], "answer": r["answer"]}) for r in rows) + "\n")
    return path


# --- Damaged checkpoints -----------------------------------------------------------------------------------------


class KeepCheckpoints(TrainerCallback):
    """Copies each sealed checkpoint aside: the run itself keeps only the newest one."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_save(self, args, state, control, **kwargs):
        name = f"checkpoint-{state.global_step}"
        shutil.copytree(Path(args.output_dir) / name, self.folder / name)


def _unlearn(micro_bench, checkpoint_dir: Path, callbacks=()) -> tuple[dict[str, torch.Tensor], list]:
    """Eight steps of gradient ascent on the micro target, checkpointing every second step; the weights and losses."""
    config = resolve_method("ga", {"batch_size": "2", "num_epochs": "2"})
    outcome = unlearn(load_model(micro_bench.target_dir), load_tokenizer(micro_bench.target_dir), "ga",
                      micro_bench.split("forget10")[:8], [], config, PromptFormat("plain"), show_progress=False,
                      checkpoint_dir=checkpoint_dir, checkpoint_every=2, callbacks=callbacks)
    losses = [entry["loss"] for entry in outcome.log_history if "loss" in entry]
    return {name: tensor.detach().clone() for name, tensor in outcome.model.state_dict().items()}, losses


@pytest.fixture(scope="module")
def straight_run(micro_bench, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An uninterrupted run, and copies of each of its sealed checkpoints (2, 4, 6, 8)."""
    root = tmp_path_factory.mktemp("straight")
    kept = root / "kept"
    kept.mkdir()
    weights, losses = _unlearn(micro_bench, root / "checkpoints", [KeepCheckpoints(kept)])
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["checkpoint-8"], "only the newest sealed checkpoint is kept"
    return {"weights": weights, "losses": losses, "kept": kept}


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "marker missing": (lambda folder: (folder / CHECKPOINT_SEAL).unlink(), "no completion marker"),
    "weights truncated": (lambda folder: truncate(folder / "model.safetensors"), "file model.safetensors holds"),
    "optimizer byte flipped": (lambda folder: flip_byte(folder / "optimizer.pt"), "file optimizer.pt differs"),
    "weights byte flipped": (lambda folder: flip_byte(folder / "model.safetensors"), "file model.safetensors differs"),
    "state file missing": (lambda folder: (folder / "trainer_state.json").unlink(), "file trainer_state.json is missing"),
    "marker unreadable": (lambda folder: (folder / CHECKPOINT_SEAL).write_text("{"), "completion marker"),
}


@pytest.mark.parametrize("damage", list(DAMAGES), ids=list(DAMAGES))
def test_damaged_checkpoint_is_skipped_and_the_run_resumes_identically(
    damage: str, straight_run: dict, micro_bench, tmp_path: Path, caplog
) -> None:
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    for name in ("checkpoint-4", "checkpoint-6"):
        shutil.copytree(straight_run["kept"] / name, checkpoints / name)
    harm, reason = DAMAGES[damage]
    harm(checkpoints / "checkpoint-6")
    assert reason in (checkpoint_damage(checkpoints / "checkpoint-6") or "")
    assert checkpoint_damage(checkpoints / "checkpoint-4") is None

    with caplog.at_level(logging.WARNING, logger="unlearnkit"):
        assert last_checkpoint(checkpoints) == str(checkpoints / "checkpoint-4")
    assert "checkpoint-6 is damaged" in caplog.text and "skipping it" in caplog.text

    # Resuming from checkpoint-4 (never from the damaged checkpoint-6) gives the uninterrupted run, bit for bit.
    weights, losses = _unlearn(micro_bench, checkpoints)
    assert losses == straight_run["losses"]
    assert weights.keys() == straight_run["weights"].keys()
    assert all(torch.equal(weights[name], straight_run["weights"][name]) for name in weights)


def test_no_intact_checkpoint_is_an_error_that_says_how_to_start_over(straight_run: dict, tmp_path: Path) -> None:
    checkpoints = tmp_path / ".out.partial" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for name in ("checkpoint-4", "checkpoint-6"):
        shutil.copytree(straight_run["kept"] / name, checkpoints / name)
    flip_byte(checkpoints / "checkpoint-4" / "model.safetensors")
    (checkpoints / "checkpoint-6" / CHECKPOINT_SEAL).unlink()
    with pytest.raises(UnlearnkitError, match="all damaged") as raised:
        last_checkpoint(checkpoints)
    message = str(raised.value)
    assert "checkpoint-4: file model.safetensors differs" in message and "checkpoint-6: it has no completion marker" in message
    assert "--overwrite" in message and str(checkpoints.parent) in message
    assert newest_intact_checkpoint(checkpoints) is None
    assert last_checkpoint(tmp_path / "nothing-here") is None


def test_disk_full_is_recognised_however_the_writer_reports_it(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-3"
    from_errno = disk_full_error(OSError(errno.ENOSPC, "No space left on device"), folder)
    assert from_errno is not None and from_errno.errno == errno.ENOSPC and from_errno.filename == str(folder)
    safetensors_style = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full_error(safetensors_style, folder).errno == errno.ENOSPC
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")
    assert disk_full_error(quota, folder).errno == errno.EDQUOT
    # torch.save's "file write failed" says nothing; with plenty of space left it is not taken for a full disk.
    assert disk_full_error(RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed"), tmp_path) is None
    assert disk_full_error(ValueError("something else"), tmp_path) is None


# --- A full disk while checkpointing ------------------------------------------------------------------------------


@pytest.fixture
def run_inputs(micro_bench, tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "inputs" / "target"
    shutil.copytree(micro_bench.target_dir, model)
    forget = write_forget(tmp_path / "inputs" / "forget.jsonl", micro_bench.split("forget10")[:8])
    return {"model": model, "forget": forget}


def _unlearn_args(inputs: dict[str, Path], output: Path, *extra: str) -> list[str]:
    """Four steps of gradient ascent on the data file, a checkpoint after every step, no evaluation."""
    return ["unlearn", "--model", str(inputs["model"]), "--method", "ga", "--forget", str(inputs["forget"]),
            "--prompt-format", "plain", "--no-eval", "--set", "batch_size=2", "--set", "num_epochs=1",
            "--checkpoint-every", "1", "--output", str(output), *extra]


def test_disk_full_mid_checkpoint_then_resume_or_start_over(run_inputs: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    """Simulated full disk (no root needed): the second checkpoint cannot be sealed."""
    straight = tmp_path / "straight"
    assert run_cli(_unlearn_args(run_inputs, straight), monkeypatch) == 0
    capsys.readouterr()

    seal = training.seal_checkpoint
    calls = []

    def seal_until_full(folder: Path, step: int) -> None:
        calls.append(step)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / CHECKPOINT_SEAL))
        seal(folder, step)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(training, "seal_checkpoint", seal_until_full)
        assert run_cli(_unlearn_args(run_inputs, out), monkeypatch) == EXIT_CANNOT_WRITE
    err = capsys.readouterr().err
    assert "error: No space left on device while writing" in err and "checkpoint-2" in err, err
    assert "Traceback" not in err
    checkpoints = partial_dir(out) / CHECKPOINTS
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-1"], "the incomplete checkpoint is removed, the sealed one kept"
    assert not out.exists()

    # Both the resumed run and a deliberate fresh start must give the uninterrupted run's model.
    resumed_staging = tmp_path / "saved-staging"
    shutil.copytree(partial_dir(out), resumed_staging)
    assert run_cli(_unlearn_args(run_inputs, out), monkeypatch) == 0
    assert "resuming from" in (out / "log.txt").read_text() and "checkpoint-1" in (out / "log.txt").read_text()
    assert weights_sha256(out / "model") == weights_sha256(straight / "model")
    assert logged_losses(out) == logged_losses(straight)

    # The same interrupted run, its only checkpoint then damaged: the rerun explains, and --overwrite starts over.
    again = tmp_path / "again"
    shutil.copytree(resumed_staging, partial_dir(again))
    flip_byte(partial_dir(again) / CHECKPOINTS / "checkpoint-1" / "model.safetensors")
    capsys.readouterr()
    assert run_cli(_unlearn_args(run_inputs, again), monkeypatch) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "error: The unfinished run's checkpoints" in err and "all damaged" in err and "--overwrite" in err, err
    assert str(partial_dir(again)) in err and "Traceback" not in err
    assert not again.exists() and partial_dir(again).exists()
    assert run_cli(_unlearn_args(run_inputs, again, "--overwrite"), monkeypatch) == 0
    assert weights_sha256(again / "model") == weights_sha256(straight / "model")


@pytest.fixture
def small_disk(tmp_path: Path):
    """A tmpfs mounted at ``tmp_path/disk`` (needs root), resized with ``resize(kib)``; unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True, text=True)
    except OSError as error:
        pytest.skip(f"cannot run mount to build a small file system: {error}")
    if done.returncode != 0:
        pytest.skip(f"mounting a small tmpfs is not allowed here (needs root): {done.stderr.strip()}")

    def resize(kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(mount_point)], check=True, capture_output=True)

    yield types.SimpleNamespace(path=mount_point, resize=resize)
    subprocess.run(["umount", str(mount_point)], check=False, capture_output=True)


def test_a_real_full_disk_mid_checkpoint(run_inputs: dict, small_disk, tmp_path: Path, monkeypatch, capsys) -> None:
    straight = tmp_path / "straight"
    assert run_cli(_unlearn_args(run_inputs, straight), monkeypatch) == 0
    # A checkpoint holds the weights, AdamW's two moments (2x the weights) and small states: room for one, not two.
    weights = (run_inputs["model"] / "model.safetensors").stat().st_size
    checkpoint = 3 * weights + 40 * 1024
    small_disk.resize((64 * 1024 + 3 * checkpoint // 2) // 1024)
    out = small_disk.path / "out"
    capsys.readouterr()

    assert run_cli(_unlearn_args(run_inputs, out), monkeypatch) == EXIT_CANNOT_WRITE
    err = capsys.readouterr().err
    assert "error: No space left on device while writing" in err and "checkpoint-2" in err, err
    assert "Traceback" not in err
    checkpoints = partial_dir(out) / CHECKPOINTS
    assert [p.name for p in checkpoints.iterdir()] == ["checkpoint-1"]
    assert checkpoint_damage(checkpoints / "checkpoint-1") is None
    assert (partial_dir(out) / INCOMPLETE_MARKER).read_text().startswith("failed")

    small_disk.resize(16 * 1024)  # space freed: the same command resumes from the last intact checkpoint
    assert run_cli(_unlearn_args(run_inputs, out), monkeypatch) == 0
    assert f"resuming from {checkpoints / 'checkpoint-1'}" in (out / "log.txt").read_text()
    assert weights_sha256(out / "model") == weights_sha256(straight / "model")
    assert logged_losses(out) == logged_losses(straight)


# --- Damaged models ------------------------------------------------------------------------------------------------


@dataclass
class Damage:
    name: str
    harm: Callable[[Path], None]
    message: str


def _drop_tokenizer(folder: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()


MODEL_DAMAGES = [
    Damage("truncated weights", lambda f: truncate(f / "model.safetensors"), "model.safetensors is damaged"),
    Damage("weights cut by four bytes", lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-4]),
           "model.safetensors is damaged"),
    Damage("corrupt weights header", lambda f: flip_byte(f / "model.safetensors", 20), "model.safetensors is damaged"),
    Damage("empty weights file", lambda f: (f / "model.safetensors").write_bytes(b""), "model.safetensors is damaged"),
    Damage("hidden_size changed", lambda f: edit_config(f, hidden_size=48, head_dim=24),
           "do not fit its config.json: 11 tensor(s) have another shape"),
    Damage("vocab_size changed", lambda f: edit_config(f, vocab_size=600),
           "model.embed_tokens.weight: [512, 32] saved, [600, 32] expected"),
    Damage("a layer more than the weights hold", lambda f: edit_config(f, num_hidden_layers=2), "are not in the weights"),
    Damage("a layer fewer than the weights hold", lambda f: edit_config(f, num_hidden_layers=0), "have no place in the model"),
    Damage("config not JSON", lambda f: (f / "config.json").write_text('{"model_type": "llama",'),
           "config.json is damaged: it is not valid JSON"),
    Damage("config without model_type", lambda f: edit_config(f, model_type=None), "config.json names no model_type"),
    Damage("config missing", lambda f: (f / "config.json").unlink(), "has no config.json"),
    Damage("NaN weight", lambda f: poison_weight(f, float("nan")), "hold non-finite values in tensor model."),
    Damage("infinite weight", lambda f: poison_weight(f, float("inf")), "hold non-finite values in tensor model."),
    Damage("config but no tokenizer", _drop_tokenizer,
           "holds no tokenizer (tokenizer.json or tokenizer_config.json) beside its config.json"),
]


@pytest.fixture
def eval_inputs(micro_bench, tmp_path: Path) -> dict[str, Path]:
    model = tmp_path / "model"
    shutil.copytree(micro_bench.target_dir, model)
    forget = write_forget(tmp_path / "forget.jsonl", micro_bench.split("forget10")[:2])
    return {"model": model, "forget": forget, "out": tmp_path / "results" / "out"}


def _refused(args: list[str], out: Path, monkeypatch, capsys) -> str:
    """Run the command line, check it refused cleanly and wrote nothing; return its message."""
    assert run_cli(args, monkeypatch) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert not out.exists() and not partial_dir(out).exists(), "nothing may be written"
    return err


@pytest.mark.parametrize("damage", MODEL_DAMAGES, ids=[d.name for d in MODEL_DAMAGES])
def test_damaged_model_is_refused_with_a_message(damage: Damage, eval_inputs: dict, monkeypatch, capsys) -> None:
    model, out = eval_inputs["model"], eval_inputs["out"]
    damage.harm(model)
    before = tree_digest(model)
    err = _refused(["eval", "--model", str(model), "--forget", str(eval_inputs["forget"]), "--output", str(out)], out, monkeypatch, capsys)
    assert damage.message in err, err
    assert tree_digest(model) == before, "the damaged input must be left as it was"


def test_the_intact_copy_loads(eval_inputs: dict) -> None:
    """The damages above are what is refused: the same folder undamaged loads and gives finite weights."""
    model = load_model(eval_inputs["model"])
    assert load_tokenizer(eval_inputs["model"]).pad_token_id is not None
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


def _adapter(eval_inputs: dict, tmp_path: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    base = tmp_path / "base"
    shutil.copytree(eval_inputs["model"], base)
    peft_model = get_peft_model(load_model(base), LoraConfig(r=2, target_modules=["q_proj"]))
    folder = tmp_path / "adapter"
    peft_model.save_pretrained(folder)
    load_tokenizer(base).save_pretrained(folder)
    assert Path(json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]) == base.resolve()
    return folder


def test_adapter_whose_base_is_missing(eval_inputs: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    adapter = _adapter(eval_inputs, tmp_path)
    shutil.rmtree(tmp_path / "base")
    before = tree_digest(adapter)
    out = eval_inputs["out"]
    err = _refused(["eval", "--model", str(adapter), "--forget", str(eval_inputs["forget"]), "--output", str(out)],
                   out, monkeypatch, capsys)
    assert f"The adapter in {adapter.resolve()} applies to the base model {(tmp_path / 'base').resolve()}" in err, err
    assert "does not exist" in err and "correct that path" in err
    assert tree_digest(adapter) == before


def test_adapter_whose_weights_are_damaged(eval_inputs: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    adapter = _adapter(eval_inputs, tmp_path)
    truncate(adapter / "adapter_model.safetensors")
    out = eval_inputs["out"]
    err = _refused(["eval", "--model", str(adapter), "--forget", str(eval_inputs["forget"]), "--output", str(out)],
                   out, monkeypatch, capsys)
    assert "adapter_model.safetensors is damaged" in err, err


def _no_network(monkeypatch) -> None:
    """Make any attempt to reach the hub or to load anything fail the test (an AssertionError is not a clean refusal)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a missing folder must be refused before any hub request or loading")

    monkeypatch.setattr(modeling, "get_hf_file_metadata", forbidden)
    monkeypatch.setattr(modeling, "AutoModelForCausalLM", types.SimpleNamespace(from_pretrained=forbidden))
    monkeypatch.setattr(modeling, "AutoTokenizer", types.SimpleNamespace(from_pretrained=forbidden))


MISSING = ["mymodel", "runs/x/model", "a/b/c", "org\\name", "my model", "./gone", "~/no-such-model-folder", "org/name/", "/abs/gone"]


@pytest.mark.parametrize("name", MISSING)
def test_missing_model_folder_fails_at_once_without_the_hub(name: str, eval_inputs: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    _no_network(monkeypatch)
    out = eval_inputs["out"]
    started = time.monotonic()
    err = _refused(["eval", "--model", name, "--forget", str(eval_inputs["forget"]), "--output", str(out)], out, monkeypatch, capsys)
    assert time.monotonic() - started < 10
    assert f"Model folder {name} does not exist." in err, err
    with pytest.raises(UnlearnkitError, match="does not exist"):
        load_tokenizer(name)


def test_hub_name_offline_names_both_possibilities(eval_inputs: dict, monkeypatch, capsys) -> None:
    monkeypatch.setattr(modeling, "is_offline_mode", lambda: True)
    monkeypatch.setattr(modeling, "get_hf_file_metadata", lambda *a, **k: pytest.fail("offline: the hub must not be asked"))
    out = eval_inputs["out"]
    err = _refused(["eval", "--model", "someorg/no-such-model", "--forget", str(eval_inputs["forget"]), "--output", str(out)],
                   out, monkeypatch, capsys)
    assert "No local folder someorg/no-such-model exists, and someorg/no-such-model is not in the local Hugging Face cache" in err, err
    assert "HF_HUB_OFFLINE" in err


def test_hub_name_with_the_hub_out_of_reach(eval_inputs: dict, monkeypatch, capsys) -> None:
    asked = []

    def unreachable(url: str, timeout: float, **kwargs):
        asked.append((url, timeout))
        raise ConnectionError("network is down")

    monkeypatch.setattr(modeling, "is_offline_mode", lambda: False)
    monkeypatch.setattr(modeling, "get_hf_file_metadata", unreachable)
    out = eval_inputs["out"]
    started = time.monotonic()
    assert run_cli(["eval", "--model", "someorg/no-such-model", "--forget", str(eval_inputs["forget"]), "--output", str(out)],
                   monkeypatch) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert time.monotonic() - started < 10 and "Traceback" not in err
    assert "error: No local folder someorg/no-such-model exists, and the Hugging Face hub could not be reached" in err, err
    assert asked and all(timeout <= 10 for _, timeout in asked), "the hub is asked once, with a short timeout"
    assert not out.exists() and not partial_dir(out).exists()


def test_hub_name_the_hub_does_not_have(eval_inputs: dict, monkeypatch, capsys) -> None:
    from huggingface_hub.errors import RepositoryNotFoundError

    def not_found(url: str, timeout: float, **kwargs):
        raise RepositoryNotFoundError("404", response=types.SimpleNamespace(headers={}, request=None))

    monkeypatch.setattr(modeling, "is_offline_mode", lambda: False)
    monkeypatch.setattr(modeling, "get_hf_file_metadata", not_found)
    out = eval_inputs["out"]
    err = _refused(["eval", "--model", "someorg/no-such-model", "--forget", str(eval_inputs["forget"]), "--output", str(out)],
                   out, monkeypatch, capsys)
    assert "No local folder someorg/no-such-model exists, and the Hugging Face hub has no model someorg/no-such-model" in err, err


def test_only_the_hub_form_is_a_hub_name() -> None:
    for name in ("meta-llama/Llama-2-7b-hf", "open-unlearning/tofu_Llama-3.2-1B-Instruct_full", "a/b", "org_1/model.v2"):
        assert modeling.is_hub_name(name), name
    for name in ("mymodel", "a/b/c", "./a", "/a/b", "~/a", "a//b", "a\\b", "a b/c", "a/-b", "a/b.", "a--x/b", "a/b..c", "/a", "a/"):
        assert not modeling.is_hub_name(name), name
