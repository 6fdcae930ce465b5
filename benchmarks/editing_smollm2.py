"""rome_delete on SmolLM2-135M-Instruct: Patil et al.'s deletion objectives on real facts the model knows.

Writes docs/editing_smollm2.md and docs/editing_smollm2.json. Offline: the converted model from the cache
(``load_model("smollm2-135m")``) and the shipped real-knowledge probes.

Facts (a rule, not a hand choice): forget ``qa`` probes whose question names the probe's entity (ROME needs the
subject in the prompt), that also have a ``cloze`` and an ``mcq`` form (the mcq's first wrong option is
error injection's wrong answer), taken in turn from each entity in file order until ``--facts``.
Neighbours: the neighbour ``qa`` and ``cloze`` probes the unedited model answers correctly, the first ``--neighbours``.

For each objective the unedited weights are restored, the facts are edited one after another (ROME's sequential
editing, as ``rome_delete`` runs), and the edited model is measured: the answer's probability right after the
prompt and greedy correctness on the edited facts (qa, cloze, mcq), the same on the neighbours, and the audit's
logit-lens attacks (``logit_lens_head``, ``logit_lens_delta``) on the edited facts.

    OMP_NUM_THREADS=1 python benchmarks/editing_smollm2.py --facts 4
    OMP_NUM_THREADS=1 python benchmarks/editing_smollm2.py --facts 4 --append --objectives head_projection+offset1
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from unlearnkit.attacks.base import AuditConfig, AuditData
from unlearnkit.attacks.logit_lens import logit_lens_delta, logit_lens_head
from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.real_knowledge import cloze_prefix, editable_facts, forms_by_fact, load_probes
from unlearnkit.editing.rank_one import EditSettings, apply_edit, average_key, context_prefixes, optimise_value
from unlearnkit.editing.sites import output_projection, set_weight_matrix, weight_matrix
from unlearnkit.editing.statistics import SecondMoment, layer_second_moment, sampled_passages
from unlearnkit.evaluation.real_knowledge import score_probes
from unlearnkit.methods.rome_delete import RomeDeleteConfig, edit_request
from unlearnkit.modeling import load_model, load_tokenizer

# "+offset1": head_projection with lens_margin_offset=1 (the answer pushed past rank k, not to it).
OBJECTIVES = ("dummy", "head_projection", "max_entropy", "error_injection", "fact_erasure", "head_projection+offset1")
MODEL = "smollm2-135m"


def select_facts(probes: list[dict], count: int) -> list[dict]:
    """Forget qa probes naming their entity, with a cloze and an mcq form; in turn per entity, in file order."""
    forms = forms_by_fact(probes)
    chosen = editable_facts(probes, count)
    facts = []
    for probe in chosen:
        mcq = forms[probe["id"]]["mcq"]
        wrong = next(option for option in mcq["options"] if option != probe["answer"])
        # The chat model restates before it answers (p(fact) right after the prompt is ~0.003): the edited answer is the
        # cloze sentence, so the fact is read where the model predicts it, as the audit's logit-lens attacks read it.
        before = cloze_prefix(forms[probe["id"]]["cloze"]["text"])
        answer = f"{before} {probe['answer']}"
        facts.append({"id": probe["id"], "question": probe["question"], "answer": answer, "value": probe["answer"],
                      "subject": probe["entity"], "perturbed_answer": [f"{before} {wrong}"], "qa": probe,
                      "cloze": forms[probe["id"]]["cloze"], "mcq": mcq})
    return facts


@torch.no_grad()
def answer_probabilities(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat,
                          pairs: list[tuple[list[int], list[int]]]) -> list[dict[str, float]]:
    """Per (prompt ids, answer ids): p(first answer token) and p(whole answer), teacher forced right after the prompt."""
    results = []
    for prompt, answer in pairs:
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
        log_probs = torch.log_softmax(logits[len(prompt) - 1:len(prompt) - 1 + len(answer)], dim=-1)
        picked = log_probs.gather(-1, torch.tensor(answer).unsqueeze(-1)).squeeze(-1)
        results.append({"p_first": float(picked[0].exp()), "p_answer": float(picked.sum().exp())})
    return results


def fact_pair(tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, fact: dict) -> tuple[list[int], list[int]]:
    """The chat prompt followed by the edited answer up to its fact, and the fact's tokens."""
    before = fact["answer"][:fact["answer"].rindex(fact["value"])].rstrip()
    prompt = fmt.prompt_ids(tokenizer, fact["question"]) + tokenizer(before, add_special_tokens=False)["input_ids"]
    return prompt, tokenizer(f" {fact['value']}", add_special_tokens=False)["input_ids"]


