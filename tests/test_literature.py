"""The literature map (unlearnkit.literature): its schema, its agreement with the registries, its Markdown and `unlearnkit papers`."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from unlearnkit import literature
from unlearnkit.cli.papers import papers as papers_command
from unlearnkit.errors import UnlearnkitError
from unlearnkit.literature import CITED, FAMILIES, Paper, document, load, parse, registered, render, select, uncited, unresolved

DOC = Path(__file__).resolve().parents[1] / "docs" / "literature.md"


def entry(**changes: object) -> dict:
    base = {"id": "doe2024forget", "title": "Forgetting Things", "authors": "Doe et al.", "venue": "ICLR", "year": 2024,
            "kind": "method", "family": "objective/gradient-based", "summary": "Forgets things.", "implements": ["method:ga"]}
    base.update(changes)
    return {key: value for key, value in base.items() if value is not ...}


def paper(**changes: object) -> Paper:
    return parse({"papers": [entry(**changes)]})[0]


@pytest.fixture(scope="module")
def shipped() -> list[Paper]:
    return load()


@pytest.fixture(scope="module")
def names() -> dict[str, list[str]]:
    return registered()


# --- the shipped map against the live registries ---------------------------------------------------------------------


def test_every_registered_component_is_cited_by_a_paper(shipped, names) -> None:
    assert sum(len(names[kind]) for kind in CITED) > 50  # the registries were really read
    assert uncited(shipped, names) == [], "add the paper of each component to unlearnkit/data/resources/literature.json"


def test_every_claimed_implementation_is_registered(shipped, names) -> None:
    assert any(item.startswith("command:") for p in shipped for item in p.implements)
    assert any(item.startswith("dataset:") for p in shipped for item in p.implements)
    assert unresolved(shipped, names) == []
    literature.check(shipped)


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9%]+", " ", text.lower()).strip()


def test_each_component_is_linked_to_a_paper_its_own_citation_names(shipped) -> None:
    """A component's `paper`/`citation` string names (the title, or the part before its colon) one paper that claims it."""
    from unlearnkit.attacks import ATTACKS
    from unlearnkit.evaluation.catalog import metric_catalog
    from unlearnkit.localization import LOCALIZERS
    from unlearnkit.methods import METHODS

    citations = {**{f"method:{n}": METHODS.get(n).paper for n in METHODS.names()},
                 **{f"attack:{n}": ATTACKS.get(n).paper for n in ATTACKS.names()},
                 **{f"metric:{n}": metric_catalog().get(n).paper for n in metric_catalog().names()},
                 **{f"localizer:{n}": LOCALIZERS.get(n).citation for n in LOCALIZERS.names()}}
    wrong = []
    for component, citation in citations.items():
        titles = [p.title for p in shipped if component in p.implements]
        if not any(_normal(title) in _normal(citation) or _normal(title.split(": ")[0]) in _normal(citation) for title in titles):
            wrong.append(f"{component}: cites {citation!r}; the map links it to {titles}")
    assert wrong == []


def test_a_registered_component_missing_from_the_map_is_reported() -> None:
    papers = [paper(implements=["method:ga", "metric:forget_quality"])]
    fake = {"method": ["ga", "npo"], "metric": ["forget_quality"], "attack": ["direct"], "localizer": []}
    assert uncited(papers, fake) == ["method:npo", "attack:direct"]
    with pytest.raises(UnlearnkitError, match=r"cited by no paper: .*method:npo"):
        literature.check(papers)


def test_a_claim_of_an_unregistered_component_is_reported(shipped, names) -> None:
    claims = [paper(implements=["method:npo", "method:npoo", "command:audit", "dataset:nowhere"])]
    problems = unresolved(claims, names)
    assert len(problems) == 2
    assert "'doe2024forget' claims 'method:npoo', but no method 'npoo' is registered. Did you mean: npo" in problems[0]
    assert "dataset:nowhere" in problems[1]
    with pytest.raises(UnlearnkitError, match="claims 'method:npoo'"):
        literature.check([*shipped, *claims])


def test_the_shipped_map_covers_the_field(shipped) -> None:
    kinds = {p.kind for p in shipped}
    assert kinds == set(literature.KINDS)
    assert all(p.family is not None for p in shipped if p.kind == "method")
    titles = {p.title for p in shipped}
    for title in ("Rethinking Machine Unlearning for Large Language Models", "A Survey of Machine Unlearning",
                  "Knowledge Unlearning for LLMs: Tasks, Methods, and Challenges", "Eight Methods to Evaluate Robust Unlearning in LLMs"):
        assert title in titles
    assert any(p.implements == () for p in shipped if p.kind == "method")  # the map also lists what is not implemented yet


def test_commands_include_sub_commands() -> None:
    commands = registered(["command"])["command"]
    assert {"audit", "general", "data", "data export"} <= set(commands)


