"""``forget``: a deletion request, from an entity's name to an unlearned model and its audit record.

One results folder: ``record.json`` (the audit record: the request, data and model digests, method and settings,
metrics before and after, attack results, checks and verdict), ``record.html`` (the same on one page),
``per_sample.json`` (every evaluated and attacked question, before and after), ``ledger.json`` (every request so far,
see :mod:`unlearnkit.deletion.ledger`), ``summary.json``, ``model/`` and ``log.txt``.

The folder holds the entity's questions and the model's answers (per_sample.json): it is as sensitive as the data
the request is about. ``record.json`` and ``ledger.json`` hold names, row numbers and digests, never the rows.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from unlearnkit.attacks import ATTACKS, AuditConfig, AuditData
from unlearnkit.deletion.ledger import LEDGER_FILE, check_ledger, extended, ledger_entry, reevaluation
from unlearnkit.deletion.matching import check_names, check_share, matching_rows, neighbour_rows
from unlearnkit.deletion.verdict import Criteria, attack_check, forgotten_check, utility_check, verdict
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.evaluator import EvalConfig
from unlearnkit.io import write_json
from unlearnkit.provenance import environment, rows_sha256, weights_sha256
from unlearnkit.runs.folder import check_output_dir, results_folder
from unlearnkit.runs.inputs import Builtin, DataChoice, MethodChoice, ModelChoice, RunOptions
from unlearnkit.runs.lock import locks_output

logger = logging.getLogger("unlearnkit")

RECORD_FILE, RECORD_PAGE = "record.json", "record.html"
RECORD_KIND = "unlearnkit deletion record"
# With a built-in corpus: questions about the benchmark's holdout authors (never trained on) give the guess level.
BUILTIN_HOLDOUT = "holdout10"
BUILTIN_UTILITY = "world_facts"


@dataclass(frozen=True)
class Request:
    """What was asked: the entity, its aliases, the names matched (normalised) and the requester's reference."""

    entity: str
    aliases: tuple[str, ...]
    names: list[str]
    request_id: str | None
    received: str


@dataclass(frozen=True)
class Previous:
    """The request this one follows (``--after``): its folder, its record and the ledger so far."""

    folder: Path
    record: dict[str, Any] = field(repr=False)
    requests: list[dict[str, Any]] = field(repr=False)

    @property
    def model_dir(self) -> Path:
        return self.folder / "model"


@dataclass(frozen=True)
class ForgetInputs:
    """A deletion request resolved: the model, the corpus and the rows it selects, the method, evaluation and audit."""

    request: Request
    model: ModelChoice
    method: MethodChoice
    corpus: DataChoice
    forget: list[int]
    retain: list[int]
    neighbours: list[int]
    rest: list[int]
    earlier: dict[int, list[int]]
    holdout: DataChoice | None
    utility: DataChoice | None
    attacks: list[str] | None
    audit: AuditConfig
    criteria: Criteria
    eval_config: EvalConfig
    previous: Previous | None = None
    on_builtin_model: bool = False

    def rows(self, indices: list[int]) -> list[dict]:
        return [self.corpus.rows[index] for index in indices]


