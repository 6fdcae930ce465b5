"""What each reported number means: its label, which direction is better, and a one-line definition.

Definitions follow TOFU (Maini et al., "TOFU: A Task of Fictitious Unlearning
for LLMs", COLM 2024), as computed by :mod:`unlearnkit.evaluation`; the
leaderboard and the HTML report share them so that both say the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MetricInfo:
    name: str
    label: str
    better: str  # "higher", "lower" or "closer to 1"
    definition: str

    @property
    def arrow(self) -> str:
        return {"higher": "↑", "lower": "↓"}.get(self.better, "→1")


METRICS: dict[str, MetricInfo] = {
    info.name: info
    for info in (
        MetricInfo("forget_quality", "forget quality", "higher",
                   "p-value of the two-sample KS test between the model's and the retain oracle's per-sample forget "
                   "truth ratios (1 = indistinguishable from the oracle)."),
        MetricInfo("model_utility", "model utility", "higher",
                   "Harmonic mean of probability, ROUGE-L recall and truth-ratio score on the retain, real-authors "
                   "and world-facts sets."),
        MetricInfo("forget_truth_ratio", "forget truth ratio", "closer to 1",
                   "Mean over forget questions of min(R, 1/R), R = p(paraphrased answer) / geometric mean "
                   "p(perturbed answers)."),
        MetricInfo("forget_probability", "forget probability", "lower",
                   "Mean over forget questions of p = exp(-mean answer-token NLL)."),
        MetricInfo("forget_rouge_l", "forget ROUGE-L", "lower",
                   "Mean ROUGE-L recall of the greedy answer against the forget answer."),
        MetricInfo("unlearn_seconds", "unlearning time (s)", "lower",
                   "Wall-clock seconds spent unlearning (training only, without evaluation)."),
        MetricInfo("retain_probability", "retain probability", "higher", "Mean p of the answer on the retain set."),
        MetricInfo("retain_rouge_l", "retain ROUGE-L", "higher", "Mean ROUGE-L recall of the greedy answer on the retain set."),
        MetricInfo("retain_truth_ratio", "retain truth ratio", "higher", "Mean of max(0, 1 - 1/R) on the retain set."),
        MetricInfo("real_authors_probability", "real-authors probability", "higher",
                   "Mean normalised p_true / (p_true + sum p_perturbed) on the real-authors set."),
        MetricInfo("real_authors_rouge_l", "real-authors ROUGE-L", "higher",
                   "Mean ROUGE-L recall of the greedy answer on the real-authors set."),
        MetricInfo("real_authors_truth_ratio", "real-authors truth ratio", "higher",
                   "Mean of max(0, 1 - 1/R) on the real-authors set (the answer itself is the correct one)."),
        MetricInfo("world_facts_probability", "world-facts probability", "higher",
                   "Mean normalised p_true / (p_true + sum p_perturbed) on the world-facts set."),
        MetricInfo("world_facts_rouge_l", "world-facts ROUGE-L", "higher",
                   "Mean ROUGE-L recall of the greedy answer on the world-facts set."),
        MetricInfo("world_facts_truth_ratio", "world-facts truth ratio", "higher",
                   "Mean of max(0, 1 - 1/R) on the world-facts set (the answer itself is the correct one)."),
    )
}

# The leaderboard's columns, in order: forgetting, utility, then the forget-set details and the cost.
LEADERBOARD_METRICS: tuple[str, ...] = (
    "forget_quality", "model_utility", "forget_truth_ratio", "forget_probability", "forget_rouge_l", "unlearn_seconds",
)


def describe(name: str) -> MetricInfo:
    """The entry for ``name``; a metric this table does not know is shown under its own name."""
    return METRICS.get(name) or MetricInfo(name, name.replace("_", " "), "see the README", "")
