"""What a results folder says about itself: its metrics', method's and attacks' descriptions, for ``config.json``.

The report (:mod:`unlearnkit.report`) reads results folders only and imports no
method, attack or evaluation module, so the runners write what it shows of
them into each folder's ``config.json``, from the registries, with this module:

* ``"metric_info"``: :func:`metric_descriptions`, ``{name: {"label", "better", "definition", "paper", "family"}}``
  for every metric of the folder's summary (and ``unlearn_seconds``);
* ``"method_info"``: :func:`method_description`, ``{"name", "family", "paper", "summary", "defaults"}``;
* ``"attack_info"`` (audit folders): :func:`attack_descriptions`, ``{name: {"family", "paper", "summary"}}``.

:func:`config_descriptions` returns the keys that suit a summary at once. This
module is for the runners; the report never imports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any

UNLEARN_SECONDS: dict[str, str] = {
    "label": "unlearning time (s)",
    "better": "lower",
    "definition": "Wall-clock seconds spent unlearning (training only, without evaluation).",
    "paper": "",
    "family": "cost",
}


def metric_descriptions(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{name: {"label", "better", "definition", "paper", "family"}}`` for the ``names`` the metric catalog knows.

    Names the catalog lacks (bookkeeping such as ``selected_step``) are skipped;
    ``unlearn_seconds``, the run's cost, is described here. Entries follow the
    catalog's order (by family), whatever the order of ``names``.
    """
    from unlearnkit.evaluation.catalog import FAMILIES, metric_catalog

    wanted = set(names)
    catalog = metric_catalog()
    specs = sorted((catalog.get(name) for name in catalog.names() if name in wanted), key=lambda spec: FAMILIES.index(spec.family))
    entries = {spec.name: {"label": spec.display_label, "better": spec.direction, "definition": spec.definition,
                           "paper": spec.paper, "family": spec.family} for spec in specs}
    if "unlearn_seconds" in wanted:
        entries["unlearn_seconds"] = dict(UNLEARN_SECONDS)
    return entries


def method_description(name: str) -> dict[str, Any]:
    """``{"name", "family", "paper", "summary", "defaults"}`` of a registered method (an unknown name fails with suggestions).

    ``defaults``: every field of the method's config dataclass with its default (the authors' values).
    """
    from unlearnkit.methods import METHODS

    spec = METHODS.get(name)
    return {"name": spec.name, "family": spec.family, "paper": spec.paper, "summary": spec.summary,
            "defaults": _defaults(spec.config)}


def attack_descriptions(names: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{name: {"family", "paper", "summary"}}`` of registered attacks (an unknown name fails with suggestions)."""
    from unlearnkit.attacks import ATTACKS

    return {spec.name: {"family": spec.family, "paper": spec.paper, "summary": spec.summary}
            for spec in (ATTACKS.get(name) for name in dict.fromkeys(names))}


def config_descriptions(summary: Mapping[str, Any], method: str | None = None,
                        attacks: Iterable[str] | None = None) -> dict[str, Any]:
    """The keys to add to a results folder's ``config.json`` once its ``summary`` is known.

    ``summary``: a flat one (``unlearn``, ``eval``) or one per model (``demo``:
    ``target``/``oracle``/``unlearned``); ``method``: the unlearning method, if
    any (adds ``method_info`` and describes ``unlearn_seconds``); ``attacks``: an
    audit's attacks (adds ``attack_info``).
    """
    names: list[str] = []
    for key, value in summary.items():
        names.extend(value if isinstance(value, Mapping) else [key])
    if method is not None:
        names.append("unlearn_seconds")
    described: dict[str, Any] = {"metric_info": metric_descriptions(names)}
    if method is not None:
        described["method_info"] = method_description(method)
    if attacks is not None:
        described["attack_info"] = attack_descriptions(attacks)
    return described


def _defaults(config_cls: type) -> dict[str, Any]:
    """The defaults of ``config_cls``: an instance built with none given, or else each field's declared default."""
    try:
        config = config_cls()
    except Exception:  # noqa: BLE001 - a config whose defaults need something this machine lacks: its declared defaults
        config = None
    if config is not None and is_dataclass(config):
        return asdict(config)
    if not is_dataclass(config_cls):
        return {}
    defaults: dict[str, Any] = {}
    for spec in fields(config_cls):
        if spec.default is not MISSING:
            defaults[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            defaults[spec.name] = spec.default_factory()
    return defaults
