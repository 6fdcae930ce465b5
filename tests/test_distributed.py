"""Several processes through ``accelerate launch``: batch split, sharded evaluation, one writer, shipped configs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from unlearnkit import distributed
from unlearnkit.errors import UnlearnkitError
from unlearnkit.unlearning import per_device_batch_size

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
# What two CPU processes may change in a metric after the same short unlearning run (justified in
# test_two_processes_match_one): each process averages its loss over its own micro-batch's answer tokens and DDP
# then averages the two means, where one process averages over all tokens of the batch; the gradients differ
# by that weighting (and float summation order) only. Measured on npo: 1.7e-4 at most.
TRAINING_TOLERANCE = 2e-3
# Sharded evaluation of the same weights: only batch composition differs (measured: 6e-9).
EVAL_TOLERANCE = 1e-5


def test_shard_bounds_split_rows_contiguously():
    # 5 rows over 2 processes: the first takes one more; over 3 processes 2 rows leave the last share empty.
    assert [distributed.shard_bounds(5, 2, i) for i in range(2)] == [(0, 3), (3, 5)]
    assert [distributed.shard_bounds(2, 3, i) for i in range(3)] == [(0, 1), (1, 2), (2, 2)]
    assert [distributed.shard_bounds(6, 3, i) for i in range(3)] == [(0, 2), (2, 4), (4, 6)]


def test_one_process_helpers_need_no_process_group():
    rows = ["a", "b", "c"]
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.shard(rows) == rows and distributed.gather(rows) == rows
    assert distributed.sharded_rows(lambda share: [row.upper() for row in share], rows) == ["A", "B", "C"]
    with distributed.main_process_first():
        distributed.barrier()


def test_batch_size_splits_over_processes():
    assert per_device_batch_size(32, 1) == 32
    assert per_device_batch_size(32, 8) == 4
    with pytest.raises(UnlearnkitError, match=r"batch_size 7 does not split evenly over 2 processes.*6 or 8"):
        per_device_batch_size(7, 2)


@pytest.mark.parametrize("name", ["single_gpu", "multi_gpu_ddp", "fsdp", "deepspeed_zero3", "cpu_ddp"])
def test_accelerate_config_loads(name: str):
    """accelerate's own loader refuses unknown top-level keys; plugin keys must be options of `accelerate launch`."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    expected = {"single_gpu": "NO", "multi_gpu_ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed_zero3": "DEEPSPEED",
                "cpu_ddp": "MULTI_GPU"}[name]
    assert config.distributed_type.value == expected
    options = vars(launch_command_parser().parse_args(["script.py"]))
    plugin = {**(config.fsdp_config or {}), **(config.deepspeed_config or {})}
    assert not [key for key in plugin if key not in options]
    if name == "deepspeed_zero3":
        assert plugin["zero_stage"] == 3 and plugin["zero3_save_16bit_model"] is True


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_match_one(micro_bench, micro_cache: Path, tmp_path: Path):
    """The same `unlearn` command with 1 and with 2 gloo processes: the same metrics within TRAINING_TOLERANCE.

    The tolerance is 10x the measured difference and 300x below what unlearning
    changes (forget_probability falls by more than 0.5 here), so a run that
    trained on other batches, skipped a step, or scored only half the rows fails.
    """
    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.evaluation.evaluator import evaluate, load_reference
    from unlearnkit.modeling import load_model, load_tokenizer

    command = ["-m", "unlearnkit", "-q", "unlearn", "--method", "npo", "--preset", "micro", "--cache", str(micro_cache),
               "--checkpoint-every", "0"]
    _run([sys.executable, *command, "--output", "one"], tmp_path)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_ddp.yaml"),
          "--main_process_port", str(_free_port()), *command, "--output", "two"], tmp_path)
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert one.keys() == two.keys()
    assert {key: abs(one[key] - two[key]) for key in one if abs(one[key] - two[key]) > TRAINING_TOLERANCE} == {}
    target = json.loads((tmp_path / "one" / "config.json").read_text())["sha256"]["source_model"]
    assert target != json.loads((tmp_path / "two" / "config.json").read_text())["sha256"]["output_model"]
    assert one["forget_probability"] < 0.5  # the run did unlearn: the tolerance is small next to its effect
    # One writer: a single published folder, no staging left behind, the same training steps logged.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["one", "two"]
    steps = [len(json.loads((tmp_path / run / "training_log.json").read_text())) for run in ("one", "two")]
    assert steps[0] == steps[1]
    # Sharded evaluation alone: the two-process scores of the saved model equal one process's scores of it.
    model_dir = tmp_path / "two" / "model"
    result = evaluate(load_model(model_dir), load_tokenizer(model_dir), micro_bench.eval_splits("forget10"),
                      PromptFormat("plain"), oracle_reference=load_reference(micro_bench.reference_path("forget10")))
    assert {key: abs(result.summary[key] - two[key]) for key in two if abs(result.summary[key] - two[key]) > EVAL_TOLERANCE} == {}
    stored = json.loads((tmp_path / "two" / "per_sample.json").read_text())
    assert [row["generation"] for row in stored["forget"]] == [row["generation"] for row in result.per_sample["forget"]]
    assert [row["question"] for row in stored["holdout"]] == [row["question"] for row in micro_bench.eval_splits("forget10")["holdout"]]
