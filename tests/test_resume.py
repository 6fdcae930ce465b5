"""Crash and resume: a real subprocess is killed with SIGKILL mid-run, then the same command finishes the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unlearnkit.io import partial_dir
from unlearnkit.provenance import weights_sha256
from unlearnkit.runs.folder import INCOMPLETE_MARKER
from unlearnkit.training import newest_intact_checkpoint


def _unlearn(cache: Path, data: Path, output: Path) -> list[str]:
    return ["unlearn", "--method", "npo", "--forget", "forget10", "--preset", "micro", "--cache", str(cache),
            "--set", "batch_size=2", "--set", "num_epochs=25", "--checkpoint-every", "4", "--output", str(output)]


def _finetune(cache: Path, data: Path, output: Path) -> list[str]:
    return ["finetune", "--data", str(data), "--preset", "micro", "--max-epochs", "30", "--target-accuracy", "1.0",
            "--batch-size", "8", "--checkpoint-every", "4", "--output", str(output)]


@pytest.mark.parametrize("command", [_unlearn, _finetune], ids=["unlearn", "finetune"])
def test_killed_run_resumes_to_identical_results(command, micro_cache: Path, micro_bench, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in micro_bench.split("full")), encoding="utf-8")

    def cli(output: Path) -> list[str]:
        return [sys.executable, "-m", "unlearnkit.cli", "-q", *command(micro_cache, data, output)]

    straight = tmp_path / "straight"
    subprocess.run(cli(straight), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    checkpoints = partial_dir(killed) / "checkpoints"
    process = subprocess.Popen(cli(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline and newest_intact_checkpoint(checkpoints) is None:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be interrupted; make it longer"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert newest_intact_checkpoint(checkpoints) is not None
    assert not killed.exists(), "an interrupted run must not look finished"
    assert (partial_dir(killed) / INCOMPLETE_MARKER).exists()

    # Rerunning the same command resumes from the checkpoint and finishes.
    subprocess.run(cli(killed), check=True, env=env, capture_output=True)
    assert not partial_dir(killed).exists() and not (killed / INCOMPLETE_MARKER).exists()
    assert "resuming the interrupted run" in (killed / "log.txt").read_text()
    assert (killed / "summary.json").read_bytes() == (straight / "summary.json").read_bytes()
    assert weights_sha256(killed / "model") == weights_sha256(straight / "model")
    # The checkpoint carries the log so far, so the resumed run's training log is whole, step for step.
    losses = [[e["loss"] for e in json.loads((out / "training_log.json").read_text()) if "loss" in e]
              for out in (straight, killed)]
    assert losses[0] and losses[1] == losses[0]


def test_interrupted_run_with_other_settings_is_refused(micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.helpers import micro, run_cli

    out = tmp_path / "out"
    staging = partial_dir(out)
    staging.mkdir()
    (staging / "run-identity.json").write_text('{"command": "something else"}')
    assert run_cli(["unlearn", "--method", "ga", "--output", str(out), *micro(micro_cache)], monkeypatch) == 2
    assert "interrupted run with other settings" in capsys.readouterr().err
    assert (staging / "run-identity.json").exists()
    assert run_cli(["unlearn", "--method", "ga", "--output", str(out), "--resume", "--overwrite", *micro(micro_cache)], monkeypatch) == 2
    assert "no interrupted run" in capsys.readouterr().err
