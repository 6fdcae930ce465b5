"""TOFU-style evaluation: compose model queries (scoring.py) and pure metrics (metrics.py).

Splits and their roles (TOFU, Maini et al., COLM 2024):

* ``forget``: probability exp(-avg-loss); ROUGE-L recall of the greedy answer;
  truth ratio aggregated as mean min(R, 1/R); forget quality (KS test against
  the retain oracle's per-sample R) when the oracle's reference is given.
* ``retain``: probability, ROUGE-L recall, truth ratio as mean max(0, 1 - 1/R).
* ``real_authors`` / ``world_facts``: normalised probability
  p_true / (p_true + sum p_perturbed), ROUGE-L recall, truth ratio max(0, 1 - 1/R)
  with the answer itself as the correct one.

Model utility is the harmonic mean of the nine retain/real_authors/world_facts
numbers. Metrics whose fields a user's data lacks (e.g. no perturbed answers)
are left out of the summary rather than guessed.

* ``holdout`` (optional; QA about authors never trained on): with ``forget``, the
  membership-inference AUCs (``mia_*_auc``, forget = members, holdout =
  non-members), exact memorization and extraction strength of both sets, and
  PrivLeak when the retain oracle's reference stores its Min-K% AUC
  (:mod:`unlearnkit.evaluation.mia`). The TOFU metrics are not computed on it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.data.checks import target_prefers_perturbed, warn
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.qa import DEFAULT_MAX_NEW_TOKENS, TRUTH_RATIO_FIELDS, has_fields
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation import metrics
from unlearnkit.evaluation.mia import DEFAULT_K, GRADIENT_NORM_FORMS, PRIVLEAK_FORMS, check_k, evaluate_membership
from unlearnkit.evaluation.scoring import answer_avg_nll, greedy_answers
from unlearnkit.evaluation.spv_mia import SpvMiaConfig, evaluate_spv_mia
from unlearnkit.io import write_json
from unlearnkit.provenance import tokenizer_sha256
from unlearnkit.settings import build_config, check_choice, check_field_types, check_value, require_at_least

logger = logging.getLogger("unlearnkit")

EVAL_SPLITS = ("forget", "retain", "real_authors", "world_facts", "holdout")
# Scored only for membership inference and memorization, against the forget split.
MEMBERSHIP_SPLITS = ("holdout",)
# The key of an oracle reference that records its oracle's tokenizer (see :func:`tokenizer_sha256`).
TOKENIZER_KEY = "tokenizer_sha256"
# On these splits TOFU compares the answer itself with the perturbed ones and normalises the probability.
FACT_SPLITS = ("real_authors", "world_facts")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run."""

    batch_size: int = field(default=64, metadata={"help": "Sequences per forward pass."})
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "Greedy tokens generated per question for ROUGE on every split; None: each split's own cap (split_max_new_tokens)."})
    split_max_new_tokens: dict[str, int] = field(default_factory=dict, metadata={
        "help": "Greedy tokens per question of each split: its data source's cap (built-in splits 48, tofu: 200, "
                f"muse-*:knowmem 32); a split not named here gets {DEFAULT_MAX_NEW_TOKENS} (TOFU, OpenUnlearning)."})
    min_k_fraction: float = field(default=DEFAULT_K, metadata={"help": "k of the Min-K% / Min-K%++ attacks (MUSE PrivLeak: 0.4)."})
    privleak_form: str = field(default="muse", metadata={"help": "PrivLeak formula: 'muse' or 'openunlearning'."})
    gradient_norm: bool = field(default=False, metadata={"help": "Also run the (slow, one backward pass per text) gradient-norm attack."})
    gradient_norm_form: str = field(default="mean_per_tensor", metadata={
        "help": "Gradient-norm statistic: 'mean_per_tensor' (OpenUnlearning: the mean of each parameter tensor's L2 norm) "
                "or 'global' (one L2 norm over all parameters)."})
    score_eos: bool = field(default=False, metadata={
        "help": "Score the answer's closing EOS in exact memorization, extraction strength, Min-K%, Min-K%++ and the gradient "
                "norm (OpenUnlearning leaves it out; the mean NLL always includes it)."})
    spv_mia: bool = field(default=False, metadata={
        "help": "Also run SPV-MIA (mia_spv_auc; needs holdout and retain): it samples texts from the model, prompted with "
                "retain rows, and fine-tunes a reference copy on them, so it costs a generation and a fine-tune."})
    spv_mia_settings: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "SPV-MIA's settings (unlearnkit.evaluation.spv_mia.SpvMiaConfig: reference_learning_rate, reference_base, "
                "num_texts, ...); the paper's where not given."})

    def __post_init__(self) -> None:
        check_field_types(self)  # a float must be finite: nan passes every comparison below
        require_at_least(1, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens)
        if not isinstance(self.split_max_new_tokens, dict):
            raise UnlearnkitError(f"split_max_new_tokens needs a mapping of split names to counts, got {self.split_max_new_tokens!r}.")
        for split, cap in self.split_max_new_tokens.items():
            check_choice("split_max_new_tokens split", split, EVAL_SPLITS)
            check_value(f"split_max_new_tokens[{split}]", cap, int)
            require_at_least(1, **{f"split_max_new_tokens[{split}]": cap})
        check_k(self.min_k_fraction)
        check_choice("privleak_form", self.privleak_form, PRIVLEAK_FORMS)
        check_choice("gradient_norm_form", self.gradient_norm_form, GRADIENT_NORM_FORMS)
        if not isinstance(self.spv_mia_settings, dict):
            raise UnlearnkitError(f"spv_mia_settings needs a mapping of SPV-MIA setting names to values, got {self.spv_mia_settings!r}.")
        self.spv_config()  # a bad SPV-MIA setting fails now, before any model is loaded

    def spv_config(self) -> SpvMiaConfig:
        """SPV-MIA's settings: the paper's, with ``spv_mia_settings`` over them and this evaluation's batch size unless given."""
        return build_config(SpvMiaConfig, {"batch_size": self.batch_size, **self.spv_mia_settings}, what="SPV-MIA setting")

    def max_new_tokens_for(self, split: str) -> int:
        """The greedy tokens generated per question of ``split``: max_new_tokens if set, else the split's own cap."""
        if self.max_new_tokens is not None:
            return self.max_new_tokens
        return self.split_max_new_tokens.get(split, DEFAULT_MAX_NEW_TOKENS)

    def caps(self, splits: Sequence[str]) -> dict[str, int]:
        """The cap used on each of ``splits`` that generates answers (results folders record it)."""
        return {split: self.max_new_tokens_for(split) for split in splits if split not in MEMBERSHIP_SPLITS}


