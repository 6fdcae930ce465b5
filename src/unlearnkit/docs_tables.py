"""The README's method and metric tables, generated from the registries.

README.md marks each generated table with a pair of comments; everything
between them is replaced, everything outside is left as written::

    <!-- BEGIN GENERATED: methods -->
    ...
    <!-- END GENERATED: methods -->

``methods`` is one row per registered method (:data:`unlearnkit.methods.METHODS`);
``metrics`` is one row per metric of :func:`unlearnkit.evaluation.catalog.metric_catalog`,
and ``metrics:FAMILY[,FAMILY...]`` only those families' metrics, so that each
table can sit in its own section of the prose. The ``metrics`` blocks of a file
must cover every family that has metrics exactly once: a metric registered
in a new family is reported, not silently left out.

Regenerate after registering a method or a metric, and check in CI::

    python -m unlearnkit.docs_tables README.md           # rewrite the tables in place
    python -m unlearnkit.docs_tables README.md --check   # exit 1 when a table is out of date
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from unlearnkit.errors import UnlearnkitError

_MARKER = re.compile(r"<!-- (BEGIN|END) GENERATED: ([^>]*?) -->")
_BLOCK_NAME = re.compile(r"methods|metrics(?::[a-z_]+(?:,[a-z_]+)*)?")


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped, nothing read as an HTML tag."""
    text = " ".join(text.split()).replace("|", r"\|")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def methods_table() -> str:
    """One row per registered method, grouped by family in the order ``unlearnkit methods`` lists them."""
    from unlearnkit.methods import METHODS

    specs = [METHODS.get(name) for name in METHODS.names()]
    family_order = list(dict.fromkeys(spec.family for spec in specs))
    specs.sort(key=lambda spec: family_order.index(spec.family))  # stable: by name within a family
    rows = [(f"`{spec.name}`", spec.family, spec.summary, spec.paper) for spec in specs]
    return _table(("name", "family", "loss / procedure", "paper"), rows)


def metrics_table(families: Sequence[str] | None = None) -> str:
    """One row per metric of ``families`` (default: all), grouped by family in catalog order.

    A table of several families gets a ``family`` column; an unknown family is refused.
    """
    from unlearnkit.evaluation.catalog import FAMILIES, metric_catalog

    chosen = tuple(FAMILIES) if families is None else tuple(families)
    unknown = [family for family in chosen if family not in FAMILIES]
    if unknown:
        raise UnlearnkitError(f"Unknown metric family {', '.join(map(repr, unknown))}; families: {', '.join(FAMILIES)}.")
    catalog = metric_catalog()
    specs = [catalog.get(name) for name in catalog.names() if catalog.get(name).family in chosen]
    specs.sort(key=lambda spec: chosen.index(spec.family))  # stable: by name within a family
    with_family = len({spec.family for spec in specs}) > 1
    header = ("metric", *(("family",) if with_family else ()), "better", "definition", "paper")
    rows = [
        (f"`{spec.name}`", *((spec.family,) if with_family else ()), f"{spec.arrow} {spec.direction}", spec.definition, spec.paper)
        for spec in specs
    ]
    return _table(header, rows)


def _families(name: str) -> tuple[str, ...] | None:
    """The families of a ``metrics`` block's name (None: all)."""
    return tuple(name.split(":", 1)[1].split(",")) if ":" in name else None


def _blocks(text: str) -> list[tuple[str, int, int]]:
    """(name, start, end) of every generated block's content: from after its BEGIN line to its END marker."""
    blocks: list[tuple[str, int, int]] = []
    open_block: tuple[str, int] | None = None
    for match in _MARKER.finditer(text):
        kind, name = match.groups()
        line = text.count("\n", 0, match.start()) + 1
        if kind == "BEGIN":
            if open_block is not None:
                raise UnlearnkitError(f"Line {line}: BEGIN GENERATED: {name} inside the unfinished block {open_block[0]!r}.")
            if not _BLOCK_NAME.fullmatch(name):
                raise UnlearnkitError(f"Line {line}: unknown generated block {name!r}; use methods, metrics or metrics:FAMILY[,FAMILY...].")
            newline = text.find("\n", match.end())
            open_block = (name, len(text) if newline < 0 else newline + 1)
        else:
            if open_block is None or open_block[0] != name:
                expected = f"END GENERATED: {open_block[0]}" if open_block else "a BEGIN GENERATED marker first"
                raise UnlearnkitError(f"Line {line}: END GENERATED: {name} where {expected} was expected.")
            blocks.append((name, open_block[1], match.start()))
            open_block = None
    if open_block is not None:
        raise UnlearnkitError(f"BEGIN GENERATED: {open_block[0]} has no matching '<!-- END GENERATED: {open_block[0]} -->'.")
    return blocks


