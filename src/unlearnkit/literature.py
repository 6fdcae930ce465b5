"""The literature map: the surveyed papers, what kind of work each is, and which registered components implement it.

The map is a data file shipped with the package (``unlearnkit/data/resources/literature.json``)::

    {"papers": [{"id": "zhang2024npo", "title": "...", "authors": "Zhang et al.", "venue": "COLM", "year": 2024,
                 "kind": "method", "family": "objective/gradient-based", "summary": "...",
                 "implements": ["method:npo"]}, ...]}

``kind`` is one of :data:`KINDS`; ``family`` (required for methods, optional otherwise) is one of the
surveys' method families, :data:`FAMILIES`; ``implements`` lists the registered components that implement
the paper, each ``KIND:NAME`` with KIND one of :data:`COMPONENTS` (an empty list: not implemented yet).
:func:`load` checks the schema and names the entry and the field of every problem; :func:`unresolved`
and :func:`uncited` compare the map with the live registries (methods, metrics, attacks, localizers,
data sources and CLI commands), so that neither can drift from the other.

``docs/literature.md`` is generated from it, and ``unlearnkit papers`` prints it::

    python -m unlearnkit.literature docs/literature.md           # rewrite the page
    python -m unlearnkit.literature docs/literature.md --check   # exit 1 when the page is out of date
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError, did_you_mean

RESOURCE = "literature.json"
KINDS = ("regulation", "survey", "method", "evaluation attack", "benchmark", "dataset", "metric", "localization", "editing",
         "tuning")
KIND_HEADINGS = {"regulation": "Regulations", "survey": "Surveys", "method": "Methods", "evaluation attack": "Evaluation attacks",
                 "benchmark": "Benchmarks", "dataset": "Datasets", "metric": "Metrics", "localization": "Localization",
                 "editing": "Model editing", "tuning": "Hyperparameter tuning"}
# The method families of the surveys (Liu et al. 2024; Si et al. 2023; Blanco-Justicia et al. 2024), in the order they are listed.
FAMILIES = ("objective/gradient-based", "task arithmetic", "localization-informed", "editing", "influence/second-order",
            "input-based/in-context", "logit-offset/inference-time", "adapter/parameter-efficient", "robustness/distillation",
            "data filtering", "exact/retraining")
COMPONENTS = ("method", "metric", "attack", "localizer", "wrapper", "dataset", "command")
REQUIRED = ("id", "title", "authors", "venue", "year", "kind", "summary", "implements")
OPTIONAL = ("family",)
_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
GENERATOR = "python -m unlearnkit.literature docs/literature.md"


@dataclass(frozen=True)
class Paper:
    """One entry of the map."""

    id: str
    title: str
    authors: str
    venue: str
    year: int
    kind: str
    family: str | None
    summary: str
    implements: tuple[str, ...]


def _field_error(where: str, entry: str, field: str, problem: str) -> UnlearnkitError:
    return UnlearnkitError(f"{where}: paper {entry}, field {field!r}: {problem}")


def _text(raw: Mapping[str, Any], field: str, where: str, entry: str) -> str:
    value = raw[field]
    if not isinstance(value, str) or not value.strip():
        raise _field_error(where, entry, field, f"must be a non-empty string, not {value!r}.")
    if value != " ".join(value.split()):
        raise _field_error(where, entry, field, "must be one line without leading, trailing or repeated spaces.")
    return value


def _choice(value: str, choices: Sequence[str], where: str, entry: str, field: str) -> str:
    if value not in choices:
        raise _field_error(where, entry, field, f"unknown value {value!r}.{did_you_mean(value, choices)} "
                                                f"Use one of: {', '.join(choices)}.")
    return value


def _implements(raw: Any, where: str, entry: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        raise _field_error(where, entry, "implements", f"must be a list of 'KIND:NAME' strings (empty: not implemented yet), not {raw!r}.")
    names: list[str] = []
    for item in raw:
        kind, sep, name = item.partition(":") if isinstance(item, str) else ("", "", "")
        if not sep or not name or name != name.strip():
            raise _field_error(where, entry, "implements", f"{item!r} is not 'KIND:NAME' (KIND one of {', '.join(COMPONENTS)}).")
        if kind not in COMPONENTS:
            raise _field_error(where, entry, "implements", f"{item!r} has an unknown component kind {kind!r}."
                                                           f"{did_you_mean(kind, COMPONENTS)} Kinds: {', '.join(COMPONENTS)}.")
        if item in names:
            raise _field_error(where, entry, "implements", f"{item!r} is listed twice.")
        names.append(item)
    return tuple(names)


def parse_paper(raw: Any, where: str, position: int) -> Paper:
    """One entry, checked: ``where`` (the file) and ``position`` (1-based) name it in messages, with its id once known."""
    entry = f"#{position}"
    if not isinstance(raw, dict):
        raise UnlearnkitError(f"{where}: paper {entry} must be an object with the fields {', '.join(REQUIRED)}, not {raw!r}.")
    if isinstance(raw.get("id"), str):
        entry = f"#{position} ({raw['id']!r})"
    missing = [field for field in REQUIRED if field not in raw]
    if missing:
        raise _field_error(where, entry, missing[0], f"missing (every paper needs {', '.join(REQUIRED)}).")
    unknown = [field for field in raw if field not in REQUIRED + OPTIONAL]
    if unknown:
        raise _field_error(where, entry, unknown[0], f"unknown field.{did_you_mean(unknown[0], REQUIRED + OPTIONAL)} "
                                                     f"Fields: {', '.join(REQUIRED + OPTIONAL)}.")
    paper_id = _text(raw, "id", where, entry)
    if not _ID.fullmatch(paper_id):
        raise _field_error(where, entry, "id", "use lower-case letters, digits and hyphens (e.g. 'zhang2024npo').")
    year = raw["year"]
    if not isinstance(year, int) or isinstance(year, bool) or not 1900 <= year <= 2100:
        raise _field_error(where, entry, "year", f"must be a year as a whole number (e.g. 2024), not {year!r}.")
    kind = _choice(_text(raw, "kind", where, entry), KINDS, where, entry, "kind")
    family = raw.get("family")
    if family is None and kind == "method":
        raise _field_error(where, entry, "family", f"missing: a method needs its family, one of: {', '.join(FAMILIES)}.")
    if family is not None:
        family = _choice(_text(raw, "family", where, entry), FAMILIES, where, entry, "family")
    return Paper(id=paper_id, title=_text(raw, "title", where, entry), authors=_text(raw, "authors", where, entry),
                 venue=_text(raw, "venue", where, entry), year=year, kind=kind, family=family,
                 summary=_text(raw, "summary", where, entry), implements=_implements(raw["implements"], where, entry))


def parse(data: Any, where: str = RESOURCE) -> list[Paper]:
    """The papers of a map's decoded JSON (``{"papers": [...]}``), every entry checked; ids must be unique."""
    if not isinstance(data, dict) or not isinstance(data.get("papers"), list) or set(data) != {"papers"}:
        raise UnlearnkitError(f"{where}: the map must be an object with one key, 'papers', holding a list of papers.")
    papers, seen = [], {}
    for position, raw in enumerate(data["papers"], 1):
        paper = parse_paper(raw, where, position)
        if paper.id in seen:
            raise _field_error(where, f"#{position} ({paper.id!r})", "id", f"duplicate id: paper #{seen[paper.id]} has it too.")
        seen[paper.id] = position
        papers.append(paper)
    return papers


