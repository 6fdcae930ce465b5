"""Checks that catch QA data which would make the metrics measure the wrong thing.

Loading (:func:`unlearnkit.data.qa.load_qa`) already refuses data that cannot be
read: missing fields, wrong types, truth-ratio fields on some rows only. The
checks here find data that loads but misleads, and say what it does to which
metric:

* ``duplicate_question``: a question asked twice in one set weighs that fact twice
  in training and in every mean.
* ``forget_retain_overlap``: a forget question also in the retain set (after
  normalising case and whitespace) is taught back by every retain term, and the
  retain oracle has learnt it, so it is no reference for "never seen".
* ``paraphrase_is_answer``: the truth ratio's correct answer must be a paraphrase;
  equal to the answer, the truth ratio rewards the memorised wording.
* ``perturbed_follow_answer``: TOFU's perturbed answers are perturbations of the
  paraphrased answer (Maini et al., "TOFU: A Task of Fictitious Unlearning for
  LLMs", COLM 2024), so they differ from it in the fact alone. When they
  share more wording with the answer than with the paraphrase, a model that
  memorised the answer's wording prefers them to the paraphrase whatever it knows:
  the truth ratio (and forget quality, its KS test) measures wording, not facts.
* ``too_long``: a row longer than the model's context is cut before scoring.
* ``target_prefers_perturbed``: the model before unlearning rates the perturbed
  answers above the paraphrase on most retain rows, so the retain truth ratio is
  near 0 for every model and model utility, its harmonic mean, collapses with it.

Each check is a pure function over rows (or per-row values) returning
:class:`Finding` objects that name the rows.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# A perturbed answer "follows the answer" when its word overlap with the answer beats
# its overlap with the paraphrase by more than this (overlaps are F1 scores in [0, 1]).
WORDING_MARGIN = 0.1
# The target "prefers the perturbed answers" when they are more likely than the
# paraphrase (truth ratio R < 1, R = p(paraphrase) / p(perturbed)) on more than this fraction of rows.
PREFERENCE_FRACTION = 0.5
ROWS_SHOWN = 10
# TOFU-style utility sets: their truth ratio takes the answer itself as the correct one, so no paraphrase is expected.
UTILITY_SPLITS = ("real_authors", "world_facts")

logger = logging.getLogger("unlearnkit")


@dataclass(frozen=True)
class Finding:
    """One problem found in one data set: which check, which rows (1-based), what it does to which metric."""

    check: str
    where: str
    rows: tuple[int, ...]
    total: int
    message: str
    effect: str

    def describe(self) -> str:
        shown = ", ".join(map(str, self.rows[:ROWS_SHOWN])) + (", ..." if len(self.rows) > ROWS_SHOWN else "")
        return f"{self.where}: {self.message} ({len(self.rows)} of {self.total} rows: {shown}). {self.effect}"

    def to_json(self) -> dict:
        return {"check": self.check, "where": self.where, "rows": list(self.rows), "total": self.total,
                "message": self.message, "effect": self.effect}


def normalise(text: str) -> str:
    """Lower case, runs of whitespace as one space, no leading or trailing space: how two texts are compared."""
    return " ".join(text.lower().split())


def words(text: str) -> list[str]:
    """The lower-cased word tokens of ``text`` (letters, digits and underscores; punctuation dropped)."""
    return re.findall(r"\w+", text.lower())


def wording_overlap(first: str, second: str) -> float:
    """Unigram F1 of two texts' words (multisets): 1 for the same words, 0 for none shared."""
    left, right = Counter(words(first)), Counter(words(second))
    shared = sum((left & right).values())
    if shared == 0:
        return 0.0
    precision, recall = shared / sum(left.values()), shared / sum(right.values())
    return 2 * precision * recall / (precision + recall)


def duplicate_questions(rows: Sequence[dict], where: str) -> list[Finding]:
    """Rows whose question (normalised) repeats an earlier row's (rows without a question, e.g. plain texts, are skipped)."""
    seen: set[str] = set()
    repeated = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row.get("question"), str):
            continue
        key = normalise(row["question"])
        if key in seen:
            repeated.append(index)
        seen.add(key)
    if not repeated:
        return []
    return [Finding("duplicate_question", where, tuple(repeated), len(rows), "questions repeat an earlier row's",
                    "Each copy is a separate example: that fact weighs more in training and in every mean over the set.")]


def forget_retain_overlap(forget: Sequence[dict], retain: Sequence[dict], where: str = "forget data") -> list[Finding]:
    """Forget rows whose question (normalised) is also a retain question."""
    retained = {normalise(row["question"]) for row in retain}
    shared = tuple(index for index, row in enumerate(forget, start=1) if normalise(row["question"]) in retained)
    if not shared:
        return []
    return [Finding(
        "forget_retain_overlap", where, shared, len(forget), "forget questions also appear in the retain data",
        "Retain terms (GradDiff, NPO+RT, KL, ...) teach these facts back while the forget loss removes them, and a retain "
        "oracle trained on the retain data knows them: forget quality then compares with a model that saw them. "
        "Remove them from one of the two sets.",
    )]


