"""Catalog names, ``NAME[:CONFIG][/SPLIT][@PATH]``: the TOFU/MUSE vocabulary of :mod:`unlearnkit.data.schemas`, extended.

``CONFIG`` may be left out when the dataset has one config, ``SPLIT`` when the config has one
split, and a dataset with one config takes its split after the colon (``tdec:val@DIR``).
``@PATH`` reads a local copy (a folder, or for some datasets one file) instead of the hub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from unlearnkit.data.catalog.spec import CATALOG, Config, DatasetSpec, get_dataset
from unlearnkit.errors import UnlearnkitError, did_you_mean

_PREFIX = re.compile(r"([a-z0-9][a-z0-9-]*)(?=[:@]|$)")


@dataclass(frozen=True)
class CatalogSource:
    """A parsed catalog name."""

    dataset: str
    config: str
    split: str
    local_path: Path | None = None

    @property
    def spec(self) -> DatasetSpec:
        return CATALOG[self.dataset]

    @property
    def config_spec(self) -> Config:
        return self.spec.configs[self.config]

    def __str__(self) -> str:
        local = f"@{self.local_path}" if self.local_path else ""
        return f"{self.dataset}:{self.config}/{self.split}{local}"


def is_catalog_source(text: str) -> bool:
    """True when ``text`` starts with a catalog dataset name followed by ':', '@' or nothing."""
    match = _PREFIX.match(str(text))
    return bool(match) and match.group(1) in CATALOG


def parse_catalog_source(text: str) -> CatalogSource:
    """Parse ``NAME[:CONFIG][/SPLIT][@PATH]``, refusing unknown names, configs and splits with the closest ones."""
    text = str(text)
    name_part, at, path = text.partition("@")
    dataset, colon, rest = name_part.partition(":")
    spec = get_dataset(dataset)
    config_name, slash, split = rest.partition("/")
    if not colon or not config_name:
        config_name = _only(spec.configs, f"{dataset} has several configs; name one: "
                                          f"{', '.join(f'{dataset}:{c}' for c in spec.configs)}.")
    elif config_name not in spec.configs and len(spec.configs) == 1 and not slash:
        # One config: the word after the colon is its split (tdec:val).
        config_name, split, slash = next(iter(spec.configs)), config_name, "/"
    config = spec.config(config_name)
    if not slash or not split:
        split = _only(config.splits, f"{dataset}:{config_name} has several splits; name one: "
                                     f"{', '.join(f'{dataset}:{config_name}/{s}' for s in config.splits)}.")
    if split not in config.splits:
        raise UnlearnkitError(f"{dataset}:{config_name} has no split {split!r}.{did_you_mean(split, config.splits)} "
                              f"Splits: {', '.join(config.splits)}.")
    if at and not path:
        raise UnlearnkitError(f"{text!r}: '@' must be followed by the folder (or file) holding the local copy.")
    if not at and spec.hub_id is None:
        raise UnlearnkitError(f"{dataset} is not on the hub: add @PATH naming your local copy "
                              f"({dataset}:{config_name}/{split}@PATH). How to get one: {spec.local_copy}")
    return CatalogSource(dataset, config_name, split, Path(path) if at else None)


def _only(choices: object, message: str) -> str:
    names = list(choices)  # type: ignore[call-overload]
    if len(names) != 1:
        raise UnlearnkitError(message)
    return names[0]
