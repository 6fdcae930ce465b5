"""Process-wide settings that every command applies first: the thread count, and where the cache lives.

Seeds are set by the Trainer (``TrainingArguments.seed``) and by model construction.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch


def default_cache_dir() -> Path:
    """``$UNLEARNKIT_CACHE``, else ``~/.cache/unlearnkit``: the built-in benchmark and the converted pretrained models."""
    return Path(os.environ.get("UNLEARNKIT_CACHE") or Path.home() / ".cache" / "unlearnkit")


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when set, else 1.

    On small shared CPUs torch's default (one thread per core) was measured up to
    40x slower than a single thread for the tiny built-in models, whose matrices
    are too small to split. Raise it with ``--threads`` for larger models on CPU.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def set_threads(threads: int) -> None:
    """Use ``threads`` intra-op threads (and one inter-op thread)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}.")
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # can only be set once per process, before any parallel work; keep what is set
        torch.set_num_interop_threads(1)


def quiet_libraries() -> None:
    """Library progress bars for weight loading/saving are noise next to ours (also in worker processes)."""
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()
