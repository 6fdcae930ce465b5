"""``hazard``: the hazardous-knowledge track (the WMDP setting), into one results folder (docs/hazard_track.md).

Li et al., "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning", ICML 2024: unlearning should
bring accuracy on multiple-choice questions about hazardous knowledge down to chance (0.25) while general
multiple-choice accuracy (MMLU there) stays; RMU is their method and this track's reference.

Built-in analogue (:func:`run_hazard`): a tiny model of the chosen preset's architecture and tokenizer is trained on
the facts of a fictitious hazard domain and a general one (:mod:`unlearnkit.data.hazard_domain`); the oracle, from
the same initial weights, on the general facts only (its hazard accuracy is the never-seen level); each method
unlearns a copy of the target with the hazard facts as forget set and the retained towns' facts as retain set. For
every model: hazard and general MCQ accuracy (lm-eval's acc and acc_norm, :mod:`unlearnkit.evaluation.multiple_choice`)
and the perplexity of the general facts' answers.

Real data (:func:`run_real_hazard`): the same measurement of a user's model on a local WMDP copy (lm-eval's lettered
prompt), optionally unlearned first on a forget corpus with a retain corpus.

Results folder: ``summary.json``, ``questions.json`` (per question and model: option log-likelihoods, choice,
correct), ``config.json``, ``report.md``, ``tradeoff.png`` and, on the built-in analogue, ``data/facts.json`` and
``data/mcq.json``. Models are not saved.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.data.hazard_domain import GENERAL_PARTS, OPTIONS, HazardDomainConfig, generate_domains, select
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.multiple_choice import SCORINGS, WMDP_SUBJECTS, score_questions
from unlearnkit.finetune import FinetuneConfig
from unlearnkit.io import write_text
from unlearnkit.methods.base import MethodConfig
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.track import (
    PLAIN,
    answer_perplexity,
    before_after,
    check_tiny_preset,
    plot_tradeoff,
    resolve_track_methods,
    split_overrides,
    train_tiny,
    unlearn_each,
)
from unlearnkit.settings import build_config, check_choice

SUMMARY_FILE, QUESTIONS_FILE, REPORT_FILE, PLOT_FILE = "summary.json", "questions.json", "report.md", "tradeoff.png"
CHANCE = 1 / OPTIONS
DEFAULT_METHODS = ("rmu", "npo", "graddiff")
# Per preset: the domains and the target's training (fixed epochs: the facts are random, so every one must be learnt).
DOMAIN_SETTINGS = {
    "micro": HazardDomainConfig(hazard_entities=8, general_entities=8),
    "default": HazardDomainConfig(hazard_entities=30, general_entities=30),
}
TRAINING = {
    "micro": FinetuneConfig(learning_rate=1e-2, max_epochs=60, batch_size=16, target_accuracy=1.0),
    "default": FinetuneConfig(learning_rate=1e-2, max_epochs=60, batch_size=16, target_accuracy=1.0),
}
# Unlearning settings over the presets' own, under the user's --set values (measured in docs/hazard_track.md). On micro
# RMU's 1 epoch (the authors') is 4 steps on the 32 hazard facts: every method runs 10 epochs (hazard accuracy 1.0 ->
# NPO 0.44, GradDiff 0.38; RMU stays at 1.0 on this one-layer model). On default the benchmark's settings hardly move
# the hazard facts (NPO 0.80, GradDiff 0.96, RMU's tiny preset 1.00): lr 2e-3 and 20 epochs for every method, and RMU
# steers layer 0 of 2 (the middle of the model, as the authors' layer 7 of 32 is early-middle) with alpha 10 at its
# preset's lr 5e-3 (RMU 0.45; at its tiny preset's layer 1 it reached 0.93 at best).
UNLEARN_SETTINGS: dict[str, dict[str, Any]] = {"micro": {"num_epochs": 10.0}, "default": {"learning_rate": 2e-3, "num_epochs": 20.0}}
METHOD_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {"default": {"rmu": {"layer": 0, "alpha": 10.0, "learning_rate": 5e-3}}}
TRAINING_KEYS = {"train_epochs": "max_epochs", "train_learning_rate": "learning_rate"}
TRACK_KEYS = {"scoring"}
# How the real-data path turns corpus texts into the (prompt, continuation) rows methods train on (TextContinuation).
CORPUS_PREFIX_TOKENS, CORPUS_WINDOW_TOKENS = 32, 128


@dataclass(frozen=True)
class HazardInputs:
    preset: str
    domain: HazardDomainConfig
    training: FinetuneConfig
    methods: dict[str, MethodConfig]
    scoring: str = "choices"
    oracle: bool = True

    def record(self) -> dict[str, Any]:
        return {"preset": self.preset, "domain": asdict(self.domain), "training": asdict(self.training), "scoring": self.scoring,
                "oracle": self.oracle, "methods": {name: asdict(config) for name, config in self.methods.items()}}


def resolve_hazard(preset: str, methods: Sequence[str], overrides: Mapping[str, Any], oracle: bool = True) -> HazardInputs:
    """Check every setting (preset, domain sizes, training, scoring, each method's config) before anything is trained.

    ``overrides``: domain fields (``hazard_entities``, ``retain_share``, ...), ``train_epochs`` /
    ``train_learning_rate`` and ``scoring`` (``choices`` or ``letters``) set the track; every other key goes to
    each method, over the preset's tiny-model settings.
    """
    check_tiny_preset(preset, "hazard")
    domain, training, track, method_overrides = split_overrides(
        overrides, {item.name for item in fields(HazardDomainConfig)}, TRAINING_KEYS, TRACK_KEYS)
    scoring = str(track.get("scoring", "choices"))
    check_choice("scoring", scoring, SCORINGS)
    training = {TRAINING_KEYS[key]: value for key, value in training.items()}
    domain_config = build_config(HazardDomainConfig, {**asdict(DOMAIN_SETTINGS[preset]), **domain}, what="hazard-track setting")
    training_config = build_config(FinetuneConfig, {**asdict(TRAINING[preset]), **training}, what="hazard-track setting")
    if not methods:
        resolve_track_methods(preset, methods, method_overrides)  # refuses an empty list with its message
    configs = {name: resolve_track_methods(preset, [name], method_overrides,
                                           {**UNLEARN_SETTINGS[preset], **METHOD_SETTINGS.get(preset, {}).get(name, {})})[name]
               for name in dict.fromkeys(methods)}
    return HazardInputs(preset, domain_config, training_config, configs, scoring, oracle)


def run_hazard(*, inputs: HazardInputs, output: Path, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train, unlearn, measure and write the results folder; returns the summary."""
    from unlearnkit.builtin import benchmark_tokenizer, get_preset

    check_output_dir(output, overwrite)
    data = generate_domains(inputs.domain)
    facts, mcq = data["facts"], data["mcq"]
    with results_folder(output, overwrite) as folder:
        tokenizer = benchmark_tokenizer(get_preset(inputs.preset))
        models, seconds = train_models(inputs, tokenizer, facts, show_progress)
        forget, retain = select(facts, domain="hazard"), select(facts, domain="general", part="retain")
        for name, model, took in unlearn_each(models["target"], tokenizer, inputs.methods, forget, retain, show_progress):
            models[name], seconds[name] = model, took
        summary, sets, measured = evaluate_built_in(models, seconds, tokenizer, inputs, data)
        write(folder / "data" / "facts.json", facts)
        write(folder / "data" / "mcq.json", mcq)
        write(folder / "config.json", {"command": "hazard", **inputs.record()})
        write_results(folder, summary, sets, measured)
    return summary


def train_models(inputs: HazardInputs, tokenizer: Any, facts: Sequence[dict], show_progress: bool = True) -> tuple[dict, dict]:
    """The target (every fact) and, unless left out, the oracle (the general facts only), from the same initial weights."""
    models: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    models["target"] = train_tiny(inputs.preset, tokenizer, facts, inputs.training, show_progress)
    seconds["target"] = time.perf_counter() - start
    if inputs.oracle:
        start = time.perf_counter()
        models["oracle"] = train_tiny(inputs.preset, tokenizer, select(facts, domain="general"), inputs.training, show_progress)
        seconds["oracle"] = time.perf_counter() - start
    return models, seconds


def evaluate_built_in(models: Mapping[str, Any], seconds: Mapping[str, float], tokenizer: Any, inputs: HazardInputs,
                      data: Mapping[str, list[dict]]) -> tuple[dict, dict, dict]:
    """Every model on the hazard and general questions: (summary, question sets, per-model measurements)."""
    sets = {"hazard": select(data["mcq"], domain="hazard"), "general": select(data["mcq"], domain="general")}
    general = {"general": select(data["facts"], domain="general")}
    measured = {name: measure(model, tokenizer, sets, inputs.scoring, PLAIN, general) for name, model in models.items()}
    summary = build_summary(measured, seconds, {"preset": inputs.preset, "scoring": inputs.scoring, "source": "built-in"})
    summary["general_parts"] = {part: {name: part_accuracy(measured[name]["questions"]["general"], sets["general"], part)
                                       for name in models} for part in GENERAL_PARTS}
    return summary, sets, measured


def part_accuracy(per_question: Sequence[dict], questions: Sequence[dict], part: str) -> float:
    """acc over the general questions of one part (``retain``: towns in the unlearning retain set; ``held_out``: the others)."""
    hits = [float(result["correct"]) for result, row in zip(per_question, questions, strict=True) if row["part"] == part]
    return sum(hits) / len(hits) if hits else math.nan


def measure(model: Any, tokenizer: Any, sets: Mapping[str, Sequence[dict]], scoring: str, fmt: PromptFormat,
            texts: Mapping[str, Sequence[dict]], subjects: Mapping[str, str | None] | None = None,
            text_fmt: PromptFormat | None = None) -> dict[str, Any]:
    """Per question set: acc, acc_norm and the per-question results; the perplexity of ``texts``' rows (in ``text_fmt``)."""
    model.eval()
    scores, questions = {}, {}
    for name, rows in sets.items():
        scores[name], questions[name] = score_questions(model, tokenizer, rows, scoring, fmt, (subjects or {}).get(name))
    perplexities = {name: answer_perplexity(model, tokenizer, rows, text_fmt or fmt) for name, rows in texts.items()}
    return {"scores": scores, "questions": questions, "perplexity": perplexities}



def build_summary(measured: Mapping[str, dict], seconds: Mapping[str, float], head: Mapping[str, Any]) -> dict[str, Any]:
    models = {}
    for name, entry in measured.items():
        models[name] = {f"{set_name}_{key}": value for set_name, score in entry["scores"].items() for key, value in score.items()}
        models[name].update({f"{text}_perplexity": value for text, value in entry["perplexity"].items()})
        models[name]["seconds"] = seconds.get(name)
    summary = {**head, "chance": CHANCE, "models": models}
    summary["tradeoff"] = tradeoff(models)
    return summary


def tradeoff(models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The headline: per method, hazard accuracy before -> after (goal: chance) and general accuracy before -> after."""
    if "target" not in models:  # a real model measured alone: no method to compare
        return {"methods": {}, "oracle_hazard_acc": None}
    heads = before_after(models, {key: (key,) for key in ("hazard_acc", "general_acc") if key in models["target"]})
    for name, head in heads.items():
        head["hazard_gap_to_chance"] = abs(models[name]["hazard_acc"] - CHANCE)
    return {"methods": heads, "oracle_hazard_acc": models["oracle"]["hazard_acc"] if "oracle" in models else None}


def write_results(folder: Path, summary: Mapping[str, Any], sets: Mapping[str, Sequence[dict]], measured: Mapping[str, dict]) -> None:
    per_question = []
    for set_name, rows in sets.items():
        for index, row in enumerate(rows):
            identity = {key: row[key] for key in ("entity", "property", "part") if key in row}
            per_question.append({"set": set_name, "index": index, **identity, "question": row["question"], "choices": row["choices"],
                                 "answer": row["answer"],
                                 "models": {name: entry["questions"][set_name][index] for name, entry in measured.items()}})
    write(folder / QUESTIONS_FILE, per_question)
    write(folder / SUMMARY_FILE, summary)
    models = summary["models"]
    if all("general_acc" in entry for entry in models.values()):
        points = {name: (entry["hazard_acc"], entry["general_acc"]) for name, entry in models.items()}
        plot_tradeoff(points, folder / PLOT_FILE, xlabel="hazard MCQ accuracy (goal: chance)", ylabel="general MCQ accuracy",
                      title="Hazardous-knowledge track", reference_x=CHANCE, reference_label="chance (0.25)")
    write_text(folder / REPORT_FILE, render_report(summary))


def render_report(summary: Mapping[str, Any]) -> str:
    models = summary["models"]
    columns = [key for key in ("hazard_acc", "hazard_acc_norm", "general_acc", "general_acc_norm", "general_perplexity",
                               "retain_corpus_perplexity") if any(key in entry for entry in models.values())]
    source = summary["source"] if summary["source"] != "built-in" else f"built-in fictitious domains, preset {summary['preset']}"
    lines = [
        "# Hazardous-knowledge track (the WMDP setting)", "",
        f"Questions: {source}; scoring: {summary['scoring']} (lm-eval's acc and acc_norm); chance {summary['chance']:.2f}, "
        "the goal for the hazard questions after unlearning.", "",
        "| model | " + " | ".join(columns) + " | seconds |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, entry in models.items():
        cells = [f"{entry[key]:.3f}" if key in entry else "" for key in columns]
        took = entry.get("seconds")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'' if took is None else f'{took:.1f}'} |")
    if "general_parts" in summary:
        parts = summary["general_parts"]
        lines += ["", "General accuracy by part (retain: towns in the unlearning retain set; held out: towns it never saw):", "",
                  "| model | retain | held out |", "|---|---|---|"]
        lines += [f"| {name} | {parts['retain'][name]:.3f} | {parts['held_out'][name]:.3f} |" for name in models]
    if any("general_acc" in entry for entry in models.values()):
        lines += ["", f"![trade-off]({PLOT_FILE})"]
    lines.append("")
    never_seen = summary["tradeoff"]["oracle_hazard_acc"]
    for name, head in summary["tradeoff"]["methods"].items():
        (hazard_before, hazard_after) = head["hazard_acc"]
        text = f"* {name}: hazard accuracy {hazard_before:.3f} -> {hazard_after:.3f} (chance 0.25"
        text += f", never seen {never_seen:.3f})" if never_seen is not None else ")"
        if "general_acc" in head:
            text += f"; general accuracy {head['general_acc'][0]:.3f} -> {head['general_acc'][1]:.3f}"
        lines.append(text + ".")
    return "\n".join([*lines, ""])


# --- Real data ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RealHazardInputs:
    """A user's model, a local WMDP copy (and optionally general questions and corpora to unlearn on), resolved and checked."""

    model: str
    mcq_source: str
    mcq: list[dict] = field(repr=False)
    subject: str | None = None
    general_source: str | None = None
    general: list[dict] = field(default_factory=list, repr=False)
    forget_source: str | None = None
    forget: list[str] = field(default_factory=list, repr=False)
    retain_source: str | None = None
    retain: list[str] = field(default_factory=list, repr=False)
    methods: dict[str, MethodConfig] = field(default_factory=dict)
    scoring: str = "letters"
    fmt: PromptFormat = PromptFormat()
    trust_remote_code: bool = False

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "mcq": self.mcq_source, "subject": self.subject, "general_mcq": self.general_source,
                "forget_corpus": self.forget_source, "retain_corpus": self.retain_source, "scoring": self.scoring,
                "prompt_format": self.fmt.record(), "methods": {name: asdict(config) for name, config in self.methods.items()}}


def load_questions(source: str, role: str) -> list[dict]:
    """Multiple-choice rows ``{question, choices, answer}`` from a catalog source or a local .json/.jsonl file, checked."""
    from unlearnkit.data.catalog import load, parse_catalog_source
    from unlearnkit.data.catalog.checks import check_answer_index, check_rows

    path = Path(source).expanduser()
    if path.is_file():
        rows = _read_json_rows(path, role)
        schema = {"question": "str", "choices": "list[str]", "answer": "int"}
        rows = check_rows(rows, schema, {}, {}, f"{role} {path}")
        for index, row in enumerate(rows, start=1):
            check_answer_index(row, index, f"{role} {path}")
    else:
        parsed = parse_catalog_source(source)
        if parsed.spec.schema.get("choices") != "list[str]":
            raise UnlearnkitError(f"{role} {source}: {parsed.spec.name} is not a multiple-choice dataset; give a multiple-choice "
                                  "source (e.g. wmdp:bio@DIR) or a .json/.jsonl file of {question, choices, answer}.")
        rows = load(parsed)
    for index, row in enumerate(rows, start=1):
        if len(row["choices"]) > OPTIONS:
            raise UnlearnkitError(f"Row {index} of {role} {source} has {len(row['choices'])} choices; lm-eval's lettered prompt "
                                  f"has letters for {OPTIONS}. Keep questions with at most {OPTIONS} choices.")
    return rows


def _read_json_rows(path: Path, role: str) -> list:
    import json

    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UnlearnkitError(f"{role} {path} is not valid JSON (line {error.lineno}: {error.msg}).") from None
    if not isinstance(data, list):
        raise UnlearnkitError(f"{role} {path} must hold a list of rows {{question, choices, answer}}.")
    return data


def load_corpus(source: str, role: str) -> list[str]:
    """The texts of a catalog text source (``wmdp-corpora:bio-retain@DIR``), or of a local .json/.jsonl file of ``{text}`` rows."""
    from unlearnkit.data.catalog import load
    from unlearnkit.data.catalog.checks import check_rows

    path = Path(source).expanduser()
    rows = check_rows(_read_json_rows(path, role), {"text": "str"}, {}, {}, f"{role} {path}") if path.is_file() else load(source)
    if "text" not in rows[0]:
        raise UnlearnkitError(f"{role} {source} holds no texts; give a text source (e.g. wmdp-corpora:bio-retain@DIR).")
    return [row["text"] for row in rows]


def resolve_real_hazard(*, model: str, mcq: str, general_mcq: str | None = None, forget_corpus: str | None = None,
                        retain_corpus: str | None = None, methods: Sequence[str] = (), overrides: Mapping[str, Any] | None = None,
                        scoring: str = "letters", fmt: PromptFormat = PromptFormat(), trust_remote_code: bool = False) -> RealHazardInputs:
    """Read and check every input (questions, corpora, method settings) before the model is loaded."""
    from unlearnkit.data.catalog import is_catalog_source, parse_catalog_source
    from unlearnkit.unlearning import resolve_method

    check_choice("scoring", scoring, SCORINGS)
    if methods and not forget_corpus:
        raise UnlearnkitError("--methods unlearns on a forget corpus: add --forget-corpus (e.g. wmdp-corpora:cyber-forget@DIR).")
    if methods and not retain_corpus:
        raise UnlearnkitError("--methods keeps a retain corpus: add --retain-corpus (e.g. wmdp-corpora:cyber-retain@DIR).")
    if forget_corpus and not methods:
        raise UnlearnkitError("--forget-corpus is only read to unlearn: add --methods (e.g. --methods rmu), or drop it.")
    configs = {name: resolve_method(name, overrides or {}) for name in dict.fromkeys(methods)}
    if not configs and overrides:
        raise UnlearnkitError("--set sets a method's settings, and no --methods is given: add --methods, or drop --set.")
    questions = load_questions(mcq, "--mcq")
    subject = None
    if is_catalog_source(mcq) and not Path(mcq).expanduser().is_file():
        parsed = parse_catalog_source(mcq)
        subject = WMDP_SUBJECTS.get(parsed.config) if parsed.spec.name == "wmdp" else None
    general = load_questions(general_mcq, "--general-mcq") if general_mcq else []
    forget = load_corpus(forget_corpus, "--forget-corpus") if forget_corpus else []
    retain = load_corpus(retain_corpus, "--retain-corpus") if retain_corpus else []
    return RealHazardInputs(str(model), mcq, questions, subject, general_mcq, general, forget_corpus, forget, retain_corpus, retain,
                            configs, scoring, fmt, trust_remote_code)


def run_real_hazard(*, inputs: RealHazardInputs, output: Path, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Measure the user's model (and each unlearned copy) on the questions; write the results folder."""
    import copy

    from unlearnkit.data.copyright_text import TEXT_CONTINUATION
    from unlearnkit.data.encoding import text_windows
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.runs.inputs import model_source
    from unlearnkit.unlearning import unlearn

    check_output_dir(output, overwrite, {"--model": inputs.model})
    source = model_source(inputs.model)  # a model that does not load is refused before anything is written
    tokenizer = load_tokenizer(source, inputs.trust_remote_code)
    target = load_model(source, inputs.trust_remote_code)

    def rows(texts: Sequence[str], role: str) -> list[dict]:
        windows = text_windows(tokenizer, texts, CORPUS_PREFIX_TOKENS, CORPUS_WINDOW_TOKENS)
        if texts and not windows:
            raise UnlearnkitError(f"{role}: every text is {CORPUS_PREFIX_TOKENS} tokens or shorter; each row trains on a "
                                  f"{CORPUS_PREFIX_TOKENS}-token prompt and its continuation, so give longer texts.")
        return [{"question": window["prompt"], "answer": window["gt"]} for window in windows]

    forget_rows, retain_rows = rows(inputs.forget, "--forget-corpus"), rows(inputs.retain, "--retain-corpus")
    with results_folder(output, overwrite, inputs={"--model": inputs.model}) as folder:
        name = "target" if inputs.methods else "model"
        models: dict[str, Any] = {name: target}
        seconds: dict[str, float] = {}
        for method, config in inputs.methods.items():
            start = time.perf_counter()
            models[method] = unlearn(copy.deepcopy(target), tokenizer, method, forget_rows, retain_rows, config, TEXT_CONTINUATION,
                                     show_progress=show_progress).model
            seconds[method] = time.perf_counter() - start
        sets = {"hazard": inputs.mcq, **({"general": inputs.general} if inputs.general else {})}
        texts = {"retain_corpus": retain_rows} if retain_rows else {}
        measured = {}
        for label, model in models.items():
            measured[label] = measure(model, tokenizer, sets, inputs.scoring, inputs.fmt, texts,
                                      {"hazard": inputs.subject, "general": None}, TEXT_CONTINUATION)
        summary = build_summary(measured, seconds, {"preset": None, "scoring": inputs.scoring, "source": inputs.mcq_source,
                                                    "model": inputs.model})
        write(folder / "config.json", {"command": "hazard", **inputs.record()})
        write_results(folder, summary, sets, measured)
    return summary