def load(path: Path | None = None) -> list[Paper]:
    """The papers of ``path`` (default: the map shipped with the package), checked."""
    if path is None:
        from unlearnkit.data.shipped import resource_text

        where, text = RESOURCE, resource_text(RESOURCE)
    else:
        where = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise UnlearnkitError(f"Cannot read the literature map {path}: {error.strerror or error}.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnlearnkitError(f"{where}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg}).") from None
    return parse(data, where)


# --- the live registries --------------------------------------------------------------------------------------------


def _methods() -> list[str]:
    from unlearnkit.methods import METHODS

    return METHODS.names()


def _metrics() -> list[str]:
    from unlearnkit.evaluation.catalog import metric_catalog

    return metric_catalog().names()


def _attacks() -> list[str]:
    from unlearnkit.attacks import ATTACKS

    return ATTACKS.names()


def _localizers() -> list[str]:
    from unlearnkit.localization import LOCALIZERS

    return LOCALIZERS.names()


def _wrappers() -> list[str]:
    from unlearnkit.inference import WRAPPERS

    return WRAPPERS.names()


def _datasets() -> list[str]:
    from unlearnkit.data.catalog import CATALOG
    from unlearnkit.data.schemas import BENCHMARKS

    return sorted([*BENCHMARKS, *CATALOG])


