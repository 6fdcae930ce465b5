"""``data export``: the built-in benchmark's splits as JSONL files, one per split."""

from __future__ import annotations

from pathlib import Path

from unlearnkit.data.world import export_world, generate_world
from unlearnkit.io import write_json
from unlearnkit.runs.folder import results_folder
from unlearnkit.runs.inputs import Builtin, RunOptions
from unlearnkit.runs.lock import locks_output


@locks_output
def run_export(*, builtin: Builtin, options: RunOptions) -> list[Path]:
    """Generate the benchmark's world (no training) and write it; returns the files as published."""
    with results_folder(options.output, options.overwrite) as folder:
        paths = export_world(generate_world(builtin.config.world), folder)
        write_json(folder / "export.json", {"command": "data export", "preset": builtin.preset,
                                            "files": sorted(path.name for path in paths)})
    return [Path(options.output) / path.name for path in paths]
