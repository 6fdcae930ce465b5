"""Prompt attacks that ask the same question in other words or another language."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, register_attack, rows_lacking
from unlearnkit.attacks.knowledge import recall_any, recall_rate, rule_counts
from unlearnkit.data.translations import TRANSLATED_FIELD, translated_questions
from unlearnkit.errors import UnlearnkitError


@register_attack(
    "paraphrase",
    paper='Patil, Hase & Bansal, "Can Sensitive Information Be Deleted From LLMs? Objectives for Defending Against Extraction Attacks", '
          'ICLR 2024',
    summary="Input rephrasing: the forget questions asked in the benchmark's paraphrased wording (field paraphrased_question).",
    family="prompt",
    requires=lambda data, config: rows_lacking(data.forget, "paraphrased_question"),
)
def paraphrase(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    variants = [_as_list(row["paraphrased_question"]) for row in data.forget]
    samples = recall_any(model, tokenizer, data.fmt, data.forget, variants, config.max_new_tokens, config.batch_size)
    return AttackOutcome(recall_rate([s["recalled"] for s in samples]), "answer recall", samples, recall_rules=rule_counts(data.forget))


@register_attack(
    "translation",
    paper='Lynch et al., "Eight Methods to Evaluate Robust Unlearning in LLMs", arXiv 2024',
    summary="The forget questions in French and German (built-in templates) or in the rows' translated_question field.",
    family="prompt",
    requires=lambda data, config: _untranslatable(data.forget),
)
def translation(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    variants = [translated_questions(row) for row in data.forget]
    samples = recall_any(model, tokenizer, data.fmt, data.forget, variants, config.max_new_tokens, config.batch_size)
    return AttackOutcome(recall_rate([s["recalled"] for s in samples]), "answer recall (any language)", samples,
                         recall_rules=rule_counts(data.forget))


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _untranslatable(rows: list[dict]) -> str | None:
    try:
        for row in rows:
            translated_questions(row)
    except UnlearnkitError:
        return f"needs a '{TRANSLATED_FIELD}' field on rows outside the built-in benchmark"
    return None