def truth_ratio_fields(rows: Sequence[dict], where: str, margin: float = WORDING_MARGIN) -> list[Finding]:
    """The paraphrase/perturbed checks; rows without both truth-ratio fields are skipped."""
    identical, follow_answer = [], []
    for index, row in enumerate(rows, start=1):
        paraphrase, perturbed = row.get("paraphrased_answer"), row.get("perturbed_answer")
        if not paraphrase or not perturbed:
            continue
        if normalise(paraphrase) == normalise(row["answer"]):
            identical.append(index)
            continue
        to_answer = sum(wording_overlap(wrong, row["answer"]) for wrong in perturbed) / len(perturbed)
        to_paraphrase = sum(wording_overlap(wrong, paraphrase) for wrong in perturbed) / len(perturbed)
        if to_answer > to_paraphrase + margin:
            follow_answer.append(index)
    findings = []
    if identical:
        findings.append(Finding(
            "paraphrase_is_answer", where, tuple(identical), len(rows), "paraphrased_answer is the answer itself",
            "The truth ratio then compares the memorised answer with its perturbations, so it measures the answer's wording: "
            "forget truth ratio and forget quality follow forget probability instead of knowledge. Write a paraphrase.",
        ))
    if follow_answer:
        findings.append(Finding(
            "perturbed_follow_answer", where, tuple(follow_answer), len(rows),
            "perturbed answers share more wording with the answer than with the paraphrased answer",
            "The truth ratio compares the paraphrase with the perturbed answers; when those copy the answer's wording, a model "
            "that memorised the answer prefers them whatever it knows, so the truth ratio measures wording, not facts: "
            "retain truth ratio falls toward 0, model utility with it, and forget quality can move the wrong way as "
            "unlearning proceeds. Derive each perturbed answer from the paraphrased answer, changing only the fact (as TOFU does).",
        ))
    return findings


def too_long(lengths: Sequence[int], limit: int, where: str) -> list[Finding]:
    """Rows whose prompt + answer token count (``lengths``, in row order) exceeds ``limit`` tokens."""
    over = tuple(index for index, length in enumerate(lengths, start=1) if length > limit)
    if not over:
        return []
    return [Finding(
        "too_long", where, over, len(lengths), f"rows are longer than {limit} tokens (prompt + answer)",
        "Their prompt is cut from the left (the answer kept) in training and scoring, so the model answers a truncated "
        "question. Shorten them, or raise the length limit.",
    )]


def target_prefers_perturbed(truth_ratios: Sequence[float], where: str, fraction: float = PREFERENCE_FRACTION,
                             subject: str = "the model before unlearning") -> list[Finding]:
    """Rows where the model before unlearning finds the perturbed answers more likely than the paraphrase, when they are most.

    ``truth_ratios``: its per-row R = p(paraphrase) / geometric-mean p(perturbed)
    (:func:`unlearnkit.evaluation.metrics.truth_ratio`), R < 1 preferring the perturbed answers.
    """
    preferred = tuple(index for index, ratio in enumerate(truth_ratios, start=1) if ratio < 1.0)
    if len(preferred) <= fraction * len(truth_ratios):
        return []
    return [Finding(
        "target_prefers_perturbed", where, preferred, len(truth_ratios),
        f"{subject} rates the perturbed answers above the paraphrased answer",
        "retain_truth_ratio (mean of max(0, 1 - R)) is then near 0 for every model, and model utility, a harmonic mean "
        "that includes it, collapses with it; forget quality's truth ratios are as unreliable. Check that the perturbed "
        "answers are wrong and phrased like the paraphrase, and that the model was trained on this data.",
    )]


def split_findings(splits: Mapping[str, Sequence[dict]], sources: Mapping[str, str]) -> list[Finding]:
    """The checks eval and unlearn warn about: truth-ratio wording on the sets compared with paraphrases, forget/retain overlap.

    ``splits``: rows by evaluation split (forget, retain, holdout, real_authors, world_facts); ``sources``: how the user
    named each. Repeated questions are already warned about when the data is loaded.
    """
    findings: list[Finding] = []
    for split, rows in splits.items():
        if split not in UTILITY_SPLITS:
            findings += truth_ratio_fields(rows, f"{split} data ({sources.get(split, split)})")
    if "forget" in splits and "retain" in splits:
        findings += forget_retain_overlap(splits["forget"], splits["retain"], f"forget data ({sources.get('forget', 'forget')})")
    return findings


def check_rows(rows: Sequence[dict], where: str, retain: Sequence[dict] | None = None, paraphrased: bool = True) -> list[Finding]:
    """Every check that needs the rows alone (and the retain rows for the overlap check).

    ``paraphrased`` False for TOFU-style utility sets (real authors, world facts), whose truth ratio
    takes the answer itself as the correct one: the paraphrase checks do not apply there.
    """
    findings = duplicate_questions(rows, where) + (truth_ratio_fields(rows, where) if paraphrased else [])
    if retain is not None:
        findings += forget_retain_overlap(rows, retain, where)
    return findings


def warn(findings: Sequence[Finding]) -> None:
    """Log each finding as a warning (eval and unlearn run the row checks this way; ``check-data`` prints them)."""
    for finding in findings:
        logger.warning("Data check %s: %s", finding.check, finding.describe())
