"""README's method and metric tables are generated from the registries (unlearnkit.docs_tables) and must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from unlearnkit.docs_tables import drifted, generated, main, methods_table, metrics_table, update_readme
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import metric_catalog
from unlearnkit.methods import METHODS

README = Path(__file__).resolve().parents[1] / "README.md"


def block(name: str, content: str = "stale\n") -> str:
    return f"<!-- BEGIN GENERATED: {name} -->\n{content}<!-- END GENERATED: {name} -->\n"


def test_readme_tables_match_the_registries() -> None:
    text = README.read_text(encoding="utf-8")
    assert drifted(text) == [], "README tables are out of date: run `python -m unlearnkit.docs_tables README.md`"
    assert update_readme(text) == text


def test_tables_have_one_row_per_registered_entry() -> None:
    methods = methods_table()
    assert all(f"| `{name}` |" in methods for name in METHODS.names())
    assert methods.count("\n") == 2 + len(METHODS.names())
    metrics = metrics_table()
    catalog = metric_catalog()
    assert all(f"| `{name}` |" in metrics for name in catalog.names())
    assert metrics.count("\n") == 2 + len(catalog.names())
    # Cells stay one cell: a pipe in a definition (|y|) is escaped.
    row = next(line for line in metrics.splitlines() if line.startswith("| `forget_extraction_strength` |"))
    assert r"1 - k/\|y\|" in row and row.replace(r"\|", "").count("|") == 6  # five columns: family included
    assert "| ↓ lower |" in row


def test_update_readme_replaces_only_between_markers() -> None:
    text = (
        "# Title\n\nprose before\n\n" + block("methods") + "\nprose between\n\n"
        + block("metrics:tofu", "| old | table |\n") + "\n" + block("metrics:memorization,privacy,muse,real_knowledge") + "\nprose after\n"
    )
    updated = update_readme(text)
    assert updated.startswith("# Title\n\nprose before\n\n<!-- BEGIN GENERATED: methods -->\n\n| name | family |")
    assert "stale" not in updated and "| old | table |" not in updated
    assert f"<!-- BEGIN GENERATED: metrics:tofu -->\n{generated('metrics:tofu')}<!-- END GENERATED: metrics:tofu -->" in updated
    assert "<!-- END GENERATED: methods -->\n\nprose between\n\n" in updated
    assert updated.endswith("<!-- END GENERATED: metrics:memorization,privacy,muse,real_knowledge -->\n\nprose after\n")
    assert update_readme(updated) == updated
    assert drifted(text) == ["methods", "metrics:tofu", "metrics:memorization,privacy,muse,real_knowledge"] and drifted(updated) == []


@pytest.mark.parametrize(("text", "message"), [
    ("# README without markers\n", "No '<!-- BEGIN GENERATED: methods -->'"),
    (block("methods"), r"No '<!-- BEGIN GENERATED: metrics -->'"),
    (block("metrics"), "No '<!-- BEGIN GENERATED: methods -->'"),
    (block("methods") + block("metrics:tofu"), "in no block: memorization, privacy, muse, real_knowledge"),
    (block("methods") + block("metrics") + block("metrics:muse"), "in several blocks: muse"),
    (block("methods") + "<!-- BEGIN GENERATED: metrics -->\n", "has no matching '<!-- END GENERATED: metrics -->'"),
    (block("methods") + "<!-- END GENERATED: metrics -->\n", "END GENERATED: metrics where a BEGIN"),
    (block("methods") + block("attacks"), "unknown generated block 'attacks'"),
    (block("methods") + block("metrics:nonsense"), "Unknown metric family 'nonsense'"),
])
def test_update_readme_refuses_text_without_valid_markers(text: str, message: str) -> None:
    with pytest.raises(UnlearnkitError, match=message.replace("(", r"\(")):
        update_readme(text)


def test_entry_point_checks_and_rewrites(tmp_path: Path, capsys) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("intro\n\n" + block("methods") + "\n" + block("metrics") + "\nend\n", encoding="utf-8")
    assert main([str(readme), "--check"]) == 1
    err = capsys.readouterr().err
    assert "'methods' table is out of date" in err and "'metrics' table is out of date" in err and "-stale" in err
    assert main([str(readme)]) == 0
    assert main([str(readme), "--check"]) == 0
    assert readme.read_text(encoding="utf-8") == update_readme(readme.read_text(encoding="utf-8"))
    assert not list(tmp_path.glob(".README.md.*")), "the rewrite is atomic and leaves no temporary file"
    readme.write_text("no markers\n", encoding="utf-8")
    assert main([str(readme), "--check"]) == 2
    assert "Error: No '<!-- BEGIN GENERATED: methods -->'" in capsys.readouterr().err
