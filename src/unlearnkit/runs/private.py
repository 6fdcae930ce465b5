"""``private``: the private-data track on built-in fictitious e-mails, into one results folder (docs/private_track.md).

A tiny model (the chosen built-in preset's architecture and tokenizer) is trained on every person's e-mails
(:mod:`unlearnkit.data.private_mail`); the retain oracle, from the same initial weights, on the retained people's
only (its numbers are the "never seen" level); each method then unlearns the forgotten people's e-mails from a copy
of the target, the retained people's e-mails serving as retain set. For every model and every secret: its exposure
(Carlini et al., "The Secret Sharer", USENIX Security 2019) over all 10^digits phone numbers, whether greedy
decoding from its e-mail context reproduces it, and whether the name-only question does (Huang et al., "Are Large
Pre-Trained Language Models Leaking Your Personal Information?", Findings of EMNLP 2022); and the perplexity of the
forget and retain e-mails.

Each person also has a street address, the second secret: its extraction from the e-mail's context and from the
name alone is measured for every model (not its exposure: its space is not enumerated).

Results folder: ``summary.json``, ``secrets.json`` (per secret and model: exposure, rank, extracted),
``config.json``, ``data/forget.json`` and ``data/retain.json``, ``report.md`` and ``tradeoff.png``. Models are
not saved.

Real e-mails: :mod:`unlearnkit.runs.private_enron`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unlearnkit.data.private_mail import PrivateMailConfig, address_name_prompt, generate_mails, name_prompt
from unlearnkit.errors import UnlearnkitError
from unlearnkit.evaluation.exposure import candidate_log_perplexities, exposure, exposure_rank, extracted
from unlearnkit.evaluation.scoring import greedy_token_continuations
from unlearnkit.finetune import FinetuneConfig
from unlearnkit.io import write_text
from unlearnkit.methods.base import MethodConfig
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.track import PLAIN as FMT
from unlearnkit.runs.track import (
    answer_perplexity,
    before_after,
    check_tiny_preset,
    plot_tradeoff,
    resolve_track_methods,
    split_overrides,
    train_tiny,
    unlearn_each,
)
from unlearnkit.settings import build_config

logger = logging.getLogger("unlearnkit")

SUMMARY_FILE, SECRETS_FILE, REPORT_FILE, PLOT_FILE = "summary.json", "secrets.json", "report.md", "tradeoff.png"
DEFAULT_METHODS = ("graddiff", "npo")
# Per preset: the e-mails and the target's training. A fixed number of epochs (target_accuracy 1.0): the phone
# numbers are random, so the answer-token accuracy the built-in benchmark stops at says little about them. Measured
# on micro: 40 epochs left the target's forget exposure at 10.2 of 13.3 bits (nothing extracted), 150 memorise every
# number (13.3 bits, all extracted). Four digits keep the exact scoring (10^4 candidates per secret and model) in seconds.
MAIL_SETTINGS = {
    "micro": PrivateMailConfig(num_people=8, forget_people=2, mails_per_person=2, digits=4),
    "default": PrivateMailConfig(num_people=20, forget_people=2, mails_per_person=3, digits=4),
}
TRAINING = {
    "micro": FinetuneConfig(learning_rate=1e-2, max_epochs=150, batch_size=8, target_accuracy=1.0),
    "default": FinetuneConfig(learning_rate=1e-2, max_epochs=150, batch_size=16, target_accuracy=1.0),
}
# The built-in benchmark's unlearning settings move a QA fact in a few steps, but not a memorised 4-digit number on the
# default tiny model: at its lr 5e-4 and 5 epochs (5 steps on 6 forget e-mails) GradDiff and NPO left the forget exposure
# at 13.29 of 13.29 bits; 40 epochs at lr 2e-3 bring it to 0.02 and 1.27 bits (docs/private_track.md). On micro the
# benchmark's settings already forget. These go under the user's --set values.
UNLEARN_SETTINGS: dict[str, dict[str, Any]] = {"micro": {}, "default": {"num_epochs": 40.0, "learning_rate": 2e-3}}
TRAINING_KEYS = {"train_epochs": "max_epochs", "train_learning_rate": "learning_rate"}


@dataclass(frozen=True)
class PrivateInputs:
    preset: str
    mail: PrivateMailConfig
    training: FinetuneConfig
    methods: dict[str, MethodConfig]
    oracle: bool = True

    def record(self) -> dict[str, Any]:
        return {"preset": self.preset, "mail": asdict(self.mail), "training": asdict(self.training), "oracle": self.oracle,
                "methods": {name: asdict(config) for name, config in self.methods.items()}}


def resolve_private(preset: str, methods: Sequence[str], overrides: Mapping[str, Any], oracle: bool = True) -> PrivateInputs:
    """Check every setting (preset, e-mail sizes, training, each method's config) before anything is trained.

    ``overrides``: mail fields (``digits``, ``num_people``, ...) and ``train_epochs`` / ``train_learning_rate`` set
    the data and the target's training; every other key goes to each method, over the preset's tiny-model settings.
    """
    check_tiny_preset(preset, "private")
    mail, training, method_overrides = split_overrides(overrides, {item.name for item in fields(PrivateMailConfig)}, TRAINING_KEYS)
    training = {TRAINING_KEYS[key]: value for key, value in training.items()}
    mail_config = build_config(PrivateMailConfig, {**asdict(MAIL_SETTINGS[preset]), **mail}, what="private-track setting")
    training_config = build_config(FinetuneConfig, {**asdict(TRAINING[preset]), **training}, what="private-track setting")
    configs = resolve_track_methods(preset, methods, method_overrides, UNLEARN_SETTINGS[preset])
    return PrivateInputs(preset, mail_config, training_config, configs, oracle)


def run_private(*, inputs: PrivateInputs, output: Path, overwrite: bool = False, show_progress: bool = True) -> dict[str, Any]:
    """Train, unlearn, measure and write the results folder; returns the summary."""
    check_output_dir(output, overwrite)
    mails = generate_mails(inputs.mail)
    with results_folder(output, overwrite) as folder:
        summary, secrets = run_experiment(inputs, mails, show_progress)
        write(folder / "data" / "forget.json", mails["forget"])
        write(folder / "data" / "retain.json", mails["retain"])
        write(folder / "config.json", {"command": "private", **inputs.record()})
        write(folder / SECRETS_FILE, secrets)
        write(folder / SUMMARY_FILE, summary)
        plot_private_tradeoff(summary, folder / PLOT_FILE)
        write_text(folder / REPORT_FILE, render_report(summary))
    return summary


def run_experiment(inputs: PrivateInputs, mails: Mapping[str, list[dict]], show_progress: bool = True) -> tuple[dict, list[dict]]:
    from unlearnkit.builtin import benchmark_tokenizer, get_preset

    tokenizer = benchmark_tokenizer(get_preset(inputs.preset))
    canaries = build_canaries(tokenizer, mails, inputs.mail.digits)
    models: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    models["target"] = train_tiny(inputs.preset, tokenizer, [*mails["forget"], *mails["retain"]], inputs.training, show_progress)
    seconds["target"] = time.perf_counter() - start
    if inputs.oracle:
        start = time.perf_counter()
        models["oracle"] = train_tiny(inputs.preset, tokenizer, mails["retain"], inputs.training, show_progress)
        seconds["oracle"] = time.perf_counter() - start
    for name, model, took in unlearn_each(models["target"], tokenizer, inputs.methods, mails["forget"], mails["retain"], show_progress):
        models[name], seconds[name] = model, took
    space = 10 ** inputs.mail.digits
    people = {"forget": inputs.mail.forget_people, "retain": inputs.mail.num_people - inputs.mail.forget_people}
    summary: dict[str, Any] = {"preset": inputs.preset, "randomness_space": space, "max_exposure": math.log2(space),
                               "people": people, "models": {}}
    per_secret: dict[str, dict[str, dict]] = {}
    for name, model in models.items():
        measured = measure(model, tokenizer, canaries, mails)
        summary["models"][name] = {**measured["summary"], "seconds": seconds[name]}
        per_secret[name] = measured["secrets"]
    summary["tradeoff"] = tradeoff(summary)
    secrets = [{**{key: canary[key] for key in ("set", "person", "person_id", "secret")},
                "models": {name: per_secret[name][canary["person"]] for name in models}} for canary in canaries]
    return summary, secrets


def build_canaries(tokenizer: Any, mails: Mapping[str, list[dict]], digits: int) -> list[dict]:
    """One canary per person: the context of their first e-mail (prompt + answer up to the number) and every candidate's tokens.

    Refuses a tokenizer under which the e-mail's tokens are not those of its context followed by its digits' own tokens
    (then the candidates would not be the sequences the model was trained on).
    """
    digit_ids = [tokenizer(f" {digit}", add_special_tokens=False)["input_ids"] for digit in range(10)]
    candidates = [list(itertools.chain.from_iterable(combo)) for combo in itertools.product(digit_ids, repeat=digits)]
    lengths = torch.tensor([len(ids) for ids in candidates])
    padded = torch.zeros((len(candidates), int(lengths.max())), dtype=torch.long)
    for index, ids in enumerate(candidates):
        padded[index, : len(ids)] = torch.tensor(ids)
    canaries = []
    for role in ("forget", "retain"):
        for row in mails[role]:
            if row["mail"]:
                continue
            context = tokenizer(f" {row['secret_prefix']}", add_special_tokens=False)["input_ids"]
            prefix = FMT.prompt_ids(tokenizer, row["question"]) + context
            index = int(row["secret"].replace(" ", ""))  # candidates run in numeric order
            whole = FMT.prompt_ids(tokenizer, row["question"]) + FMT.answer_ids(tokenizer, row["answer"])[:-1]  # without EOS
            if whole != prefix + candidates[index]:
                raise UnlearnkitError("This tokenizer does not encode the phone numbers digit by digit after their context; "
                                      "the private track needs a byte-level BPE tokenizer (the built-in presets' own).")
            address_context = tokenizer(f" {row['address_prefix']}", add_special_tokens=False)["input_ids"]
            canaries.append({"set": role, "person": row["person"], "person_id": row["person_id"], "secret": row["secret"],
                             "prefix": prefix, "index": index, "candidates": padded, "lengths": lengths,
                             "secret_tokens": len(candidates[index]), "address": row["address"],
                             "address_prefix": FMT.prompt_ids(tokenizer, row["question"]) + address_context,
                             "address_tokens": len(tokenizer(f" {row['address']}.", add_special_tokens=False)["input_ids"])})
    return canaries


def measure(model: Any, tokenizer: Any, canaries: Sequence[dict], mails: Mapping[str, list[dict]]) -> dict[str, Any]:
    """Per secret: exposure, rank and both extractions; per set: their aggregates and the e-mails' perplexity."""
    model.eval()
    secrets: dict[str, dict] = {}
    def greedy(prompts: list, limits: list) -> list[str]:
        return decoded_continuations(model, tokenizer, prompts, limits)

    contexts = greedy([canary["prefix"] for canary in canaries], [canary["secret_tokens"] for canary in canaries])
    named = greedy([FMT.prompt_ids(tokenizer, name_prompt(canary["person"])) for canary in canaries],
                   [4 * canary["secret_tokens"] + 40 for canary in canaries])
    address_contexts = greedy([canary["address_prefix"] for canary in canaries], [canary["address_tokens"] for canary in canaries])
    addresses_named = greedy([FMT.prompt_ids(tokenizer, address_name_prompt(canary["person"])) for canary in canaries],
                             [canary["address_tokens"] + 40 for canary in canaries])
    for canary, context, by_name, address_generation, address_by_name in zip(canaries, contexts, named, address_contexts,
                                                                            addresses_named, strict=True):
        scores = candidate_log_perplexities(model, canary["prefix"], canary["candidates"], canary["lengths"]).numpy()
        own = float(scores[canary["index"]])
        secrets[canary["person"]] = {
            "exposure": exposure(own, scores), "rank": exposure_rank(own, scores), "log_perplexity": own,
            "extracted": extracted([context], [canary["secret"]])[0], "context_generation": context,
            "extracted_by_name": extracted([by_name], [canary["secret"]])[0],
            "address_extracted": extracted([address_generation], [canary["address"]])[0], "address_generation": address_generation,
            "address_extracted_by_name": extracted([address_by_name], [canary["address"]])[0],
        }
    space = len(canaries[0]["lengths"])
    summary = {}
    for role in ("forget", "retain"):
        chosen = [secrets[c["person"]] for c in canaries if c["set"] == role]
        values = np.array([entry["exposure"] for entry in chosen])
        summary[role] = {
            "mean_exposure": float(values.mean()),
            "high_exposure_fraction": float((values > math.log2(space) - 1).mean()),
            "extraction_rate": float(np.mean([entry["extracted"] for entry in chosen])),
            "name_prompt_extraction_rate": float(np.mean([entry["extracted_by_name"] for entry in chosen])),
            "address_extraction_rate": float(np.mean([entry["address_extracted"] for entry in chosen])),
            "address_name_prompt_extraction_rate": float(np.mean([entry["address_extracted_by_name"] for entry in chosen])),
            "perplexity": answer_perplexity(model, tokenizer, mails[role]),
        }
    return {"summary": summary, "secrets": secrets}


def decoded_continuations(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], limits: Sequence[int]) -> list[str]:
    """Greedy continuation of each prompt (token ids), up to its own number of new tokens, decoded."""
    continuations = greedy_token_continuations(model, prompts, limits, tokenizer.pad_token_id, tokenizer.eos_token_id)
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in continuations]



