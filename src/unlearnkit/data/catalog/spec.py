"""What the catalog knows about each dataset of the field: where it lives, its paper, licence, schema, use and row form.

A :class:`DatasetSpec` is pure description plus two functions: ``convert`` turns the
checked rows of one config into unlearnkit's row form (``where`` names the file in messages), and ``read_local`` (optional)
reads a local copy whose layout is not one file of rows per split (numpy token arrays,
a mail folder, a plain-text book). :func:`register` adds a spec to :data:`CATALOG`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.errors import UnlearnkitError, did_you_mean

# The internal row forms (docs/datasets.md, "Row forms").
MCQ = "multiple choice {question, choices, answer}"
TEXT = "text {text}"
PROMPT = "prompt {prompt, ...}"
PROMPT_RESPONSE = "prompt/response {prompt, response}"
CONTINUATION = "continuation {prompt, gt}"
TOKENS = "token ids {prefix_ids, suffix_ids}"
BBQ_ROW = "bias multiple choice {context, question, choices, answer, context_condition, question_polarity, ...}"

# Field types a schema may name, and what each means in messages.
TYPE_WORDS = {
    "str": "a non-empty string",
    "int": "an integer",
    "bool": "true or false",
    "float?": "a number or null",
    "list[str]": "a list of strings",
    "list[int]": "a list of integers",
    "object": "an object (a JSON mapping)",
}


@dataclass(frozen=True)
class Paper:
    """The paper that introduced a dataset."""

    title: str
    authors: str
    venue: str
    year: int
    arxiv: str | None = None

    def cite(self) -> str:
        arxiv = f", arXiv {self.arxiv}" if self.arxiv else ""
        return f"{self.authors}, \"{self.title}\", {self.venue} {self.year}{arxiv}"


@dataclass(frozen=True)
class Config:
    """One config of a dataset: its splits, where the hub keeps it and the file stems a local copy may use.

    ``local_stems`` are paths relative to the ``@DIR`` folder, without a suffix, with ``{split}`` filled in;
    the first that exists with a known suffix (or as ``STEM-*.parquet`` shards) is read.
    """

    splits: tuple[str, ...]
    hub_config: str | None = None  # the hub's config name; None: the hub's default config
    hub_id: str | None = None  # a separate hub repository for this config (e.g. a gated one)
    hub_data_files: str | None = None  # read this file of the hub repository instead of a config
    local_stems: tuple[str, ...] = ("{split}",)
    gated: bool = False
    hub_splits: Mapping[str, str] | None = None  # our split name -> the hub's, where they differ


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the field, as ``unlearnkit datasets`` lists it and :func:`unlearnkit.data.catalog.load` reads it."""

    name: str
    title: str
    paper: Paper
    licence: str
    hub_id: str | None  # None: no copy on the hub, a local copy (``@DIR``) only
    configs: Mapping[str, Config]
    schema: Mapping[str, str]  # required field (dotted for nested) -> type word of TYPE_WORDS
    row_form: str
    use: str
    local_copy: str  # how to get a local copy, and the layout ``@DIR`` must have
    convert: Callable[[list[dict], str, str], list[dict]]  # (checked rows, config name, where) -> internal rows
    example: Mapping[str, Any]
    optional: Mapping[str, str] = field(default_factory=dict)  # fields kept and type-checked when present
    unverified: tuple[str, ...] = ()  # schema facts we could not check against the original; configurable by ``fields``
    read_local: Callable[[Path, str, str], list[dict]] | None = None  # (path, config, split) -> raw rows

    @property
    def gated(self) -> bool:
        return any(config.gated for config in self.configs.values())

    def describe(self) -> dict[str, Any]:
        """Everything ``unlearnkit datasets --json`` shows about this dataset (plain JSON values)."""
        return {
            "name": self.name, "title": self.title, "paper": asdict(self.paper), "licence": self.licence,
            "hub_id": self.hub_id, "gated": self.gated, "use": self.use, "row_form": self.row_form,
            "schema": dict(self.schema), "optional_fields": dict(self.optional),
            "configs": {name: {"splits": list(config.splits), "hub_id": config.hub_id or self.hub_id,
                               "hub_config": config.hub_config, "gated": config.gated}
                        for name, config in self.configs.items()},
            "local_copy": self.local_copy, "example_row": dict(self.example), "unverified": list(self.unverified),
        }

    def config(self, name: str) -> Config:
        if name not in self.configs:
            raise UnlearnkitError(f"{self.name} has no config {name!r}.{did_you_mean(name, self.configs)} "
                                  f"Configs: {', '.join(self.configs)}.")
        return self.configs[name]


CATALOG: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to :data:`CATALOG`; a name registered twice is a programming error."""
    if spec.name in CATALOG:
        raise ValueError(f"dataset {spec.name!r} is registered twice")
    unknown = {kind for kind in (*spec.schema.values(), *spec.optional.values()) if kind not in TYPE_WORDS}
    if unknown:
        raise ValueError(f"dataset {spec.name!r} names unknown field types {sorted(unknown)}")
    CATALOG[spec.name] = spec
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """The spec called ``name``, or an error with the closest names and the full list."""
    if name not in CATALOG:
        raise UnlearnkitError(f"Unknown dataset {name!r}.{did_you_mean(name, CATALOG)} "
                              f"Datasets: {', '.join(sorted(CATALOG))} (`unlearnkit datasets` lists them).")
    return CATALOG[name]
