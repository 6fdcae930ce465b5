"""Wrapped-model folders: save a wrapper beside a reference to its target, load it back wherever a model is accepted.

A folder holds ``wrapper.json`` (the wrapper, its settings, the target's source
and the wrapper's parts), the target's tokenizer files (so every command that
reads a tokenizer from the model folder gets the right one) and the wrapper's
own parts. The target model is referenced by its source (folder, pretrained
name or hub name), loaded and checked as any model is, and never changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference import WRAPPERS
from unlearnkit.inference.base import WRAPPER_FILE, WrappedModel, is_wrapped_folder, read_wrapper_record, wrapper_record
from unlearnkit.modeling import load_model, load_tokenizer
from unlearnkit.provenance import weights_sha256
from unlearnkit.settings import build_config


def save_wrapped(wrapped: WrappedModel, target_source: str, folder: Path) -> None:
    """Write ``wrapped`` into the (new, empty) ``folder``: its parts, the tokenizer and ``wrapper.json`` last."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = wrapped.save_parts(folder)
    wrapped.tokenizer.save_pretrained(folder)
    record = wrapper_record(wrapped, target_source, weights_sha256(target_source), parts)
    (folder / WRAPPER_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def load_wrapped(folder: Path, trust_remote_code: bool = False) -> WrappedModel:
    """The wrapped model saved in ``folder``; its target loads from the source ``wrapper.json`` names."""
    record = read_wrapper_record(folder)
    spec = WRAPPERS.get(record["wrapper"])
    try:
        settings = build_config(spec.config, record["settings"], what=f"{spec.name} setting")
    except UnlearnkitError as error:
        raise UnlearnkitError(f"{folder / WRAPPER_FILE} holds settings this version refuses: {error}") from None
    try:
        model = load_model(record["target"], trust_remote_code)
    except UnlearnkitError as error:
        raise UnlearnkitError(
            f"The wrapped model in {folder} wraps the target {record['target']} ('target' in {WRAPPER_FILE}), which cannot be "
            f"loaded: {error} Put the target back there, or build the wrapper again."
        ) from None
    if record.get("target_sha256") and weights_sha256(record["target"]) != record["target_sha256"]:
        raise UnlearnkitError(
            f"The target {record['target']} of the wrapped model in {folder} has changed since the wrapper was built (its weights' "
            "digest differs from 'target_sha256' in wrapper.json): what the wrapper learnt may not fit it. Build the wrapper again."
        )
    tokenizer = load_tokenizer(folder, trust_remote_code)
    wrapped = spec.wrapper.load_parts(model, tokenizer, settings, folder, record["parts"])
    wrapped.eval()
    return wrapped


def load_any_model(source: str | Path, trust_remote_code: bool = False) -> nn.Module:
    """A wrapped model when ``source`` is a wrapped-model folder, else the causal LM :func:`load_model` loads."""
    if is_wrapped_folder(source):
        return load_wrapped(Path(source), trust_remote_code)
    return load_model(source, trust_remote_code)


def describe_wrapped(folder: Path) -> dict[str, Any]:
    """What a wrapped-model folder holds, for records: wrapper, settings and target source."""
    record = read_wrapper_record(folder)
    return {"wrapper": record["wrapper"], "settings": record["settings"], "target": record["target"]}

