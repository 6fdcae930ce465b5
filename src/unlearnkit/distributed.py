"""Several processes started by ``accelerate launch``: who writes, who logs, and which rows each one scores.

unlearnkit never starts processes itself. ``accelerate launch`` starts N copies
of a command and sets ``WORLD_SIZE``/``RANK``; training then runs through
``transformers.Trainer`` (DDP, FSDP or DeepSpeed, as the accelerate config
says), and the helpers here cover the rest:

* only the main process writes results folders and logs below warnings;
* evaluation shards its rows: each process scores one contiguous share and
  :func:`gather` joins the shares in the original order, so every metric is
  computed on all rows, as one process would (up to float noise from other
  batch compositions).

A single process (no ``WORLD_SIZE`` above 1) never touches ``torch.distributed``:
every helper then returns at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")

logger = logging.getLogger("unlearnkit")


def launched_processes() -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def setup() -> None:
    """Join the process group ``accelerate launch`` prepared (once), and keep non-main processes quiet.

    accelerate's ``PartialState`` picks the backend (NCCL on GPUs, gloo on CPUs)
    and this process's GPU, before any model is placed; the Trainer later reuses
    the same state. Without a GPU it must be told ``cpu`` (as the Trainer's
    ``use_cpu`` does), or it would open a group it then reports as one process.
    """
    if launched_processes() == 1 or getattr(setup, "done", False):
        return
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())
    if not state.is_main_process:
        # One console: the others report warnings only (errors carry their rank in the launcher's output).
        logging.getLogger("unlearnkit").addFilter(lambda record: record.levelno >= logging.WARNING)
    setup.done = True  # type: ignore[attr-defined]


def _group_ready() -> bool:
    if launched_processes() == 1:
        return False
    setup()
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if _group_ready() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _group_ready() else 0


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every process arrives here (nothing to wait for in one process)."""
    if _group_ready():
        torch.distributed.barrier()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """The main process runs the block first (e.g. building a cache), the others after it has finished."""
    if not is_main_process():
        barrier()
    yield
    if is_main_process():
        barrier()


def shard_bounds(count: int, size: int, index: int) -> tuple[int, int]:
    """[start, end) of share ``index`` of ``count`` rows split into ``size`` contiguous shares (sizes differ by at most 1)."""
    base, extra = divmod(count, size)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def shard(items: Sequence[T]) -> list[T]:
    """This process's contiguous share of ``items`` (all of them in one process)."""
    start, end = shard_bounds(len(items), world_size(), rank())
    return list(items[start:end])


def gather(part: Sequence[T]) -> list[T]:
    """Every process's ``part`` joined in rank order: after :func:`shard`, the rows in their original order."""
    if world_size() == 1:
        return list(part)
    parts: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(parts, list(part))
    return [item for share in parts for item in share]


def gather_rows(result: Any) -> Any:
    """Join per-row results of every process's share in order: a list, an ``(n, ...)`` array, or a tuple or dict of them."""
    if world_size() == 1:
        return result
    if isinstance(result, dict):
        return {key: gather_rows(value) for key, value in result.items()}
    if isinstance(result, tuple):
        return tuple(gather_rows(value) for value in result)
    if isinstance(result, np.ndarray):
        parts: list[Any] = [None] * world_size()
        torch.distributed.all_gather_object(parts, result)
        return np.concatenate(parts)
    return gather(result)


def sharded_rows(function: Callable[[list[T]], Any], rows: Sequence[T]) -> Any:
    """``function(rows)`` computed by all processes together: each scores its share, all get every row's result.

    ``function`` must return per-row results in the order of the rows it was
    given (see :func:`gather_rows`), and every process must make the same call.
    """
    return gather_rows(function(shard(rows)))


def place_frozen_model(accelerator: Any, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Ready a frozen model that only runs forward passes (a method's reference) beside the trained one.

    DDP and FSDP: a whole copy on this process's device (no gradients, no
    optimiser state; FSDP shards only the trained model). DeepSpeed: the copy
    goes through ``deepspeed.initialize`` as an inference engine, partitioned
    like the trained model under ZeRO-3 and whole (stage 0) otherwise: the way
    preference-tuning libraries hold their reference models.
    """
    from accelerate.utils import DistributedType

    model.eval().requires_grad_(False)
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return model.to(device)
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    stage = config["zero_optimization"]["stage"]
    hidden = getattr(getattr(model, "config", None), "hidden_size", None)
    if stage == 3 and hidden is not None:
        # Bucket sizes fitted to the model, as for the trained one (``auto`` values are only filled for that).
        config["zero_optimization"].update({
            "reduce_bucket_size": hidden * hidden,
            "stage3_param_persistence_threshold": 10 * hidden,
            "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
        })
    if stage != 3:
        config["zero_optimization"]["stage"] = 0
    config.pop("optimizer", None)  # forward passes only
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
