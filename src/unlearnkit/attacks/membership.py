"""The evaluation suite's membership inference and extraction, reported in the audit's table."""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, register_attack
from unlearnkit.evaluation.catalog import CARLINI_QUANTIFYING, MIN_K, MUSE, TIRUMALA
from unlearnkit.evaluation.memorization import answer_memorization
from unlearnkit.evaluation.mia import DEFAULT_K, evaluate_membership


@register_attack(
    "membership",
    paper=f"{MIN_K}; forget-vs-holdout AUC as in {MUSE}",
    summary="Membership inference, forget (members) vs holdout (never trained on): ROC-AUC of Min-K%; "
            "the other attacks' AUCs in the details.",
    family="membership",
    needs=("holdout",),
    chance=0.5,
)
def membership(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    result = evaluate_membership(model, tokenizer, data.fmt, data.forget, data.holdout, DEFAULT_K, config.batch_size)
    aucs = {key: value for key, value in result.summary.items() if key.startswith("mia_") and key.endswith("_auc")}
    samples = [{"question": row["question"], **scores} for row, scores in zip(data.forget, result.forget, strict=True)]
    return AttackOutcome(aucs["mia_min_k_auc"], "Min-K% AUC (0.5: chance)", samples, aucs)


@register_attack(
    "extraction",
    paper=f"{TIRUMALA}; {CARLINI_QUANTIFYING}",
    summary="Exact memorization of the forget answers: share of answer tokens the model's greedy next-token choice reproduces.",
    family="membership",
)
def extraction(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    scores = answer_memorization(model, tokenizer, data.fmt, data.forget, config.batch_size)
    samples = [
        {"question": row["question"], "exact_memorization": float(em), "extraction_strength": float(es)}
        for row, em, es in zip(data.forget, scores["exact_memorization"], scores["extraction_strength"], strict=True)
    ]
    return AttackOutcome(float(np.mean(scores["exact_memorization"])), "exact memorization", samples,
                         {"extraction_strength": float(np.mean(scores["extraction_strength"]))})
