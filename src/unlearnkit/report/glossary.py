"""What each reported number means: its label, which direction is better, and a one-line definition.

The descriptions come from the results folders themselves: the runners write
``"metric_info"`` into each ``config.json`` (``{name: {"label", "better",
"definition", "paper", "family"}}``, from the metric catalog, see
:mod:`unlearnkit.descriptions`), and :meth:`Glossary.from_runs` gathers them. The
report imports no evaluation module, so a folder written before these keys
existed shows each metric under its own name, without a definition, except the
leaderboard's columns, whose labels and directions are constants here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from unlearnkit.report.tables import HEADLINE_METRICS

# Which way is better, as an arrow (the catalog's directions).
ARROWS: dict[str, str] = {"higher": "↑", "lower": "↓", "closer to 1": "→1", "near 0": "→0", "near 0.5": "→½"}
# Listing order of the metric families (the catalog's, then the run's cost).
FAMILY_ORDER: tuple[str, ...] = ("tofu", "memorization", "privacy", "muse", "real_knowledge", "utility", "cost")

# The leaderboard's columns, in order: forgetting, utility, then the forget-set details and the cost.
LEADERBOARD_METRICS: tuple[str, ...] = (*HEADLINE_METRICS, "unlearn_seconds")
# Their labels and better directions, so the leaderboard's header reads right on any folder.
LEADERBOARD_LABELS: dict[str, tuple[str, str]] = {
    "forget_quality": ("forget quality", "higher"),
    "model_utility": ("model utility", "higher"),
    "forget_truth_ratio": ("forget truth ratio", "closer to 1"),
    "forget_probability": ("forget probability", "lower"),
    "forget_rouge_l": ("forget ROUGE-L", "lower"),
    "unlearn_seconds": ("unlearning time (s)", "lower"),
}


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    better: str  # "higher", "lower", "closer to 1", "near 0", "near 0.5", or "" when unknown
    definition: str = ""
    paper: str = ""
    family: str = ""

    @property
    def arrow(self) -> str:
        return ARROWS.get(self.better, "")

    @classmethod
    def from_dict(cls, name: str, entry: Mapping[str, Any]) -> MetricInfo:
        """An entry of a ``config.json``'s ``metric_info``; a missing or malformed field is left blank."""
        fields = ("label", "better", "definition", "paper", "family")
        text = {key: value if isinstance(value := entry.get(key), str) else "" for key in fields}
        return cls(name, text["label"] or _own_label(name), text["better"], text["definition"], text["paper"], text["family"])


class Glossary:
    """The descriptions of a report's metrics: those its folders recorded, then the leaderboard's constants."""

    def __init__(self, info: Mapping[str, Any] | None = None) -> None:
        entries: dict[str, MetricInfo] = {}
        for name, entry in (info or {}).items():
            if isinstance(name, str) and isinstance(entry, Mapping):
                entries.setdefault(name, MetricInfo.from_dict(name, entry))
        for name, (label, better) in LEADERBOARD_LABELS.items():
            entries.setdefault(name, MetricInfo(name, label, better, family="cost" if name == "unlearn_seconds" else "tofu"))
        order = {name: index for index, name in enumerate(LEADERBOARD_METRICS)}
        families = {family: index for index, family in enumerate(FAMILY_ORDER)}
        ranked = sorted(enumerate(entries.values()), key=lambda item: (
            (0, order[item[1].name]) if item[1].name in order else (1, families.get(item[1].family, len(families))), item[0]))
        self.entries: dict[str, MetricInfo] = {info.name: info for _, info in ranked}

    @classmethod
    def from_runs(cls, runs: Iterable[Any]) -> Glossary:
        """The ``metric_info`` of each run's ``config.json`` (``run.config``), the first folder's entry for a name."""
        merged: dict[str, Any] = {}
        for run in runs:
            info = (getattr(run, "config", None) or {}).get("metric_info")
            if isinstance(info, Mapping):
                for name, entry in info.items():
                    merged.setdefault(name, entry)
        return cls(merged)

    def describe(self, name: str) -> MetricInfo:
        """The entry for ``name``; a metric no folder described is shown under its own name, without a definition."""
        return self.entries.get(name) or MetricInfo(name, _own_label(name), "")

    def order(self, names: Iterable[str]) -> list[str]:
        """``names`` once each: the described ones in glossary order, then the others as given."""
        wanted = list(dict.fromkeys(names))
        return [name for name in self.entries if name in wanted] + [name for name in wanted if name not in self.entries]

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)


def describe(name: str, glossary: Glossary | None = None) -> MetricInfo:
    """The entry for ``name`` in ``glossary`` (default: the leaderboard's constants only)."""
    return (glossary or _BUILTIN).describe(name)


def _own_label(name: str) -> str:
    return name.replace("_", " ")


_BUILTIN = Glossary()
