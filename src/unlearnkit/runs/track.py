"""What the self-contained tracks share (private data, hazardous knowledge, harmful behaviour, copyrighted text).

A track generates its own data, trains a tiny target from scratch on a built-in preset's architecture and
tokenizer (and the retain oracle from the same initial weights), unlearns a copy of the target with each method
and measures every model; these are the steps every track takes in the same way.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.finetune import FinetuneConfig
from unlearnkit.methods.base import MethodConfig

PLAIN = PromptFormat("plain")  # the tiny built-in models have no chat template
TINY_PRESETS = ("micro", "default")


def check_tiny_preset(preset: str, track: str) -> None:
    if preset not in TINY_PRESETS:
        raise UnlearnkitError(f"Unknown {track}-track preset {preset!r}.{did_you_mean(preset, TINY_PRESETS)} "
                              f"Use one of {', '.join(TINY_PRESETS)}.")


def split_overrides(overrides: Mapping[str, Any], *groups: Collection[str]) -> list[dict[str, Any]]:
    """``--set`` values split by key: one dict per group of keys, then one with every key no group names (the methods')."""
    parts = [{key: value for key, value in overrides.items() if key in group} for group in groups]
    claimed = set().union(*groups) if groups else set()
    return [*parts, {key: value for key, value in overrides.items() if key not in claimed}]


def resolve_track_methods(preset: str, methods: Sequence[str], overrides: Mapping[str, Any],
                          track_settings: Mapping[str, Any] | None = None) -> dict[str, MethodConfig]:
    """Each method's config: the built-in preset's settings for it, the track's settings on top, the user's on top of those.

    Every naming or value error surfaces here, before anything is trained.
    """
    from unlearnkit.builtin import get_preset
    from unlearnkit.unlearning import resolve_method

    if not methods:
        raise UnlearnkitError("--methods is empty; name at least one method (e.g. --methods npo,graddiff).")
    builtin = get_preset(preset)
    return {name: resolve_method(name, overrides, {**builtin.overrides_for(name), **(track_settings or {})})
            for name in dict.fromkeys(methods)}


def train_tiny(preset: str, tokenizer: Any, rows: Sequence[dict], training: FinetuneConfig, show_progress: bool = True,
               fmt: PromptFormat = PLAIN) -> Any:
    """A fresh tiny model of the preset's architecture (seeded by ``training.seed``) fine-tuned on ``rows``.

    The target and the oracle of a track both come from here with the same seed, so they share initial weights.
    """
    from unlearnkit.builtin import get_preset
    from unlearnkit.finetune import finetune
    from unlearnkit.modeling import build_tiny_model

    model = build_tiny_model(get_preset(preset).model, tokenizer, seed=training.seed)
    finetune(model, tokenizer, list(rows), training, fmt, show_progress, warn_below_target=False)
    return model


def unlearn_each(target: Any, tokenizer: Any, methods: Mapping[str, MethodConfig], forget: Sequence[dict],
                 retain: Sequence[dict], show_progress: bool = True, fmt: PromptFormat = PLAIN) -> Iterator[tuple[str, Any, float]]:
    """Per method: (name, a copy of ``target`` unlearned on ``forget`` with ``retain`` as retain set, seconds it took)."""
    from unlearnkit.unlearning import unlearn

    for name, config in methods.items():
        start = time.perf_counter()
        outcome = unlearn(copy.deepcopy(target), tokenizer, name, forget, retain, config, fmt, show_progress=show_progress)
        yield name, outcome.model, time.perf_counter() - start


def answer_perplexity(model: Any, tokenizer: Any, rows: Sequence[dict], fmt: PromptFormat = PLAIN, max_length: int = 256) -> float:
    """exp of the mean NLL per answer token over the rows' (question, answer) pairs (EOS included where ``fmt`` adds one)."""
    from unlearnkit.evaluation.scoring import answer_nll

    nll, tokens = answer_nll(model, tokenizer, fmt, [(row["question"], row["answer"]) for row in rows], max_length=max_length)
    return math.exp(nll.sum() / tokens.sum())


REFERENCE_MODELS = ("target", "oracle", "original", "model")  # the models a track measures methods against, not methods


def before_after(models: Mapping[str, Mapping[str, Any]], metrics: Mapping[str, Sequence[str]],
                 before: str = "target") -> dict[str, dict[str, list]]:
    """Per method (every model but the reference ones): ``{key: [value before, value after]}``.

    ``metrics`` names each headline value by its key path in a model's summary entry, e.g.
    ``{"forget_exposure": ("forget", "mean_exposure")}``; the ``before`` model gives the first values.
    """
    def value(entry: Mapping[str, Any], path: Sequence[str]) -> Any:
        for key in path:
            entry = entry[key]
        return entry

    reference = models[before]
    return {name: {key: [value(reference, path), value(entry, path)] for key, path in metrics.items()}
            for name, entry in models.items() if name not in REFERENCE_MODELS}


def plot_tradeoff(points: Mapping[str, tuple[float, float]], path: Path, *, xlabel: str, ylabel: str, title: str,
                  reference_x: float | None = None, reference_label: str = "") -> None:
    """One labelled point per model (x: the forgetting axis, y: the utility axis); an optional vertical goal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 4))
    for name, (x, y) in points.items():
        axes.scatter(x, y)
        axes.annotate(name, (x, y), fontsize=8)
    if reference_x is not None:
        axes.axvline(reference_x, color="grey", linestyle="--", linewidth=1, label=reference_label or None)
        if reference_label:
            axes.legend(fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
