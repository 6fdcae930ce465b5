"""``real-knowledge``: unlearn what a pretrained model really knows about a few real entities, with no retain oracle.

The setting of Who's Harry Potter, RWKU and WMDP: nobody can train the model
again without the knowledge, so there is no oracle and no forget quality. The
run measures, before and after unlearning, the accuracy on *forget probes*
(facts about the entities to forget that the model answered correctly before)
and on *neighbour probes* (related entities that must be kept), per probe form
(question, fill-in-the-blank, multiple choice), with general utility (perplexity
on general text, diversity of open generations).
(:mod:`unlearnkit.evaluation.real_knowledge`; data: :mod:`unlearnkit.data.real_knowledge`.)

The method trains on a *forget corpus* (passages about the entities, written
apart from the probes) and keeps a *retain corpus* (passages about the
neighbours). Each passage becomes one chat turn, "What do you know about
ENTITY?" answered by the passage, so that every method, which trains on
question/answer rows, takes it unchanged.

Results folder: as ``demo``'s, with the model before unlearning as ``target``
and no ``oracle``: ``summary.json`` (``{"target", "unlearned"}``),
``per_sample.json``, ``config.json``, ``model/``, ``training_log.json``,
``timing.json``, ``report.html``. The evaluation of the model before
unlearning is cached (by its weights, the probes and the settings), so a second
method on the same model skips it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.runs.inputs import DataChoice, MethodChoice, ModelChoice, RunOptions

logger = logging.getLogger("unlearnkit")

# The model the shipped probes were selected on (each answered correctly by it before unlearning).
SHIPPED_PROBES_MODEL = "smollm2-135m"
# How a corpus passage becomes a question/answer row every method trains on.
PASSAGE_QUESTION = "What do you know about {entity}?"
SPLIT_NAME = "real-knowledge"
# Unlearning settings of this benchmark over the methods' own defaults (see :func:`benchmark_settings`).
UNLEARN_SETTINGS = (("batch_size", 8),)


@dataclass(frozen=True)
class RealKnowledgeInputs:
    """What a real-knowledge run works on, resolved and checked."""

    model: ModelChoice
    method: MethodChoice
    probes: list[dict] = field(repr=False)
    forget: DataChoice = field(repr=False)
    retain: DataChoice = field(repr=False)
    general_text: list[str] = field(repr=False)
    prompts: list[str] = field(repr=False)
    sources: dict[str, Any] = field(default_factory=dict)


def benchmark_settings(method: str) -> dict[str, Any]:
    """The benchmark's settings for ``method``, under the user's ``--set`` values.

    The forget corpus is small (a few dozen passages): a batch of 8 gives each epoch
    several optimiser steps where the methods' default batch would give one. WHP gets
    the benchmark's own anchored-term dictionary (the shipped ``whp_anchors.json``).
    """
    from unlearnkit.data.real_knowledge import WHP_ANCHORS_FILE, resource_file

    settings: dict[str, Any] = dict(UNLEARN_SETTINGS)
    if method == "whp":
        settings["anchored_terms"] = str(resource_file(WHP_ANCHORS_FILE))
    return settings


def resolve_method(name: str, overrides: dict[str, Any]) -> MethodChoice:
    """The method's config: its defaults (the authors'), then the benchmark's settings, then ``overrides``."""
    from unlearnkit.unlearning import resolve_method as build_config

    return MethodChoice(name, build_config(name, overrides, defaults=benchmark_settings(name)))


