"""The baseline: the forget set's own questions, no attack."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, register_attack
from unlearnkit.attacks.knowledge import recall_rate, recall_rows, recall_rule, rule_counts


@register_attack(
    "direct",
    paper='Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", COLM 2024',
    summary="No attack: answer recall on the forget questions as asked; the level every attack is compared with.",
    family="baseline",
)
def direct(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    questions = [row["question"] for row in data.forget]
    recalled, generations = recall_rows(model, tokenizer, data.fmt, data.forget, questions, config.max_new_tokens, config.batch_size)
    samples = [{"question": row["question"], "generation": g, "recalled": r, "recall_rule": recall_rule(row)}
               for row, g, r in zip(data.forget, generations, recalled, strict=True)]
    return AttackOutcome(recovery=recall_rate(recalled), measure="answer recall", per_sample=samples, recall_rules=rule_counts(data.forget))

