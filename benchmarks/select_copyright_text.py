"""Choose the copyright track's text by measurement: which public-domain passages does the model recite verbatim?

Every candidate passage (``data/resources/copyright/candidates.jsonl``) is cut into VerbMem chunks (by default
the track's: 16-token prompt, 8-token true continuation; :func:`unlearnkit.data.copyright_text.passage_chunks`) and
the model continues each prompt greedily as raw text (no chat template) for as many tokens. The score is MUSE's VerbMem (Shi et
al., "MUSE: Machine Unlearning Six-Way Evaluation for Language Models", ICLR 2025): ROUGE-L F1 of the continuation
against the true one, without stemming; ROUGE-L recall (TOFU's form) is recorded beside it. A passage counts as
memorised when its mean VerbMem over chunks reaches ``--threshold``.

Roles of the memorised passages (written to ``passages.jsonl``): those of ``--forget-work`` go, most memorised
first, to whichever of ``forget`` (unlearned) and ``heldout`` (never trained on: does forgetting spread to the rest
of the work?) has fewer chunks so far; every other passage at or above ``--keep-threshold`` is ``keep`` (other works
the model must still recite). The control, prose written for the project (the real-knowledge general text) that no
model can have memorised, gives the level of a fluent guess.

Greedy decoding on CPU in float32 with a fixed batch size is deterministic: the same model gives the same files.

    python benchmarks/select_copyright_text.py [--model smollm2-135m] [--forget-work kjv-bible] [--threshold 0.35] [--keep-threshold 0.2]
        [--prefix-tokens 16] [--continuation-tokens 8] [--record docs/copyright_selection.json] [--passages FILE] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

# Prose written for the project (the real-knowledge general text): no model can have memorised it, so its VerbMem is
# the level of a fluent guess.
CONTROL_WORK = "control"


def measure(model_name: str, candidates: list[dict], batch_size: int, prefix_tokens: int, continuation_tokens: int) -> list[dict[str, Any]]:
    """Per chunk of every candidate: prompt, true continuation, the model's continuation, VerbMem F1 and ROUGE-L recall."""
    from unlearnkit.data.copyright_text import passage_chunks
    from unlearnkit.evaluation.metrics import rouge_l_recall
    from unlearnkit.evaluation.muse import MuseConfig, verbmem
    from unlearnkit.modeling import load_model, load_tokenizer

    tokenizer = load_tokenizer(model_name)
    model = load_model(model_name, dtype="float32")
    chunks = passage_chunks(tokenizer, candidates, prefix_tokens, continuation_tokens)
    score = verbmem(model, tokenizer, chunks, MuseConfig(verbmem_max_new_tokens=continuation_tokens, batch_size=batch_size))
    recalls = rouge_l_recall([s["generation"] for s in score.per_sample], [s["gt"] for s in score.per_sample])
    return [{**{key: chunk[key] for key in ("passage", "work", "chunk")}, "prompt": sample["prompt"], "gt": sample["gt"],
             "generation": sample["generation"], "verbmem_f1": sample["rouge_l_f1"], "rouge_l_recall": float(recall)}
            for chunk, sample, recall in zip(chunks, score.per_sample, recalls, strict=True)]


