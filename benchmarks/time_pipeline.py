"""Time the built-in pipeline's stages and report each one's wall time and peak memory.

Each stage runs as its own ``unlearnkit`` process (as a user would run it), so
its peak resident memory is its own. Stages: a cold ``demo`` (empty cache:
data, tokenizer, target, oracle, unlearning, evaluation), a warm ``demo``
(cache reused), and ``prepare``, ``unlearn`` and ``eval`` on their own.

    python benchmarks/time_pipeline.py [--preset default] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_stage(name: str, args: list[str], env: dict[str, str]) -> dict[str, float | str]:
    """Run one CLI command; return its wall seconds and peak RSS (MiB) from the kernel's accounting."""
    command = [sys.executable, "-m", "unlearnkit.cli", *args]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stderr = process.stderr.read().decode() if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage {name} failed ({' '.join(args)}):\n{stderr}")
    # ru_maxrss is in KiB on Linux.
    return {"stage": name, "wall_seconds": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="Built-in benchmark preset (default or micro).")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument("--method", default="npo", help="Unlearning method for the unlearn stages.")
    parser.add_argument("--json", type=Path, help="Also write the rows as JSON here.")
    options = parser.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads)}
    workdir = Path(tempfile.mkdtemp(prefix="unlearnkit-bench-"))
    common = ["--preset", options.preset]
    cold_cache, warm_out = workdir / "cache", workdir / "runs"
    base = ["--quiet", "--threads", str(options.threads)]
    try:
        rows = [
            run_stage("demo (cold: empty cache)", [*base, "demo", *common, "--method", options.method, "--cache", str(cold_cache), "--output", str(warm_out / "cold")], env),
            run_stage("demo (warm: cache reused)", [*base, "demo", *common, "--method", options.method, "--cache", str(cold_cache), "--output", str(warm_out / "warm")], env),
            run_stage("prepare (forget10 oracle, empty cache)", [*base, "prepare", *common, "--splits", "forget10", "--cache", str(workdir / "cache2")], env),
            run_stage(f"unlearn ({options.method}, forget10, with eval)", [*base, "unlearn", *common, "--method", options.method, "--cache", str(cold_cache), "--output", str(warm_out / "unlearn")], env),
            run_stage("eval (unlearned model, forget10)", [*base, "eval", *common, "--model", str(warm_out / "unlearn" / "model"), "--benchmark", "forget10", "--cache", str(cold_cache), "--output", str(warm_out / "eval")], env),
        ]
        timing = json.loads((warm_out / "cold" / "timing.json").read_text())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"preset={options.preset} threads={options.threads} method={options.method} cpus={os.cpu_count()}\n")
    print("| stage | wall s | peak RSS MiB |\n|---|---:|---:|")
    for row in rows:
        print(f"| {row['stage']} | {row['wall_seconds']} | {row['peak_rss_mib']} |")
    print(f"\ncold demo breakdown (in-process): {timing}")
    if options.json:
        options.json.write_text(json.dumps({"rows": rows, "cold_demo_breakdown": timing}, indent=2) + "\n")


if __name__ == "__main__":
    main()
