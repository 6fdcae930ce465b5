"""Reliability guarantees: no output destroys an input, one writer per results folder, interrupts are not success."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import micro, run_cli
from unlearnkit.io import partial_dir
from unlearnkit.runs.folder import INCOMPLETE_MARKER
from unlearnkit.runs.lock import lock_path, output_lock


def tree_digest(folder: Path) -> str:
    """Every path under ``folder`` with its bytes (or symlink target): any change at all changes the digest."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def world(micro_bench, tmp_path: Path) -> dict[str, str]:
    """Copies of a model, data, an oracle reference and an earlier results folder, all inside ``tmp_path``."""
    model = tmp_path / "models" / "target"
    shutil.copytree(micro_bench.target_dir, model)
    rows = micro_bench.split("forget10")[:2]
    data = tmp_path / "data"
    data.mkdir()
    (data / "forget.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n", encoding="utf-8")
    reference = tmp_path / "refs" / "oracle.json"
    reference.parent.mkdir()
    shutil.copy(micro_bench.reference_path("forget10"), reference)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "summary.json").write_text('{"forget_quality": 0.5}', encoding="utf-8")
    (earlier / "config.json").write_text('{"command": "eval"}', encoding="utf-8")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}), encoding="utf-8")
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    (tmp_path / "link-to-model").symlink_to(model, target_is_directory=True)
    return {"tmp": str(tmp_path), "model": str(model), "models": str(model.parent), "forget": str(data / "forget.jsonl"),
            "data": str(data), "reference": str(reference), "refs": str(reference.parent), "earlier": str(earlier),
            "adapter": str(adapter), "link": str(tmp_path / "link-to-model")}


@dataclass
class Overlap:
    name: str
    args: Callable[[dict], list[str]]
    message: str


def _eval(w: dict, *extra: str) -> list[str]:
    return ["eval", "--model", w["model"], "--forget", w["forget"], *extra]


def _unlearn(w: dict, *extra: str) -> list[str]:
    return ["unlearn", "--method", "ga", "--model", w["model"], "--forget", w["forget"], *extra]


OVERLAPS = [
    Overlap("unlearn into the source model", lambda w: _unlearn(w, "--output", w["model"], "--overwrite"),
            "is --model"),
    Overlap("unlearn into the folder holding the model", lambda w: _unlearn(w, "--output", w["models"], "--overwrite"),
            "contains --model"),
    Overlap("unlearn into a folder inside the model", lambda w: _unlearn(w, "--output", w["model"] + "/results"),
            "lies inside --model"),
    Overlap("unlearn into a symlink to the model", lambda w: _unlearn(w, "--output", w["link"], "--overwrite"), "is --model"),
    Overlap("unlearn over the forget file", lambda w: _unlearn(w, "--output", w["forget"], "--overwrite"), "is --forget"),
    Overlap("unlearn into the folder of the data", lambda w: _unlearn(w, "--output", w["data"], "--overwrite"),
            "contains --forget"),
    Overlap("unlearn into the adapter's base model", lambda w: ["unlearn", "--method", "ga", "--model", w["adapter"], "--forget",
                                                                w["forget"], "--output", w["model"], "--overwrite"],
            "the base model of --model"),
    Overlap("eval into the model", lambda w: _eval(w, "--output", w["model"], "--overwrite"), "is --model"),
    Overlap("eval reference over the model's config", lambda w: _eval(w, "--output", w["tmp"] + "/out", "--save-reference",
                                                                      w["model"] + "/config.json", "--overwrite"),
            "--save-reference"),
    Overlap("eval into the oracle reference's folder", lambda w: _eval(w, "--oracle-reference", w["reference"], "--output",
                                                                       w["refs"], "--overwrite"), "contains --oracle-reference"),
    Overlap("finetune into its data folder", lambda w: ["finetune", "--data", w["forget"], "--output", w["data"], "--overwrite"],
            "contains --data"),
    Overlap("report inside a results folder it reads", lambda w: ["report", w["earlier"], "--output", w["earlier"] + "/report.html"],
            "lies inside FOLDERS"),
    Overlap("audit into the audited model", lambda w: ["audit", w["model"], "--forget", w["forget"], "--target", w["model"],
                                                       "--oracle", w["model"], "--output", w["model"] + "/audit"],
            "lies inside MODEL"),
    Overlap("fuse into the base model", lambda w: ["fuse", "--base", w["model"], "--layers", w["forget"], "--output", w["model"],
                                                   "--overwrite"], "is --base"),
    Overlap("general into the model", lambda w: ["general", "--model", w["model"], "--tasks", "mmlu", "--output", w["model"],
                                                 "--overwrite"], "is --model"),
    Overlap("sequence into the folder holding the model", lambda w: ["sequence", "--mode", "scalability", "--model", w["model"],
                                                                     "--output", w["models"], "--overwrite"], "contains --model"),
]


