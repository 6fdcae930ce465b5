"""Membership inference: per-text scores, ROC-AUC over forget vs holdout, and PrivLeak.

Each attack gives every text a statistic, defined as in its paper:

=============  ===============================================================  ======================
attack         statistic per text                                               a member has a ...
=============  ===============================================================  ======================
``loss``       mean token NLL (Yeom et al., CSF 2018)                           lower value
``zlib``       mean NLL / len(zlib.compress(answer bytes)) (Carlini et al.)    lower value
``lowercase``  mean NLL(lower-cased text) / mean NLL(text) (Carlini et al.)     higher value
``min_k``      mean of the lowest k% token log-probs (Shi et al., ICLR 2024)    higher value
``min_k_pp``   mean of the lowest k% of z_t = (log p(x_t) − μ_t) / σ_t           higher value
               (Zhang et al., Min-K%++, ICLR 2025)
``reference``  NLL_target − NLL_reference (Carlini et al. 2021)                 lower value
``gradnorm``   mean over parameter tensors of the L2 norm of the mean NLL's    lower value
               gradient, batch 1 (Wang et al. 2024; OpenUnlearning's form)
=============  ===============================================================  ======================

μ_t and σ_t² are the mean and variance of log p(v) for v drawn from the
model's own next-token distribution at position t; σ_t² is clamped at 1e-6
(as OpenUnlearning) so a one-hot prediction does not divide by zero. The
"lowest k%" keeps ``max(1, floor(k · n))`` of a text's n tokens (OpenUnlearning's
rule); k defaults to 0.4 (MUSE's PrivLeak uses Min-40%; the Min-K% paper's best
setting is 0.2).

What is scored, for QA rows: the answer's tokens given the question (the
prompt is not scored). As in OpenUnlearning (d3d7cf9), the answer's final EOS
counts in the mean NLL of ``loss``, ``zlib``, ``lowercase`` and ``reference``
(its ``evaluate_probability``) but not in ``min_k``, ``min_k_pp`` and
``gradnorm`` (its ``tokenwise_logprobs`` drops the last labelled token, the EOS
its collator appends); ``score_eos=True`` scores it in those too
(:func:`unlearnkit.evaluation.memorization.without_final_eos`). zlib compresses
the text whose NLL is measured, as OpenUnlearning (src/evals/metrics/mia/zlib.py)
and MUSE (metrics/privleak.py) do: the answer, decoded from its label tokens
with special tokens skipped (so without EOS; with the plain prompt format it
starts with the space the answer is tokenised with). Lower-casing applies to
both question and answer.

The gradient-norm statistic follows OpenUnlearning (src/evals/metrics/mia/gradnorm.py,
p = 2): the mean, over the parameter tensors that receive a gradient, of each
tensor's L2 norm; ``gradient_norm_form="global"`` gives instead the L2 norm of
all the gradients together. The gradient is taken with dropout off (OpenUnlearning
switches the model to training mode, which only differs for a model with dropout).

MUSE's own PrivLeak is on raw texts (its privleak forget and holdout subsets),
not QA pairs: :func:`evaluate_text_privleak`.

Orientation of the AUC (:func:`membership_auc`): the forget set is the
positive ("member") class and the holdout set the negative one, each statistic
signed so that higher means "more likely a member". AUC = P(a forget text looks
more like training data than a holdout text), ties counted ½: 1 means the
forget set is still recognised, 0.5 is chance (the level of a model never
trained on either), below 0.5 means the forget set now looks less familiar than
unseen text. This is the number OpenUnlearning reports (it labels forget 0 and
holdout 1 with "higher = less likely a member" scores, the same ordering).

PrivLeak (Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation for Language
Models", 2024): see :func:`privleak`.

:func:`membership_auc` and :func:`privleak` carry the catalog entries of the
reported numbers (:func:`unlearnkit.evaluation.catalog.metric`): one
``mia_<attack>_auc`` per attack, all computed by :func:`membership_auc`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit import distributed
from unlearnkit.data.encoding import PromptFormat, encode_qa, encode_text, pad_batch
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.catalog import AS_IS, CARLINI_EXTRACTING, GRADNORM, MIN_K, MIN_K_PP, MUSE, YEOM, metric
from unlearnkit.evaluation.memorization import exact_memorization, extraction_strength, without_final_eos
from unlearnkit.evaluation.scoring import encode_pairs
from unlearnkit.losses import IGNORE_INDEX, at_least_float32, token_nll

DEFAULT_K = 0.4
"""Fraction of tokens Min-K% and Min-K%++ keep (MUSE's PrivLeak uses Min-40%)."""

MIN_VARIANCE = 1e-6
"""Floor of σ_t² in Min-K%++ (OpenUnlearning's value)."""

# +1: a higher statistic means "more likely a member"; -1: a lower one does.
MEMBER_SIGN: dict[str, int] = {
    "loss": -1, "zlib": -1, "lowercase": 1, "min_k": 1, "min_k_pp": 1, "reference": -1, "gradnorm": -1,
}
PRIVLEAK_FORMS = ("muse", "openunlearning")
GRADIENT_NORM_FORMS = ("mean_per_tensor", "global")
"""How the gradient-norm attack combines the parameter tensors' gradients (OpenUnlearning's first)."""
MUSE_RETAIN_PRIVLEAK_AUC: dict[str, float] = {"muse-news": 0.4772, "muse-books": 0.5393}
"""MUSE's retrained models' forget-vs-holdout Min-40% AUCs, its orientation (constants.py ``AUC_RETRAIN``)."""
MUSE_TEXT_MAX_LENGTH = 2048
"""Tokens of a raw text scored by the text PrivLeak (longer texts are cut; MUSE's privleak texts are shorter)."""
# OpenUnlearning adds this to PrivLeak's denominator (its only difference from MUSE's formula).
OPENUNLEARNING_EPSILON = 1e-10

# The catalog definitions of the mia_<attack>_auc keys: f"{_AUC} <the statistic>{_AUC_SCALE}".
_AUC = "ROC-AUC, forget (members) vs holdout (non-members), of"
_AUC_SCALE = "; 1 = forget still recognised, 0.5 = chance (a retain model)."


# ---------------------------------------------------------------------------
# Pure functions: token statistics from logits
# ---------------------------------------------------------------------------


def token_log_probs(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``log p(label)`` at every scored position, with the causal shift; ``(B, T-1)`` and the bool mask."""
    nll, mask = token_nll(logits, labels)
    return -nll, mask.bool()


def min_k_plus_plus_z(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Min-K%++'s per-token z_t = (log p(x_t) − μ_t) / σ_t; ``(B, T-1)`` (0 where unscored) and the bool mask.

    μ_t = Σ_v p(v) log p(v) and σ_t² = Σ_v p(v) (log p(v))² − μ_t² under the
    model's next-token distribution at position t (σ_t² floored at 1e-6).
    """
    log_p_label, mask = token_log_probs(logits, labels)
    log_p = torch.log_softmax(at_least_float32(logits[:, :-1]), dim=-1)  # (B, T-1, V)
    p = log_p.exp()
    mu = (p * log_p).sum(dim=-1)
    variance = ((p * log_p.square()).sum(dim=-1) - mu.square()).clamp_min(MIN_VARIANCE)
    z = (log_p_label - mu) / variance.sqrt()
    return z.masked_fill(~mask, 0.0), mask


def lowest_k_mean(values: Sequence[float] | np.ndarray, k: float = DEFAULT_K) -> float:
    """Mean of the lowest ``max(1, floor(k · n))`` of ``n`` values (Min-K% and Min-K%++)."""
    check_k(k)
    values = np.sort(np.asarray(values, dtype=float))
    if values.size == 0:
        raise ValueError("a text needs at least one scored token.")
    return float(values[: max(1, int(k * values.size))].mean())


def check_k(k: float) -> None:
    if not (0 < k <= 1):
        raise UnlearnkitError(f"The Min-K% fraction k must be in (0, 1] (0.4 for MUSE's PrivLeak, 0.2 in the paper); got {k}.")


def check_gradient_norm_form(form: str) -> None:
    if form not in GRADIENT_NORM_FORMS:
        raise UnlearnkitError(f"Unknown gradient-norm form {form!r}; use one of {', '.join(GRADIENT_NORM_FORMS)}.")


def combined_gradient_norm(gradients: Sequence[Tensor | None], form: str = "mean_per_tensor") -> float:
    """The gradient-norm statistic from one text's parameter gradients (``None``: a parameter the loss does not reach).

    ``"mean_per_tensor"`` (OpenUnlearning): the mean of each tensor's L2 norm;
    ``"global"``: the L2 norm of all of them together. Computed in float64.
    """
    check_gradient_norm_form(form)
    norms = [float(g.detach().double().norm()) for g in gradients if g is not None]
    if not norms:
        raise UnlearnkitError("The loss reached no parameter, so the gradient-norm attack has nothing to measure.")
    if form == "global":
        return math.sqrt(sum(norm * norm for norm in norms))
    return sum(norms) / len(norms)


def zlib_length(text: str) -> int:
    """Bytes of the zlib-compressed UTF-8 text (default compression level)."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(mean_nll: float, text: str) -> float:
    """The zlib statistic: mean NLL / zlib length of ``text``, the text whose NLL it is."""
    return mean_nll / zlib_length(text)


def lowercase_score(lowercased_mean_nll: float, mean_nll: float) -> float:
    """The lowercase statistic: NLL of the lower-cased text / NLL of the text."""
    return lowercased_mean_nll / mean_nll


def reference_score(target_mean_nll: np.ndarray, reference_mean_nll: np.ndarray) -> np.ndarray:
    """The reference statistic: NLL_target − NLL_reference, per text."""
    target_mean_nll, reference_mean_nll = np.asarray(target_mean_nll, float), np.asarray(reference_mean_nll, float)
    if target_mean_nll.shape != reference_mean_nll.shape:
        raise UnlearnkitError(
            f"The reference model's per-sample NLLs ({reference_mean_nll.shape[0] if reference_mean_nll.ndim else 0}) "
            f"do not pair up with the texts scored ({target_mean_nll.shape[0]})."
        )
    return target_mean_nll - reference_mean_nll


# ---------------------------------------------------------------------------
# Pure functions: AUC and PrivLeak
# ---------------------------------------------------------------------------


def roc_auc(positive: Sequence[float] | np.ndarray, negative: Sequence[float] | np.ndarray) -> float:
    """ROC-AUC = P(positive score > negative score) + ½ P(equal), from ranks (Mann–Whitney U, ties averaged)."""
    positive, negative = np.asarray(positive, dtype=float), np.asarray(negative, dtype=float)
    if positive.size == 0 or negative.size == 0:
        raise UnlearnkitError("ROC-AUC needs at least one text in each class (forget and holdout).")
    if not (np.isfinite(positive).all() and np.isfinite(negative).all()):
        raise UnlearnkitError("ROC-AUC got a non-finite membership score.")
    ranks = rankdata(np.concatenate([positive, negative]))  # average ranks for ties
    u = ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2
    return float(u / (positive.size * negative.size))


@metric("mia_loss_auc", "near 0.5", f"{_AUC} the mean answer NLL (lower = member){_AUC_SCALE}", YEOM, "privacy",
        label="MIA loss AUC", aggregation=AS_IS)
@metric("mia_zlib_auc", "near 0.5", f"{_AUC} mean answer NLL / zlib-compressed length of the answer (lower = member){_AUC_SCALE}",
        CARLINI_EXTRACTING, "privacy", label="MIA zlib AUC", aggregation=AS_IS)
@metric("mia_lowercase_auc", "near 0.5", f"{_AUC} NLL(lower-cased) / NLL(text) (higher = member){_AUC_SCALE}",
        CARLINI_EXTRACTING, "privacy", label="MIA lowercase AUC", aggregation=AS_IS)
@metric("mia_min_k_auc", "near 0.5",
        f"{_AUC} the mean of the lowest k% answer-token log-probs (EOS excluded), k = 40% by default (higher = member){_AUC_SCALE}",
        MIN_K, "privacy", label="MIA min-k AUC", aggregation=AS_IS)
@metric("mia_min_k_pp_auc", "near 0.5",
        f"{_AUC} the mean of the lowest k% of (log p - mu) / sigma under the model's own next-token distribution "
        f"(EOS excluded; higher = member){_AUC_SCALE}", MIN_K_PP, "privacy", label="MIA min-k++ AUC", aggregation=AS_IS)
@metric("mia_reference_auc", "near 0.5",
        f"{_AUC} NLL_model - NLL_retain-oracle, the oracle's stored values (lower = member){_AUC_SCALE}",
        CARLINI_EXTRACTING, "privacy", label="MIA reference AUC", aggregation=AS_IS)
@metric("mia_gradnorm_auc", "near 0.5",
        f"{_AUC} the mean over parameter tensors of the L2 norm of the answer NLL's gradient, batch 1 "
        f"(lower = member; on request){_AUC_SCALE}",
        GRADNORM, "privacy", label="MIA gradnorm AUC", aggregation=AS_IS)
def membership_auc(attack: str, forget_statistics: Sequence[float], holdout_statistics: Sequence[float]) -> float:
    """AUC with forget as the member class and holdout as the non-member class (see the module docstring)."""
    if attack not in MEMBER_SIGN:
        raise UnlearnkitError(f"Unknown membership attack {attack!r}; use one of {', '.join(MEMBER_SIGN)}.")
    sign = MEMBER_SIGN[attack]
    return roc_auc(sign * np.asarray(forget_statistics, float), sign * np.asarray(holdout_statistics, float))


@metric("muse_privleak", "near 0",
        "MUSE PrivLeak on MUSE's raw privleak texts: (muse_privleak_auc - AUC_retain) / AUC_retain x 100 "
        "(MUSE's retrained-model AUC unless given); about -100 before unlearning.", MUSE, "privacy",
        label="PrivLeak (MUSE texts)", aggregation=AS_IS)
@metric("privleak", "near 0",
        "MUSE PrivLeak: (AUC - AUC_retain-oracle) / AUC_retain-oracle x 100 on Min-40% AUCs with forget as non-members "
        "(1 - mia_min_k_auc); about -100 before unlearning.", MUSE, "privacy", label="PrivLeak", aggregation=AS_IS)
def privleak(auc: float, auc_retain: float, form: str = "muse") -> float:
    """PrivLeak in percent, from Min-K% AUCs taken with forget as NON-members and holdout as members.

    That is MUSE's orientation: ``auc = 1 − mia_min_k_auc`` of this package. ``auc_retain``
    is the same AUC of the retrained (retain-only) model; MUSE's constants are
    0.4772 (News) and 0.5393 (Books).

    * ``"muse"`` (MUSE's definition): ``(auc − auc_retain) / auc_retain × 100``.
      0 = leaks like the retrained model; strongly negative = the forget set is
      still recognised (a model before unlearning scores near −100); positive =
      over-unlearned (the forget set now looks less familiar than unseen text).
    * ``"openunlearning"``: OpenUnlearning's code, which takes conventionally oriented
      AUCs, complements both (``1 − x``: MUSE's orientation, this function's inputs)
      and applies MUSE's formula with ``1e-10`` added to the denominator. It equals
      ``"muse"`` but where ``auc_retain`` is 0 (finite there instead of infinite).
    """
    if form not in PRIVLEAK_FORMS:
        raise UnlearnkitError(f"Unknown PrivLeak form {form!r}; use one of {', '.join(PRIVLEAK_FORMS)}.")
    for name, value in (("auc", auc), ("auc_retain", auc_retain)):
        if not (0.0 <= value <= 1.0):
            raise UnlearnkitError(f"PrivLeak's {name} must be an AUC in [0, 1]; got {value}.")
    if form == "openunlearning":
        return (auc - auc_retain) / (auc_retain + OPENUNLEARNING_EPSILON) * 100
    if auc_retain == 0:
        return math.inf if auc != auc_retain else 0.0
    return (auc - auc_retain) / auc_retain * 100


# ---------------------------------------------------------------------------
# Model queries
# ---------------------------------------------------------------------------


def answer_token_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[Mapping[str, Any]],
    k: float = DEFAULT_K,
    batch_size: int = 64,
    max_length: int = 512,
    lowercase: bool = False,
    score_eos: bool = False,
) -> dict[str, np.ndarray]:
    """One forward pass per batch over the (question, answer) pairs; per row ``(N,)`` arrays:

    ``loss`` (mean answer NLL, EOS included), ``zlib``, ``min_k``, ``min_k_pp``,
    ``exact_memorization`` and ``extraction_strength`` (the last four without
    the answer's EOS unless ``score_eos``). With ``lowercase`` both texts are
    lower-cased first. Several processes score a share of the rows each
    (:mod:`unlearnkit.distributed`).
    """
    check_k(k)
    return distributed.sharded_rows(
        lambda share: _answer_token_scores(model, tokenizer, fmt, share, k, batch_size, max_length, lowercase, score_eos), rows
    )


@torch.no_grad()
def _answer_token_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[Mapping[str, Any]],
    k: float,
    batch_size: int,
    max_length: int,
    lowercase: bool,
    score_eos: bool,
) -> dict[str, np.ndarray]:
    pairs = [(row["question"], row["answer"]) for row in rows]
    if lowercase:
        pairs = [(question.lower(), answer.lower()) for question, answer in pairs]
    features = encode_pairs(tokenizer, fmt, pairs, max_length)
    scores = _feature_token_scores(model, tokenizer, features, k, batch_size, score_eos)
    # zlib compresses the scored text as OpenUnlearning decodes it: the label tokens, special tokens skipped.
    texts = [tokenizer.decode([t for t in feature["labels"] if t != IGNORE_INDEX], skip_special_tokens=True) for feature in features]
    scores["zlib"] = np.array([zlib_score(nll, text) for nll, text in zip(scores["loss"], texts, strict=True)])
    return scores


def _feature_token_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, features: Sequence[dict[str, list[int]]], k: float, batch_size: int,
    score_eos: bool,
) -> dict[str, np.ndarray]:
    """``loss`` (every label) and ``min_k``, ``min_k_pp``, ``exact_memorization``, ``extraction_strength`` (EOS per ``score_eos``)."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    scores = {name: np.zeros(len(features)) for name in ("loss", "min_k", "min_k_pp", "exact_memorization", "extraction_strength")}
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        batch = {key: value.to(model.device) for key, value in pad_batch([features[i] for i in chosen], tokenizer.pad_token_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"]
        nll, nll_mask = token_nll(logits, labels)
        scores["loss"][chosen] = (nll.double().sum(dim=1) / nll_mask.double().sum(dim=1)).cpu().numpy()
        kept = labels if score_eos else without_final_eos(labels, tokenizer.eos_token_id)
        log_p, mask = token_log_probs(logits, kept)
        z, _ = min_k_plus_plus_z(logits, kept)
        scores["exact_memorization"][chosen] = exact_memorization(logits, kept).cpu().numpy()
        scores["extraction_strength"][chosen] = extraction_strength(logits, kept).cpu().numpy()
        log_p, z, mask = log_p.double().cpu().numpy(), z.double().cpu().numpy(), mask.cpu().numpy()
        for row, index in enumerate(chosen):
            scored = mask[row]
            scores["min_k"][index] = lowest_k_mean(log_p[row, scored], k)
            scores["min_k_pp"][index] = lowest_k_mean(z[row, scored], k)
    return scores


def gradient_norms(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[Mapping[str, Any]],
    max_length: int = 512,
    form: str = "mean_per_tensor",
    score_eos: bool = False,
) -> np.ndarray:
    """Per row (batch size 1): :func:`combined_gradient_norm` of the trainable parameters' gradients of its mean answer NLL.

    The NLL's mean leaves out the answer's EOS unless ``score_eos`` (as OpenUnlearning's ``tokenwise_logprobs``).
    """
    check_gradient_norm_form(form)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise UnlearnkitError("The gradient-norm attack needs parameters with requires_grad=True; this model has none.")
    return distributed.sharded_rows(
        lambda share: _gradient_norms(model, tokenizer, fmt, share, max_length, parameters, form, score_eos), rows
    )


def _gradient_norms(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    rows: Sequence[Mapping[str, Any]],
    max_length: int,
    parameters: list[torch.nn.Parameter],
    form: str,
    score_eos: bool,
) -> np.ndarray:
    was_training = model.training
    model.eval()  # no dropout: the score must not depend on a random mask
    norms = np.zeros(len(rows))
    try:
        for index, row in enumerate(rows):
            features = encode_qa(tokenizer, fmt, row["question"], row["answer"], max_length)
            batch = {key: value.to(model.device) for key, value in pad_batch([features], tokenizer.pad_token_id).items()}
            with torch.enable_grad():
                logits = model(input_ids=batch["input_ids"]).logits
                labels = batch["labels"] if score_eos else without_final_eos(batch["labels"], tokenizer.eos_token_id)
                nll, mask = token_nll(logits, labels)
                loss = nll.sum() / mask.sum()
                grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            norms[index] = combined_gradient_norm(grads, form)
    finally:
        model.train(was_training)
    return norms


# ---------------------------------------------------------------------------
# Forget vs holdout: the evaluator's membership block
# ---------------------------------------------------------------------------


@dataclass
class MembershipResult:
    """Summary numbers, per-sample statistics of each split, and what a retain oracle stores for later runs."""

    summary: dict[str, float]
    forget: list[dict[str, float]]
    holdout: list[dict[str, float]]
    record: dict[str, Any] = field(default_factory=dict)


def evaluate_membership(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    forget: Sequence[Mapping[str, Any]],
    holdout: Sequence[Mapping[str, Any]],
    k: float = DEFAULT_K,
    batch_size: int = 64,
    reference: Mapping[str, Any] | None = None,
    with_gradient_norm: bool = False,
    privleak_form: str = "muse",
    score_eos: bool = False,
    gradient_norm_form: str = "mean_per_tensor",
) -> MembershipResult:
    """Score forget and holdout rows with every attack; AUCs, memorization means and (with a reference) PrivLeak.

    ``reference`` is the ``membership`` record a retain oracle stored (see
    :attr:`MembershipResult.record`): its per-sample NLLs feed the reference
    attack (never recomputed) and its Min-K% AUC gives PrivLeak. ``score_eos``
    and ``gradient_norm_form``: see the module docstring (defaults: OpenUnlearning's).
    """
    check_gradient_norm_form(gradient_norm_form)
    statistics: dict[str, dict[str, np.ndarray]] = {}
    for split, rows in (("forget", forget), ("holdout", holdout)):
        scores = answer_token_scores(model, tokenizer, fmt, rows, k, batch_size, score_eos=score_eos)
        lowered = answer_token_scores(model, tokenizer, fmt, rows, k, batch_size, lowercase=True)["loss"]
        scores["lowercase"] = lowered / scores["loss"]
        if with_gradient_norm:
            scores["gradnorm"] = gradient_norms(model, tokenizer, fmt, rows, form=gradient_norm_form, score_eos=score_eos)
        statistics[split] = scores
    if reference is not None:
        _check_membership_reference(reference, forget, holdout, k, score_eos)
        if "forget_nll" in reference and "holdout_nll" in reference:
            statistics["forget"]["reference"] = reference_score(statistics["forget"]["loss"], reference["forget_nll"])
            statistics["holdout"]["reference"] = reference_score(statistics["holdout"]["loss"], reference["holdout_nll"])
    attacks = [name for name in MEMBER_SIGN if name in statistics["forget"]]
    aucs = {name: membership_auc(name, statistics["forget"][name], statistics["holdout"][name]) for name in attacks}
    summary = {f"mia_{name}_auc": value for name, value in aucs.items()}
    for split in ("forget", "holdout"):
        for name in ("exact_memorization", "extraction_strength"):
            summary[f"{split}_{name}"] = float(np.mean(statistics[split][name]))
    retain_auc = (reference or {}).get("auc", {}).get("min_k")
    if retain_auc is not None:
        # PrivLeak takes MUSE's orientation (forget = non-members), the complement of the AUC reported here.
        summary["privleak"] = privleak(1.0 - aucs["min_k"], 1.0 - float(retain_auc), privleak_form)
    record = {
        "min_k_fraction": k,
        "score_eos": score_eos,
        "holdout_questions": [row["question"] for row in holdout],
        "forget_nll": [float(v) for v in statistics["forget"]["loss"]],
        "holdout_nll": [float(v) for v in statistics["holdout"]["loss"]],
        "auc": {name: value for name, value in aucs.items() if name != "reference"},
    }
    per_sample = {
        split: [{f"mia_{name}" if name in MEMBER_SIGN else name: float(values[i]) for name, values in statistics[split].items()}
                for i in range(len(rows))]
        for split, rows in (("forget", forget), ("holdout", holdout))
    }
    return MembershipResult(summary=summary, forget=per_sample["forget"], holdout=per_sample["holdout"], record=record)


def _check_membership_reference(
    reference: Mapping[str, Any], forget: Sequence[Mapping[str, Any]], holdout: Sequence[Mapping[str, Any]], k: float,
    score_eos: bool,
) -> None:
    questions = reference.get("holdout_questions")
    if questions is not None and list(questions) != [row["question"] for row in holdout]:
        raise UnlearnkitError(
            f"The oracle reference's membership scores were computed on another holdout set ({len(questions)} questions) "
            f"than the one evaluated ({len(holdout)}). Pass the reference made with this holdout split."
        )
    if len(reference.get("forget_nll", forget)) != len(forget):
        raise UnlearnkitError("The oracle reference's per-sample forget NLLs do not match the forget set evaluated.")
    stored_k = reference.get("min_k_fraction")
    if stored_k is not None and not math.isclose(float(stored_k), k):
        raise UnlearnkitError(
            f"The oracle reference's Min-K% AUC used k = {stored_k}, this evaluation k = {k}; PrivLeak compares "
            "the two, so evaluate with the same k."
        )
    stored_eos = reference.get("score_eos")
    if stored_eos is not None and bool(stored_eos) != score_eos:
        raise UnlearnkitError(
            f"The oracle reference's Min-K% AUC was computed with score_eos={bool(stored_eos)}, this evaluation with "
            f"score_eos={score_eos}; PrivLeak compares the two, so evaluate with the same setting."
        )


# ---------------------------------------------------------------------------
# MUSE's PrivLeak on raw texts
# ---------------------------------------------------------------------------


@dataclass
class TextPrivleakResult:
    """The text PrivLeak summary and each text's Min-K% statistic."""

    summary: dict[str, float]
    forget: list[dict[str, float]]
    holdout: list[dict[str, float]]


def text_min_k_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    k: float = DEFAULT_K,
    batch_size: int = 8,
    max_length: int = MUSE_TEXT_MAX_LENGTH,
) -> np.ndarray:
    """Min-K% of each raw text, ``(N,)``: every token but the first scored, no EOS (MUSE's ``compute_ppl``).

    Several processes score a share of the texts each (:mod:`unlearnkit.distributed`).
    """
    check_k(k)
    return distributed.sharded_rows(lambda share: _text_min_k_scores(model, tokenizer, share, k, batch_size, max_length), list(texts))


@torch.no_grad()
def _text_min_k_scores(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], k: float, batch_size: int, max_length: int
) -> np.ndarray:
    # encode_text appends EOS; MUSE tokenises the text alone (tokenizer.encode), so the EOS label is dropped.
    features = [encode_text(tokenizer, text, max_length) for text in texts]
    return _feature_token_scores(model, tokenizer, features, k, batch_size, score_eos=False)["min_k"]


@metric("muse_privleak_auc", "near 0.5",
        "ROC-AUC of Min-40% on raw texts with forget as NON-members and holdout as members (MUSE's orientation; "
        "near 0 before unlearning); a retain model's value is PrivLeak's AUC_retain.", MUSE, "privacy",
        label="PrivLeak AUC (MUSE texts)", aggregation=AS_IS)
def text_privleak_auc(forget_min_k: Sequence[float], holdout_min_k: Sequence[float]) -> float:
    """The AUC MUSE's PrivLeak takes (its eval.py key ``forget_holdout_Min-40%``), from the texts' Min-K% statistics.

    MUSE labels forget 0 and holdout 1 and scores ``−Min-40%`` (the mean of the
    lowest log-probs): the AUC is P(a holdout text's statistic > a forget text's),
    ties ½. PrivLeak (:func:`privleak`) compares it with a retain model's
    (MUSE's constants: :data:`MUSE_RETAIN_PRIVLEAK_AUC`).
    """
    return roc_auc(np.asarray(holdout_min_k, float), np.asarray(forget_min_k, float))


def evaluate_text_privleak(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    forget_texts: Sequence[str],
    holdout_texts: Sequence[str],
    retain_auc: float,
    k: float = DEFAULT_K,
    batch_size: int = 8,
    form: str = "muse",
) -> TextPrivleakResult:
    """MUSE's PrivLeak: Min-K% (k = 0.4) of the forget and holdout raw texts, AUC and PrivLeak against ``retain_auc``."""
    if not forget_texts or not holdout_texts:
        raise UnlearnkitError("PrivLeak on texts needs at least one forget text and one holdout text.")
    statistics = {split: text_min_k_scores(model, tokenizer, texts, k, batch_size)
                  for split, texts in (("forget", forget_texts), ("holdout", holdout_texts))}
    auc = text_privleak_auc(statistics["forget"], statistics["holdout"])
    summary = {"muse_privleak_auc": auc, "muse_privleak": privleak(auc, retain_auc, form)}
    per_text = {split: [{"mia_min_k": float(value)} for value in values] for split, values in statistics.items()}
    return TextPrivleakResult(summary=summary, forget=per_text["forget"], holdout=per_text["holdout"])