def passage_rows(passages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Corpus passages ``{"entity", "text"}`` as question/answer rows (``author`` groups one entity's rows)."""
    return [{"question": PASSAGE_QUESTION.format(entity=passage["entity"]), "answer": passage["text"], "author": passage["entity"]}
            for passage in passages]


def resolve_real_knowledge(
    *,
    model: str,
    method: MethodChoice,
    probes: Path | None = None,
    forget_corpus: Path | None = None,
    retain_corpus: Path | None = None,
    general_text: Path | None = None,
    prompt_format: PromptFormat = PromptFormat(),
    targets: Sequence[str] | None = None,
) -> RealKnowledgeInputs:
    """Read and check every input (the shipped data where a path is None) before any model loads.

    ``targets``: unlearn only these forget entities (None: all). The other forget entities' probes then
    count as neighbours (they must be kept) and only the targets' passages are trained on.
    """
    from unlearnkit.data.real_knowledge import (
        load_corpus,
        load_general_text,
        load_generation_prompts,
        load_probes,
        probes_for_targets,
        probes_in_corpus,
    )
    from unlearnkit.runs.inputs import resolve_model

    if probes is None and model != SHIPPED_PROBES_MODEL:
        raise UnlearnkitError(
            f"The shipped probes were selected on {SHIPPED_PROBES_MODEL} (each one answered correctly by it before unlearning), "
            f"so they say nothing about {model}. Select probes your model answers (benchmarks/select_real_knowledge.py "
            f"--model {model}) and pass them with --probes FILE, or use --model {SHIPPED_PROBES_MODEL}."
        )
    probe_rows = load_probes(probes)
    roles = {row["role"] for row in probe_rows}
    if roles != {"forget", "neighbour"}:
        missing = sorted({"forget", "neighbour"} - roles)
        raise UnlearnkitError(f"The probes{f' in {probes}' if probes else ''} have no {' or '.join(missing)} rows; the benchmark "
                              "compares forget accuracy with neighbour accuracy and needs both roles.")
    forget_passages, retain_passages = load_corpus("forget", forget_corpus), load_corpus("neighbour", retain_corpus)
    if targets is not None:
        probe_rows = probes_for_targets(probe_rows, targets)
        forget_passages = [passage for passage in forget_passages if passage["entity"] in set(targets)]
        bare = [target for target in targets if not any(passage["entity"] == target for passage in forget_passages)]
        if bare:
            raise UnlearnkitError(f"The forget corpus{f' {forget_corpus}' if forget_corpus else ''} has no passage about "
                                  f"{', '.join(bare)}: a method would have nothing of it to unlearn. Add passages "
                                  '({"entity": ..., "text": ...}) or leave it out of --targets.')
    leaked = probes_in_corpus(forget_passages + retain_passages, probe_rows)
    if leaked:
        raise UnlearnkitError(f"{len(leaked)} probe(s) appear word for word in the corpora (first: {leaked[0]!r}); a method "
                              "would be trained on the test. Rewrite those passages or drop the probes.")
    sources = {"probes": str(probes) if probes else "shipped", "forget_corpus": str(forget_corpus) if forget_corpus else "shipped",
               "retain_corpus": str(retain_corpus) if retain_corpus else "shipped",
               "general_text": str(general_text) if general_text else "shipped"}
    if targets is not None:
        sources["targets"] = list(targets)
    return RealKnowledgeInputs(
        model=resolve_model(model, prompt_format),
        method=method,
        probes=probe_rows,
        forget=DataChoice(sources["forget_corpus"], "forget", passage_rows(forget_passages)),
        retain=DataChoice(sources["retain_corpus"], "retain", passage_rows(retain_passages)),
        general_text=load_general_text(general_text),
        prompts=load_generation_prompts(),
        sources=sources,
    )


def run_real_knowledge(*, inputs: RealKnowledgeInputs, options: RunOptions, cache: Path | None = None) -> dict[str, Any]:
    """Evaluate the model (cached), unlearn the forget corpus, evaluate again; write the results folder; returns the summary."""
    from unlearnkit.descriptions import config_descriptions
    from unlearnkit.evaluation.real_knowledge import evaluate_real_knowledge
    from unlearnkit.inference.loading import load_any_model
    from unlearnkit.modeling import load_tokenizer
    from unlearnkit.provenance import environment, rows_sha256, weights_sha256
    from unlearnkit.runs.folder import check_output_dir, results_folder, write
    from unlearnkit.runs.unlearn import UnlearnInputs, unlearn_into, write_run_report
    from unlearnkit.unlearning import check_method_inputs

    model, method = inputs.model, inputs.method
    check_output_dir(options.output, options.overwrite, {"--model": model.source})
    check_method_inputs(method.name, method.config, inputs.forget.rows, inputs.retain.rows)
    started = time.perf_counter()
    network = load_any_model(model.source, options.trust_remote_code)  # a wrapped model (``wrap``) as any model
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.check(tokenizer)
    check_method_inputs(method.name, method.config, inputs.forget.rows, inputs.retain.rows, network, tokenizer, model.fmt)

    def evaluate_model(net: Any) -> dict[str, Any]:
        return evaluate_real_knowledge(net, tokenizer, inputs.probes, model.fmt, inputs.general_text, inputs.prompts)

    source_sha = weights_sha256(model.source)
    before = _cached_evaluation(cache, source_sha, inputs, model.fmt, lambda: evaluate_model(network))
    run_config = {
        "command": SPLIT_NAME, "model": model.source, "method": method.name, "forget_split": SPLIT_NAME, **inputs.sources,
        "hyperparameters": asdict(method.config), **model.fmt.record(), "environment": environment(),
        "evaluation": before["settings"], "probe_counts": before["counts"],
        "sha256": {"probes": rows_sha256(inputs.probes), "forget_rows": rows_sha256(inputs.forget.rows),
                   "retain_rows": rows_sha256(inputs.retain.rows), "source_model": source_sha},
    }
    unlearn_inputs = UnlearnInputs(model, method, inputs.forget, inputs.retain, None)
    with results_folder(options.output, options.overwrite, identity=run_config, resume=options.resume) as folder:
        unlearned, seconds = unlearn_into(folder, run_config, None, network, tokenizer, unlearn_inputs, options)
        after = evaluate_model(unlearned)
        summary = {"target": before["summary"], "unlearned": after["summary"]}
        write(folder / "summary.json", summary)
        write(folder / "per_sample.json", {"target": _per_sample(before), "unlearned": _per_sample(after)})
        write(folder / "config.json", {**run_config, **config_descriptions(summary, method.name)})
        write(folder / "timing.json", {"unlearn_seconds": round(seconds, 2), "total_seconds": round(time.perf_counter() - started, 2)})
        write_run_report(folder, options.output, title=f"unlearnkit real knowledge: {method.name}")
    return summary


def target_evaluation(inputs: RealKnowledgeInputs, cache: Path | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """The model before unlearning evaluated on the inputs' probes (from the cache when there; the model loads otherwise)."""
    from unlearnkit.evaluation.real_knowledge import evaluate_real_knowledge
    from unlearnkit.inference.loading import load_any_model
    from unlearnkit.modeling import load_tokenizer
    from unlearnkit.provenance import weights_sha256

    model = inputs.model

    def compute() -> dict[str, Any]:
        tokenizer = load_tokenizer(model.source, trust_remote_code)
        model.fmt.check(tokenizer)
        network = load_any_model(model.source, trust_remote_code)
        return evaluate_real_knowledge(network, tokenizer, inputs.probes, model.fmt, inputs.general_text, inputs.prompts)

    return _cached_evaluation(cache, weights_sha256(model.source), inputs, model.fmt, compute)


def _per_sample(result: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Per-probe results by role (``forget``, ``neighbour``, each with its ``question``), then the utility checks."""
    by_role: dict[str, list[dict[str, Any]]] = {"forget": [], "neighbour": []}
    for row in result["per_sample"]["probes"]:
        by_role[row["role"]].append(row)
    return {**by_role, "general_text": result["per_sample"]["general_text"], "generations": result["per_sample"]["generations"]}


def _cached_evaluation(cache: Path | None, source_sha: str, inputs: RealKnowledgeInputs, fmt: PromptFormat, compute: Any) -> dict:
    """The evaluation of the model before unlearning, stored under the cache by weights, probes, texts and prompt format."""
    from unlearnkit.io import write_json
    from unlearnkit.provenance import rows_sha256
    from unlearnkit.runtime import default_cache_dir

    identity = {"weights": source_sha, "probes": rows_sha256(inputs.probes), "general_text": inputs.general_text,
                "prompts": inputs.prompts, "format": fmt.record()}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache or default_cache_dir()).expanduser() / "real-knowledge" / f"before-{key}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(stored, dict) and {"summary", "per_sample", "counts", "settings"} <= set(stored):
                logger.info("reusing the evaluation of the model before unlearning: %s", path)
                return stored
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            pass  # a damaged entry is computed again and replaced
        logger.warning("the cached evaluation %s is damaged; evaluating again", path)
    result = compute()
    write_json(path, result)
    return result