def _commands() -> list[str]:
    """Every command of the ``unlearnkit`` command line, sub-commands as 'GROUP SUB' (e.g. 'data export')."""
    import typer

    from unlearnkit.cli import app

    def walk(group: Any, prefix: str) -> Iterable[str]:
        for name, command in getattr(group, "commands", {}).items():
            yield prefix + name
            yield from walk(command, f"{prefix}{name} ")

    return sorted(walk(typer.main.get_command(app), ""))


REGISTRIES: dict[str, Callable[[], list[str]]] = {"method": _methods, "metric": _metrics, "attack": _attacks,
                                                  "localizer": _localizers, "wrapper": _wrappers, "dataset": _datasets,
                                                  "command": _commands}
# Components every one of which the map must cite (commands and data sources need not come from a paper).
CITED = ("method", "metric", "attack", "localizer", "wrapper")


def registered(kinds: Iterable[str] = COMPONENTS) -> dict[str, list[str]]:
    """The names registered now, per component kind."""
    return {kind: REGISTRIES[kind]() for kind in kinds}


def unresolved(papers: Sequence[Paper], names: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """One message per ``implements`` entry that names no registered component (``names``: default the live registries)."""
    names = registered() if names is None else names
    problems = []
    for paper in papers:
        for item in paper.implements:
            kind, _, name = item.partition(":")
            if name not in names.get(kind, ()):
                problems.append(f"paper {paper.id!r} claims {item!r}, but no {kind} {name!r} is registered."
                                f"{did_you_mean(name, names.get(kind, ()))}")
    return problems


def uncited(papers: Sequence[Paper], names: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The registered methods, metrics, attacks and localizers (as 'KIND:NAME') that no paper of the map implements."""
    names = registered(CITED) if names is None else names
    claimed = {item for paper in papers for item in paper.implements}
    return [f"{kind}:{name}" for kind in CITED for name in names.get(kind, ()) if f"{kind}:{name}" not in claimed]


def check(papers: Sequence[Paper]) -> None:
    """Refuse a map that claims an unregistered component or leaves a registered one uncited."""
    problems = unresolved(papers)
    missing = uncited(papers)
    if missing:
        problems.append(f"registered but cited by no paper: {', '.join(missing)}; add the paper that defines each, with the "
                        f"component in its 'implements' list, to unlearnkit/data/resources/{RESOURCE}.")
    if problems:
        raise UnlearnkitError("The literature map does not match the registries: " + " ".join(problems))


# --- selection and rendering ----------------------------------------------------------------------------------------


def select(papers: Sequence[Paper], *, family: str | None = None, kind: str | None = None) -> list[Paper]:
    """The papers of ``family`` and ``kind`` (None: any); an unknown family or kind is refused with the choices."""
    if family is not None and family not in FAMILIES:
        raise UnlearnkitError(f"Unknown family {family!r}.{did_you_mean(family, FAMILIES)} Families: {', '.join(FAMILIES)}.")
    if kind is not None and kind not in KINDS:
        raise UnlearnkitError(f"Unknown kind {kind!r}.{did_you_mean(kind, KINDS)} Kinds: {', '.join(KINDS)}.")
    return [paper for paper in papers if (family is None or paper.family == family) and (kind is None or paper.kind == kind)]


def _cell(text: str) -> str:
    """``text`` as one Markdown table cell: one line, pipes escaped, nothing read as an HTML tag."""
    text = " ".join(text.split()).replace("|", r"\|")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", text)


def implemented_by(paper: Paper) -> str:
    """The components that implement ``paper`` as a table cell, or 'not yet'."""
    return ", ".join(f"`{item}`" for item in paper.implements) or "not yet"


HEADER = ("title", "authors", "venue, year", "family", "implemented by", "summary")


def _table(papers: Sequence[Paper]) -> list[str]:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for paper in sorted(papers, key=lambda p: (p.year, p.id)):
        row = (paper.title, paper.authors, f"{paper.venue} {paper.year}", paper.family or "", implemented_by(paper), paper.summary)
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    return lines


def render(papers: Sequence[Paper], *, title: str = "Literature map", intro: str | None = None) -> str:
    """The map as Markdown: a section per kind (in :data:`KINDS` order), a sub-section per family, one table row per paper.

    Within a table, papers are sorted by year then id; a kind's papers without a family come first, without a heading.
    """
    done = sum(1 for paper in papers if paper.implements)
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += [f"{len(papers)} paper{'' if len(papers) == 1 else 's'}; {done} implemented in unlearnkit, {len(papers) - done} not yet.", ""]
    for kind in KINDS:
        of_kind = [paper for paper in papers if paper.kind == kind]
        if not of_kind:
            continue
        lines += [f"## {KIND_HEADINGS[kind]}", ""]
        for family in (None, *FAMILIES):
            group = [paper for paper in of_kind if paper.family == family]
            if not group:
                continue
            if family is not None:
                lines += [f"### {family}", ""]
            lines += [*_table(group), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


INTRO = (f"The papers surveyed for unlearnkit, grouped by kind and, for methods, by the surveys' families, with the components "
         f"(`unlearnkit methods`, `metrics`, `attacks`, `localizers`, `wrappers`, data sources and commands) that implement each. "
         f"Generated from `src/unlearnkit/data/resources/{RESOURCE}` by `{GENERATOR}`: edit the data file, not this page. "
         f"`unlearnkit papers --family F --kind K` prints a part of it.")


def document(papers: Sequence[Paper] | None = None) -> str:
    """``docs/literature.md``: the whole shipped map, checked against the registries."""
    papers = load() if papers is None else papers
    check(papers)
    return render(papers, intro=INTRO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearnkit.literature", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", type=Path, help="the Markdown page to write (docs/literature.md)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the page is out of date")
    args = parser.parse_args(argv)
    from unlearnkit.io import write_text

    try:
        expected = document()
        current = args.path.read_text(encoding="utf-8") if args.path.is_file() else None
        if args.check:
            if current == expected:
                return 0
            if current is None:
                print(f"{args.path}: missing.", file=sys.stderr)
            else:
                print(f"{args.path}: out of date:", file=sys.stderr)
                sys.stderr.writelines(difflib.unified_diff(current.splitlines(keepends=True), expected.splitlines(keepends=True),
                                                           str(args.path), RESOURCE))
            print(f"Regenerate with: python -m unlearnkit.literature {args.path}", file=sys.stderr)
            return 1
        if current == expected:
            print(f"{args.path}: up to date")
        else:
            write_text(args.path, expected)
            print(f"{args.path}: written")
        return 0
    except (OSError, UnlearnkitError) as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
