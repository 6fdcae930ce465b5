"""`unlearnkit bench`: every method x split x seed on the micro benchmark, resumed when rerun, and its leaderboard."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest

from tests.helpers import BENCH_ARGS, bench_folder, micro, run_cli
from unlearnkit.errors import NumericalFault
from unlearnkit.report.leaderboard import aggregate, group_runs, leaderboard_csv, leaderboard_markdown, leaderboard_rows
from unlearnkit.report.results import RunResults
from unlearnkit.runs.inputs import MethodChoice, RunOptions


@pytest.fixture(scope="session")
def bench_run(micro_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bench_folder(micro_cache, tmp_path_factory.mktemp("bench"))


# --------------------------------------------------------------------------------------------- aggregation


def test_aggregate_is_mean_and_sample_std() -> None:
    values = aggregate([1.0, 2.0, 3.0])
    # mean 2; sample variance ((1-2)^2 + 0 + (3-2)^2) / (3 - 1) = 1
    assert (values.mean, values.std, values.n) == (2.0, 1.0, 3)
    single = aggregate([0.25])
    assert (single.mean, single.std, single.n) == (0.25, None, 1)
    # Missing and non-finite values are left out: mean of 2 and 4 is 3, sample std sqrt(((2-3)^2 + (4-3)^2) / 1) = sqrt(2).
    gaps = aggregate([None, 2.0, float("nan"), 4.0])
    assert gaps.mean == 3.0 and gaps.std == pytest.approx(math.sqrt(2)) and gaps.n == 2
    assert aggregate([]) == aggregate([None]) and aggregate([]).mean is None


def _run(method: str | None, seed: int | None, quality: float, utility: float, seconds: float, **settings: object) -> RunResults:
    return RunResults(
        path=Path(f"{method}-{seed}"), label=f"{method}-{seed}", command="demo", method=method, split="forget10", seed=seed,
        benchmark="builtin-0123456789abcdef", config={"hyperparameters": {"seed": seed, "learning_rate": 1e-3, **settings}},
        summary={"forget_quality": quality, "model_utility": utility}, per_sample={},
        timing={"unlearn_seconds": seconds},
        target_summary={"forget_quality": 1e-4, "model_utility": 0.9}, oracle_summary={"forget_quality": 1.0, "model_utility": 0.8},
    )


def test_leaderboard_rows_aggregate_seeds_by_hand() -> None:
    runs = [_run("npo", 0, 0.4, 0.70, 10.0), _run("npo", 1, 0.6, 0.72, 12.0), _run("ga", 0, 2e-4, 0.5, 3.0)]
    rows = leaderboard_rows(runs)
    assert [(row["model"], row["role"], row["runs"]) for row in rows] == [
        ("target", "target", 1), ("oracle", "oracle", 1), ("npo", "method", 2), ("ga", "method", 1)]
    npo = rows[2]["metrics"]
    # quality: mean (0.4 + 0.6) / 2 = 0.5, sample std sqrt(2 * 0.1^2 / 1) = 0.1414; utility 0.71 ± 0.01414; time 11 ± 1.414
    assert npo["forget_quality"]["mean"] == pytest.approx(0.5) and npo["forget_quality"]["std"] == pytest.approx(0.1414, abs=1e-4)
    assert npo["model_utility"]["mean"] == pytest.approx(0.71) and npo["model_utility"]["std"] == pytest.approx(0.01414, abs=1e-5)
    assert npo["unlearn_seconds"]["mean"] == pytest.approx(11.0) and npo["unlearn_seconds"]["std"] == pytest.approx(1.4142, abs=1e-4)
    assert rows[2]["seeds"] == [0, 1] and rows[3]["metrics"]["forget_quality"]["std"] is None
    assert rows[0]["metrics"]["forget_quality"]["mean"] == 1e-4 and rows[0]["metrics"]["unlearn_seconds"]["mean"] is None
    # A metric no run recorded stays empty instead of being guessed.
    assert npo["forget_probability"] == {"mean": None, "std": None}

    markdown = leaderboard_markdown(rows)
    assert "| forget10 | npo | 2 | 0.500 ± 0.141 | 0.710 ± 0.014 |" in markdown
    assert "| forget10 | ga | 1 | 2.00e-04 | 0.500 |" in markdown
    assert "| forget10 | target | – | 1.00e-04 | 0.900 |" in markdown
    table = list(csv.DictReader(io.StringIO(leaderboard_csv(rows))))
    assert [line["model"] for line in table] == ["target", "oracle", "npo", "ga"]
    assert float(table[2]["forget_quality_std"]) == pytest.approx(math.sqrt(0.02)) and table[3]["forget_quality_std"] == ""


def test_a_sweep_of_one_method_is_labelled_by_its_settings() -> None:
    runs = [_run("npo", 0, 0.4, 0.7, 1.0, beta=0.1), _run("npo", 1, 0.5, 0.7, 1.0, beta=0.1), _run("npo", 0, 0.2, 0.6, 1.0, beta=0.5)]
    groups = group_runs(runs)
    assert [(group.label, len(group.runs)) for group in groups] == [("npo (beta=0.1)", 2), ("npo (beta=0.5)", 1)]


# --------------------------------------------------------------------------------------------- the command


def test_bench_runs_every_combination_and_resumes(bench_run: Path, micro_cache: Path, monkeypatch, capsys) -> None:
    leaderboard = json.loads((bench_run / "leaderboard.json").read_text())
    assert [(row["split"], row["model"], row["runs"]) for row in leaderboard["rows"]] == [
        ("forget10", "target", 1), ("forget10", "oracle", 1), ("forget10", "ga", 1), ("forget10", "npo", 1)]
    assert leaderboard["failed"] == {}
    for row in leaderboard["rows"]:
        assert 0.0 <= row["metrics"]["forget_quality"]["mean"] <= 1.0 and row["metrics"]["model_utility"]["mean"] > 0
    assert leaderboard["rows"][1]["metrics"]["forget_quality"]["mean"] == pytest.approx(1.0)  # the oracle against itself
    table = list(csv.DictReader(io.StringIO((bench_run / "leaderboard.csv").read_text())))
    assert [line["model"] for line in table] == ["target", "oracle", "ga", "npo"]
    assert float(table[2]["unlearn_seconds_mean"]) > 0
    markdown = (bench_run / "leaderboard.md").read_text()
    assert markdown.startswith("| split | model | seeds | forget quality ↑ | model utility ↑ |") and "| forget10 | npo | 1 |" in markdown

    runs = {name: bench_run / name for name in ("ga-forget10-seed0", "npo-forget10-seed0")}
    for method, folder in zip(("ga", "npo"), runs.values(), strict=False):
        # Each combination is a demo folder, report included.
        assert json.loads((folder / "config.json").read_text())["method"] == method
        assert {"target", "oracle", "unlearned"} == set(json.loads((folder / "summary.json").read_text()))
        assert (folder / "report.html").stat().st_size > 0
    before = {name: ((folder / "summary.json").stat().st_mtime_ns, (folder / "model" / "model.safetensors").stat().st_mtime_ns)
              for name, folder in runs.items()}

    capsys.readouterr()
    assert run_cli(["bench", *BENCH_ARGS, "--output", str(bench_run), *micro(micro_cache)], monkeypatch) == 0
    assert "0 run(s) done now, 2 done before (skipped)" in capsys.readouterr().out
    after = {name: ((folder / "summary.json").stat().st_mtime_ns, (folder / "model" / "model.safetensors").stat().st_mtime_ns)
             for name, folder in runs.items()}
    assert after == before, "a finished combination must not be trained again"
    assert json.loads((bench_run / "leaderboard.json").read_text())["rows"] == leaderboard["rows"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "ga,npx"], "Unknown method 'npx'. Did you mean:"),
        (["--methods", "ga", "--splits", "forget11"], "Unknown forget split 'forget11'. Did you mean:"),
        (["--methods", "ga", "--seeds", "0,x"], "--seeds takes comma-separated integers"),
        (["--methods", "ga", "--set", "seed=3"], "--seeds"),
        (["--methods", "ga", "--set", "learning_rat=1e-3"], "Did you mean: learning_rate"),
        (["--methods", " , "], "--methods needs at least one name"),
    ],
)
def test_bench_bad_input_fails_before_any_work(args: list[str], message: str, tmp_path: Path, monkeypatch, capsys) -> None:
    output, cache = tmp_path / "bench", tmp_path / "cache"
    assert run_cli(["bench", *args, "--output", str(output), "--preset", "micro", "--cache", str(cache)], monkeypatch) == 2
    assert message in capsys.readouterr().err
    assert not output.exists() and not cache.exists()


def test_bench_refuses_a_folder_with_other_settings(tmp_path: Path, monkeypatch, capsys) -> None:
    output, cache = tmp_path / "bench", tmp_path / "cache"
    output.mkdir()
    (output / "bench.json").write_text(json.dumps({"command": "bench", "cache_key": "0" * 16, "overrides": {}, "runs": []}))
    assert run_cli(["bench", "--methods", "ga", "--output", str(output), "--preset", "micro", "--cache", str(cache)], monkeypatch) == 2
    assert "other settings" in capsys.readouterr().err and not cache.exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert run_cli(["bench", "--methods", "ga", "--output", str(other), "--preset", "micro", "--cache", str(cache)], monkeypatch) == 2
    assert "not a benchmark run" in capsys.readouterr().err and not cache.exists()


def test_a_diverged_run_is_listed_and_the_others_kept(bench_run: Path, micro_cache: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    # The runner is what is tested here: the demo runs are stood in for by a copy of a finished one, or a divergence.
    def fake_run_demo(*, method: MethodChoice, options: RunOptions, **_: object) -> None:
        if method.name == "npo":
            raise NumericalFault("non-finite loss at step 2")
        shutil.copytree(bench_run / "ga-forget10-seed0", options.output)

    import unlearnkit.runs.bench  # the runner (imported here: the tests above need only the report's leaderboard)

    monkeypatch.setattr(unlearnkit.runs.bench, "run_demo", fake_run_demo)
    output = tmp_path / "bench"
    assert run_cli(["bench", *BENCH_ARGS, "--output", str(output), *micro(micro_cache)], monkeypatch) == 3
    captured = capsys.readouterr()
    assert "1 run(s) diverged" in captured.err and "npo-forget10-seed0: non-finite loss at step 2" in captured.err
    leaderboard = json.loads((output / "leaderboard.json").read_text())
    assert [row["model"] for row in leaderboard["rows"]] == ["target", "oracle", "ga"]
    assert leaderboard["failed"] == {"npo-forget10-seed0": "non-finite loss at step 2"}
    assert (output / "report.html").is_file()
