"""``copyright``: the copyrighted-text track, verbatim memorisation before and after unlearning (docs/copyright_track.md).

The setting of Who's Harry Potter (Eldan & Russinovich, "Who's Harry Potter? Approximate Unlearning in LLMs", arXiv
2310.02238, 2023): a model recites a text it must no longer reproduce. Two ways to run it:

* a pretrained model (``--model smollm2-135m``, or a folder) and the shipped public-domain passages it was measured
  to recite (:mod:`unlearnkit.data.copyright_text`), or the user's own text (``--text FILE``, read by the catalog's
  ``copyrighted`` loader); no oracle exists (nobody can retrain the model without the text);
* the built-in analogue (``--preset micro|default``): a tiny model trained from scratch on generated fictitious
  works until it recites them, and the retain oracle trained the same way without the forget work.

Passages have roles: ``forget`` (unlearned), ``heldout`` (the same work, never trained on by the methods),
``keep`` (other works the model must still recite). Each is cut into VerbMem chunks (prompt, true continuation);
methods train on the forget chunks as raw text continuation rows, with the retain texts' chunks as retain set.
Every model is measured on VerbMem (Shi et al., "MUSE: Machine Unlearning Six-Way Evaluation for Language Models",
ICLR 2025: ROUGE-L F1 of the greedy continuation, and ROUGE-L recall beside it) for each role, and on the perplexity
of general English text it was never unlearned on.

Results folder: ``summary.json``, ``chunks.json`` (per chunk and model: prompt, true continuation, generation,
ROUGE-L F1 and recall), ``config.json``, ``data/passages.json``, ``report.md`` and ``tradeoff.png``. Models are not
saved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from unlearnkit.data.copyright_text import (
    ANALOGUE_ANCHORS_FILE,
    ANCHORS_FILE,
    CONTINUATION_TOKENS,
    PREFIX_TOKENS,
    ROLES,
    TEXT_CONTINUATION,
    AnalogueConfig,
    analogue_passages,
    chunk_rows,
    load_passages,
    passage_chunks,
    resource_file,
)
from unlearnkit.errors import UnlearnkitError
from unlearnkit.finetune import FinetuneConfig
from unlearnkit.io import write_text
from unlearnkit.methods.base import MethodConfig
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.track import (
    before_after,
    check_tiny_preset,
    plot_tradeoff,
    resolve_track_methods,
    split_overrides,
    train_tiny,
    unlearn_each,
)
from unlearnkit.settings import build_config, check_field_types, require_at_least

logger = logging.getLogger("unlearnkit")

SUMMARY_FILE, CHUNKS_FILE, REPORT_FILE, PLOT_FILE = "summary.json", "chunks.json", "report.md", "tradeoff.png"
DEFAULT_METHODS = ("whp", "npo", "ga")
DEFAULT_MODEL = "smollm2-135m"
# The preset whose unlearning settings a pretrained model gets: the methods' own defaults (the authors' lr 1e-5) with a
# batch of 16 (builtin.py's smollm2 preset). The shipped forget set is 13 chunks: a batch of 4 gives each epoch four
# optimiser steps where 16 would give one (the real-knowledge benchmark's reasoning for its small corpus).
PRETRAINED_PRESET = "smollm2"
PRETRAINED_SETTINGS: dict[str, Any] = {"batch_size": 4}
ANALOGUE_SIZES = {"micro": AnalogueConfig(forget_passages=4, keep_passages=2, retain_passages=2),
                  "default": AnalogueConfig(forget_passages=8, keep_passages=3, retain_passages=3)}
# The analogue's tiny models recite their book for longer than SmolLM2 recites the shipped text: MUSE's longer
# continuations then measure more (micro with 8-token continuations: target forget / keep VerbMem 0.64 / 0.70; with 32:
# 0.78 / 0.95).
ANALOGUE_CHUNKING = {"continuation_tokens": 32}
# The tiny target recites its training chunks after a fixed number of epochs (memorisation, not a held-out accuracy).
ANALOGUE_TRAINING = {
    "micro": FinetuneConfig(learning_rate=1e-2, max_epochs=100, batch_size=8, target_accuracy=1.0),
    "default": FinetuneConfig(learning_rate=1e-2, max_epochs=100, batch_size=8, target_accuracy=1.0),
}
TRAINING_KEYS = {"train_epochs": "max_epochs", "train_learning_rate": "learning_rate"}
# The analogue's unlearning settings over the preset's, under the user's --set values. On `default` the preset's
# (lr 5e-4, batch 32: one step per epoch on 11 forget chunks, 5 steps) left forget VerbMem at 0.961 -> 0.896 (npo,
# ga) and 0.961 (whp); batch 8 at lr 1e-3 for 10 epochs gave 0.71 / 0.81 / 0.38; batch 8 at lr 2e-3 for 20 epochs
# brings NPO to the oracle's level (0.16 vs 0.20, keep 0.87 -> 0.63; docs/copyright_track.md). Micro's settings
# already forget.
UNLEARN_SETTINGS: dict[str, dict[str, Any]] = {"micro": {}, "default": {"batch_size": 8, "num_epochs": 20.0, "learning_rate": 2e-3}}


@dataclass(frozen=True)
class ChunkConfig:
    """How passages are cut into VerbMem chunks and scored."""

    prefix_tokens: int = field(default=PREFIX_TOKENS, metadata={"help": "Tokens of a chunk's prompt (MUSE: 32; passages are short)."})
    continuation_tokens: int = field(
        default=CONTINUATION_TOKENS,
        metadata={"help": "Tokens of a chunk's true continuation, and greedy tokens generated (MUSE: 128; the analogue: 32)."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per generation batch."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(1, prefix_tokens=self.prefix_tokens, continuation_tokens=self.continuation_tokens, batch_size=self.batch_size)


@dataclass(frozen=True)
class CopyrightInputs:
    """What a copyright run works on, resolved and checked."""

    methods: dict[str, MethodConfig]
    passages: list[dict[str, Any]] = field(repr=False)
    retain_texts: list[str] = field(repr=False)
    general_texts: list[str] = field(repr=False)
    chunking: ChunkConfig = ChunkConfig()
    model: str | None = None  # a pretrained model (name or folder); None: the built-in analogue
    preset: str | None = None
    training: FinetuneConfig | None = None
    analogue: AnalogueConfig | None = None
    text: str | None = None
    anchors: str | None = None
    oracle: bool = True

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "preset": self.preset, "text": self.text, "anchors": self.anchors, "oracle": self.oracle,
                "chunking": asdict(self.chunking), "training": asdict(self.training) if self.training else None,
                "analogue": asdict(self.analogue) if self.analogue else None, **TEXT_CONTINUATION.record(),
                "methods": {name: asdict(config) for name, config in self.methods.items()}}


def resolve_copyright(*, model: str | None, preset: str | None, methods: Sequence[str], overrides: Mapping[str, Any],
                      text: str | Path | None = None, anchors: str | Path | None = None, oracle: bool = True) -> CopyrightInputs:
    """Check every input (model or preset, text, dictionary, settings, each method's config) before anything is trained.

    ``overrides``: ``prefix_tokens`` and ``continuation_tokens`` set the chunks; the analogue's sizes
    (``forget_passages``, ...) and ``train_epochs`` / ``train_learning_rate`` set the built-in analogue (with
    ``--preset`` only); every other key goes to each method.
    """
    from unlearnkit.data.real_knowledge import load_corpus, load_general_text

    if model is not None and preset is not None:
        raise UnlearnkitError("--model and --preset exclude each other: --model unlearns a pretrained model's memorised text, "
                              "--preset trains the built-in analogue. Drop one.")
    chunk_keys = {"prefix_tokens", "continuation_tokens"}
    analogue_keys = {item.name for item in fields(AnalogueConfig)}
    chunk_values, analogue_values, training_values, method_overrides = split_overrides(overrides, chunk_keys, analogue_keys, TRAINING_KEYS)
    base_chunking = ANALOGUE_CHUNKING if preset is not None else {}
    chunking = build_config(ChunkConfig, {**base_chunking, **chunk_values}, what="copyright-track setting")
    if preset is None and (analogue_values or training_values):
        raise UnlearnkitError(f"{', '.join(sorted({*analogue_values, *training_values}))} set(s) the built-in analogue's data and "
                              "training; add --preset micro or --preset default, or drop them.")
    anchors_path = _resolve_anchors(anchors, text, methods)
    general = load_general_text()
    if preset is not None:
        check_tiny_preset(preset, "copyright")
        analogue = build_config(AnalogueConfig, {**asdict(ANALOGUE_SIZES[preset]), **analogue_values}, what="copyright-track setting")
        training = {TRAINING_KEYS[key]: value for key, value in training_values.items()}
        training_config = build_config(FinetuneConfig, {**asdict(ANALOGUE_TRAINING[preset]), **training}, what="copyright-track setting")
        passages, retain = analogue_passages(analogue)
        if text is not None:
            passages = [p for p in passages if p["role"] == "keep"] + _user_passages(text)
        elif anchors_path is None:
            anchors_path = str(resource_file(ANALOGUE_ANCHORS_FILE))
        configs = _method_configs(preset, methods, method_overrides, anchors_path, UNLEARN_SETTINGS[preset])
        return CopyrightInputs(configs, passages, retain, general, chunking, None, preset, training_config, analogue,
                               _text(text), anchors_path, oracle)
    from unlearnkit.modeling import check_model_source

    model = model or DEFAULT_MODEL
    check_model_source(model)  # a typo fails here, with a did-you-mean
    shipped = load_passages()
    passages = [p for p in shipped if p["role"] == "keep"] + _user_passages(text) if text is not None else shipped
    if text is None and anchors_path is None:
        anchors_path = str(resource_file(ANCHORS_FILE))
    retain = [row["text"] for row in load_corpus("neighbour")]
    configs = _method_configs(PRETRAINED_PRESET, methods, method_overrides, anchors_path, PRETRAINED_SETTINGS)
    return CopyrightInputs(configs, passages, retain, general, chunking, str(model), None, None, None, _text(text), anchors_path, False)


def _text(path: str | Path | None) -> str | None:
    return None if path is None else str(path)


def _resolve_anchors(anchors: str | Path | None, text: str | Path | None, methods: Sequence[str]) -> str | None:
    """WHP's dictionary: ``--anchors``, else ``anchored_terms.json`` beside ``--text``; checked now (None: the shipped one)."""
    from unlearnkit.data.anchors import load_anchored_terms
    from unlearnkit.data.catalog.copyrighted import TERMS_FILE

    if anchors is not None:
        if "whp" not in methods:
            raise UnlearnkitError("--anchors is WHP's anchored-term dictionary and no other method reads it; add whp to --methods "
                                  "or drop --anchors.")
        load_anchored_terms(anchors)
        return str(anchors)
    if text is not None:
        beside = (Path(text) if Path(text).is_dir() else Path(text).parent) / TERMS_FILE
        return str(beside) if beside.is_file() else None
    return None


def _user_passages(text: str | Path) -> list[dict[str, Any]]:
    """The user's text through the catalog's ``copyrighted`` loader: every passage a forget passage of one work."""
    from unlearnkit.data.catalog import load

    rows = load(f"copyrighted:passages@{text}")
    return [{"id": f"{row['source_file']}#{index}", "work": "user-text", "title": row["source_file"], "source": str(text),
             "text": row["text"], "role": "forget"} for index, row in enumerate(rows)]


def _method_configs(preset: str, methods: Sequence[str], overrides: Mapping[str, Any], anchors: str | None,
                    settings: Mapping[str, Any] | None = None) -> dict[str, MethodConfig]:
    """Each method's config (the preset's settings, then the track's, then the user's); WHP gets the dictionary."""
    if not methods:
        raise UnlearnkitError("--methods is empty; name at least one method (e.g. --methods whp,npo,ga).")
    configs: dict[str, MethodConfig] = {}
    for name in dict.fromkeys(methods):
        track = {**(settings or {}), **({"anchored_terms": anchors} if name == "whp" and anchors is not None else {})}
        configs.update(resolve_track_methods(preset, [name], overrides, track))
    return configs


def run_copyright(*, inputs: CopyrightInputs, output: Path, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train (analogue) or load (pretrained), unlearn, measure and write the results folder; returns the summary."""
    check_output_dir(output, overwrite, {"--text": inputs.text} if inputs.text else None)
    tokenizer = _tokenizer(inputs)
    chunks = _chunks(tokenizer, inputs)
    with results_folder(output, overwrite) as folder:
        summary, per_chunk = run_experiment(inputs, tokenizer, chunks, show_progress)
        write(folder / "data" / "passages.json", inputs.passages)
        write(folder / "config.json", {"command": "copyright", **inputs.record()})
        write(folder / CHUNKS_FILE, per_chunk)
        write(folder / SUMMARY_FILE, summary)
        plot_copyright_tradeoff(summary, folder / PLOT_FILE)
        write_text(folder / REPORT_FILE, render_report(summary))
    return summary


def _tokenizer(inputs: CopyrightInputs) -> Any:
    if inputs.model is None:
        from unlearnkit.builtin import benchmark_tokenizer, get_preset

        return benchmark_tokenizer(get_preset(inputs.preset))
    from unlearnkit.modeling import load_tokenizer

    return load_tokenizer(inputs.model)


def _chunks(tokenizer: Any, inputs: CopyrightInputs) -> dict[str, list[dict]]:
    """VerbMem chunks per role and of the retain texts; refuses a forget set without any."""
    chunking = inputs.chunking
    by_role = {role: passage_chunks(tokenizer, [p for p in inputs.passages if p["role"] == role], chunking.prefix_tokens,
                                    chunking.continuation_tokens) for role in ROLES}
    if not by_role["forget"]:
        raise UnlearnkitError(f"No forget passage is longer than prefix_tokens={chunking.prefix_tokens} tokens, so there is nothing to "
                              "prompt with and nothing to forget; pass a longer text or lower prefix_tokens.")
    retain = [{"id": f"retain-{i}", "work": "retain", "text": text} for i, text in enumerate(inputs.retain_texts)]
    by_role["retain"] = passage_chunks(tokenizer, retain, chunking.prefix_tokens, chunking.continuation_tokens)
    return by_role


def run_experiment(inputs: CopyrightInputs, tokenizer: Any, chunks: Mapping[str, list[dict]],
                   show_progress: bool = True) -> tuple[dict[str, Any], list[dict]]:
    models: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if inputs.model is None:
        trained = [*chunks["forget"], *chunks["heldout"], *chunks["keep"], *chunks["retain"]]
        models["target"] = train_tiny(inputs.preset, tokenizer, _text_rows(trained), inputs.training, show_progress)
        seconds["target"] = time.perf_counter() - start
        if inputs.oracle:
            start = time.perf_counter()
            never_forget = [*chunks["keep"], *chunks["retain"]]
            models["oracle"] = train_tiny(inputs.preset, tokenizer, _text_rows(never_forget), inputs.training, show_progress)
            seconds["oracle"] = time.perf_counter() - start
    else:
        from unlearnkit.modeling import load_model

        models["target"] = load_model(inputs.model, dtype="float32")
        seconds["target"] = time.perf_counter() - start
    forget_rows, retain_rows = chunk_rows(chunks["forget"]), chunk_rows(chunks["retain"])
    unlearned = unlearn_each(models["target"], tokenizer, inputs.methods, forget_rows, retain_rows, show_progress, TEXT_CONTINUATION)
    for name, model, took in unlearned:
        models[name], seconds[name] = model, took
    summary: dict[str, Any] = {"mode": "analogue" if inputs.model is None else "pretrained", "model": inputs.model,
                               "preset": inputs.preset, "chunking": asdict(inputs.chunking),
                               "chunks": {role: len(chunks[role]) for role in (*ROLES, "retain")}, "models": {}}
    per_model: dict[str, dict[str, list[dict]]] = {}
    for name, model in models.items():
        start = time.perf_counter()
        measured, samples = measure(model, tokenizer, chunks, inputs.general_texts, inputs.chunking)
        summary["models"][name] = {**measured, "seconds": seconds[name], "measure_seconds": time.perf_counter() - start}
        per_model[name] = samples
    summary["tradeoff"] = tradeoff(summary)
    # "reference": the true continuation as VerbMem scores it (MUSE cuts it with the special tokens counted).
    per_chunk = [{"set": role, **{key: chunk[key] for key in ("passage", "work", "chunk", "prompt", "gt")},
                  "reference": per_model["target"][role][index].pop("reference"),
                  "models": {name: _without_reference(per_model[name][role][index]) for name in models}}
                 for role in ROLES for index, chunk in enumerate(chunks[role])]
    return summary, per_chunk


def _without_reference(sample: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in sample.items() if key != "reference"}


def _text_rows(chunks: Sequence[dict]) -> list[dict[str, str]]:
    """Chunks as whole texts (loss on every token): what the analogue's tiny target memorises."""
    return [{"text": chunk["prompt"] + chunk["gt"]} for chunk in chunks]


def measure(model: Any, tokenizer: Any, chunks: Mapping[str, list[dict]], general_texts: Sequence[str],
            chunking: ChunkConfig) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """Per role: mean VerbMem (ROUGE-L F1) and ROUGE-L recall over its chunks, with per-chunk values; general perplexity."""
    from unlearnkit.evaluation.metrics import rouge_l_recall
    from unlearnkit.evaluation.muse import MuseConfig, verbmem
    from unlearnkit.evaluation.real_knowledge import perplexity, text_nll

    config = MuseConfig(verbmem_max_new_tokens=chunking.continuation_tokens, batch_size=chunking.batch_size)
    result: dict[str, Any] = {}
    samples: dict[str, list[dict]] = {}
    for role in ROLES:
        if not chunks[role]:
            result[role], samples[role] = None, []
            continue
        score = verbmem(model, tokenizer, chunks[role], config)
        recalls = rouge_l_recall([s["generation"] for s in score.per_sample], [s["gt"] for s in score.per_sample])
        samples[role] = [{"reference": s["gt"], "generation": s["generation"], "rouge_l_f1": s["rouge_l_f1"], "rouge_l_recall": float(r)}
                         for s, r in zip(score.per_sample, recalls, strict=True)]
        result[role] = {"verbmem": score.value, "rouge_l_recall": float(np.mean(recalls)), "chunks": len(chunks[role])}
    result["general_perplexity"] = perplexity(*text_nll(model, tokenizer, general_texts))
    return result, samples


def tradeoff(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The headline: per method, VerbMem on forget / held-out / keep chunks and general perplexity, before -> after."""
    models = summary["models"]
    measured_roles = [role for role in ROLES if models["target"][role]]  # a role without chunks has no VerbMem
    heads = before_after(models, {**{f"{role}_verbmem": (role, "verbmem") for role in measured_roles},
                                  "general_perplexity": ("general_perplexity",)})
    never_seen = models["oracle"]["forget"]["verbmem"] if "oracle" in models else None
    return {"methods": heads, "oracle_forget_verbmem": never_seen}


def plot_copyright_tradeoff(summary: Mapping[str, Any], path: Path) -> None:
    """Forget VerbMem (x, lower is better) against keep VerbMem (y, higher is better), one point per model."""
    points = {name: (entry["forget"]["verbmem"], entry["keep"]["verbmem"] if entry["keep"] else float("nan"))
              for name, entry in summary["models"].items()}
    never_seen = summary["tradeoff"]["oracle_forget_verbmem"]
    plot_tradeoff(points, path, xlabel="forget VerbMem (ROUGE-L F1, lower is better)",
                  ylabel="keep VerbMem (ROUGE-L F1, higher is better)", title="Copyright track: forgetting vs keeping",
                  reference_x=never_seen, reference_label="oracle (never read the work)" if never_seen is not None else "")


def render_report(summary: Mapping[str, Any]) -> str:
    where = (f"pretrained model {summary['model']}" if summary["mode"] == "pretrained"
             else f"built-in analogue, preset {summary['preset']}")
    counts = summary["chunks"]
    chunking = summary["chunking"]
    lines = [
        "# Copyright track (verbatim memorisation)",
        "",
        f"{where}. VerbMem chunks: {chunking['prefix_tokens']}-token prompts, {chunking['continuation_tokens']}-token greedy "
        f"continuations; {counts['forget']} forget, {counts['heldout']} held-out, {counts['keep']} keep chunks; "
        f"{counts['retain']} retain chunks for the methods.",
        "",
        "| model | forget VerbMem | forget ROUGE-L recall | held-out VerbMem | keep VerbMem | keep ROUGE-L recall "
        "| general ppl | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["models"].items():
        lines.append(f"| {name} | {_cell(entry['forget'], 'verbmem')} | {_cell(entry['forget'], 'rouge_l_recall')} | "
                     f"{_cell(entry['heldout'], 'verbmem')} | {_cell(entry['keep'], 'verbmem')} | "
                     f"{_cell(entry['keep'], 'rouge_l_recall')} | {entry['general_perplexity']:.2f} | {entry['seconds']:.1f} |")
    lines += ["", f"![trade-off]({PLOT_FILE})", ""]
    never_seen = summary["tradeoff"]["oracle_forget_verbmem"]
    for name, head in summary["tradeoff"]["methods"].items():
        before, after = head["forget_verbmem"]
        text = f"* {name}: forget VerbMem {before:.3f} -> {after:.3f}"
        text += f" (never read: {never_seen:.3f})" if never_seen is not None else ""
        if "keep_verbmem" in head:
            text += f"; keep VerbMem {head['keep_verbmem'][0]:.3f} -> {head['keep_verbmem'][1]:.3f}"
        ppl_before, ppl_after = head["general_perplexity"]
        lines.append(f"{text}; general perplexity {ppl_before:.2f} -> {ppl_after:.2f}.")
    return "\n".join([*lines, ""])


def _cell(entry: Mapping[str, Any] | None, key: str) -> str:
    return "–" if entry is None else f"{entry[key]:.3f}"