def load_previous(folder: Path) -> Previous:
    """A finished ``forget`` results folder (``--after``): its record, its ledger and its model, all checked."""
    for name in (RECORD_FILE, LEDGER_FILE):
        if not (folder / name).is_file():
            raise UnlearnkitError(f"--after {folder}: no {name} there; --after takes the results folder of an earlier "
                                  "`unlearnkit forget`.")
    if not (folder / "model").is_dir():
        raise UnlearnkitError(f"--after {folder}: its model/ folder is missing; the next request unlearns that model.")
    try:
        record = json.loads((folder / RECORD_FILE).read_text(encoding="utf-8"))
        ledger = json.loads((folder / LEDGER_FILE).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise UnlearnkitError(f"--after {folder}: its record or ledger is not valid JSON ({error}).") from None
    if not isinstance(record, dict) or record.get("kind") != RECORD_KIND:
        raise UnlearnkitError(f"--after {folder}: {RECORD_FILE} is not a deletion record of `unlearnkit forget`.")
    return Previous(folder, record, check_ledger(ledger, str(folder / LEDGER_FILE)))


def parse_attacks(text: str) -> list[str] | None:
    """``all`` (None: every attack that suits the data), ``none`` (the direct questions only) or attack names.

    The direct questions always run: they are the "forgotten" check.
    """
    from unlearnkit.runs.audit import parse_attacks as audit_attacks

    if text.strip() == "none":
        return ["direct"]
    names = audit_attacks(text)
    return None if names is None else (names if "direct" in names else ["direct", *names])


def resolve_forget(
    *,
    entity: str,
    aliases: tuple[str, ...] = (),
    corpus: str | None,
    model: str | None,
    after: Path | None,
    method: str,
    settings: dict[str, Any],
    holdout: str | None,
    utility: str | None,
    neighbours: int,
    eval_rows: int,
    max_share: float,
    attacks: str,
    audit_settings: dict[str, Any],
    criteria: Criteria,
    builtin: Builtin,
    prompt_format: Any,
    request_id: str | None,
    eval_config: EvalConfig,
) -> ForgetInputs:
    """Resolve and check a deletion request before anything is loaded or written (see the module docstring)."""
    from unlearnkit.auditing import build_audit_config, builtin_audit_settings
    from unlearnkit.runs.inputs import BUILTIN_MODELS, resolve_data, resolve_method, resolve_model, with_caps

    names = check_names(entity, aliases)
    received = datetime.now(UTC).isoformat(timespec="seconds")
    request = Request(entity.strip(), tuple(alias.strip() for alias in aliases), names, request_id, received)
    chosen_attacks = parse_attacks(attacks)
    build_audit_config(audit_settings)  # a bad audit setting fails before any data is read
    previous = load_previous(after) if after is not None else None
    if previous is not None:
        if model is not None:
            raise UnlearnkitError(f"--after {after} continues from that request's unlearned model ({after}/model): drop --model.")
        corpus = corpus or previous.record["data"]["corpus"]
        model = str(previous.model_dir)
    if corpus is None:
        raise UnlearnkitError("--corpus is needed: the training data to search for the entity (a built-in split such as 'full', "
                              "or a JSON/JSONL/CSV/Parquet file of question/answer rows).")
    builtin_corpus = builtin.owns(corpus)
    if model is None:
        if not builtin_corpus:
            raise UnlearnkitError("--model is needed with your own corpus: the model trained on it (a folder, a pretrained "
                                  "model's name or a hub name).")
        model = "builtin"
    # A request after one on the built-in model unlearns that model further: the built-in settings and prompts still apply.
    on_builtin_model = model in BUILTIN_MODELS or (previous is not None and previous.record["model"]["builtin"])
    corpus_data = resolve_data(corpus, "corpus", builtin)
    rows = corpus_data.rows
    forget = matching_rows(rows, names)
    check_share(len(forget), len(rows), names, rows, max_share)
    # Every earlier request's rows: asked again after this one, and never in its retain set (retaining them would
    # train the forgotten facts back in).
    earlier = {entry["number"]: matching_rows(rows, entry["names"]) for entry in (previous.requests if previous else [])}
    forgotten = set(forget)
    excluded = sorted({index for indices in earlier.values() for index in indices} - forgotten)
    for entry in previous.requests if previous else []:
        if set(entry["names"]) & set(names):
            logger.warning("request %d already asked to forget %s; forgetting it again", entry["number"], entry["entity"])
    kept_out = forgotten | set(excluded)
    retain = [index for index in range(len(rows)) if index not in kept_out]
    close = neighbour_rows(rows, forget, excluded, names, neighbours)
    nearest = set(close)
    rest = _evenly_spaced([index for index in retain if index not in nearest], eval_rows)
    if holdout is None and builtin_corpus:
        holdout = BUILTIN_HOLDOUT
    if utility is None and builtin_corpus:
        utility = BUILTIN_UTILITY
    holdout_data = resolve_data(holdout, "holdout", builtin) if holdout else None
    utility_data = resolve_data(utility, "utility", builtin) if utility else None
    chosen = resolve_method(method, settings, builtin if on_builtin_model else None)
    audit_defaults = ({**builtin_audit_settings(builtin.config), "max_new_tokens": corpus_data.max_new_tokens} if on_builtin_model
                      else {"max_new_tokens": corpus_data.max_new_tokens})
    audit = build_audit_config({**audit_defaults, **audit_settings})
    # The evaluator's roles: the corpus's sets are asked as forget/retain, the utility set as world_facts.
    caps = {"forget": corpus_data.max_new_tokens, "retain": corpus_data.max_new_tokens,
            **({"world_facts": utility_data.max_new_tokens} if utility_data else {})}
    resolved = resolve_model(model, prompt_format, builtin)
    if on_builtin_model and not resolved.builtin:  # the previous request's copy of the built-in model: its prompts
        resolved = ModelChoice(resolved.source, resolved.named, builtin.prompt_format)
    return ForgetInputs(request, resolved, chosen, corpus_data, forget, retain, close, rest, earlier, holdout_data, utility_data,
                        chosen_attacks, audit, criteria, with_caps(eval_config, caps), previous, on_builtin_model)


def _evenly_spaced(indices: list[int], count: int) -> list[int]:
    """At most ``count`` of ``indices``, evenly spaced (all of them when there are no more; none for 0)."""
    if count <= 0 or not indices:
        return []
    if len(indices) <= count:
        return list(indices)
    step = len(indices) / count
    return [indices[int(position * step)] for position in range(count)]


def preview(inputs: ForgetInputs) -> dict[str, Any]:
    """What the request would forget and keep (``--dry-run``): counts, and the matched rows' numbers and questions."""
    return {"entity": inputs.request.entity, "names": inputs.request.names, "corpus": inputs.corpus.source,
            "corpus_rows": len(inputs.corpus.rows), "forget_rows": len(inputs.forget), "forget_indices": inputs.forget,
            "questions": [row["question"] for row in inputs.rows(inputs.forget)], "retain_rows": len(inputs.retain),
            "excluded_earlier_requests": {str(number): len(indices) for number, indices in inputs.earlier.items()},
            "neighbours": [row["question"] for row in inputs.rows(inputs.neighbours)], "model": inputs.model.named,
            "method": inputs.method.name}


# --------------------------------------------------------------------------------------------- running


@locks_output
def run_forget(*, inputs: ForgetInputs, options: RunOptions) -> dict[str, Any]:
    """Carry out the request and write its results folder; returns the record."""
    from unlearnkit.auditing import merged, plan_attacks, run_attacks
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.unlearning import check_method_inputs

    forget, retain = inputs.rows(inputs.forget), inputs.rows(inputs.retain)
    audit_data = AuditData(forget=forget, retain=inputs.rows(inputs.neighbours),
                           holdout=inputs.holdout.rows if inputs.holdout else [], fmt=inputs.model.fmt)
    plan_attacks(inputs.attacks, audit_data, inputs.audit)  # an attack named that does not suit the data fails here
    check_method_inputs(inputs.method.name, inputs.method.config, forget, retain)
    check_output_dir(options.output, options.overwrite, _read_inputs(inputs))
    tokenizer = load_tokenizer(inputs.model.source, options.trust_remote_code)
    network = load_model(inputs.model.source, options.trust_remote_code)
    inputs.model.fmt.check(tokenizer)
    check_method_inputs(inputs.method.name, inputs.method.config, forget, retain, network, tokenizer, inputs.model.fmt)
    target = merged(copy.deepcopy(network))  # the model before unlearning, attacked beside the unlearned one
    with results_folder(options.output, options.overwrite, inputs=_read_inputs(inputs)) as folder:
        started = time.perf_counter()
        before, before_samples = evaluate_sets(target, tokenizer, inputs)
        unlearned, seconds = _unlearn(folder, network, tokenizer, inputs, options)
        after, after_samples = evaluate_sets(unlearned, tokenizer, inputs)
        logger.info("auditing: the unlearned model and the model before unlearning under attack")
        audit = run_attacks({"unlearned": (merged(unlearned), tokenizer), "target": (target, tokenizer)}, audit_data,
                            inputs.attacks, inputs.audit)
        floors = attack_floors(target, tokenizer, inputs, [row["attack"] for row in audit.rows])
        reasked = reask_earlier(unlearned, tokenizer, inputs, floors["direct"][0])
        record = build_record(inputs, before, after, audit, floors, reasked, folder, seconds, time.perf_counter() - started)
        number = record["request"]["number"]
        ledger = extended(inputs.previous.requests if inputs.previous else [], ledger_entry(number, record),
                          [row for row, _ in reasked])
        write_json(folder / RECORD_FILE, record)
        write_json(folder / LEDGER_FILE, ledger)
        write_json(folder / "per_sample.json", {
            "evaluation": {"before": before_samples, "after": after_samples},
            "attacks": {name: {role: outcome.per_sample for role, outcome in by_model.items()}
                        for name, by_model in audit.outcomes.items()},
            "earlier_requests": {str(row["number"]): samples for row, samples in reasked},
        })
        write_json(folder / "summary.json", summary_of(record))
        from unlearnkit.report.deletion import write_record_page

        write_record_page(record, ledger, folder / RECORD_PAGE)
    return record


def _read_inputs(inputs: ForgetInputs) -> dict[str, Any]:
    """What the request reads, for the output checks: a results folder may not destroy any of it."""
    return {"--model": inputs.model.source, "--corpus": inputs.corpus.source, "--after": inputs.previous and inputs.previous.folder,
            "--holdout": inputs.holdout and inputs.holdout.source, "--utility": inputs.utility and inputs.utility.source}


def _unlearn(folder: Path, network: Any, tokenizer: Any, inputs: ForgetInputs, options: RunOptions) -> tuple[Any, float]:
    from unlearnkit.runs.unlearn import save_unlearned
    from unlearnkit.unlearning import unlearn

    started = time.perf_counter()
    outcome = unlearn(network, tokenizer, inputs.method.name, inputs.rows(inputs.forget), inputs.rows(inputs.retain),
                      inputs.method.config, inputs.model.fmt, options.show_progress)
    seconds = time.perf_counter() - started
    write_json(folder / "training_log.json", outcome.log_history)
    return save_unlearned(outcome, tokenizer, folder / "model"), seconds


def evaluation_sets(inputs: ForgetInputs) -> dict[str, tuple[str, list[dict]]]:
    """The sets evaluated before and after, each with the evaluator's role for it (which truth ratio it takes)."""
    sets = {"forget": ("forget", inputs.rows(inputs.forget)), "neighbours": ("retain", inputs.rows(inputs.neighbours)),
            "rest": ("retain", inputs.rows(inputs.rest))}
    if inputs.utility is not None:
        sets["utility"] = ("world_facts", inputs.utility.rows)
    return {name: (role, rows) for name, (role, rows) in sets.items() if rows}


def evaluate_sets(model: Any, tokenizer: Any, inputs: ForgetInputs) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Each set's metrics (``rouge_l``, ``probability``, ``truth_ratio`` where its rows allow; the forget set also its
    membership-inference AUCs against the holdout set) and per-sample values."""
    from unlearnkit.evaluation.evaluator import evaluate

    metrics: dict[str, dict[str, float]] = {}
    samples: dict[str, Any] = {}
    for name, (role, rows) in evaluation_sets(inputs).items():
        splits = {role: rows, **({"holdout": inputs.holdout.rows} if name == "forget" and inputs.holdout else {})}
        result = evaluate(model, tokenizer, splits, inputs.model.fmt, inputs.eval_config)
        metrics[name] = {key.removeprefix(f"{role}_"): value for key, value in result.summary.items()}
        samples[name] = result.per_sample[role]
    return metrics, samples


def attack_floors(target: Any, tokenizer: Any, inputs: ForgetInputs, names: list[str]) -> dict[str, tuple[float, str]]:
    """Each attack's floor and where it comes from: its score on the model before unlearning with the holdout questions
    (entities it never saw) in place of the entity's, else the attack's chance level (see :mod:`unlearnkit.deletion.verdict`)."""
    from unlearnkit.auditing import run_attacks

    floors = {name: (ATTACKS.get(name).chance, "chance level (no holdout questions)") for name in names}
    if inputs.holdout is None:
        return floors
    data = AuditData(forget=inputs.holdout.rows, retain=inputs.rows(inputs.neighbours), fmt=inputs.model.fmt)
    runnable = [name for name in names if ATTACKS.get(name).missing(data, inputs.audit) is None]
    if runnable:
        logger.info("floors: the attacks on the model before unlearning, with the holdout questions")
        result = run_attacks({"unlearned": (target, tokenizer)}, data, runnable, inputs.audit)
        source = f"the model before unlearning on {len(inputs.holdout.rows)} holdout questions ({inputs.holdout.source})"
        floors.update({row["attack"]: (row["unlearned"], source) for row in result.rows})
    for name in names:
        if name not in runnable:
            floors[name] = (floors[name][0], "chance level (the attack cannot run on the holdout questions alone)")
    return floors


def reask_earlier(model: Any, tokenizer: Any, inputs: ForgetInputs, guess_level: float) -> list[tuple[dict[str, Any], list[dict]]]:
    """Every earlier request's questions asked again of the newly unlearned model (the ledger's re-evaluation)."""
    from unlearnkit.attacks.knowledge import recall_rate, recall_rows

    found = []
    limit = guess_level + inputs.criteria.margin
    for entry in inputs.previous.requests if inputs.previous else []:
        rows = inputs.rows(inputs.earlier[entry["number"]])
        if not rows:
            found.append((reevaluation(entry, 0, None, limit), []))
            continue
        recalled, generations = recall_rows(model, tokenizer, inputs.model.fmt, rows, [row["question"] for row in rows],
                                            inputs.audit.max_new_tokens, inputs.audit.batch_size)
        samples = [{"question": row["question"], "answer": row["answer"], "generation": text, "recalled": hit}
                   for row, text, hit in zip(rows, generations, recalled, strict=True)]
        found.append((reevaluation(entry, len(rows), recall_rate(recalled), limit), samples))
    return found


def build_record(inputs: ForgetInputs, before: dict, after: dict, audit: Any, floors: dict[str, tuple[float, str]],
                 reasked: list[tuple[dict[str, Any], list[dict]]], folder: Path, unlearn_seconds: float,
                 total_seconds: float) -> dict[str, Any]:
    """The audit record (``record.json``): see the module docstring."""
    from unlearnkit.descriptions import attack_descriptions

    criteria, previous = inputs.criteria, inputs.previous
    rows = {row["attack"]: row for row in audit.rows}
    direct = rows["direct"]
    guess, guess_source = floors["direct"]
    forgotten = forgotten_check(direct["target"], direct["unlearned"], guess, criteria)
    attacks = None if inputs.attacks == ["direct"] else [
        attack_check(row, *floors[name], criteria) for name, row in rows.items() if name != "direct"]
    utility = [utility_check(name, before[name]["rouge_l"], after[name]["rouge_l"], criteria)
               for name in ("neighbours", "rest", "utility") if name in before]
    spec = inputs.method.spec
    number = len(previous.requests) + 1 if previous else 1
    return {
        "kind": RECORD_KIND, "version": 1,
        "request": {"number": number, "request_id": inputs.request.request_id, "entity": inputs.request.entity,
                    "aliases": list(inputs.request.aliases), "names": inputs.request.names, "received": inputs.request.received,
                    "completed": datetime.now(UTC).isoformat(timespec="seconds"),
                    "after": str(previous.folder) if previous else None},
        "data": {
            "corpus": inputs.corpus.source, "corpus_rows": len(inputs.corpus.rows), "corpus_sha256": rows_sha256(inputs.corpus.rows),
            "corpus_changed_since_previous": (previous is not None
                                              and previous.record["data"]["corpus_sha256"] != rows_sha256(inputs.corpus.rows)),
            "matching": "the names as whole words, in any case and spacing, in any text field of a row",
            "forget_rows": len(inputs.forget), "forget_indices": inputs.forget, "forget_sha256": rows_sha256(inputs.rows(inputs.forget)),
            "retain_rows": len(inputs.retain), "retain_sha256": rows_sha256(inputs.rows(inputs.retain)),
            "excluded_earlier_requests": {str(number): len(indices) for number, indices in inputs.earlier.items()},
            "neighbour_indices": inputs.neighbours, "rest_indices": inputs.rest,
            "holdout": inputs.holdout.source if inputs.holdout else None, "holdout_rows": len(inputs.holdout.rows) if inputs.holdout else 0,
            "utility": inputs.utility.source if inputs.utility else None,
        },
        "model": {"source": inputs.model.named, "path": inputs.model.source, "builtin": inputs.on_builtin_model,
                  "before_sha256": weights_sha256(inputs.model.source), "after_sha256": weights_sha256(folder / "model"),
                  "after": "model"},
        "method": {"name": inputs.method.name, "paper": spec.paper, "family": spec.family, "settings": asdict(inputs.method.config)},
        "metrics": {"before": before, "after": after},
        "guess_level": {"value": guess, "source": guess_source},
        "checks": {"forgotten": forgotten, "attacks": attacks, "utility": utility,
                   "criteria": asdict(criteria)},
        "audit": {"attacks": audit.rows, "skipped": audit.skipped, "settings": asdict(inputs.audit),
                  "attack_info": attack_descriptions([row["attack"] for row in audit.rows])},
        "earlier_requests": [row for row, _ in reasked],
        "verdict": verdict(forgotten, attacks, utility),
        "timing": {"unlearn_seconds": round(unlearn_seconds, 2), "total_seconds": round(total_seconds, 2)},
        "environment": environment(),
    }


def summary_of(record: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``: the verdict and the headline numbers."""
    checks = record["checks"]
    return {"verdict": record["verdict"]["verdict"], "passed": record["verdict"]["passed"], "request": record["request"]["number"],
            "forget_rows": record["data"]["forget_rows"], "recall_before": checks["forgotten"]["before"],
            "recall_after": checks["forgotten"]["after"], "guess_level": record["guess_level"]["value"],
            "brought_back_by": record["verdict"]["brought_back_by"], "utility_damaged_on": record["verdict"]["utility_damaged_on"],
            "earlier_still_forgotten": {str(row["number"]): row["still_forgotten"] for row in record["earlier_requests"]}}
