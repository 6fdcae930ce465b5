"""The package's import graph: cycles, arrows that point up a layer, and what importing the report costs.

Usage: python benchmarks/import_graph.py [--json FILE]

Every ``import`` of an ``unlearnkit`` module counts, at module level or inside a
function (a lazy import is still a dependency). Layers, from the bottom: core
helpers, data and models, the science (losses, metrics, methods, attacks), the
built-in benchmark, the report (reads results folders only), the runners, the
command line. An arrow "points up" when a module imports one of a higher layer.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "unlearnkit"

# Layer of a module, by the first prefix (of the dotted name below ``unlearnkit``) that matches.
LAYERS = [
    (0, ("errors", "registry", "settings", "io", "runtime", "distributed", "provenance", "__init__")),
    (1, ("data", "modeling", "pretrained", "parameters", "training")),
    (2, ("losses", "gradients", "evaluation", "methods", "attacks", "unlearning", "finetune", "metrics")),
    (3, ("benchmark", "builtin")),
    (4, ("report",)),
    (5, ("jobs", "auditing", "sequential", "bench", "runs", "serving", "tuning")),
    (6, ("api",)),
    # The literature map lists the commands, so it reads the command line.
    (7, ("cli", "__main__", "literature")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    inner = module.split(".", 1)[1] if "." in module else "__init__"
    for number, prefixes in LAYERS:
        if any(inner == prefix or inner.startswith(prefix + ".") or inner.startswith(prefix + "_") for prefix in prefixes):
            return number
    return 2


def imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """The package modules ``path`` imports (``from x import y`` counts ``x.y`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("unlearnkit"):
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    return {module: imports_of(path, module, known) for module, path in sorted(files.items())}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for node in edges:
        if node not in index:
            visit(node)
    return found


def report_import_cost() -> dict[str, object]:
    """Import the whole report (every ``unlearnkit.report`` module) in a fresh interpreter: seconds, modules, torch or not."""
    modules = sorted(module_name(path) for path in (PACKAGE / "report").glob("*.py"))
    code = (
        f"import sys, time, importlib; t = time.perf_counter(); [importlib.import_module(m) for m in {modules!r}]; "
        "s = time.perf_counter() - t; "
        "import json; print(json.dumps({'seconds': round(s, 2), 'torch': 'torch' in sys.modules, "
        "'transformers': 'transformers' in sys.modules, "
        "'package_modules': sum(1 for m in sys.modules if m.startswith('unlearnkit'))}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = parser.parse_args()
    edges = graph()
    up = sorted(f"{source} -> {target}" for source, targets in edges.items() for target in targets if layer(target) > layer(source))
    figures = {
        "modules": len(edges),
        "cycles": cycles(edges),
        "arrows_up": up,
        "report_imports": sorted({t for s, ts in edges.items() if s.startswith("unlearnkit.report") for t in ts
                                  if not t.startswith("unlearnkit.report")}),
        "import_report": report_import_cost(),
        "lines": {str(path.relative_to(PACKAGE.parent)): len(path.read_text(encoding="utf-8").splitlines())
                  for name in ("cli.py", "cli", "jobs.py", "runs") for path in sorted((PACKAGE / name).rglob("*.py"))
                  + ([PACKAGE / name] if (PACKAGE / name).is_file() else [])},
    }
    print(f"modules: {figures['modules']}")
    print(f"cycles ({len(figures['cycles'])}):")
    for component in figures["cycles"]:
        print("  " + " <-> ".join(component))
    print(f"arrows pointing up ({len(up)}):")
    for arrow in up:
        print(f"  {arrow}")
    print(f"the report imports: {', '.join(figures['report_imports']) or 'nothing outside itself'}")
    print(f"importing the report (every unlearnkit.report module): {figures['import_report']}")
    print("lines: " + ", ".join(f"{name} {count}" for name, count in figures["lines"].items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