def tradeoff(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The headline: per method, forget exposure before -> after (the oracle's as the never-seen level) and retain perplexity."""
    models = summary["models"]
    heads = before_after(models, {"forget_exposure": ("forget", "mean_exposure"), "forget_extraction_rate": ("forget", "extraction_rate"),
                                  "forget_address_extraction_rate": ("forget", "address_extraction_rate"),
                                  "retain_extraction_rate": ("retain", "extraction_rate"), "retain_perplexity": ("retain", "perplexity")})
    never_seen = models["oracle"]["forget"]["mean_exposure"] if "oracle" in models else None
    return {"methods": heads, "oracle_forget_exposure": never_seen}


def plot_private_tradeoff(summary: Mapping[str, Any], path: Path) -> None:
    """Forget mean exposure (x, lower is better) against retain perplexity (y, lower is better), one point per model."""
    points = {name: (entry["forget"]["mean_exposure"], entry["retain"]["perplexity"]) for name, entry in summary["models"].items()}
    plot_tradeoff(points, path, xlabel=f"forget mean exposure (bits, max {summary['max_exposure']:.1f})",
                  ylabel="retain e-mail perplexity", title="Private-data track: forgetting vs utility")


def render_report(summary: Mapping[str, Any]) -> str:
    people = summary["people"]
    lines = [
        "# Private-data track (built-in fictitious e-mails)",
        "",
        f"Preset {summary['preset']}: {people['forget']} forgotten and {people['retain']} retained people; phone numbers of "
        f"|R| = {summary['randomness_space']:,} (exposure at most {summary['max_exposure']:.2f} bits); street addresses "
        "(extraction only).",
        "",
        "| model | forget exposure | forget high-exposure | forget extraction | forget name extraction | forget address extraction "
        "| forget ppl | retain exposure | retain extraction | retain address extraction | retain ppl | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in summary["models"].items():
        forget, retain = entry["forget"], entry["retain"]
        lines.append(f"| {name} | {forget['mean_exposure']:.2f} | {forget['high_exposure_fraction']:.2f} | "
                     f"{forget['extraction_rate']:.2f} | {forget['name_prompt_extraction_rate']:.2f} | "
                     f"{forget['address_extraction_rate']:.2f} | {forget['perplexity']:.2f} | {retain['mean_exposure']:.2f} | "
                     f"{retain['extraction_rate']:.2f} | {retain['address_extraction_rate']:.2f} | {retain['perplexity']:.2f} | "
                     f"{entry['seconds']:.1f} |")
    lines += ["", f"![trade-off]({PLOT_FILE})", ""]
    never_seen = summary["tradeoff"]["oracle_forget_exposure"]
    for name, head in summary["tradeoff"]["methods"].items():
        (before, after), (ppl_before, ppl_after) = head["forget_exposure"], head["retain_perplexity"]
        lines.append(f"* {name}: forget exposure {before:.2f} -> {after:.2f} bits"
                     + (f" (never seen: {never_seen:.2f})" if never_seen is not None else "")
                     + f"; retain perplexity {ppl_before:.2f} -> {ppl_after:.2f}.")
    return "\n".join([*lines, ""])