@pytest.mark.parametrize("case", OVERLAPS, ids=[case.name for case in OVERLAPS])
def test_no_output_may_destroy_an_input(case: Overlap, world: dict, monkeypatch, capsys) -> None:
    before = tree_digest(Path(world["tmp"]))
    assert run_cli(case.args(world), monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and case.message in err and "Traceback" not in err, err
    assert tree_digest(Path(world["tmp"])) == before, "an input (or anything else) was changed"


def test_overwrite_replaces_only_results_folders(world: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("keep me", encoding="utf-8")
    assert run_cli(_eval(world, "--output", str(mine), "--overwrite"), monkeypatch) == 2
    assert "holds files that are not an unlearnkit result" in capsys.readouterr().err
    assert (mine / "todo.txt").read_text() == "keep me"
    # An earlier result is replaced, as --overwrite promises.
    assert run_cli(_eval(world, "--output", world["earlier"], "--overwrite"), monkeypatch) == 0
    assert "forget_probability" in json.loads(Path(world["earlier"], "summary.json").read_text())


def test_the_cache_is_an_input(micro_cache: Path, micro_bench, monkeypatch, capsys) -> None:
    before = tree_digest(micro_bench.root)
    assert run_cli(["demo", "--output", str(micro_bench.root / "target"), "--overwrite", *micro(micro_cache)], monkeypatch) == 2
    assert "the built-in benchmark's cache" in capsys.readouterr().err
    assert run_cli(["demo", "--output", str(micro_cache), "--overwrite", *micro(micro_cache)], monkeypatch) == 2
    assert tree_digest(micro_bench.root) == before


def test_protected_folders_are_never_outputs(world: dict, monkeypatch, capsys) -> None:
    monkeypatch.chdir(world["data"])
    for output in ("", ".", "..", str(Path.home())):
        assert run_cli(_eval(world, "--output", output, "--overwrite"), monkeypatch) == 2, output
        assert "name a new folder" in capsys.readouterr().err


def test_a_failed_run_does_not_block_a_corrected_rerun(world: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "out"
    staging = partial_dir(out)
    staging.mkdir()
    (staging / "run-identity.json").write_text('{"command": "unlearn", "hyperparameters": {"learning_rate": 1e9}}')
    (staging / INCOMPLETE_MARKER).write_text("failed: NumericalFault: the loss is nan at step 3\n")
    assert run_cli(_unlearn(world, "--output", str(out), "--set", "num_epochs=1"), monkeypatch) == 0
    assert "replacing the failed run" in (out / "log.txt").read_text() or "replacing the failed run" in capsys.readouterr().err
    assert (out / "summary.json").is_file() and not staging.exists()


# --- one writer per results folder -------------------------------------------------------------------------------


def test_lock_refuses_a_second_holder_and_releases(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out):
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        with output_lock(out):  # re-entrant within one process
            pass
        assert lock_path(out).exists()
        # Another process cannot take it.
        probe = subprocess.run([sys.executable, "-c", "from unlearnkit.runs.lock import output_lock; import sys\n"
                                f"with output_lock({str(out)!r}): pass"], capture_output=True, text=True)
        assert probe.returncode != 0 and f"pid {os.getpid()}" in probe.stderr
    assert not lock_path(out).exists()


def test_the_lock_leaves_no_folder_behind(tmp_path: Path) -> None:
    # A refused command: the folders made for its lock go with it.
    with pytest.raises(RuntimeError), output_lock(tmp_path / "a" / "b" / "out"):
        assert (tmp_path / "a" / "b").is_dir()
        raise RuntimeError("refused")
    assert list(tmp_path.iterdir()) == []
    # A finished one: its results stay, and so do the folders that hold them.
    with output_lock(tmp_path / "c" / "d" / "out"):
        (tmp_path / "c" / "d" / "out").mkdir()
    assert (tmp_path / "c" / "d" / "out").is_dir() and not lock_path(tmp_path / "c" / "d" / "out").exists()


@pytest.mark.parametrize("where", ["under a file", "unwritable"])
def test_an_output_that_cannot_be_made_is_a_usage_error(where: str, tmp_path: Path, monkeypatch, capsys) -> None:
    from unlearnkit.errors import UnlearnkitError

    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "out" if where == "under a file" else Path("/proc/unlearnkit-test/out")
    with pytest.raises(UnlearnkitError, match=r"Cannot write results under .*Choose another --output"), output_lock(out):
        pass
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file"]
    assert run_cli(["bench", "--methods", "ga", "--preset", "micro", "--output", str(out)], monkeypatch) == 2
    assert capsys.readouterr().err.startswith("error: Cannot write results under")


def test_a_dead_holder_s_lock_is_taken_over(tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "command": "unlearnkit eval"}))
    with caplog.at_level("WARNING", logger="unlearnkit"), output_lock(out):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert f"pid {dead.pid}" in caplog.text and "no longer running" in caplog.text
    assert not lock_path(out).exists()


def test_a_lock_from_another_host_is_not_taken_over(tmp_path: Path, monkeypatch, capsys, world: dict) -> None:
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"pid": 1, "host": "elsewhere.example", "command": "unlearnkit eval"}))
    assert run_cli(_eval(world, "--output", str(out)), monkeypatch) == 2
    err = capsys.readouterr().err
    assert "on host elsewhere.example" in err and "delete the lock file" in err
    assert lock_path(out).exists() and not out.exists()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "unlearnkit.cli", "-q", *args]


