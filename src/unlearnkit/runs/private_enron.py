"""``private --enron``: the private-data track on real Enron e-mails (docs/private_track.md).

A user's model is probed for the e-mail addresses of Enron senders with Huang et al.'s zero-shot and context prompts
("Are Large Pre-Trained Language Models Leaking Your Personal Information?", Findings of EMNLP 2022;
:mod:`unlearnkit.data.enron_pairs`), before and after each method unlearns the chosen senders' e-mails from a copy.
Results folder: ``summary.json``, ``people.json`` (per person, prompt setting and model: the generation, the predicted
address and whether it is the person's), ``config.json``, ``data/forget.json`` and ``data/retain.json``, ``report.md``
and ``tradeoff.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearnkit.data.catalog.enron import LAYOUTS
from unlearnkit.data.enron_pairs import (
    PersonPair,
    address_context,
    context_prompt_ids,
    extract_pairs,
    mail_text,
    predicted_address,
    score_prediction,
    sender_address,
    zero_shot_prompt,
)
from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.io import write_text
from unlearnkit.methods.base import MethodConfig
from unlearnkit.runs.folder import results_folder, write
from unlearnkit.runs.private import PLOT_FILE, REPORT_FILE, SUMMARY_FILE, decoded_continuations
from unlearnkit.runs.track import answer_perplexity, before_after, plot_tradeoff, split_overrides, unlearn_each
from unlearnkit.settings import build_config, check_field_types, require_at_least

MAIL_QUESTION = "E-mail"  # every Enron e-mail is one row: this fixed question, the e-mail's text as the answer


@dataclass(frozen=True)
class EnronTrackConfig:
    """How the real-data run picks its people and e-mails and how it prompts (Huang et al., Findings of EMNLP 2022)."""

    forget_people: int = field(default=2, metadata={"help": "People forgotten: the senders with the most e-mails (unless --forget-names)."})
    probe_people: int = field(default=50, metadata={"help": "Retained people (most e-mails first) whose addresses are probed too."})
    mails_per_person: int = field(default=20, metadata={"help": "At most this many e-mails of each forgotten person to unlearn."})
    retain_mails: int = field(default=200, metadata={"help": "Retain e-mails: the first ones of the other senders, in corpus order."})
    templates: str = field(default="a,b,c,d", metadata={"help": "Zero-shot templates, comma-separated (Huang et al.'s A-D)."})
    context_tokens: str = field(default="50,100,200", metadata={"help": "Context prompt lengths in tokens, comma-separated."})
    max_new_tokens: int = field(default=100, metadata={"help": "Greedy tokens generated per prompt (100 in Huang et al.'s code)."})
    max_length: int = field(default=256, metadata={"help": "Tokens of an e-mail's text kept for unlearning and perplexity."})

    def __post_init__(self) -> None:
        check_field_types(self)
        require_at_least(1, forget_people=self.forget_people, mails_per_person=self.mails_per_person,
                         retain_mails=self.retain_mails, max_new_tokens=self.max_new_tokens, max_length=self.max_length)
        require_at_least(0, probe_people=self.probe_people)
        for template in self.template_list:
            zero_shot_prompt("", template)
        contexts = self.context_list  # refuses a malformed list now, before anything is read
        if not self.template_list and not contexts:
            raise UnlearnkitError("templates and context_tokens are both empty: give at least one prompt setting.")

    @property
    def template_list(self) -> list[str]:
        return [item.strip().lower() for item in self.templates.split(",") if item.strip()]

    @property
    def context_list(self) -> list[int]:
        items = [item.strip() for item in self.context_tokens.split(",") if item.strip()]
        if not all(item.isdigit() and int(item) > 0 for item in items):
            raise UnlearnkitError(f"context_tokens must be positive whole numbers, comma-separated (e.g. 50,100,200), got "
                                  f"{self.context_tokens!r}.")
        return [int(item) for item in items]


@dataclass(frozen=True)
class EnronInputs:
    corpus: str
    model: str
    config: EnronTrackConfig
    methods: dict[str, MethodConfig]
    forget: list[PersonPair]
    probed: list[PersonPair]
    rows: list[dict] = field(repr=False)

    def record(self) -> dict[str, Any]:
        return {"enron": self.corpus, "model": self.model, "settings": asdict(self.config),
                "forget_people": [asdict(pair) for pair in self.forget], "probed_people": [asdict(pair) for pair in self.probed],
                "methods": {name: asdict(config) for name, config in self.methods.items()}}


def resolve_enron(corpus: str, model: str, methods: Sequence[str], overrides: Mapping[str, Any],
                  forget_names: Sequence[str] = ()) -> EnronInputs:
    """Read the corpus, extract its (name, address) pairs and check every setting before anything is loaded or written.

    ``overrides``: :class:`EnronTrackConfig` fields; every other key goes to each method, over the method's own defaults.
    """
    from unlearnkit.data.catalog import load
    from unlearnkit.unlearning import resolve_method

    track, method_overrides = split_overrides(overrides, {item.name for item in fields(EnronTrackConfig)})
    config = build_config(EnronTrackConfig, track, what="private-track setting")
    if not methods:
        raise UnlearnkitError("--methods is empty; name at least one method (e.g. --methods npo,graddiff).")
    configs = {name: resolve_method(name, method_overrides, {}) for name in dict.fromkeys(methods)}
    if not Path(corpus).exists():
        raise UnlearnkitError(f"--enron {corpus} does not exist; pass the unpacked corpus ({LAYOUTS}).")
    rows = load(f"enron@{corpus}")
    pairs = extract_pairs(rows)
    if len(pairs) < 2:
        raise UnlearnkitError(f"--enron {corpus}: found {len(pairs)} (name, address) pair(s) in its senders, and the track needs "
                              "at least 2 (one to forget, one to retain). A pair needs a sender address that is not generic "
                              "and a display name of 2-3 words (X-From or the From header's name).")
    forget = _chosen_people(pairs, config.forget_people, forget_names)
    if len(forget) >= len(pairs):
        raise UnlearnkitError(f"Forgetting {len(forget)} of the corpus's {len(pairs)} people leaves no one to retain; forget fewer.")
    forgotten = {pair.address for pair in forget}
    probed = [pair for pair in pairs if pair.address not in forgotten][: config.probe_people]
    return EnronInputs(corpus, model, config, configs, forget, probed, rows)


def _chosen_people(pairs: Sequence[PersonPair], count: int, names: Sequence[str]) -> list[PersonPair]:
    if not names:
        return list(pairs[:count])
    by_name = {pair.name.lower(): pair for pair in pairs}
    missing = [name for name in names if name.strip().lower() not in by_name]
    if missing:
        raise UnlearnkitError(f"--forget-names: no sender named {', '.join(repr(name) for name in missing)} in the corpus."
                              f"{did_you_mean(missing[0], [pair.name for pair in pairs])} Senders with the most e-mails: "
                              f"{', '.join(pair.name for pair in pairs[:5])}.")
    return list(dict.fromkeys(by_name[name.strip().lower()] for name in names))


def enron_split(inputs: EnronInputs) -> dict[str, list[dict]]:
    """Forget rows: the forgotten people's e-mails (``mails_per_person`` each); retain rows: other senders' first e-mails."""
    name_of = {pair.address: pair.name for pair in extract_pairs(inputs.rows)}
    forgotten = {pair.address for pair in inputs.forget}
    split: dict[str, list[dict]] = {"forget": [], "retain": []}
    taken: dict[str, int] = {}
    for row in inputs.rows:
        address = sender_address(row)
        if address is None or address not in name_of:
            continue
        entry = {"question": MAIL_QUESTION, "answer": mail_text(row, name_of[address], address), "file": row["file"],
                 "person": name_of[address]}
        if address in forgotten:
            if taken.get(address, 0) < inputs.config.mails_per_person:
                taken[address] = taken.get(address, 0) + 1
                split["forget"].append(entry)
        elif len(split["retain"]) < inputs.config.retain_mails:
            split["retain"].append(entry)
    if not split["retain"]:
        raise UnlearnkitError("The corpus holds no e-mail of a retained person: the methods need retain e-mails.")
    return split


def run_enron(*, inputs: EnronInputs, output: Path, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Load the model, probe it, unlearn each method from a copy, probe again; write the results folder; returns the summary."""
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.runs.inputs import check_outputs, model_source

    check_outputs(output, overwrite, enron=inputs.corpus, model=inputs.model)
    split = enron_split(inputs)
    source = model_source(inputs.model)
    tokenizer = load_tokenizer(source)
    original = load_model(source, dtype=torch.float32)
    probes = build_probes(tokenizer, inputs)
    with results_folder(output, overwrite) as folder:
        models: dict[str, Any] = {"original": original}
        seconds: dict[str, float] = {"original": 0.0}
        for name, model, took in unlearn_each(original, tokenizer, inputs.methods, split["forget"], split["retain"], show_progress):
            models[name], seconds[name] = model, took
        summary: dict[str, Any] = {"enron": inputs.corpus, "model": inputs.model, "settings": _settings(inputs.config),
                                   "people": {"forget": len(inputs.forget), "retain": len(inputs.probed)},
                                   "mails": {role: len(rows) for role, rows in split.items()}, "models": {}}
        per_probe: dict[str, list[dict]] = {}
        for name, model in models.items():
            measured = measure_enron(model, tokenizer, probes, split, inputs.config)
            summary["models"][name] = {**measured["summary"], "seconds": seconds[name]}
            per_probe[name] = measured["probes"]
        summary["tradeoff"] = enron_tradeoff(summary)
        people = [{key: probe[key] for key in ("set", "person", "address", "setting")}
                  | {"models": {name: per_probe[name][index] for name in models}} for index, probe in enumerate(probes)]
        write(folder / "data" / "forget.json", split["forget"])
        write(folder / "data" / "retain.json", split["retain"])
        write(folder / "config.json", {"command": "private", **inputs.record()})
        write(folder / "people.json", people)
        write(folder / SUMMARY_FILE, summary)
        plot_tradeoff({name: (entry["forget"]["extraction_rate"], entry["retain"]["extraction_rate"])
                       for name, entry in summary["models"].items()}, folder / PLOT_FILE,
                      xlabel="forgotten people: extraction rate (all prompts)", ylabel="retained people: extraction rate",
                      title="Private-data track (Enron): forgetting vs keeping")
        write_text(folder / REPORT_FILE, render_enron_report(summary))
    return summary


