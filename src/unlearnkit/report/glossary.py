"""What each reported number means: its label, which direction is better, and a one-line definition.

The definitions come from the metric catalog (:mod:`unlearnkit.evaluation.catalog`),
which ``unlearnkit metrics`` prints too, so the leaderboard, the HTML report and
the command say the same thing; the run's cost (``unlearn_seconds``) is added here.
"""

from __future__ import annotations

from dataclasses import dataclass

from unlearnkit.evaluation.catalog import ARROWS, FAMILIES, metric_catalog


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    better: str  # a direction of the catalog: "higher", "lower", "closer to 1", "near 0" or "near 0.5"
    definition: str

    @property
    def arrow(self) -> str:
        return ARROWS.get(self.better, "")


# The leaderboard's columns, in order: forgetting, utility, then the forget-set details and the cost.
LEADERBOARD_METRICS: tuple[str, ...] = (
    "forget_quality", "model_utility", "forget_truth_ratio", "forget_probability", "forget_rouge_l", "unlearn_seconds",
)

_COST = MetricInfo("unlearn_seconds", "unlearning time (s)", "lower",
                   "Wall-clock seconds spent unlearning (training only, without evaluation).")


def _glossary() -> dict[str, MetricInfo]:
    """Leaderboard metrics first, then the rest of the catalog by family."""
    catalog = metric_catalog()
    specs = sorted((catalog.get(name) for name in catalog.names()), key=lambda spec: FAMILIES.index(spec.family))
    entries = {spec.name: MetricInfo(spec.name, spec.display_label, spec.direction, spec.definition) for spec in specs}
    entries[_COST.name] = _COST
    return {name: entries[name] for name in (*LEADERBOARD_METRICS, *entries) if name in entries}


METRICS: dict[str, MetricInfo] = _glossary()


def describe(name: str) -> MetricInfo:
    """The entry for ``name``; a metric this table does not know is shown under its own name."""
    return METRICS.get(name) or MetricInfo(name, name.replace("_", " "), "see the README", "")
