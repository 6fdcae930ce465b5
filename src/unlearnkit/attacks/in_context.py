"""In-context relearning: forget-set facts about an entity in the prompt, questions about its other facts."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AttackOutcome, AuditConfig, AuditData, attacker_split, register_attack
from unlearnkit.attacks.knowledge import recall_rate, recall_rows


@register_attack(
    "in_context",
    paper='Lynch et al., "Eight Methods to Evaluate Robust Unlearning in LLMs", arXiv 2024',
    summary="Answers of some forget rows of an entity placed before the question about one of its held-out facts.",
    family="prompt",
)
def in_context(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, data: AuditData, config: AuditConfig) -> AttackOutcome:
    given, rows = attacker_split(data.forget, config.heldout_fraction, "in-context")
    questions = [f"{context_facts(given, row, config.in_context_facts)} {row['question']}" for row in rows]
    recalled, generations = recall_rows(model, tokenizer, data.fmt, rows, questions, config.max_new_tokens, config.batch_size)
    before, _ = recall_rows(model, tokenizer, data.fmt, rows, [row["question"] for row in rows], config.max_new_tokens, config.batch_size)
    samples = [
        {"question": row["question"], "prompt": prompt, "generation": text, "recalled": hit, "recalled_before": was}
        for row, prompt, text, hit, was in zip(rows, questions, generations, recalled, before, strict=True)
    ]
    return AttackOutcome(recall_rate(recalled), "answer recall on held-out facts", samples,
                         {"heldout_rows": float(len(rows)), "recall_before": recall_rate(before)})


def context_facts(given: list[dict], row: dict, count: int) -> str:
    """The answers of up to ``count`` given rows about ``row``'s entity (``author``); other given rows when it has none."""
    same = [fact["answer"] for fact in given if "author" in row and fact.get("author") == row["author"]]
    pool = same or [fact["answer"] for fact in given]
    return " ".join(pool[:count])