def cloze_pair(tokenizer: PreTrainedTokenizerBase, probe: dict) -> tuple[list[int], list[int]]:
    """The cloze text before the blank as plain text (as the real-knowledge evaluation shows it) and the answer after a space."""
    return (tokenizer(cloze_prefix(probe["text"]), add_special_tokens=True)["input_ids"],
            tokenizer(f" {probe['answer']}", add_special_tokens=False)["input_ids"])


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def measure(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, facts: list[dict],
            neighbours: list[dict]) -> dict[str, Any]:
    """Everything measured on one model: the edited facts, the neighbours, the logit-lens attacks."""
    started = time.perf_counter()
    fact_probes = [fact[form] for fact in facts for form in ("qa", "cloze", "mcq")]
    scored = score_probes(model, tokenizer, fact_probes, fmt, batch_size=16)
    neighbour_scored = score_probes(model, tokenizer, neighbours, fmt, batch_size=16)
    fact_qa = answer_probabilities(model, tokenizer, fmt, [fact_pair(tokenizer, fmt, fact) for fact in facts])
    fact_cloze = answer_probabilities(model, tokenizer, fmt, [cloze_pair(tokenizer, fact["cloze"]) for fact in facts])
    neighbour_cloze = [cloze_pair(tokenizer, probe) for probe in neighbours if probe["form"] == "cloze"]
    neighbour_p = answer_probabilities(model, tokenizer, fmt, neighbour_cloze)
    data = AuditData(forget=[{key: fact[key] for key in ("question", "answer", "value", "subject")} for fact in facts], fmt=fmt)
    audit = AuditConfig(batch_size=8)
    head, delta = logit_lens_head(model, tokenizer, data, audit), logit_lens_delta(model, tokenizer, data, audit)
    by_form = {form: [row for row in scored if row["form"] == form] for form in ("qa", "cloze", "mcq")}
    return {
        "facts": {
            "qa_accuracy": mean([float(row["correct"]) for row in by_form["qa"]]),
            "cloze_accuracy": mean([float(row["correct"]) for row in by_form["cloze"]]),
            "mcq_accuracy": mean([float(row["correct"]) for row in by_form["mcq"]]),
            "qa_p_first": mean([row["p_first"] for row in fact_qa]), "qa_p_answer": mean([row["p_answer"] for row in fact_qa]),
            "cloze_p_first": mean([row["p_first"] for row in fact_cloze]),
            "cloze_p_answer": mean([row["p_answer"] for row in fact_cloze]),
            "outputs": [{"id": row["id"], "form": row["form"], "output": row.get("output", row.get("choice_mean")),
                         "correct": row["correct"]} for row in scored],
        },
        "neighbours": {
            "accuracy": mean([float(row["correct"]) for row in neighbour_scored]),
            "qa_accuracy": mean([float(row["correct"]) for row in neighbour_scored if row["form"] == "qa"]),
            "cloze_accuracy": mean([float(row["correct"]) for row in neighbour_scored if row["form"] == "cloze"]),
            "p_answer": mean([row["p_answer"] for row in neighbour_p]),
            "p_first": mean([row["p_first"] for row in neighbour_p]),
        },
        "attacks": {
            "logit_lens_head": {"recovery": head.recovery, "details": head.details,
                                "hit_layers": [sample["hit_layers"] for sample in head.per_sample]},
            "logit_lens_delta": {"recovery": delta.recovery, "details": delta.details,
                                 "hit_layers": [sample["hit_layers"] for sample in delta.per_sample]},
        },
        "seconds": time.perf_counter() - started,
    }