def assign_roles(candidates: list[dict], per_passage: dict[str, dict], forget_work: str, threshold: float,
                 keep_threshold: float) -> list[dict]:
    """The memorised passages with their roles (see the module docstring), in candidate order."""
    memorised = [c for c in candidates
                 if per_passage[c["id"]]["verbmem_f1"] >= (threshold if c["work"] == forget_work else keep_threshold)]
    of_work = sorted((c for c in memorised if c["work"] == forget_work), key=lambda c: -per_passage[c["id"]]["verbmem_f1"])
    roles: dict[str, str] = {}
    counts = {"forget": 0, "heldout": 0}
    for candidate in of_work:  # each to the role with fewer chunks so far (forget on a tie): two sets of a similar size
        role = "forget" if counts["forget"] <= counts["heldout"] else "heldout"
        roles[candidate["id"]] = role
        counts[role] += per_passage[candidate["id"]]["chunks"]
    chosen = []
    for candidate in memorised:
        chosen.append({**candidate, "role": roles.get(candidate["id"], "keep"),
                       "selection_verbmem_f1": round(per_passage[candidate["id"]]["verbmem_f1"], 4)})
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--forget-work", default="kjv-bible")
    parser.add_argument("--threshold", type=float, default=0.35, help="Least mean VerbMem of a forget-work passage.")
    parser.add_argument("--keep-threshold", type=float, default=0.2, help="Least mean VerbMem of a keep passage.")
    parser.add_argument("--record", type=Path, default=Path("docs/copyright_selection.json"))
    parser.add_argument("--passages", type=Path, default=None, help="Where to write the selected passages (default: the shipped file).")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--prefix-tokens", type=int, default=None, help="Tokens of a chunk's prompt (default: the track's).")
    parser.add_argument("--continuation-tokens", type=int, default=None, help="Tokens of its continuation (default: the track's).")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from unlearnkit.data.copyright_text import CONTINUATION_TOKENS, PASSAGES_FILE, PREFIX_TOKENS, load_candidates, resource_file

    torch.set_num_threads(args.threads)
    candidates = load_candidates()
    start = time.perf_counter()
    prefix = args.prefix_tokens or PREFIX_TOKENS
    continuation = args.continuation_tokens or CONTINUATION_TOKENS
    from unlearnkit.data.real_knowledge import load_general_text

    controls = [{"id": f"control-{i}", "work": CONTROL_WORK, "text": text} for i, text in enumerate(load_general_text())]
    chunks = measure(args.model, candidates + controls, args.batch_size, prefix, continuation)
    seconds = time.perf_counter() - start
    grouped: dict[str, list[dict]] = defaultdict(list)
    for chunk in chunks:
        grouped[chunk["passage"]].append(chunk)
    per_passage = {c["id"]: {"work": c["work"], "title": c["title"], "chunks": len(grouped[c["id"]]),
                             "verbmem_f1": float(np.mean([x["verbmem_f1"] for x in grouped[c["id"]]])),
                             "rouge_l_recall": float(np.mean([x["rouge_l_recall"] for x in grouped[c["id"]]]))}
                   for c in candidates}
    for passage_id, entry in sorted(per_passage.items(), key=lambda item: -item[1]["verbmem_f1"]):
        print(f"{entry['verbmem_f1']:.3f}  {entry['rouge_l_recall']:.3f}  {entry['chunks']:2d}  {entry['work']:13s} {passage_id}")
    control = [x for x in chunks if x["work"] == CONTROL_WORK]
    chunks = [x for x in chunks if x["work"] != CONTROL_WORK]
    control_f1 = float(np.mean([x["verbmem_f1"] for x in control]))
    print(f"{control_f1:.3f}  {np.mean([x['rouge_l_recall'] for x in control]):.3f}  {len(control):2d}  control (never-seen prose)")
    chosen = assign_roles(candidates, per_passage, args.forget_work, args.threshold, args.keep_threshold)
    record = {
        "model": args.model, "prefix_tokens": prefix, "continuation_tokens": continuation,
        "decoding": "greedy, raw text (no chat template), float32, CPU", "threshold_verbmem_f1": args.threshold,
        "keep_threshold_verbmem_f1": args.keep_threshold, "control_verbmem_f1": control_f1, "control_chunks": control,
        "forget_work": args.forget_work, "seconds": round(seconds, 1), "threads": args.threads,
        "roles": {c["id"]: c["role"] for c in chosen}, "passages": per_passage, "chunks": chunks,
    }
    args.record.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    of_work = [c for c in chosen if c["role"] != "keep"]
    if len(of_work) < 2:
        sys.exit(f"Only {len(of_work)} passage(s) of {args.forget_work} reach VerbMem {args.threshold}: need two (forget and "
                 f"held-out). Record: {args.record}; passages not written.")
    out = args.passages or resource_file(PASSAGES_FILE)
    Path(out).write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chosen), encoding="utf-8")
    print(f"roles: {record['roles']}")
    print(f"{len(chunks)} chunks in {seconds:.0f} s; {len(chosen)} passages selected -> {out}, record -> {args.record}")


if __name__ == "__main__":
    main()
