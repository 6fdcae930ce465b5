"""The metric catalog: every reported number bound to the function that computes it and to its metadata.

One entry (:class:`MetricSpec`) per summary key an evaluation can report
(``forget_probability``, ``mia_min_k_auc``, ...): its better direction, a
one-line definition, its paper, its family, the pure ``compute`` function whose
output gives the number and the ``aggregation`` applied to that output. The
entry is written on the function, in the module that defines it, so that
adding a metric touches one file::

    from unlearnkit.evaluation.catalog import MEAN, TOFU, metric

    @metric("forget_rouge_l", "lower", "Mean ROUGE-L recall of the greedy answer against the forget answer.",
            TOFU, "tofu", label="forget ROUGE-L", aggregation=MEAN)
    @metric("retain_rouge_l", "higher", "Mean ROUGE-L recall of the greedy answer on the retain set.",
            TOFU, "tofu", label="retain ROUGE-L", aggregation=MEAN)
    def rouge_l_recall(predictions, references): ...

One function may serve several keys (the same statistic on several splits):
each key is its own ``@metric`` line bound to the same function. Registration
checks each entry when its module is imported (a clear ``ValueError`` names the
metric): a new name, a direction of :data:`DIRECTIONS`, a family of
:data:`FAMILIES`, a non-empty one-line definition, a paper citation naming its
year, a callable ``compute`` and an aggregation of :data:`AGGREGATIONS`.

``unlearnkit metrics``, the README's tables and the report's glossary read the
catalog through :func:`metric_catalog`, which imports every module of
:data:`METRIC_MODULES` first (so a command that only lists metrics cannot miss
one): a new metric module is added there.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from unlearnkit.registry import Registry

DIRECTIONS = ("higher", "lower", "closer to 1", "near 0", "near 0.5")
FAMILIES = ("tofu", "memorization", "privacy", "muse", "real_knowledge", "utility")
ARROWS = {"higher": "↑", "lower": "↓", "closer to 1": "→1", "near 0": "→0", "near 0.5": "→½"}

# How the evaluator turns ``compute``'s output into the reported number (lm-eval's metric + aggregation pairing).
MEAN = "mean over questions"
"""``compute`` returns one value per question (or text); the evaluator reports their mean."""
NANMEAN = "mean over questions, NaN skipped"
"""As :data:`MEAN`, skipping the questions where the value is undefined (NaN)."""
AS_IS = "as is"
"""``compute`` returns the reported number itself (a test statistic, an AUC, a mean it takes, a MUSE score's ``value``)."""
AGGREGATIONS = (MEAN, NANMEAN, AS_IS)

TOFU = 'Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024'
TIRUMALA = 'Tirumala et al., "Memorization Without Overfitting: Analyzing the Training Dynamics of Large Language Models", NeurIPS 2022'
CARLINI_QUANTIFYING = 'Carlini et al., "Quantifying Memorization Across Neural Language Models", ICLR 2023'
JANG = 'Jang et al., "Knowledge Unlearning for Mitigating Privacy Risks in Language Models", ACL 2023'
YEOM = 'Yeom et al., "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting", CSF 2018'
CARLINI_EXTRACTING = 'Carlini et al., "Extracting Training Data from Large Language Models", USENIX Security 2021'
MIN_K = 'Shi et al., "Detecting Pretraining Data from Large Language Models", ICLR 2024'
MIN_K_PP = 'Zhang et al., "Min-K%++: Improved Baseline for Detecting Pre-Training Data from Large Language Models", ICLR 2025'
GRADNORM = 'Wang et al., "Pandora\'s White-Box: Precise Training Data Detection and Extraction in Large Language Models", 2024'
MUSE = 'Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation for Language Models", ICLR 2025'
SPV_MIA = ('Fu et al., "Practical Membership Inference Attacks against Fine-tuned Large Language Models via Self-prompt '
           'Calibration", NeurIPS 2024')

# Every module that registers metrics, in the order of FAMILIES (imported by metric_catalog()).
METRIC_MODULES = (
    "unlearnkit.evaluation.metrics",       # tofu
    "unlearnkit.evaluation.memorization",  # memorization
    "unlearnkit.evaluation.mia",           # privacy
    "unlearnkit.evaluation.spv_mia",       # privacy: SPV-MIA (on request, spv_mia=true)
    "unlearnkit.evaluation.muse",          # muse
    "unlearnkit.evaluation.real_knowledge",  # real_knowledge: forget/neighbour probe accuracy, perplexity, distinct-2
    "unlearnkit.evaluation.general",       # utility (lm-eval's general_<task>_<metric> keys are named per task, not listed)
)

_YEAR = re.compile(r"(?<!\d)(?:19|20)\d\d(?!\d)")

F = TypeVar("F", bound=Callable[..., Any])


def _where(function: object) -> str:
    """``module.qualname`` of a compute function, for messages."""
    module = getattr(function, "__module__", None)
    name = getattr(function, "__qualname__", None) or getattr(function, "__name__", None) or repr(function)
    return f"{module}.{name}" if module else name


@dataclass(frozen=True)
class MetricSpec:
    """One reported number, bound to the function that computes it.

    ``direction``: which way is better (:data:`DIRECTIONS`); ``family``: the group
    it is listed in (:data:`FAMILIES`); ``label``: its name in reports (default:
    the name with spaces). ``compute``: the pure function whose output the
    evaluator turns into the number, by ``aggregation`` (:data:`AGGREGATIONS`).
    Every field is checked when the entry is made.
    """

    name: str
    direction: str
    definition: str
    paper: str
    family: str
    label: str = ""
    compute: Callable[..., Any] = field(kw_only=True)
    aggregation: str = field(kw_only=True)

    def __post_init__(self) -> None:
        where = f"metric {self.name!r}"
        if callable(self.compute):
            where += f" (on {_where(self.compute)})"
        if self.direction not in DIRECTIONS:
            raise ValueError(f"{where}: direction must be one of {DIRECTIONS}, got {self.direction!r}.")
        if self.family not in FAMILIES:
            raise ValueError(f"{where}: family must be one of {FAMILIES}, got {self.family!r}.")
        if not isinstance(self.definition, str) or not self.definition.strip() or len(self.definition.splitlines()) != 1:
            raise ValueError(f"{where} needs a non-empty one-line definition, got {self.definition!r}.")
        if not isinstance(self.paper, str) or not _YEAR.search(self.paper):
            raise ValueError(f"{where} needs the paper it comes from, cited with its year (e.g. 'Author et al., \"Title\", "
                             f"Venue 2024'), got {self.paper!r}.")
        if not callable(self.compute):
            raise ValueError(f"{where}: compute must be the function that computes it, got {self.compute!r}.")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"{where}: aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}.")
        if not isinstance(self.label, str) or len(self.label.splitlines()) > 1:
            raise ValueError(f"{where}: the label must be one line, got {self.label!r}.")

    @property
    def arrow(self) -> str:
        return ARROWS[self.direction]

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("_", " ")


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to the catalog; a name registered twice is an error. :func:`metric` is the usual way in."""
    if not isinstance(spec, MetricSpec):
        raise TypeError(f"register_metric takes a MetricSpec, got {type(spec).__name__}.")
    if spec.name in METRICS:
        raise ValueError(f"metric {spec.name!r} is already registered (computed by {_where(METRICS.get(spec.name).compute)}); "
                         f"{_where(spec.compute)} cannot register it again: choose another name.")
    return METRICS.register(spec.name)(spec)


def metric(
    name: str, direction: str, definition: str, paper: str, family: str, *, aggregation: str, label: str = ""
) -> Callable[[F], F]:
    """Decorator: register the decorated function as the ``compute`` of metric ``name`` (and return it unchanged).

    The arguments are :class:`MetricSpec`'s other fields; stack one ``@metric``
    per summary key the function serves.
    """

    def register(compute: F) -> F:
        register_metric(MetricSpec(name, direction, definition, paper, family, label, compute=compute, aggregation=aggregation))
        return compute

    return register


def metric_catalog() -> Registry[MetricSpec]:
    """The catalog, with the metrics of every module in :data:`METRIC_MODULES` registered."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    return METRICS


def describe_metric(name: str) -> MetricSpec:
    """The entry for ``name``; an unknown name fails with suggestions."""
    return metric_catalog().get(name)
