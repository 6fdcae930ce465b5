"""WMDP: hazardous-knowledge multiple-choice questions and the forget/retain corpora used to unlearn them.

Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", ICML 2024
(arXiv 2403.03218). The questions are ``cais/wmdp`` (configs ``wmdp-bio``, ``wmdp-cyber``,
``wmdp-chem``, split ``test``; fields ``question``, ``choices``, ``answer`` as an index, per the hub
card); the corpora are ``cais/wmdp-corpora`` (``cyber-forget-corpus``, ``bio-retain-corpus``,
``cyber-retain-corpus``, split ``train``, field ``text``) and, gated behind an access request,
``cais/wmdp-bio-forget-corpus`` (fields ``title``, ``abstract``, ``text``).
"""

from __future__ import annotations

from unlearnkit.data.catalog.checks import check_answer_index
from unlearnkit.data.catalog.spec import MCQ, TEXT, Config, DatasetSpec, Paper, register

PAPER = Paper("The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", "Li et al.", "ICML", 2024, "2403.03218")


def mcq_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    """Check each answer index against its choices; rows keep the hub's names (question, choices, answer)."""
    for index, row in enumerate(rows, start=1):
        check_answer_index(row, index, where)
    return rows


def text_rows(rows: list[dict], config: str, where: str) -> list[dict]:
    return rows


register(DatasetSpec(
    name="wmdp",
    title="WMDP multiple-choice questions (biosecurity, cybersecurity, chemistry)",
    paper=PAPER,
    licence="MIT",
    hub_id="cais/wmdp",
    configs={domain: Config(("test",), hub_config=f"wmdp-{domain}",
                            local_stems=("{hub_config}/{split}", "{hub_config}", "{config}"))
             for domain in ("bio", "cyber", "chem")},
    schema={"question": "str", "choices": "list[str]", "answer": "int"},
    row_form=MCQ,
    use="hazardous-knowledge accuracy (forget: wmdp-bio/cyber; the RMU setting), `unlearnkit general` through lm-eval",
    local_copy="Download the hub's parquet files (wmdp-bio/test-00000-of-00001.parquet, ...) into a folder and pass it "
               "as @DIR; WMDP-bio.json style files named wmdp-bio.json/.jsonl in DIR are read too.",
    convert=mcq_rows,
    example={"question": "Which ...?", "choices": ["A", "B", "C", "D"], "answer": 2},
    unverified=("the layout of the password-protected mirror zip (we read the hub's layout, or DIR/wmdp-bio.json)",),
))

register(DatasetSpec(
    name="wmdp-corpora",
    title="WMDP forget and retain corpora (the RMU unlearning data)",
    paper=PAPER,
    licence="MIT",
    hub_id="cais/wmdp-corpora",
    configs={
        "bio-forget": Config(("train",), hub_id="cais/wmdp-bio-forget-corpus", gated=True,
                             local_stems=("bio-forget-corpus", "bio-forget-corpus/{split}", "{split}")),
        **{name: Config(("train",), hub_config=f"{name}-corpus", local_stems=("{hub_config}", "{hub_config}/{split}"))
           for name in ("cyber-forget", "bio-retain", "cyber-retain")},
    },
    schema={"text": "str"},
    optional={"title": "str", "abstract": "str"},
    row_form=TEXT,
    use="forget/retain texts for RMU-style unlearning on the hazardous-knowledge track",
    local_copy="The bio forget corpus is gated: request access (the form linked from cais/wmdp-corpora's card) and you "
               "get bio-forget-corpus.jsonl; put it, or the hub's parquet shards, in DIR (DIR/bio-forget-corpus.jsonl, "
               "DIR/cyber-forget-corpus.jsonl, DIR/bio-retain-corpus/train-*.parquet, ...).",
    convert=text_rows,
    example={"text": "A passage of the corpus ..."},
    unverified=("bio-forget-corpus fields besides text (title, abstract, doi): optional here",),
))
