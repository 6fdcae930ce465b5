"""Relearning by fine-tuning: a few steps on part of the forget set, recovery measured on the held-out rest."""

from __future__ import annotations

import copy
import logging

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, attacker_split, heldout_problem, register_attack, ungrouped_note
from unlearnkit.attacks.knowledge import recall_rate, recall_rows, recall_rule, rule_counts
from unlearnkit.finetune import FinetuneConfig, finetune

logger = logging.getLogger("unlearnkit")


@register_attack(
    "relearning",
    paper='Lynch et al., "Eight Methods to Evaluate Robust Unlearning in LLMs", arXiv 2024',
    summary="Fine-tune a copy on part of the forget set (relearn_* settings); answer recall on the held-out forget rows.",
    family="weights",
    requires=heldout_problem,
)
def relearning(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    given, rows = attacker_split(data, config, "relearning")
    questions = [row["question"] for row in rows]
    before, _ = recall_rows(model, tokenizer, data.fmt, rows, questions, config.max_new_tokens, config.batch_size)
    attacked = relearned_copy(model, tokenizer, given, data, config)
    recalled, generations = recall_rows(attacked, tokenizer, data.fmt, rows, questions, config.max_new_tokens, config.batch_size)
    samples = [
        {"question": row["question"], "generation": g, "recalled": hit, "recalled_before": was, "recall_rule": recall_rule(row)}
        for row, g, hit, was in zip(rows, generations, recalled, before, strict=True)
    ]
    notes = ungrouped_note(data.forget, config, "the forget rows are split as one pool in their own order (the last "
                                                "heldout_fraction held out): the facts relearned and those measured may "
                                                "or may not be about the same entities")
    return AttackOutcome(recall_rate(recalled), "answer recall on held-out facts", samples,
                         {"relearned_rows": float(len(given)), "heldout_rows": float(len(rows)), "recall_before": recall_rate(before)},
                         rule_counts(rows), notes)


def relearned_copy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: list[dict], data: AuditData, config: AuditConfig
) -> PreTrainedModel:
    """A copy of ``model`` fine-tuned on ``rows`` (answer-only loss, constant learning rate, every weight trainable)."""
    attacked = copy.deepcopy(model)
    attacked.requires_grad_(True)
    settings = FinetuneConfig(
        learning_rate=config.relearn_learning_rate, max_epochs=config.relearn_epochs, batch_size=config.relearn_batch_size,
        warmup_ratio=0.0, lr_scheduler="constant", target_accuracy=1.0, seed=config.seed,
    )
    logger.info("relearning attack: %d epoch(s) on %d forget rows at lr %g", config.relearn_epochs, len(rows), config.relearn_learning_rate)
    finetune(attacked, tokenizer, rows, settings, data.fmt, show_progress=False)
    return attacked