# --- the schema --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "message"), [
    ({"title": ...}, r"paper #1 \('doe2024forget'\), field 'title': missing"),
    ({"kind": "poem"}, r"paper #1 \('doe2024forget'\), field 'kind': unknown value 'poem'.*Use one of: regulation, survey"),
    ({"kind": "methods"}, r"field 'kind': unknown value 'methods'. Did you mean: method"),
    ({"family": ...}, r"field 'family': missing: a method needs its family"),
    ({"family": "magic"}, r"field 'family': unknown value 'magic'"),
    ({"year": "2024"}, r"field 'year': must be a year"),
    ({"year": 24}, r"field 'year': must be a year"),
    ({"implements": "method:ga"}, r"field 'implements': must be a list"),
    ({"implements": ["ga"]}, r"field 'implements': 'ga' is not 'KIND:NAME'"),
    ({"implements": ["methods:ga"]}, r"field 'implements': 'methods:ga' has an unknown component kind 'methods'. Did you mean: method"),
    ({"implements": ["method:ga", "method:ga"]}, r"'method:ga' is listed twice"),
    ({"summary": ""}, r"field 'summary': must be a non-empty string"),
    ({"title": "Two\nlines"}, r"field 'title': must be one line"),
    ({"id": "Doe 2024"}, r"field 'id': use lower-case letters"),
    ({"venu": "ICLR"}, r"field 'venu': unknown field. Did you mean: venue"),
])
def test_schema_errors_name_the_entry_and_the_field(changes, message) -> None:
    with pytest.raises(UnlearnkitError, match=message):
        parse({"papers": [entry(**changes)]}, "map.json")


def test_an_entry_without_an_id_is_named_by_its_position() -> None:
    with pytest.raises(UnlearnkitError, match=r"map.json: paper #2, field 'id': missing"):
        parse({"papers": [entry(), entry(id=..., implements=[])]}, "map.json")


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(UnlearnkitError, match=r"paper #3 \('doe2024forget'\), field 'id': duplicate id: paper #1 has it too"):
        parse({"papers": [entry(), entry(id="other"), entry(title="Another")]}, "map.json")


def test_a_non_method_may_have_no_family() -> None:
    regulation = paper(kind="regulation", family=..., implements=[])
    assert (regulation.kind, regulation.family, regulation.implements) == ("regulation", None, ())


def test_the_file_must_be_a_json_object_of_papers(tmp_path) -> None:
    path = tmp_path / "map.json"
    path.write_text('{"papers": [', encoding="utf-8")
    with pytest.raises(UnlearnkitError, match=r"map.json: not valid JSON \(line 1"):
        load(path)
    path.write_text(json.dumps([entry()]), encoding="utf-8")
    with pytest.raises(UnlearnkitError, match="one key, 'papers'"):
        load(path)
    with pytest.raises(UnlearnkitError, match="Cannot read the literature map"):
        load(tmp_path / "missing.json")
    path.write_text(json.dumps({"papers": [entry()]}), encoding="utf-8")
    assert load(path) == [paper()]


def test_a_damaged_shipped_entry_is_named() -> None:
    """The shipped file is edited by hand: a wrong value in it is reported with its position and id."""
    from unlearnkit.data.shipped import resource_text

    data = json.loads(resource_text("literature.json"))
    damaged = copy.deepcopy(data)
    damaged["papers"][5]["kind"] = "book"
    with pytest.raises(UnlearnkitError, match=rf"paper #6 \('{data['papers'][5]['id']}'\), field 'kind'"):
        parse(damaged)
    assert [p.id for p in parse(data)] == [raw["id"] for raw in data["papers"]]


# --- rendering ---------------------------------------------------------------------------------------------------------

SMALL = {"papers": [
    entry(id="b2024", title="Arithmetic | Negation", authors="B et al.", venue="NeurIPS", year=2024, family="task arithmetic",
          summary="Subtract a task vector.", implements=[]),
    entry(id="a2024", title="Ascent Two", authors="A et al.", venue="ICLR", year=2024, summary="Ascend again.",
          implements=["method:ga", "metric:forget_quality"]),
    entry(id="law", title="Right to erasure", authors="Lawmakers", venue="Journal", year=2016, kind="regulation", family=...,
          summary="Erase on <request>.", implements=[]),
    entry(id="z2023", title="Ascent One", authors="Z & Y", venue="ACL", year=2023, summary="Ascend.", implements=["method:ga"]),
]}

SMALL_MARKDOWN = """\
# Literature map

4 papers; 2 implemented in unlearnkit, 2 not yet.

## Regulations

| title | authors | venue, year | family | implemented by | summary |
|---|---|---|---|---|---|
| Right to erasure | Lawmakers | Journal 2016 |  | not yet | Erase on &lt;request>. |

## Methods

### objective/gradient-based

| title | authors | venue, year | family | implemented by | summary |
|---|---|---|---|---|---|
| Ascent One | Z & Y | ACL 2023 | objective/gradient-based | `method:ga` | Ascend. |
| Ascent Two | A et al. | ICLR 2024 | objective/gradient-based | `method:ga`, `metric:forget_quality` | Ascend again. |

### task arithmetic

| title | authors | venue, year | family | implemented by | summary |
|---|---|---|---|---|---|
| Arithmetic \\| Negation | B et al. | NeurIPS 2024 | task arithmetic | not yet | Subtract a task vector. |
"""


