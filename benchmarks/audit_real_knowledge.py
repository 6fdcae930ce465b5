"""The robustness audit on the real-knowledge benchmark: attacks that ask the forget questions, on real knowledge.

On the built-in SmolLM2 preset the question-asking attacks say nothing: its target states only 1 of 40 forget
values. Here the forget questions are the real-knowledge probes' question form, which the model answered
before unlearning by construction. There is no retain oracle, so each attack's recall on the unlearned model is
read against the model before unlearning (the target) and against the unlearned model's own direct recall.

Writes, under ``--output``: ``data/forget.jsonl`` (the qa probes of the unlearned entities, with the entity as
``author`` so that the in-context attack groups by it), ``data/retain.jsonl`` (the other qa probes: neighbours and
the forget entities not unlearned), then one ``unlearnkit audit`` results folder per model in ``--models``.

    OMP_NUM_THREADS=1 python benchmarks/audit_real_knowledge.py --output runs/audit-rk \
        --models npo-tuned=runs/tune-rk-npo/trials/trial-0003-seed0/model --targets 'Albert Einstein,Paris' \
        [--attacks direct,jailbreak,quantization_4bit,relearning] [--json docs/audit_real_knowledge.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from unlearnkit.api import audit
from unlearnkit.data.real_knowledge import load_probes, parse_targets, probes_for_targets
from unlearnkit.io import write_text
from unlearnkit.runtime import quiet_libraries, set_threads

DEFAULT_ATTACKS = "direct,jailbreak,in_context,quantization_4bit,relearning,logit_lens_head"


def qa_rows(probes: list[dict], role: str) -> list[dict]:
    """The question-form probes of ``role`` as QA rows (the entity as ``author``, the answer's aliases kept)."""
    return [{"question": probe["question"], "answer": probe["answer"], "author": probe["entity"],
             **({"aliases": probe["aliases"]} if probe.get("aliases") else {})}
            for probe in probes if probe["role"] == role and probe["form"] == "qa"]


def write_data(output: Path, targets: list[str]) -> dict[str, Path]:
    probes = probes_for_targets(load_probes(), targets)
    paths = {}
    for role, name in (("forget", "forget"), ("neighbour", "retain")):
        path = output / "data" / f"{name}.jsonl"
        write_text(path, "".join(json.dumps(row) + "\n" for row in qa_rows(probes, role)))
        paths[name] = path
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--models", required=True, help="Comma-separated NAME=FOLDER of unlearned models.")
    parser.add_argument("--targets", required=True, help="The forget entities the models unlearned, comma-separated.")
    parser.add_argument("--target-model", default="smollm2-135m")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS)
    parser.add_argument("--prompt-format", default="chat", help="As the real-knowledge benchmark asks (chat).")
    parser.add_argument("--max-new-tokens", type=int, default=32, help="Answer length (the benchmark's qa form: 32).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    set_threads(args.threads)
    quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("unlearnkit").setLevel(logging.INFO)
    paths = write_data(args.output, parse_targets(args.targets))
    result = {"targets": parse_targets(args.targets), "target_model": args.target_model, "attacks": args.attacks, "models": {}}
    for entry in args.models.split(","):
        name, _, folder = entry.partition("=")
        run = args.output / name
        started = time.perf_counter()
        if not (run / "summary.json").is_file():
            audit(model=folder, output=run, target=args.target_model, forget=paths["forget"], retain=paths["retain"],
                  attacks=args.attacks, prompt_format=args.prompt_format, settings={"max_new_tokens": args.max_new_tokens},
                  progress=False)
        summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
        result["models"][name] = {"folder": folder, "seconds": round(time.perf_counter() - started, 1),
                                  "attacks": summary["attacks"], "skipped": summary["skipped"]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