@dataclass
class EvalResult:
    summary: dict[str, float]
    per_sample: dict[str, list[dict[str, Any]]]
    forget_truth_ratios: np.ndarray | None
    # Forget/holdout membership statistics a retain oracle stores for later runs (None without a holdout split).
    membership: dict[str, Any] | None = None
    # Headline metrics the given data could not yield, each with the reason and what to pass (see :func:`not_computed`).
    not_computed: dict[str, str] = field(default_factory=dict)


def evaluate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: Mapping[str, Sequence[dict]],
    fmt: PromptFormat = PromptFormat(),
    config: EvalConfig = EvalConfig(),
    oracle_reference: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Evaluate ``model`` on the given splits (keys from :data:`EVAL_SPLITS`)."""
    unknown = set(splits) - set(EVAL_SPLITS)
    if unknown:
        raise UnlearnkitError(f"Unknown evaluation split(s) {sorted(unknown)}; use {', '.join(EVAL_SPLITS)}.")
    if oracle_reference is not None:
        check_reference_tokenizer(oracle_reference, tokenizer)
    if config.spv_mia and not all(splits.get(name) for name in ("forget", "holdout", "retain")):
        raise UnlearnkitError("spv_mia=true needs forget, holdout and retain rows (members, non-members and the rows it prompts "
                              "the model with); give --holdout and the retain set, or leave spv_mia off.")
    model.eval()
    summary: dict[str, float] = {}
    per_sample: dict[str, list[dict[str, Any]]] = {}
    forget_ratios = None
    for split, rows in splits.items():
        if not rows or split in MEMBERSHIP_SPLITS:
            continue
        logger.info("evaluating %s (%d questions, answers of up to %d new tokens)", split, len(rows), config.max_new_tokens_for(split))
        split_summary, samples, ratios = _evaluate_split(model, tokenizer, fmt, config, split, rows)
        summary.update(split_summary)
        per_sample[split] = samples
        if split == "forget":
            forget_ratios = ratios
    if oracle_reference is not None and forget_ratios is not None:
        oracle_ratios = _check_reference(oracle_reference, splits["forget"])
        summary["forget_quality"] = metrics.forget_quality(forget_ratios, oracle_ratios)
    if all(name in summary for name in metrics.MODEL_UTILITY_COMPONENTS):
        summary["model_utility"] = metrics.model_utility(summary)
    retain_ratios = [sample["truth_ratio"] for sample in per_sample.get("retain", []) if "truth_ratio" in sample]
    # On a model that knows the retain set this never fires; when it does, the data is the likelier culprit (check-data).
    warn(target_prefers_perturbed(retain_ratios, "retain data", subject="the evaluated model"))
    membership = None
    if splits.get("forget") and splits.get("holdout"):
        logger.info("membership inference: forget vs holdout (%d questions)", len(splits["holdout"]))
        result = evaluate_membership(
            model, tokenizer, fmt, splits["forget"], splits["holdout"], config.min_k_fraction, config.batch_size,
            reference=(oracle_reference or {}).get("membership"), with_gradient_norm=config.gradient_norm,
            privleak_form=config.privleak_form, score_eos=config.score_eos, gradient_norm_form=config.gradient_norm_form,
        )
        summary.update(result.summary)
        for sample, scores in zip(per_sample["forget"], result.forget, strict=True):
            sample.update(scores)
        per_sample["holdout"] = [{"question": row["question"], "answer": row["answer"], **scores}
                                 for row, scores in zip(splits["holdout"], result.holdout, strict=True)]
        membership = result.record
    if config.spv_mia:
        spv = evaluate_spv_mia(model, tokenizer, fmt, splits["forget"], splits["holdout"], splits["retain"], config.spv_config())
        summary.update(spv.summary)
        for split, scores in (("forget", spv.forget), ("holdout", spv.holdout)):
            for sample, values in zip(per_sample[split], scores, strict=True):
                sample.update({key: value for key, value in values.items() if key != "question"})
    return EvalResult(summary=summary, per_sample=per_sample, forget_truth_ratios=forget_ratios, membership=membership,
                      not_computed=not_computed(splits, summary, oracle_reference is not None))


def not_computed(splits: Mapping[str, Sequence[dict]], summary: Mapping[str, Any], with_reference: bool) -> dict[str, str]:
    """Why forget quality, model utility and membership inference are missing from ``summary``, when they are.

    A metric left out silently reads as "not measured"; the reason says what data or option it needs.
    """
    reasons: dict[str, str] = {}
    if "forget" in splits and "forget_quality" not in summary:
        if not has_truth_fields("forget", splits["forget"]):
            reasons["forget_quality"] = ("the forget data has no paraphrased_answer and perturbed_answer fields, so there are no "
                                         "truth ratios to compare with the retain oracle's")
        elif not with_reference:
            reasons["forget_quality"] = ("no retain oracle reference: pass --oracle-reference FILE, written by `unlearnkit eval "
                                         "--save-reference FILE` on a model trained without the forget data")
    if "model_utility" not in summary:
        needs = {"retain": "--retain", "real_authors": "--real-authors", "world_facts": "--world-facts"}
        absent = [option for split, option in needs.items() if not splits.get(split)]
        no_truth = [option for split, option in needs.items() if splits.get(split) and not has_truth_fields(split, splits[split])]
        parts = ([f"missing {', '.join(absent)}"] if absent else []) + (
            [f"no perturbed answers in {', '.join(no_truth)}"] if no_truth else [])
        reasons["model_utility"] = ("TOFU's model utility is the harmonic mean of nine scores on the retain, real-authors and "
                                    f"world-facts sets, each with perturbed answers: {'; '.join(parts)}")
    if "forget" in splits and not splits.get("holdout"):
        reasons["membership_inference"] = "mia_* AUCs, privleak and the memorization metrics need --holdout (rows never trained on)"
    return reasons


def truth_ratio_pairs(rows: Sequence[dict], correct_field: str) -> list[tuple[str, str]]:
    """The (question, answer) pairs a truth ratio scores: every row's ``correct_field`` answer, then the rows' first
    perturbed answers, their second ones, ... (as many per row as the shortest list holds): (1 + K) * N pairs."""
    num_perturbed = min(len(row["perturbed_answer"]) for row in rows)
    pairs = [(row["question"], row[correct_field]) for row in rows]
    return pairs + [(row["question"], row["perturbed_answer"][j]) for j in range(num_perturbed) for row in rows]


def split_truth_ratio_nll(avg_nll: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean NLLs of :func:`truth_ratio_pairs` (for ``count`` rows) as the correct answers' ``(N,)`` and the perturbed ``(N, K)``."""
    return avg_nll[:count], avg_nll[count:].reshape(-1, count).T  # laid out (K, N) -> (N, K)