def edit_all(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat, facts: list[dict], config: RomeDeleteConfig,
             stats: SecondMoment, prefixes: list[list[int]]) -> list[dict]:
    """The facts edited one after another, as rome_delete does; per edit: objective start/end, weight change, seconds."""
    site = output_projection(model, config.edit_layer(model))
    settings = EditSettings(config.objective, config.value_steps, config.value_learning_rate, config.value_weight_decay,
                            config.clamp_norm_factor, config.kl_factor, config.read_layers(model), config.lens_k,
                            config.lens_margin_offset)
    records = []
    for index, fact in enumerate(facts, start=1):
        started = time.perf_counter()
        request = edit_request(tokenizer, fmt, fact, config, index)
        average, bare = average_key(model, tokenizer, site, request, prefixes)
        with torch.enable_grad():
            value, objective_trace, _ = optimise_value(model, tokenizer, site, request, prefixes[:config.value_prefixes], settings)
        change = apply_edit(site, value, average, bare, stats.matrix, config.stats_damping)
        records.append({"id": fact["id"], "objective_start": objective_trace[0], "objective_end": objective_trace[-1],
                        "weight_change": change, "seconds": time.perf_counter() - started})
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--facts", type=int, default=4)
    parser.add_argument("--neighbours", type=int, default=16)
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--value-prefixes", type=int, default=5, help="rome_delete default 10; fewer to fit one CPU thread")
    parser.add_argument("--prefixes-per-length", type=int, default=5, help="rome_delete default 10")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--markdown", default="docs/editing_smollm2.md")
    parser.add_argument("--json", default="docs/editing_smollm2.json")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON, measuring nothing")
    parser.add_argument("--append", action="store_true", help="add --objectives to the results already in --json")
    args = parser.parse_args()
    if args.render_only:
        Path(args.markdown).write_text(markdown(json.loads(Path(args.json).read_text())))
        return 0
    torch.set_num_threads(args.threads)
    wall = time.perf_counter()

    model, tokenizer = load_model(MODEL), load_tokenizer(MODEL)
    model.eval()
    model.requires_grad_(False)
    fmt = PromptFormat("chat")
    probes = load_probes()
    facts = select_facts(probes, args.facts)
    base_config = RomeDeleteConfig(prefixes_per_length=args.prefixes_per_length, value_prefixes=args.value_prefixes)
    layer = base_config.edit_layer(model)
    site = output_projection(model, layer)

    started = time.perf_counter()
    source = base_config.statistics_source()
    sampled = sampled_passages(model, tokenizer, base_config.stats_tokens, base_config.sample_length(model), base_config.stats_seed)
    passages = sampled.passages
    sample_seconds = time.perf_counter() - started
    started = time.perf_counter()
    stats = layer_second_moment(model, tokenizer, site, passages, base_config.stats_max_length)
    stats_seconds = time.perf_counter() - started
    eigenvalues = torch.linalg.eigvalsh(stats.matrix.double())
    statistics = {"source": source, "tokens": stats.tokens, "passages": len(passages), "layer": layer, "site": site.name,
                  "seconds_text": sample_seconds, "text_from_cache": sampled.from_cache, "seconds_c": stats_seconds,
                  "c_from_cache": stats.from_cache,
                  "eigenvalue_min": float(eigenvalues.min()), "eigenvalue_max": float(eigenvalues.max()),
                  "condition_number": float(eigenvalues.max() / eigenvalues.min()), "damping": base_config.stats_damping}
    print(json.dumps(statistics), flush=True)

    known = [probe for probe in probes if probe["role"] == "neighbour" and probe["form"] in ("qa", "cloze")]
    known_scores = score_probes(model, tokenizer, known, fmt, batch_size=16)
    neighbours = [probe for probe, row in zip(known, known_scores, strict=True) if row["correct"]][:args.neighbours]
    original = weight_matrix(site.module).detach().clone()
    prefixes = context_prefixes(model, tokenizer, base_config.lengths(), base_config.prefixes_per_length, base_config.seed)
    previous = json.loads(Path(args.json).read_text()) if args.append else None
    if previous is not None:  # add objectives to an earlier run of the same facts
        results, edits = previous["results"], previous["edits"]
    else:
        results: dict[str, Any] = {"unedited": measure(model, tokenizer, fmt, facts, neighbours)}
        print("unedited", json.dumps(results["unedited"]["facts"] | results["unedited"]["attacks"]), flush=True)
        edits: dict[str, list[dict]] = {}
    for name in args.objectives.split(","):
        # "head_projection+offset1": the objective with lens_margin_offset=1.
        objective, _, offset = name.partition("+offset")
        set_weight_matrix(site.module, original)
        config = RomeDeleteConfig(objective=objective, prefixes_per_length=args.prefixes_per_length, value_prefixes=args.value_prefixes,
                                  lens_margin_offset=int(offset or 0))
        edits[name] = edit_all(model, tokenizer, fmt, facts, config, stats, prefixes)
        results[name] = measure(model, tokenizer, fmt, facts, neighbours)
        print(name, json.dumps(edits[name]), json.dumps({k: v for k, v in results[name].items() if k != "seconds"}), flush=True)
    set_weight_matrix(site.module, original)

    record = {
        "model": "SmolLM2-135M-Instruct (converted, offline)", "prompt_format": "chat", "layer": layer,
        "settings": {"value_steps": base_config.value_steps, "value_learning_rate": base_config.value_learning_rate,
                     "value_prefixes": args.value_prefixes, "prefixes_per_length": args.prefixes_per_length,
                     "prefix_lengths": base_config.prefix_lengths, "lens_k": base_config.lens_k,
                     "lens_layers": list(base_config.read_layers(model)), "kl_factor": base_config.kl_factor,
                     "clamp_norm_factor": base_config.clamp_norm_factor, "stats_tokens": base_config.stats_tokens,
                     "stats_max_length": base_config.stats_max_length, "stats_seed": base_config.stats_seed},
        "statistics": statistics,
        "facts": [{"id": fact["id"], "subject": fact["subject"], "question": fact["question"], "answer": fact["answer"],
                   "value": fact["value"],
                   "wrong_answer": fact["perturbed_answer"][0]} for fact in facts],
        "neighbours": [{"id": probe["id"], "form": probe["form"], "answer": probe["answer"]} for probe in neighbours],
        "edits": edits, "results": results,
        "machine": {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "shared": True, "python": platform.python_version(),
                    "torch": torch.__version__, "load_average_at_end": list(os.getloadavg())},
        "wall_seconds": time.perf_counter() - wall + (previous["wall_seconds"] if previous is not None else 0.0),
    }
    if previous is not None and [fact["id"] for fact in previous["facts"]] != [fact["id"] for fact in record["facts"]]:
        raise SystemExit("--append: the earlier run edited other facts; run without --append.")
    Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    Path(args.markdown).write_text(markdown(record))
    return 0


