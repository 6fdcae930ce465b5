"""The field's datasets beyond TOFU and MUSE: one module per family, a registry of specs, one loader.

Names follow :mod:`unlearnkit.data.schemas`'s vocabulary, ``NAME[:CONFIG][/SPLIT][@PATH]`` (see
:mod:`.source`); ``unlearnkit datasets`` lists every dataset with its paper, licence, schema and use, and
docs/datasets.md describes each. :func:`load` returns rows in unlearnkit's forms: multiple choice
``{question, choices, answer}``, text ``{text}``, prompts ``{prompt, ...}``, prompt/response pairs,
continuations ``{prompt, gt}``, token ids, and BBQ rows with their bias-score metadata.
"""

from __future__ import annotations

from collections.abc import Mapping

from unlearnkit.data.catalog import bbq, copyrighted, enron, extraction, harmful, pile, toxicity, wmdp  # noqa: F401 - registers
from unlearnkit.data.catalog.checks import check_rows
from unlearnkit.data.catalog.reading import read_rows
from unlearnkit.data.catalog.source import CatalogSource, is_catalog_source, parse_catalog_source
from unlearnkit.data.catalog.spec import CATALOG, DatasetSpec, get_dataset
from unlearnkit.errors import UnlearnkitError

__all__ = ["CATALOG", "CatalogSource", "DatasetSpec", "get_dataset", "is_catalog_source", "load", "parse_catalog_source"]


def load(source: str | CatalogSource, fields: Mapping[str, str] | None = None) -> list[dict]:
    """The rows of a catalog source in unlearnkit's form, every row checked (names are validated before anything is read).

    ``fields`` maps a schema field name to the name a copy uses instead (``{"Question": "question"}``).
    """
    parsed = parse_catalog_source(source) if isinstance(source, str) else source
    spec = parsed.spec
    rows: list[dict] = []
    for where, raw in read_rows(parsed):
        checked = check_rows(raw, spec.schema, spec.optional, fields or {}, where)
        rows.extend(spec.convert(checked, parsed.config, where))
    if not rows:
        raise UnlearnkitError(f"{parsed} holds no rows of its config {parsed.config!r} "
                              f"(e.g. no row of that Pile subset, or no unsafe response): check the config and the copy.")
    return rows