def _evaluate_split(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    config: EvalConfig,
    split: str,
    rows: Sequence[dict],
) -> tuple[dict[str, float], list[dict[str, Any]], np.ndarray | None]:
    questions = [row["question"] for row in rows]
    with_truth = has_truth_fields(split, rows)
    # One scoring call for the answer, the correct paraphrase and every perturbed answer.
    pairs = [(row["question"], row["answer"]) for row in rows]
    if with_truth:
        pairs += truth_ratio_pairs(rows, "answer" if split in FACT_SPLITS else "paraphrased_answer")
    avg_nll = answer_avg_nll(model, tokenizer, fmt, pairs, config.batch_size)
    count = len(rows)
    answer_nll = avg_nll[:count]

    generations = greedy_answers(model, tokenizer, fmt, questions, config.max_new_tokens_for(split), config.batch_size)
    rouge = metrics.rouge_l_recall(generations, [row["answer"] for row in rows])
    samples: list[dict[str, Any]] = [
        {"question": row["question"], "answer": row["answer"], "generation": generation, "rouge_l_recall": float(score),
         "answer_avg_nll": float(nll)}
        for row, generation, score, nll in zip(rows, generations, rouge, answer_nll, strict=False)
    ]
    summary = {f"{split}_rouge_l": float(np.mean(rouge))}
    ratios = None
    if with_truth:
        correct_nll, perturbed_nll = split_truth_ratio_nll(avg_nll[count:], count)
        ratios = metrics.truth_ratio(correct_nll, perturbed_nll)
        aggregate = metrics.forget_truth_ratio_score if split == "forget" else metrics.retain_truth_ratio_score
        summary[f"{split}_truth_ratio"] = float(aggregate(ratios))
        if split in FACT_SPLITS:
            probabilities = metrics.normalized_probability(answer_nll, perturbed_nll)
        else:
            probabilities = metrics.probability(answer_nll)
        for sample, ratio in zip(samples, ratios, strict=False):
            sample["truth_ratio"] = float(ratio)
    else:
        probabilities = metrics.probability(answer_nll)
    summary[f"{split}_probability"] = float(np.mean(probabilities))
    for sample, probability in zip(samples, probabilities, strict=False):
        sample["probability"] = float(probability)
    return summary, samples, ratios


