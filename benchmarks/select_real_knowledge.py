"""Select the real-knowledge probes a pretrained model answers correctly before unlearning, and record how.

A forget probe the model never answered cannot show forgetting, and a neighbour
probe it never answered cannot show damage: both would only add noise to the
accuracies. So each candidate fact (``candidates.jsonl``: one row per fact, all
three forms) is asked in every form, and a probe is kept for a form only when
the model gets it right there, by the very rule the metrics use
(:func:`unlearnkit.evaluation.real_knowledge.score_probes`):

* qa: the greedy answer (32 new tokens, through the prompt format) contains the
  answer or an alias, after normalisation, as whole words;
* cloze: the greedy plain-text continuation (8 new tokens) of the text before
  the blank contains it;
* mcq: the correct option has the lowest mean answer-token NLL.

Greedy decoding on CPU in float32, with a fixed batch size and one thread, is
deterministic: the same model and candidates give the same files. Writes the
selected probes (``probes-<model>.jsonl``) and the selection record
(``selection-<model>.json``: model, tokenizer fingerprint, weights digest, rule,
counts per role, form and entity, and every candidate probe with what the model
said and whether it was kept).

    python benchmarks/select_real_knowledge.py [--model smollm2-135m] [--candidates FILE] [--out-dir DIR]
        [--batch-size 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.real_knowledge import (
    CANDIDATES_FILE,
    FORMS,
    ROLES,
    candidate_probes,
    load_candidates,
    resource_file,
    validate_probes,
)
from unlearnkit.evaluation.real_knowledge import CLOZE_MAX_NEW_TOKENS, QA_MAX_NEW_TOKENS, score_probes
from unlearnkit.provenance import environment, rows_sha256, tokenizer_sha256, weights_sha256

MCQ_SCORE = "mean"
RULE = {
    "qa": f"greedy answer ({QA_MAX_NEW_TOKENS} new tokens, prompt format) contains the normalised answer or an alias as whole words",
    "cloze": f"greedy plain-text continuation ({CLOZE_MAX_NEW_TOKENS} new tokens) of the text before the blank contains the "
             "normalised answer or an alias",
    "mcq": "the correct option has the lowest mean answer-token NLL of the options",
}
# The fields a shipped probe keeps, in this order (the candidate's other fields are not part of a probe).
PROBE_FIELDS = ("id", "entity", "role", "target", "form", "question", "text", "answer", "aliases", "options")


def count_by(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Number of rows per role and form."""
    counts = Counter((row["role"], row["form"]) for row in rows)
    return {role: {form: counts[role, form] for form in FORMS} for role in ROLES}


def per_entity(facts: list[dict[str, Any]], kept: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per entity: its role and target, its candidate facts, the probes kept per form and the facts kept in all three."""
    forms_of: dict[str, set[str]] = {}
    for probe in kept:
        forms_of.setdefault(probe["id"], set()).add(probe["form"])
    table: dict[str, dict[str, Any]] = {}
    for fact in facts:
        entry = table.setdefault(fact["entity"], {"role": fact["role"], "target": fact.get("target"), "facts": 0,
                                                  **dict.fromkeys(FORMS, 0), "all_forms": 0})
        entry["facts"] += 1
        chosen = forms_of.get(fact["id"], set())
        for form in chosen:
            entry[form] += 1
        entry["all_forms"] += len(chosen) == len(FORMS)
    return table


def outcome(result: dict[str, Any]) -> dict[str, Any]:
    """What the model said on one candidate probe (its output, or the option it preferred) and whether the probe was kept."""
    said = result["choice_mean"] if result["form"] == "mcq" else result["output"]
    return {"id": result["id"], "form": result["form"], "kept": result["correct"], "answer": result["answer"], "model_said": said}


def select(model_name: str, candidates_path: Path, out_dir: Path, batch_size: int, threads: int) -> dict[str, Any]:
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.pretrained import PRETRAINED, ensure_converted
    from unlearnkit.runtime import set_threads

    set_threads(threads)
    facts = load_candidates(candidates_path)
    probes = candidate_probes(facts)
    folder = ensure_converted(model_name)
    model, tokenizer = load_model(str(folder)), load_tokenizer(str(folder))
    fmt = PromptFormat("chat")
    fmt.check(tokenizer)

    started = time.perf_counter()
    results = score_probes(model, tokenizer, probes, fmt, batch_size, mcq_score=MCQ_SCORE)
    seconds = time.perf_counter() - started
    kept = [probe for probe, result in zip(probes, results, strict=True) if result["correct"]]
    shipped = [{field: probe[field] for field in PROBE_FIELDS if field in probe} for probe in kept]
    validate_probes(shipped, "selected probes")

    record = {
        "model": model_name,
        "model_title": PRETRAINED[model_name].title,
        "model_package": f"{PRETRAINED[model_name].distribution}=={PRETRAINED[model_name].version}",
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "weights_sha256": weights_sha256(folder),
        "prompt_format": fmt.record(),
        "rule": RULE,
        "settings": {"qa_max_new_tokens": QA_MAX_NEW_TOKENS, "cloze_max_new_tokens": CLOZE_MAX_NEW_TOKENS,
                     "mcq_score": MCQ_SCORE, "batch_size": batch_size, "threads": threads, "dtype": str(next(model.parameters()).dtype)},
        "candidates_file": candidates_path.name,
        "candidates_sha256": rows_sha256(facts),
        "probes_sha256": rows_sha256(shipped),
        "environment": environment(),
        "counts": {"candidate_facts": len(facts), "candidate_probes": count_by(probes), "selected_probes": count_by(kept),
                   "selected_total": len(kept)},
        "per_entity": per_entity(facts, kept),
        "outcomes": [outcome(result) for result in results],
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f"probes-{model_name}.jsonl").open("w", encoding="utf-8") as handle:
        for row in shipped:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out_dir / f"selection-{model_name}.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"scored {len(probes)} candidate probes in {seconds:.1f} s; kept {len(kept)}", file=sys.stderr)
    for role, forms in record["counts"]["selected_probes"].items():
        print(f"  {role}: " + ", ".join(f"{form} {count}" for form, count in forms.items()), file=sys.stderr)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="a pretrained model's name (unlearnkit.pretrained)")
    parser.add_argument("--candidates", type=Path, default=None, help="candidate facts (default: the shipped pool)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the probes and the record go (default: the shipped folder)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    candidates = args.candidates or resource_file(CANDIDATES_FILE)
    out_dir = args.out_dir or candidates.parent
    select(args.model, candidates, out_dir, args.batch_size, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
