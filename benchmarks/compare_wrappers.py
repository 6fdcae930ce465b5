"""Compare the inference-time wrappers on the built-in benchmark: forget quality, utility and the audit, next to the
target and the retain oracle, and write the table to docs.

Each wrapper is built with ``unlearnkit wrap`` (the benchmark's forget split and its retain split), evaluated with
``unlearnkit eval`` and audited with ``unlearnkit audit`` (the target's and oracle's audits are cached by the
benchmark). Every step writes a results folder under ``--output``; a finished step is reused when rerun.

    python benchmarks/compare_wrappers.py --output runs/wrappers [--preset default] [--split forget10] \
        [--runs icul,memprompt,uld-lr1e-2=uld:learning_rate=1e-2;num_epochs=10] [--attacks all] [--json docs/inference.json]

``--runs``: comma-separated runs, each a wrapper name (its default settings) or ``LABEL=WRAPPER:KEY=VALUE;KEY=VALUE``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from unlearnkit import api
from unlearnkit.inference import WRAPPERS
from unlearnkit.runtime import quiet_libraries, set_threads

COLUMNS = ("forget_quality", "model_utility", "forget_probability", "forget_truth_ratio", "forget_rouge_l", "retain_rouge_l")


def parse_runs(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """``NAME`` or ``LABEL=WRAPPER:K=V;K=V`` items, comma-separated -> [(label, wrapper, settings)]."""
    runs = []
    for item in text.split(","):
        label, sep, rest = item.partition("=")
        if not sep:
            runs.append((item, item, {}))
            continue
        wrapper, _, pairs = rest.partition(":")
        settings = dict(pair.split("=", 1) for pair in pairs.split(";") if pair)
        if not label or not wrapper:
            raise SystemExit(f"--runs expects NAME or LABEL=WRAPPER:KEY=VALUE;...; got {item!r}")
        runs.append((label, wrapper, settings))
    return runs


def finished(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def step(folder: Path, run: Any, label: str) -> tuple[dict[str, Any], float | None]:
    """Run one command into ``folder`` unless it has finished before; its summary and the seconds it took (None: reused)."""
    seconds = None
    if not finished(folder):
        started = time.perf_counter()
        run()
        seconds = round(time.perf_counter() - started, 1)
        print(f"{label}: {seconds} s", flush=True)
    return json.loads((folder / "summary.json").read_text(encoding="utf-8")), seconds


def audit_recoveries(summary: dict[str, Any], role: str) -> dict[str, float]:
    """Each attack's recovery of ``role`` ('unlearned', 'target' or 'oracle') from an audit summary."""
    return {row["attack"]: row[role] for row in summary["attacks"] if row.get(role) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--split", default="forget10")
    parser.add_argument("--runs", default=",".join(WRAPPERS.names()))
    parser.add_argument("--attacks", default="all")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None, help="Also write the rows here.")
    parser.add_argument("--markdown", type=Path, default=None, help="Also write the tables here (a Markdown fragment).")
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_libraries()
    common = {"preset": args.preset, "cache": args.cache, "progress": False}
    rows: list[dict[str, Any]] = []
    for role in ("target", "oracle"):
        summary, _ = step(args.output / f"eval-{role}",
                          lambda role=role: api.evaluate(model=f"builtin-{role}", benchmark=args.split,
                                                         output=args.output / f"eval-{role}", **common), f"eval {role}")
        rows.append({"model": role, **{column: summary.get(column) for column in COLUMNS}})
    audits: dict[str, dict[str, float]] = {}
    for name, wrapper, settings in parse_runs(args.runs):
        wrapped = args.output / f"wrap-{name}"
        built, _ = step(wrapped, lambda wrapper=wrapper, wrapped=wrapped, settings=settings: api.wrap(
            model="builtin", wrapper=wrapper, forget=args.split, output=wrapped, settings=settings, **common), f"wrap {name}")
        summary, eval_seconds = step(args.output / f"eval-{name}", lambda wrapped=wrapped, name=name: api.evaluate(
            model=wrapped / "model", benchmark=args.split, output=args.output / f"eval-{name}", **common), f"eval {name}")
        audit, audit_seconds = step(args.output / f"audit-{name}", lambda wrapped=wrapped, name=name: api.audit(
            model=wrapped, benchmark=args.split, attacks=args.attacks, output=args.output / f"audit-{name}", **common),
            f"audit {name}")
        audits[name] = audit_recoveries(audit, "unlearned")
        audits.setdefault("target", audit_recoveries(audit, "target"))
        audits.setdefault("oracle", audit_recoveries(audit, "oracle"))
        rows.append({"model": name, "wrapper": wrapper, "settings": settings, **{column: summary.get(column) for column in COLUMNS},
                     "build_seconds": built.get("build_seconds"), "eval_seconds": eval_seconds, "audit_seconds": audit_seconds,
                     "exposed_by": audit.get("exposed_by", [])})
    result = {"preset": args.preset, "split": args.split, "threads": args.threads, "rows": rows, "audit_recovery": audits}
    text = json.dumps(result, indent=2) + "\n"
    (args.output / "wrappers.json").write_text(text, encoding="utf-8")
    if args.json is not None:
        args.json.write_text(text, encoding="utf-8")
    if args.markdown is not None:
        args.markdown.write_text(markdown(result), encoding="utf-8")
    for row in rows:
        print(row["model"], {key: row.get(key) for key in COLUMNS}, row.get("exposed_by", ""), flush=True)


def number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value != 0 and abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def markdown(result: dict[str, Any]) -> str:
    """The comparison as two Markdown tables: the evaluation, and each attack's recovery per model."""
    rows, audits = result["rows"], result["audit_recovery"]
    lines = [f"Preset `{result['preset']}`, split `{result['split']}`, {result['threads']} thread(s); "
             "`benchmarks/compare_wrappers.py`.", "",
             "| model | settings | " + " | ".join(COLUMNS) + " | exposed by |", "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for row in rows:
        settings = ", ".join(f"{key}={value}" for key, value in row.get("settings", {}).items()) or ("defaults" if "wrapper" in row else "")
        cells = [number(row.get(column)) for column in COLUMNS]
        lines.append(f"| {row['model']} | {settings} | " + " | ".join(cells) + f" | {', '.join(row.get('exposed_by', [])) or '–'} |")
    attacks = sorted({name for recoveries in audits.values() for name in recoveries})
    models = ["target", "oracle"] + [row["model"] for row in rows if row["model"] not in ("target", "oracle")]
    lines += ["", "Recovery under each audit attack (answer recall, or an AUC / ranking accuracy where 0.5 is chance):", "",
              "| attack | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for attack in attacks:
        lines.append(f"| {attack} | " + " | ".join(number(audits.get(model, {}).get(attack)) for model in models) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
