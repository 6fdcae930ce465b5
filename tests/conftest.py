"""Shared fixtures: one thread, CPU only, and a micro built-in benchmark prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/helpers.py is not a test module: rewrite its asserts too, so that a failing helper says why.
pytest.register_assert_rewrite("tests.helpers")

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the suite is CPU-only by design
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402 - torch must start with the environment set above

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def micro_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder with the micro benchmark (data, tokenizer, target, forget10 oracle) built once."""
    from unlearnkit.builtin import PRESETS, prepare

    cache = tmp_path_factory.mktemp("cache")
    prepare(PRESETS["micro"], cache, ("forget10",), show_progress=False, jobs=1)
    return cache


@pytest.fixture(scope="session")
def micro_bench(micro_cache: Path):
    from unlearnkit.builtin import PRESETS, prepare

    return prepare(PRESETS["micro"], micro_cache, ("forget10",), show_progress=False)