def markdown(record: dict) -> str:
    stats, settings, results = record["statistics"], record["settings"], record["results"]
    lines = [
        "# rome_delete on SmolLM2-135M-Instruct (measured)",
        "",
        "Written by `benchmarks/editing_smollm2.py`; numbers also in `docs/editing_smollm2.json`. See `docs/editing.md` for the method.",
        "",
        f"Model: {record['model']}, chat prompt format, edit of `{stats['site']}` (layer {record['layer']} = floor(30 x 7/32)).",
        f"Machine: {record['machine']['threads']} torch thread(s) on a {record['machine']['cpus']}-core CPU shared with another "
        f"benchmark (load average at the end {record['machine']['load_average_at_end'][0]:.1f}); times are wall-clock and inflated "
        "by the sharing.",
        "",
        "## Key statistics C",
        "",
        f"Source `{stats['source']}`: {stats['tokens']:,} tokens in {stats['passages']} passages sampled from the model (temperature 1, "
        f"seed {settings['stats_seed']}), no damping. Smallest / largest eigenvalue {stats['eigenvalue_min']:.3g} / "
        f"{stats['eigenvalue_max']:.3g} (condition number {stats['condition_number']:.3g}): C is invertible without a ridge.",
        f"Time in this run: the text {stats['seconds_text']:.0f} s "
        f"({'read from the cache' if stats.get('text_from_cache', stats['c_from_cache']) else 'sampled'}), C for one layer "
        f"{stats['seconds_c']:.0f} s ({'read from the cache' if stats['c_from_cache'] else 'computed'}). Computed fresh on this "
        "machine they took minutes (docs/editing.md gives the measured times).",
        "",
        "## Facts and settings",
        "",
        "Facts, chosen by the rule in the script's docstring (forget qa probes naming their entity, with cloze and mcq forms, "
        "in turn per entity). The edited answer is the qa question's cloze sentence: the chat model restates the question "
        "before it answers, so right after the prompt the fact's probability is about 0.003 and the logit-lens attacks find "
        "nothing there to delete; after the cloze sentence the model predicts the fact:",
        "",
    ]
    lines += [f"* `{fact['id']}`: {fact['question']} → \"{fact['answer']}\" (fact {fact['value']}, subject {fact['subject']}; "
              f"error injection's answer: \"{fact['wrong_answer']}\")" for fact in record["facts"]]
    lines += [
        "",
        f"Neighbours: {len(record['neighbours'])} neighbour qa/cloze probes the unedited model answers correctly.",
        "",
        f"Value optimisation: {settings['value_steps']} steps, lr {settings['value_learning_rate']}, kl_factor {settings['kl_factor']}, "
        f"clamp {settings['clamp_norm_factor']}; keys averaged over the bare prompt and {settings['prefixes_per_length']} sampled "
        f"prefixes per length ({settings['prefix_lengths']} tokens), the value optimised on the first {settings['value_prefixes']} "
        "prompts (rome_delete's defaults are 10 and 10; fewer here to fit one shared CPU thread). Lens objectives read layers "
        f"{settings['lens_layers'][0]}-{settings['lens_layers'][-1]}, k = {settings['lens_k']}. Facts are edited one after "
        "another per objective, from the unedited weights.",
        "",
        "## Results",
        "",
        "qa p: the fact's probability after the chat question and the edited answer's words before it (the position the edit "
        "and the logit-lens attacks use), cloze p: after the cloze text before its blank as plain text (neighbour p: the "
        "neighbours' cloze probes), teacher forced, whole answer, mean over probes; acc: greedy correctness "
        "(qa: 32 tokens through the chat template, cloze: 8 tokens of plain text; mcq: lowest mean NLL). Attacks: "
        "Attack-Success@B of the audit's logit-lens attacks on the edited facts (k = 4 over all 30 layers; lower is better). "
        "`head_projection` is Patil et al.'s hinge as their code writes it; `head_projection+offset1` sets lens_margin_offset=1 "
        "(hinge against the 5th largest/smallest: a named deviation, see docs/editing.md), run with --append on the same facts, "
        "neighbours and C.",
        "",
        "| model | qa p | qa acc | cloze p | cloze acc | mcq acc | neighbour p | neighbour acc | head-projection attack | "
        "probability-delta attack | s / edit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results.items():
        facts, neighbours, attacks = result["facts"], result["neighbours"], result["attacks"]
        per_edit = mean([edit["seconds"] for edit in record["edits"].get(name, [])])
        lines.append(
            f"| {name} | {facts['qa_p_answer']:.3f} | {facts['qa_accuracy']:.2f} | {facts['cloze_p_answer']:.3f} | "
            f"{facts['cloze_accuracy']:.2f} | {facts['mcq_accuracy']:.2f} | {neighbours['p_answer']:.3f} | {neighbours['accuracy']:.2f} | "
            f"{attacks['logit_lens_head']['recovery']:.2f} | {attacks['logit_lens_delta']['recovery']:.2f} | "
            f"{'-' if math.isnan(per_edit) else f'{per_edit:.0f}'} |")
    if "dummy" in results:
        dummy = results["dummy"]["attacks"]["logit_lens_head"]["recovery"]
        lines += ["", "Patil et al.'s finding (the Head-Projection defence lowers the head-projection attack's success compared "
                  f"with the dummy-target objective), on these {len(record['facts'])} facts (one fact = "
                  f"{1 / len(record['facts']):.2f} of the attack's success):", ""]
        for name, result in results.items():
            if name.startswith("head_projection"):
                ours = result["attacks"]["logit_lens_head"]["recovery"]
                verdict = "lower than" if ours < dummy else "equal to" if ours == dummy else "higher than"
                lines.append(f"* `{name}`: {ours:.2f}, {verdict} after the dummy edit ({dummy:.2f}): "
                             f"{'reproduced' if ours < dummy else 'not reproduced'}.")
    lines += ["", "Value optimisation per edit (objective at the first and last step, ||W' - W||), in edit order:", ""]
    for name, edits in record["edits"].items():
        steps = "; ".join(f"{edit['id']} {edit['objective_start']:.3g} → {edit['objective_end']:.3g} (change {edit['weight_change']:.2f})"
                          for edit in edits)
        lines.append(f"* {name}: {steps}")
    lines += ["", f"Whole run: {record['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
