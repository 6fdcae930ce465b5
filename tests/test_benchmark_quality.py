"""The default built-in benchmark must discriminate (slow: trains the 200-author target and oracle, ~6 minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearnkit.runs.inputs import Builtin, RunOptions, resolve_method
from unlearnkit.runs.unlearn import run_demo


@pytest.mark.slow
def test_default_benchmark_discriminates(tmp_path: Path) -> None:
    builtin = Builtin("default", tmp_path / "cache", show_progress=False)
    summary = run_demo(builtin=builtin, method=resolve_method("npo", {}, builtin), forget_split="forget10",
                       options=RunOptions(tmp_path / "demo", show_progress=False))
    target, oracle, unlearned = summary["target"], summary["oracle"], summary["unlearned"]
    assert target["forget_quality"] < 0.01
    assert abs(target["model_utility"] - oracle["model_utility"]) <= 0.05 * oracle["model_utility"]
    assert unlearned["forget_quality"] >= 100 * target["forget_quality"]
    assert unlearned["model_utility"] >= 0.8 * oracle["model_utility"]
