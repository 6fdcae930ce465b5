"""The metric catalog: every reported number with its better direction, a one-line definition and its paper.

One entry per summary key an evaluation can report (``forget_probability``,
``mia_min_k_auc``, ...). ``unlearnkit metrics`` prints it and the report's
glossary reads its definitions from it, so a definition is written once.

Modules that compute further metrics register them where they are computed::

    from unlearnkit.evaluation.catalog import MetricSpec, register_metric

    register_metric(MetricSpec("verbmem", "lower", "ROUGE-L F1 of ...", PAPER, "muse", label="VerbMem"))

and are named in :data:`EXTENSION_MODULES`, which :func:`metric_catalog`
imports before answering (so a module cannot be forgotten by a command that
only lists metrics).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from unlearnkit.registry import Registry

DIRECTIONS = ("higher", "lower", "closer to 1", "near 0", "near 0.5")
FAMILIES = ("tofu", "memorization", "privacy", "muse", "utility")
ARROWS = {"higher": "↑", "lower": "↓", "closer to 1": "→1", "near 0": "→0", "near 0.5": "→½"}

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

# Modules that register their own metrics with :func:`register_metric` (imported by :func:`metric_catalog`).
EXTENSION_MODULES = ("unlearnkit.evaluation.muse", "unlearnkit.evaluation.general")


@dataclass(frozen=True)
class MetricSpec:
    """One reported number. ``direction``: which way is better; ``family``: the group it is listed in."""

    name: str
    direction: str
    definition: str
    paper: str
    family: str
    label: str = ""

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name!r}: direction must be one of {DIRECTIONS}, got {self.direction!r}.")
        if self.family not in FAMILIES:
            raise ValueError(f"metric {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}.")
        if not self.definition or not self.paper:
            raise ValueError(f"metric {self.name!r} needs a one-line definition and the paper it comes from.")

    @property
    def arrow(self) -> str:
        return ARROWS[self.direction]

    @property
    def display_label(self) -> str:
        return self.label or self.name.replace("_", " ")


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(spec: MetricSpec) -> MetricSpec:
    """Add ``spec`` to the catalog; a name registered twice is an error."""
    return METRICS.register(spec.name)(spec)


def metric_catalog() -> Registry[MetricSpec]:
    """The catalog, with the metrics of every module in :data:`EXTENSION_MODULES` registered."""
    for module in EXTENSION_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name != module:  # a module that exists but fails to import is a real error
                raise
    return METRICS


def describe_metric(name: str) -> MetricSpec:
    """The entry for ``name``; an unknown name fails with suggestions."""
    return metric_catalog().get(name)


# ---------------------------------------------------------------------------
# TOFU (unlearnkit.evaluation.evaluator / metrics)
# ---------------------------------------------------------------------------

_SPLIT_LABELS = {"forget": "forget", "retain": "retain", "real_authors": "real-authors", "world_facts": "world-facts"}

for _spec in (
    MetricSpec("forget_quality", "higher",
               "p-value of the two-sample KS test between the model's and the retain oracle's per-sample forget "
               "truth ratios (1 = indistinguishable from the oracle).", TOFU, "tofu", "forget quality"),
    MetricSpec("model_utility", "higher",
               "Harmonic mean of probability, ROUGE-L recall and truth-ratio score on the retain, real-authors "
               "and world-facts sets.", TOFU, "tofu", "model utility"),
    MetricSpec("forget_truth_ratio", "closer to 1",
               "Mean over forget questions of min(R, 1/R), R = p(paraphrased answer) / geometric mean "
               "p(perturbed answers).", TOFU, "tofu", "forget truth ratio"),
    MetricSpec("forget_probability", "lower", "Mean over forget questions of p = exp(-mean answer-token NLL).",
               TOFU, "tofu", "forget probability"),
    MetricSpec("forget_rouge_l", "lower", "Mean ROUGE-L recall of the greedy answer against the forget answer.",
               TOFU, "tofu", "forget ROUGE-L"),
    MetricSpec("retain_probability", "higher", "Mean p of the answer on the retain set.", TOFU, "tofu", "retain probability"),
    MetricSpec("retain_rouge_l", "higher", "Mean ROUGE-L recall of the greedy answer on the retain set.",
               TOFU, "tofu", "retain ROUGE-L"),
    MetricSpec("retain_truth_ratio", "higher", "Mean of max(0, 1 - 1/R) on the retain set.", TOFU, "tofu", "retain truth ratio"),
):
    register_metric(_spec)

for _split in ("real_authors", "world_facts"):
    _label = _SPLIT_LABELS[_split]
    register_metric(MetricSpec(f"{_split}_probability", "higher",
                               f"Mean normalised p_true / (p_true + sum p_perturbed) on the {_label} set.",
                               TOFU, "tofu", f"{_label} probability"))
    register_metric(MetricSpec(f"{_split}_rouge_l", "higher", f"Mean ROUGE-L recall of the greedy answer on the {_label} set.",
                               TOFU, "tofu", f"{_label} ROUGE-L"))
    register_metric(MetricSpec(f"{_split}_truth_ratio", "higher",
                               f"Mean of max(0, 1 - 1/R) on the {_label} set (the answer itself is the correct one).",
                               TOFU, "tofu", f"{_label} truth ratio"))

# ---------------------------------------------------------------------------
# Memorization and extraction (unlearnkit.evaluation.memorization)
# ---------------------------------------------------------------------------

for _split, _better in (("forget", "lower"), ("holdout", "lower")):
    register_metric(MetricSpec(f"{_split}_exact_memorization", _better,
                               f"Mean over {_split} answers of the fraction of tokens whose teacher-forced argmax is the answer token.",
                               TIRUMALA, "memorization", f"{_split} exact memorization"))
    register_metric(MetricSpec(f"{_split}_extraction_strength", _better,
                               f"Mean over {_split} answers of 1 - k/|y|, k the smallest offset with y[k:] all predicted "
                               "by the teacher-forced argmax (0 when no suffix is).",
                               CARLINI_QUANTIFYING, "memorization", f"{_split} extraction strength"))
register_metric(MetricSpec("memorization_accuracy", "lower",
                           "Jang et al.'s MA: mean greedy next-token accuracy on the answer tokens (their stopping rule: "
                           "below the value on unseen data).", JANG, "memorization", "memorization accuracy (MA)"))
register_metric(MetricSpec("extraction_likelihood", "lower",
                           "Jang et al.'s EL_n (n = 10): mean over answer prefixes of the fraction of the true suffix's "
                           "n-grams in the greedy continuation.", JANG, "memorization", "extraction likelihood (EL_n)"))

# ---------------------------------------------------------------------------
# Membership inference (unlearnkit.evaluation.mia): AUC with forget = members, holdout = non-members
# ---------------------------------------------------------------------------

_AUC = "ROC-AUC, forget (members) vs holdout (non-members), of"
for _name, _statistic, _paper in (
    ("loss", "the mean answer NLL (lower = member)", YEOM),
    ("zlib", "mean NLL / zlib-compressed length of question + answer (lower = member)", CARLINI_EXTRACTING),
    ("lowercase", "NLL(lower-cased) / NLL(text) (higher = member)", CARLINI_EXTRACTING),
    ("min_k", "the mean of the lowest k% answer-token log-probs, k = 40% by default (higher = member)", MIN_K),
    ("min_k_pp", "the mean of the lowest k% of (log p - mu) / sigma under the model's own next-token "
                 "distribution (higher = member)", MIN_K_PP),
    ("reference", "NLL_model - NLL_retain-oracle, the oracle's stored values (lower = member)", CARLINI_EXTRACTING),
    ("gradnorm", "the L2 norm of the answer NLL's parameter gradient, batch 1 (lower = member; on request)", GRADNORM),
):
    register_metric(MetricSpec(f"mia_{_name}_auc", "near 0.5",
                               f"{_AUC} {_statistic}; 1 = forget still recognised, 0.5 = chance (a retain model).",
                               _paper, "privacy", f"MIA {_name.replace('_pp', '++').replace('_', '-')} AUC"))
register_metric(MetricSpec("privleak", "near 0",
                           "MUSE PrivLeak: (AUC - AUC_retain-oracle) / AUC_retain-oracle x 100 on Min-40% AUCs with forget "
                           "as non-members (1 - mia_min_k_auc); about -100 before unlearning.", MUSE, "privacy", "PrivLeak"))
