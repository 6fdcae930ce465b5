"""Time and peak memory of registered localizers on the pretrained SmolLM2-135M, on this machine.

Each localizer runs in a fresh process (so its peak resident memory is its own) on the first ``--rows``
forget rows of the built-in smollm2 benchmark (``data/forget10.jsonl`` of the prepared cache folder whose
``benchmark.json`` names ``base_model: smollm2-135m``; without one, the real-knowledge probes' ``qa`` rows,
whose subject is their ``entity``), with the chat prompt format. Writes a Markdown table and the raw JSON.

    python benchmarks/localization_cost.py --localizers causal_trace,saliency --threads 1 \
        --set causal_trace.tokens=subject_last --markdown docs/localization_cost.md --json docs/localization_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

MODEL = "smollm2-135m"
PROBES = Path(__file__).resolve().parents[1] / "src/unlearnkit/data/resources/real_knowledge/probes-smollm2-135m.jsonl"


def forget_rows(cache: Path, count: int) -> tuple[list[dict], str]:
    """The first ``count`` forget rows of the built-in smollm2 benchmark, or of the real-knowledge probes; and where they came from."""
    for manifest in sorted(cache.glob("builtin-*/benchmark.json")):
        data = manifest.parent / "data" / "forget10.jsonl"
        if json.loads(manifest.read_text(encoding="utf-8")).get("base_model") == MODEL and data.is_file():
            lines = data.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines[:count]], "the built-in smollm2 benchmark's forget10 rows"
    rows = [json.loads(line) for line in PROBES.read_text(encoding="utf-8").splitlines()]
    return [row for row in rows if row.get("form") == "qa"][:count], "the real-knowledge probes' qa rows (subject: entity)"


def measure(localizer: str, overrides: dict[str, str], rows: list[dict], threads: int) -> dict:
    """In this process: seconds to localize ``rows`` and the peak resident memory, with what was selected."""
    import resource
    import time

    from unlearnkit.data.encoding import PromptFormat
    from unlearnkit.localization import LOCALIZERS
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.runtime import set_threads
    from unlearnkit.settings import build_config

    set_threads(threads)
    spec = LOCALIZERS.get(localizer)
    config = build_config(spec.config, overrides, what="localizer setting")
    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    started = time.perf_counter()
    localization = spec.function(model, tokenizer, rows, PromptFormat("chat"), config)
    seconds = time.perf_counter() - started
    selection = localization.selection
    selected = {"layers": list(selection.layers) if selection.layers is not None else None,
                "target_modules": list(selection.target_modules) if selection.target_modules is not None else None,
                "neurons": sum(map(len, selection.rows.values())) + sum(map(len, selection.columns.values())),
                "weight_masks": len(selection.weight_masks)}
    return {"seconds": seconds, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "settings": localization.settings, "selected": selected,
            "notes": {key: value for key, value in localization.notes.items() if not isinstance(value, list | dict)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--localizers", default="causal_trace,saliency")
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="LOCALIZER.KEY=VALUE", help="a localizer setting")
    parser.add_argument("--cache", type=Path, default=None, help="unlearnkit's cache folder (default: the usual one)")
    parser.add_argument("--machine-note", default="", help="a sentence on the machine's state, written into the document")
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one localizer in this process
    args = parser.parse_args()
    from unlearnkit.runtime import default_cache_dir

    rows, source = forget_rows(args.cache or default_cache_dir(), args.rows)
    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        name, _, setting = item.partition(".")
        key, _, value = setting.partition("=")
        overrides.setdefault(name, {})[key] = value
    if args.one:
        print(json.dumps(measure(args.one, overrides.get(args.one, {}), rows, args.threads)))
        return
    results = {}
    for name in args.localizers.split(","):
        command = [sys.executable, __file__, "--rows", str(args.rows), "--threads", str(args.threads), "--one", name,
                   *[f"--set={item}" for item in args.set]]
        if args.cache:
            command += ["--cache", str(args.cache)]
        environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
        load_before = os.getloadavg()[0]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        # One-minute load average of the machine around the measurement (the localizer itself adds about --threads).
        results[name]["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        print(name, f"{results[name]['seconds']:.1f} s", flush=True)
    record = {"model": MODEL, "prompt_format": "chat", "rows": len(rows), "row_source": source, "threads": args.threads,
              "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), CPU only", "machine_note": args.machine_note,
              "results": results}
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(markdown(record), encoding="utf-8")


def markdown(record: dict) -> str:
    lines = [
        f"# Cost of the localizers on `{record['model']}` ({record['machine']})",
        "",
        "Generated by `python benchmarks/localization_cost.py` (do not edit by hand). Each localizer ran in a fresh process on "
        f"{record['rows']} rows ({record['row_source']}), {record['prompt_format']} prompt format, {record['threads']} CPU "
        "thread(s); the time excludes loading the model, the memory is the process's peak resident memory.",
        "",
    ]
    if record["machine_note"]:
        lines += [record["machine_note"], ""]
    lines += ["| localizer | seconds | minutes | peak memory (GiB) | load average (start, end) | selected | "
              "settings that differ from the defaults |",
              "|---|---:|---:|---:|---|---|---|"]
    for name, result in record["results"].items():
        from unlearnkit.localization import LOCALIZERS

        defaults = json.loads(json.dumps(LOCALIZERS.get(name).config().__dict__, default=str))
        changed = ", ".join(f"{key}={value}" for key, value in result["settings"].items() if defaults.get(key) != value) or "none"
        selected = result["selected"]
        shown = f"layers {selected['layers']}, modules {selected['target_modules']}"
        if selected["neurons"]:
            shown += f", {selected['neurons']} neurons"
        if selected["weight_masks"]:
            shown += f", weights of {selected['weight_masks']} matrices"
        load = ", ".join(f"{value:.1f}" for value in result.get("load_average", [])) or "not recorded"
        lines.append(f"| {name} | {result['seconds']:.0f} | {result['seconds'] / 60:.1f} | {result['peak_rss_gib']:.2f} | {load} | "
                     f"{shown} | {changed} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
