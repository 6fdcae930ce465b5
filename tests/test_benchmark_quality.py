"""The default built-in benchmark must discriminate (slow: trains the 200-author target and oracle, ~6 minutes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearnkit.benchmark import PRESETS
from unlearnkit.jobs import run_demo


@pytest.mark.slow
def test_default_benchmark_discriminates(tmp_path: Path) -> None:
    summary = run_demo(output=tmp_path / "demo", config=PRESETS["default"], cache_dir=tmp_path / "cache", show_progress=False)
    target, oracle, unlearned = summary["target"], summary["oracle"], summary["unlearned"]
    assert target["forget_quality"] < 0.01
    assert abs(target["model_utility"] - oracle["model_utility"]) <= 0.05 * oracle["model_utility"]
    assert unlearned["forget_quality"] >= 100 * target["forget_quality"]
    assert unlearned["model_utility"] >= 0.8 * oracle["model_utility"]