def _settings(config: EnronTrackConfig) -> list[str]:
    return [f"zero_shot-{template}" for template in config.template_list] + [f"context-{k}" for k in config.context_list]


def build_probes(tokenizer: Any, inputs: EnronInputs) -> list[dict]:
    """One prompt per person and setting: the zero-shot templates, and the context lengths where a body holds the address."""
    probes = []
    for role, people in (("forget", inputs.forget), ("retain", inputs.probed)):
        for pair in people:
            for template in inputs.config.template_list:
                ids = tokenizer(zero_shot_prompt(pair.name, template), add_special_tokens=False)["input_ids"]
                probes.append({"set": role, "person": pair.name, "address": pair.address, "setting": f"zero_shot-{template}",
                               "prompt": ids})
            context = address_context(inputs.rows, pair.address)
            for tokens in inputs.config.context_list if context else ():
                probes.append({"set": role, "person": pair.name, "address": pair.address, "setting": f"context-{tokens}",
                               "prompt": context_prompt_ids(tokenizer, context, tokens)})
    return probes


def measure_enron(model: Any, tokenizer: Any, probes: Sequence[dict], split: Mapping[str, list[dict]],
                  config: EnronTrackConfig) -> dict[str, Any]:
    """Per probe: the generation, the predicted address and its scores; per set and setting: the rates; the e-mails' perplexity."""
    model.eval()
    generations = decoded_continuations(model, tokenizer, [probe["prompt"] for probe in probes], [config.max_new_tokens] * len(probes))
    scored = []
    for probe, generation in zip(probes, generations, strict=True):
        predicted = predicted_address(generation)
        scored.append({"generation": generation, "prediction": predicted, **score_prediction(predicted, probe["address"])})
    summary = {}
    for role in ("forget", "retain"):
        chosen = [(probe, entry) for probe, entry in zip(probes, scored, strict=True) if probe["set"] == role]
        by_setting = {}
        for setting in _settings(config):
            entries = [entry for probe, entry in chosen if probe["setting"] == setting]
            by_setting[setting] = {"prompts": len(entries), **{f"{key}_rate": float(np.mean([e[key] for e in entries])) if entries else None
                                                              for key in ("predicted", "correct", "correct_local", "correct_domain")}}
        summary[role] = {"extraction_rate": float(np.mean([entry["correct"] for _, entry in chosen])) if chosen else None,
                         "settings": by_setting,
                         "perplexity": (answer_perplexity(model, tokenizer, split[role], max_length=config.max_length)
                                        if role in split else None)}
    return {"summary": summary, "probes": scored}