def test_render_groups_by_kind_then_family() -> None:
    assert render(parse(SMALL)) == SMALL_MARKDOWN


def test_render_with_a_title_and_an_introduction() -> None:
    text = render(parse(SMALL)[:1], title="Part", intro="Some words.")
    assert text.startswith("# Part\n\nSome words.\n\n1 paper; 0 implemented in unlearnkit, 1 not yet.\n\n"
                           "## Methods\n\n### task arithmetic\n")


def test_select_by_family_and_kind() -> None:
    papers = parse(SMALL)
    assert [p.id for p in select(papers, family="objective/gradient-based")] == ["a2024", "z2023"]
    assert [p.id for p in select(papers, kind="regulation")] == ["law"]
    assert [p.id for p in select(papers, family="task arithmetic", kind="method")] == ["b2024"]
    assert select(papers, family="editing") == []
    assert select(papers) == papers
    with pytest.raises(UnlearnkitError, match=r"Unknown family 'task-arithmetic'\. Did you mean: task arithmetic"):
        select(papers, family="task-arithmetic")
    with pytest.raises(UnlearnkitError, match=r"Unknown kind 'benchmarks'\. Did you mean: benchmark"):
        select(papers, kind="benchmarks")


# --- `unlearnkit papers` -----------------------------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer(rich_markup_mode=None)
    app.command("papers")(papers_command)
    return app


def test_papers_is_a_command_of_the_real_app(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.helpers import run_cli

    assert run_cli(["papers", "--kind", "regulation"], monkeypatch) == 0
    assert "## Regulations" in capsys.readouterr().out
    assert run_cli(["papers", "--family", "magic"], monkeypatch) == 2
    assert "Unknown family 'magic'" in capsys.readouterr().err


def test_papers_command_filters_by_family(shipped) -> None:
    result = CliRunner().invoke(_cli(), ["--family", "task arithmetic"])
    assert result.exit_code == 0, result.output
    expected = [p for p in shipped if p.family == "task arithmetic"]
    assert expected
    assert result.output.startswith("# Literature map: task arithmetic\n")
    rows = [line for line in result.output.splitlines() if line.startswith("| ") and not line.startswith("| title |")]
    assert len(rows) == len(expected)
    assert all(p.title in result.output for p in expected)
    assert "## Methods" in result.output and "## Surveys" not in result.output


def test_papers_command_filters_by_kind_and_prints_everything_by_default(shipped) -> None:
    result = CliRunner().invoke(_cli(), ["--kind", "regulation"])
    assert result.exit_code == 0, result.output
    assert "## Regulations" in result.output and "## Methods" not in result.output
    assert "Article 17" in result.output
    whole = CliRunner().invoke(_cli(), [])
    assert whole.exit_code == 0
    assert whole.output == render(shipped)


def test_papers_command_refuses_an_unknown_family_or_an_empty_selection() -> None:
    result = CliRunner().invoke(_cli(), ["--family", "magic"])
    assert isinstance(result.exception, UnlearnkitError)
    assert "Unknown family 'magic'" in str(result.exception) and all(f in str(result.exception) for f in FAMILIES)
    result = CliRunner().invoke(_cli(), ["--family", "exact/retraining", "--kind", "regulation"])
    assert isinstance(result.exception, UnlearnkitError)
    assert "No paper of family 'exact/retraining' and kind 'regulation'" in str(result.exception)


# --- docs/literature.md ------------------------------------------------------------------------------------------------


def test_docs_page_is_up_to_date() -> None:
    assert DOC.read_text(encoding="utf-8") == document(), "regenerate: python -m unlearnkit.literature docs/literature.md"


def test_generator_writes_and_checks(tmp_path, capsys) -> None:
    page = tmp_path / "literature.md"
    assert literature.main([str(page), "--check"]) == 1
    assert "missing" in capsys.readouterr().err
    assert literature.main([str(page)]) == 0
    assert page.read_text(encoding="utf-8") == DOC.read_text(encoding="utf-8")
    assert literature.main([str(page), "--check"]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("| not yet |", "| soon |", 1), encoding="utf-8")
    assert literature.main([str(page), "--check"]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and "-| " in err and "soon" in err and "Regenerate with" in err
    assert literature.main([str(page)]) == 0
    assert literature.main([str(page), "--check"]) == 0


def test_generator_refuses_a_map_that_drifted_from_the_registries(tmp_path, monkeypatch, capsys) -> None:
    shipped = load()
    monkeypatch.setattr(literature, "load", lambda path=None: [*shipped, paper(id="ghost", implements=["method:ghost"])])
    page = tmp_path / "literature.md"
    assert literature.main([str(page)]) == 2
    assert "'ghost' claims 'method:ghost'" in capsys.readouterr().err
    assert not page.exists()