def _check_coverage(names: Sequence[str]) -> None:
    """Every method and every metric family with metrics appears in exactly one block."""
    from unlearnkit.evaluation.catalog import FAMILIES, metric_catalog

    if "methods" not in names:
        raise UnlearnkitError("No '<!-- BEGIN GENERATED: methods -->' ... '<!-- END GENERATED: methods -->' block: "
                              "mark where the methods table goes.")
    if names.count("methods") > 1:
        raise UnlearnkitError("The methods table is generated twice; keep one 'methods' block.")
    catalog = metric_catalog()
    present = [family for family in FAMILIES if any(catalog.get(name).family == family for name in catalog.names())]
    covered = [family for name in names if name.startswith("metrics") for family in (_families(name) or present)]
    unknown = sorted({family for family in covered if family not in FAMILIES})
    if unknown:
        raise UnlearnkitError(f"Unknown metric family {', '.join(map(repr, unknown))}; families: {', '.join(FAMILIES)}.")
    if not covered:
        raise UnlearnkitError("No '<!-- BEGIN GENERATED: metrics -->' ... '<!-- END GENERATED: metrics -->' block "
                              "(or metrics:FAMILY[,FAMILY...]): mark where the metrics tables go.")
    twice = sorted({family for family in covered if covered.count(family) > 1})
    missing = [family for family in present if family not in covered]
    if twice or missing:
        problems = ([f"in several blocks: {', '.join(twice)}"] if twice else []) + (
            [f"in no block: {', '.join(missing)} (add a 'metrics:{','.join(missing)}' block)"] if missing else [])
        raise UnlearnkitError(f"Each metric family must be generated exactly once; {'; '.join(problems)}.")


def generated(name: str) -> str:
    """The content of the block called ``name``: the table between blank lines."""
    table = methods_table() if name == "methods" else metrics_table(_families(name))
    return f"\n{table}\n"


def update_readme(text: str) -> str:
    """``text`` with the content of every generated block replaced by the registries' tables now.

    Refuses (:class:`UnlearnkitError`) text without a ``methods`` and a ``metrics`` block, an unmatched or
    unknown marker, and metrics blocks that leave a family out or repeat one.
    """
    blocks = _blocks(text)
    _check_coverage([name for name, _, _ in blocks])
    pieces, position = [], 0
    for name, start, end in blocks:
        pieces += [text[position:start], generated(name)]
        position = end
    return "".join(pieces) + text[position:]


def drifted(text: str) -> list[str]:
    """The names of the blocks whose content differs from what the registries give now."""
    _check_coverage([name for name, _, _ in _blocks(text)])
    return [name for name, start, end in _blocks(text) if text[start:end] != generated(name)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearnkit.docs_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="the Markdown file with generated blocks (README.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table is out of date")
    args = parser.parse_args(argv)
    from unlearnkit.io import write_text

    try:
        text = args.path.read_text(encoding="utf-8")
        stale = drifted(text)
        if args.check:
            for name, start, end in _blocks(text):
                if name in stale:
                    print(f"{args.path}: the generated '{name}' table is out of date:", file=sys.stderr)
                    sys.stderr.writelines(difflib.unified_diff(
                        text[start:end].splitlines(keepends=True), generated(name).splitlines(keepends=True),
                        f"{args.path} ({name})", f"registry ({name})"))
            if stale:
                print(f"Regenerate with: python -m unlearnkit.docs_tables {args.path}", file=sys.stderr)
            return 1 if stale else 0
        if stale:
            write_text(args.path, update_readme(text))
            print(f"{args.path}: regenerated {', '.join(stale)}")
        else:
            print(f"{args.path}: tables up to date")
        return 0
    except (OSError, UnlearnkitError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