def truth_fields(split: str) -> tuple[str, ...]:
    """The fields the truth ratio of ``split`` reads: on fact splits the answer itself is the correct option."""
    return ("perturbed_answer",) if split in FACT_SPLITS else TRUTH_RATIO_FIELDS


def has_truth_fields(split: str, rows: Sequence[dict]) -> bool:
    """Whether every row of ``split`` holds the truth-ratio fields; an error when only some rows do (never decided from part)."""
    return bool(rows) and has_fields(rows, truth_fields(split), where=f"{split} data")


def oracle_reference(
    forget_rows: Sequence[dict],
    truth_ratios: np.ndarray,
    split: str,
    membership: Mapping[str, Any] | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict[str, Any]:
    """The retain oracle's per-sample forget truth ratios, with the questions they belong to.

    ``membership`` (:attr:`EvalResult.membership`, when the oracle was evaluated
    with a holdout split) adds its per-sample forget/holdout NLLs and attack
    AUCs: the reference attack and PrivLeak of later runs read them.
    ``tokenizer`` (the oracle's) adds its :func:`tokenizer_sha256`, so that a model
    with another tokenizer is never compared with this oracle
    (:func:`check_reference_tokenizer`).
    """
    reference = {
        "split": split,
        "metric": "truth_ratio R = p(paraphrased) / geometric-mean p(perturbed), per forget question",
        "questions": [row["question"] for row in forget_rows],
        "truth_ratio": [float(r) for r in truth_ratios],
    }
    if tokenizer is not None:
        reference[TOKENIZER_KEY] = tokenizer_sha256(tokenizer)
    if membership is not None:
        reference["membership"] = dict(membership)
    return reference


def save_reference(path: Path, reference: Mapping[str, Any]) -> None:
    write_json(path, dict(reference))


def load_reference(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UnlearnkitError(f"Oracle reference file {path} does not exist; `unlearnkit prepare` writes one next to each oracle.")
    try:
        reference = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UnlearnkitError(f"Oracle reference file {path} is not valid JSON: {error}") from None
    if not isinstance(reference, dict) or not isinstance(reference.get("truth_ratio"), list):
        raise UnlearnkitError(f"Oracle reference file {path} has no 'truth_ratio' list.")
    if TOKENIZER_KEY not in reference:
        logger.warning("Oracle reference file %s records no tokenizer (an older version wrote it): whether the evaluated model "
                       "shares the oracle's tokenizer cannot be checked. Write it again with `unlearnkit eval --save-reference` "
                       "on the oracle (a built-in benchmark's: remove its cache folder and prepare again) to have it checked.", path)
    elif not isinstance(reference[TOKENIZER_KEY], str):
        raise UnlearnkitError(f"Oracle reference file {path} has a {TOKENIZER_KEY!r} that is not a text digest; "
                              "write it again with `unlearnkit eval --save-reference` on the oracle.")
    return reference


def check_reference_tokenizer(reference: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse to compare a model with an oracle whose reference records another tokenizer.

    Truth ratios and membership scores are per-token statistics: with another
    vocabulary the two models score different token sequences, and a model that
    emits garbage can look perfectly unlearned. A reference without a recorded
    tokenizer (an older version's) is accepted; :func:`load_reference` warns about it.
    """
    recorded = reference.get(TOKENIZER_KEY)
    if recorded is None:
        return
    actual = tokenizer_sha256(tokenizer)
    if recorded != actual:
        raise UnlearnkitError(
            f"The oracle reference ({reference.get('split', '?')}) was computed with another tokenizer "
            f"(sha256 {str(recorded)[:12]}...) than the evaluated model's ({actual[:12]}...); their scores cannot be compared. "
            "Train the target and the retain oracle with the same tokenizer (`unlearnkit finetune --model tiny` does so; "
            "with a model of your own, fine-tune both from it), then write the reference again with "
            "`unlearnkit eval --save-reference` on that oracle."
        )


def _check_reference(reference: Mapping[str, Any], forget_rows: Sequence[dict]) -> np.ndarray:
    ratios = np.asarray(reference["truth_ratio"], dtype=float)
    questions = reference.get("questions")
    if questions is not None and list(questions) != [row["question"] for row in forget_rows]:
        raise UnlearnkitError(
            f"The oracle reference was computed on a different forget set ({reference.get('split', '?')}, "
            f"{len(questions)} questions) than the one evaluated ({len(forget_rows)} questions). "
            "Pass the reference of the oracle trained without this forget set."
        )
    return ratios
