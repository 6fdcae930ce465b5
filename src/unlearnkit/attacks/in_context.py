"""In-context relearning: forget-set facts about an entity in the prompt, questions about its other facts."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import (
    AttackOutcome,
    AuditConfig,
    AuditData,
    attacker_split,
    entity_key,
    heldout_problem,
    register_attack,
    ungrouped_note,
)
from unlearnkit.attacks.knowledge import recall_rate, recall_rows, recall_rule, rule_counts

# Where the facts in a prompt come from (per-sample "context").
SAME_ENTITY, OTHER_ENTITIES, UNGROUPED = "same entity", "other entities", "other forget rows (no entity field)"


@register_attack(
    "in_context",
    paper='Lynch et al., "Eight Methods to Evaluate Robust Unlearning in LLMs", arXiv 2024',
    summary="Answers of some forget rows of an entity placed before the question about one of its held-out facts.",
    family="prompt",
    requires=heldout_problem,
)
def in_context(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    given, rows = attacker_split(data, config, "in-context")
    contexts = [context_facts(given, row, config.in_context_facts, config.entity_field) for row in rows]
    questions = [f"{facts} {row['question']}" for (facts, _), row in zip(contexts, rows, strict=True)]
    recalled, generations = recall_rows(model, tokenizer, data.fmt, rows, questions, config.max_new_tokens, config.batch_size)
    before, _ = recall_rows(model, tokenizer, data.fmt, rows, [row["question"] for row in rows], config.max_new_tokens, config.batch_size)
    samples = [
        {"question": row["question"], "prompt": prompt, "context": source, "generation": text, "recalled": hit, "recalled_before": was,
         "recall_rule": recall_rule(row)}
        for row, prompt, (_, source), text, hit, was in zip(rows, questions, contexts, generations, recalled, before, strict=True)
    ]
    same = sum(source == SAME_ENTITY for _, source in contexts)
    others = sum(source == OTHER_ENTITIES for _, source in contexts)
    notes = ungrouped_note(data.forget, config, "the facts placed before each question are other forget rows' answers, "
                                                "not facts about the same entity")
    if others:
        notes.append(f"{others} of {len(rows)} held-out rows are about an entity with no fact to give (a one-row entity): "
                     "their prompts hold other entities' facts.")
    return AttackOutcome(recall_rate(recalled), "answer recall on held-out facts", samples,
                         {"heldout_rows": float(len(rows)), "recall_before": recall_rate(before),
                          "same_entity_context": same / len(rows) if rows else 0.0},
                         rule_counts(rows), notes)


def context_facts(given: list[dict], row: dict, count: int, entity_field: str) -> tuple[str, str]:
    """The answers of up to ``count`` given rows about ``row``'s entity, and where they come from (:data:`SAME_ENTITY`, ...).

    A row whose entity has no given fact, or rows without an entity field,
    get the first given rows' answers, and the source says so.
    """
    entity = entity_key(row, entity_field)
    same = [fact["answer"] for fact in given if entity is not None and entity_key(fact, entity_field) == entity]
    if same:
        return " ".join(same[:count]), SAME_ENTITY
    return " ".join(fact["answer"] for fact in given[:count]), UNGROUPED if entity is None else OTHER_ENTITIES