def enron_tradeoff(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Per method: forget and retain extraction rate (all prompts) and retain-e-mail perplexity, before -> after."""
    return {"methods": before_after(summary["models"], {"forget_extraction_rate": ("forget", "extraction_rate"),
                                                        "retain_extraction_rate": ("retain", "extraction_rate"),
                                                        "retain_perplexity": ("retain", "perplexity")}, before="original")}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_enron_report(summary: Mapping[str, Any]) -> str:
    people = summary["people"]
    lines = ["# Private-data track (Enron e-mails)", "",
             f"Model {summary['model']}, corpus {summary['enron']}: {people['forget']} forgotten and {people['retain']} probed retained "
             f"people; {summary['mails']['forget']} forget and {summary['mails']['retain']} retain e-mails. Extraction: the first "
             "address of the greedy output is the person's own (Huang et al., Findings of EMNLP 2022).", "",
             "| model | set | " + " | ".join(summary["settings"]) + " | all | ppl |",
             "|---|---|" + "---|" * (len(summary["settings"]) + 2)]
    for name, entry in summary["models"].items():
        for role in ("forget", "retain"):
            cells = [_rate(entry[role]["settings"][setting]["correct_rate"]) for setting in summary["settings"]]
            lines.append(f"| {name} | {role} | " + " | ".join(cells) + f" | {_rate(entry[role]['extraction_rate'])} | "
                         f"{_rate(entry[role]['perplexity'])} |")
    lines += ["", f"![trade-off]({PLOT_FILE})", ""]
    for name, head in summary["tradeoff"]["methods"].items():
        (f_before, f_after), (r_before, r_after) = head["forget_extraction_rate"], head["retain_extraction_rate"]
        lines.append(f"* {name}: forgotten people's extraction {_rate(f_before)} -> {_rate(f_after)}; retained people's "
                     f"{_rate(r_before)} -> {_rate(r_after)}.")
    return "\n".join([*lines, ""])
