"""``wrap``: build an inference-time unlearning wrapper around a model, into one results folder.

Results folder (documented in docs/inference.md): ``model/`` (the wrapped
model: ``wrapper.json``, the tokenizer and the wrapper's own parts, loadable
wherever a model is accepted: ``eval``, ``audit``, ``real-knowledge``,
``serve``), ``summary.json`` (what building measured: a classifier's held-out
accuracy, a tuned strength, training losses), ``config.json`` (the wrapper, its
paper and settings, the model and data with their digests, versions) and
``log.txt``. The target model is read, never changed: the wrapper refers to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.inference import WRAPPERS, WrapData, WrapperSpec
from unlearnkit.inference.loading import save_wrapped
from unlearnkit.runs.folder import check_output_dir, results_folder, write
from unlearnkit.runs.inputs import Builtin, DataChoice, ModelChoice, RunOptions, resolve_data, resolve_model
from unlearnkit.runs.lock import locks_output
from unlearnkit.settings import build_config

logger = logging.getLogger("unlearnkit")

MODEL_FOLDER = "model"


@dataclass(frozen=True)
class WrapperChoice:
    """A registered wrapper and its validated settings."""

    name: str
    settings: Any

    @property
    def spec(self) -> WrapperSpec:
        return WRAPPERS.get(self.name)


@dataclass(frozen=True)
class WrapInputs:
    """Everything ``wrap`` works on, resolved: the model, the wrapper, the forget rows and (when it needs them) retain rows."""

    model: ModelChoice
    wrapper: WrapperChoice
    forget: DataChoice
    retain: DataChoice | None


def resolve_wrapper(name: str, overrides: Mapping[str, Any]) -> WrapperChoice:
    """Look the wrapper up (did-you-mean on a typo) and build its settings from ``--set`` values."""
    spec = WRAPPERS.get(name)
    return WrapperChoice(name, build_config(spec.config, dict(overrides), what=f"{name} setting"))


def resolve_wrap(
    *, model: str, wrapper: WrapperChoice, forget: str, retain: str | None, builtin: Builtin,
    prompt_format: PromptFormat = PromptFormat(),
) -> WrapInputs:
    """Resolve ``wrap``'s inputs: the data first (a bad row fails before any model loads), then the model.

    A built-in forget split brings its default retain split; a wrapper that needs retain rows refuses to run without them.
    """
    from unlearnkit.runs.inputs import is_wrapped_source

    if is_wrapped_source(model):
        raise UnlearnkitError(f"{model} is already a wrapped model; wrap its target model instead ('target' in its wrapper.json).")
    forget_rows = resolve_data(forget, "forget", builtin)
    if retain is None and builtin.is_forget_split(forget):
        retain = builtin.default_retain(forget)
    if retain is None and wrapper.spec.needs_retain:
        raise UnlearnkitError(f"The {wrapper.name} wrapper learns from retain rows too: give --retain DATA.")
    retain_rows = resolve_data(retain, "retain", builtin) if retain is not None else None
    if not forget_rows.rows:
        raise UnlearnkitError(f"The forget data {forget} holds no rows; the wrapper has nothing to forget.")
    return WrapInputs(resolve_model(model, prompt_format, builtin), wrapper, forget_rows, retain_rows)


@locks_output
def run_wrap(*, inputs: WrapInputs, options: RunOptions) -> dict[str, Any]:
    """Build the wrapper and write its results folder; returns the summary.

    The wrapper is built (trained, tuned) before anything is written, so a failure leaves no folder behind.
    """
    from unlearnkit.modeling import load_model, load_tokenizer
    from unlearnkit.provenance import environment, rows_sha256, weights_sha256

    model, wrapper = inputs.model, inputs.wrapper
    reads = {"--model": model.source, "--forget": inputs.forget.source}
    if inputs.retain is not None:
        reads["--retain"] = inputs.retain.source
    check_output_dir(options.output, options.overwrite, reads)
    network = load_model(model.source, options.trust_remote_code)
    tokenizer = load_tokenizer(model.source, options.trust_remote_code)
    model.fmt.check(tokenizer)
    network.eval()
    data = WrapData(inputs.forget.rows, inputs.retain.rows if inputs.retain is not None else (), model.fmt)
    logger.info("building the %s wrapper on %d forget row(s)", wrapper.name, len(data.forget))
    started = time.perf_counter()
    wrapped = wrapper.spec.wrapper.build(network, tokenizer, data, wrapper.settings, progress=options.show_progress)
    summary = {"wrapper": wrapper.name, "family": wrapper.spec.family, "forget_rows": len(data.forget),
               "retain_rows": len(data.retain), "build_seconds": round(time.perf_counter() - started, 3), **wrapped.build_record}
    run_config = {
        "command": "wrap", "wrapper": wrapper.name, "paper": wrapper.spec.paper, "settings": asdict(wrapper.settings),
        "model": model.source, "forget": inputs.forget.source, "retain": inputs.retain.source if inputs.retain else None,
        **model.fmt.record(), "environment": environment(),
        "sha256": {"forget_rows": rows_sha256(data.forget), "retain_rows": rows_sha256(data.retain),
                   "target_model": weights_sha256(model.source)},
    }
    with results_folder(options.output, options.overwrite) as folder:
        save_wrapped(wrapped, model.source, folder / MODEL_FOLDER)
        write(folder / "config.json", run_config)
        write(folder / "summary.json", summary)
    return summary