def _long_unlearn(cache: Path, output: Path, epochs: int = 40) -> list[str]:
    return _cli("unlearn", "--method", "npo", "--forget", "forget10", "--preset", "micro", "--cache", str(cache),
                "--set", "batch_size=2", "--set", f"num_epochs={epochs}", "--checkpoint-every", "2", "--output", str(output))


def _wait_for(condition: Callable[[], bool], process: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while process.poll() is None and time.monotonic() < deadline and not condition():
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before the test could act; make it longer"


def test_two_commands_on_one_output(micro_cache: Path, micro_bench, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    # The first run must outlast the second command's start-up (imports take seconds): many epochs.
    first = subprocess.Popen(_long_unlearn(micro_cache, out, epochs=250), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    _wait_for(lambda: (partial_dir(out) / "config.json").exists(), first)
    second = subprocess.run(_long_unlearn(micro_cache, out, epochs=250), env=env, capture_output=True, text=True)
    assert first.poll() is None, "the first run ended before the second started; make it longer"
    assert second.returncode == 2, second.stderr
    assert second.stderr.startswith("error: Another unlearnkit run (pid") and f"pid {first.pid}" in second.stderr
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    for name in ("config.json", "summary.json", "per_sample.json", "training_log.json", "log.txt", "model/model.safetensors"):
        assert (out / name).is_file(), name
    assert not lock_path(out).exists() and not partial_dir(out).exists()


# --- interrupts -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("sent", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_is_not_success(sent: signal.Signals, status: int, micro_cache: Path, micro_bench, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    checkpoints = partial_dir(out) / "checkpoints"
    process = subprocess.Popen(_long_unlearn(micro_cache, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: any(checkpoints.glob("checkpoint-*")), process)
    time.sleep(0.3)  # let the checkpoint finish writing
    process.send_signal(sent)
    _, err = process.communicate(timeout=120)
    assert process.returncode == status, err
    assert f"error: interrupted by {sent.name}; the unfinished run is kept in {partial_dir(out)}" in err, err
    assert "rerun the same command to resume" in err and "Traceback" not in err
    assert not out.exists() and not lock_path(out).exists()
    assert (partial_dir(out) / INCOMPLETE_MARKER).read_text().startswith("interrupted")
    # The same command resumes and finishes.
    rerun = subprocess.run(_long_unlearn(micro_cache, out), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming the interrupted run" in (out / "log.txt").read_text()


def test_interrupt_before_any_output(monkeypatch, capsys) -> None:
    from unlearnkit.runs import inputs

    def interrupted(*_: object, **__: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(inputs, "check_outputs", interrupted)  # the command's first step, before it reads anything
    assert run_cli(["eval", "--model", "m", "--forget", "f", "--output", "o"], monkeypatch) == 143
    assert "interrupted by SIGTERM before any results were written; rerun the same command" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored after the command


def test_two_commands_preparing_one_cache_take_turns(tmp_path: Path) -> None:
    """Two cold `prepare` processes on one cache: the second waits for the first, then reuses its models (trained once)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cache = tmp_path / "cache"
    command = [sys.executable, "-m", "unlearnkit.cli", "prepare", "--preset", "micro", "--splits", "forget10", "--cache", str(cache)]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    logs = [process.communicate(timeout=600)[1] for process in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, logs
    assert sum("building target model" in log for log in logs) == 1, logs  # trained once, not twice into one staging folder
    waited = next(log for log in logs if "building target model" not in log)
    assert "another process is preparing the built-in benchmark" in waited and "reusing cached benchmark data" in waited
    root = next(cache.glob("builtin-*"))
    assert (root / "target" / "model.safetensors").is_file() and (root / "oracle-forget10" / "model.safetensors").is_file()
    assert not list(cache.glob("builtin-*/.*.partial")), "no half-built folder may be left"


# --- results are shared like the user's other files --------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_results_files_honour_the_umask(umask: int, mode: int, world: dict, tmp_path: Path, monkeypatch) -> None:
    """Every file of a results folder (JSON written by unlearnkit, weights saved by safetensors) gets the umask's
    permissions, as a file the user creates would, not a temporary file's private 0600."""
    out = tmp_path / "out"
    previous = os.umask(umask)
    try:
        assert run_cli(_unlearn(world, "--output", str(out), "--set", "num_epochs=1"), monkeypatch) == 0
        report = tmp_path / "report.html"
        assert run_cli(["report", str(out), "--output", str(report)], monkeypatch) == 0
    finally:
        os.umask(previous)
    files = [path for path in out.rglob("*") if path.is_file()] + [report]
    assert out / "model" / "model.safetensors" in files and out / "config.json" in files
    assert {str(path.relative_to(tmp_path)): oct(path.stat().st_mode & 0o777) for path in files} == \
        {str(path.relative_to(tmp_path)): oct(mode) for path in files}
