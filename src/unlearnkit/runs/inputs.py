"""What the user named, resolved once into typed objects that the runners take (never strings).

Each input is checked once, as early as it can be: names and values before
anything is loaded or written, data before a model loads, the model after.

* :class:`Builtin`: the built-in benchmark of a preset and cache, prepared only
  when something asks for it; it answers its own questions (its split names,
  prompt format, default retain split, evaluation sets, oracle reference);
* :func:`resolve_method`: a method name and ``--set`` values -> :class:`MethodChoice`;
* :func:`resolve_data`: a data source -> :class:`DataChoice` (rows read once, with its generation cap);
* :func:`resolve_model`: a model name -> :class:`ModelChoice` (with its prompt format); a pretrained
  model's name (:mod:`unlearnkit.pretrained`) becomes its converted folder, converted on first use;
* :func:`check_outputs`: no output may destroy what the command reads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearnkit.data.encoding import PromptFormat
from unlearnkit.errors import UnlearnkitError
from unlearnkit.modeling import WRAPPER_FILE

BUILTIN_MODEL = "builtin"
# Names of the built-in benchmark's own models, where a command accepts a model.
BUILTIN_MODELS = ("builtin", "builtin-target", "builtin-oracle")
# The inputs (as :func:`check_outputs` names them) that take a model, and so a pretrained model's name.
MODEL_ROLES = ("--model", "MODEL", "--target", "--oracle", "--base")
# What each built-in model name stands for (``unlearnkit models``).
BUILTIN_MODEL_HELP = {
    "builtin": "the built-in benchmark's target (as builtin-target); unlearn's default with a built-in forget split",
    "builtin-target": "the built-in benchmark's target: the preset's model (a tiny Llama, or a pretrained one fine-tuned) "
                      "trained on every split, forget and retain",
    "builtin-oracle": "the retain oracle of a forget split (--benchmark SPLIT): the same model trained without that split",
}


class Builtin:
    """The built-in benchmark of one preset and cache; prepared (data, target, oracles) on first use, then reused."""

    def __init__(self, preset: str = "default", cache: Path | None = None, show_progress: bool = True) -> None:
        from unlearnkit.builtin import get_preset

        self.preset = preset
        self.config = get_preset(preset)  # an unknown preset fails here, before anything else
        self.cache = cache
        self.show_progress = show_progress
        self._prepared: Any = None
        self._oracles: set[str] = set()

    @property
    def root(self) -> Path:
        """Where it lives (refusing a ``--cache`` that is a file); an input of every command that uses it."""
        from unlearnkit.builtin import benchmark_root

        return benchmark_root(self.config, self.cache)

    def owns(self, source: str | None) -> bool:
        """Whether ``source`` names one of this benchmark's splits (and not an existing file or a hub/TOFU/MUSE name)."""
        from unlearnkit.data.world import split_names

        return source is not None and str(source) in split_names() and not Path(str(source)).exists()

    def prepared(self, *forget_splits: str) -> Any:
        """The prepared benchmark, with the retain oracles of ``forget_splits`` trained (cached on disk)."""
        from unlearnkit.builtin import prepare

        missing = tuple(split for split in forget_splits if split not in self._oracles)
        if self._prepared is None or missing:
            self._prepared = prepare(self.config, self.cache, missing, self.show_progress)
            self._oracles.update(missing)
        return self._prepared

    @property
    def prompt_format(self) -> PromptFormat:
        """How the preset's models are trained and asked (plain prompts for the tiny models, a chat template for a pretrained base)."""
        return self.config.prompt_format

    def is_forget_split(self, name: str | None) -> bool:
        from unlearnkit.builtin import FORGET_SPLITS

        return name in FORGET_SPLITS and self.owns(name)

    def rows(self, name: str) -> list[dict]:
        return self.prepared().split(name)

    def default_retain(self, forget_split: str) -> str:
        return self.prepared().retain_split(forget_split)

    def evaluation_splits(self, forget_split: str) -> dict[str, list[dict]]:
        return self.prepared(forget_split).eval_splits(forget_split)

    def reference_path(self, forget_split: str) -> Path:
        return self.prepared(forget_split).reference_path(forget_split)

    def model_dir(self, name: str, forget_split: str | None = None) -> Path:
        """``builtin``/``builtin-target``: the target; ``builtin-oracle``: the retain oracle of ``forget_split``."""
        if name == "builtin-oracle":
            if forget_split is None:
                raise UnlearnkitError("builtin-oracle needs a forget split (--benchmark SPLIT) to name its oracle.")
            return self.prepared(forget_split).oracle_dir(forget_split)
        return self.prepared().target_dir


@dataclass(frozen=True)
class MethodChoice:
    """A registered method and its validated configuration."""

    name: str
    config: Any

    @property
    def spec(self) -> Any:
        from unlearnkit.methods import METHODS

        return METHODS.get(self.name)


def parse_sets(pairs: Sequence[str] | None) -> dict[str, str]:
    """``KEY=VALUE`` strings -> a dict; malformed or contradictory pairs are refused."""
    overrides: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise UnlearnkitError(f"--set expects KEY=VALUE, got {pair!r} (e.g. --set learning_rate=1e-4).")
        if key in overrides and overrides[key] != value:
            raise UnlearnkitError(f"--set {key} is given twice, as {overrides[key]!r} and {value!r}; keep one.")
        overrides[key] = value
    return overrides


def resolve_method(name: str, overrides: Mapping[str, Any], builtin: Builtin | None = None) -> MethodChoice:
    """Look the method up and build its config; on the built-in model its tiny-model settings go under ``overrides``."""
    from unlearnkit.unlearning import resolve_method as build_method_config

    defaults = builtin.config.overrides_for(name) if builtin is not None else None
    return MethodChoice(name, build_method_config(name, overrides, defaults=defaults))


@dataclass(frozen=True)
class DataChoice:
    """QA rows as read once from what the user named; ``split`` is the built-in split's name when it is one."""

    source: str
    role: str
    rows: list[dict] = field(repr=False)
    split: str | None = None

    @property
    def max_new_tokens(self) -> int:
        """Greedy tokens generated per question of this data unless --max-new-tokens says otherwise: its source's cap
        (the built-in splits' 48, TOFU's 200, MUSE knowmem's 32, else 200)."""
        from unlearnkit.builtin import MAX_NEW_TOKENS
        from unlearnkit.data.qa import source_max_new_tokens

        return MAX_NEW_TOKENS if self.split else source_max_new_tokens(self.source)


def with_caps(config: Any, caps: Mapping[str, int]) -> Any:
    """``config`` (an EvalConfig) with ``caps`` as its split caps where it names none itself; its max_new_tokens, if set, still wins."""
    return dataclasses.replace(config, split_max_new_tokens={**caps, **config.split_max_new_tokens})


def resolve_data(source: str, role: str, builtin: Builtin | None = None, required: Sequence[str] | None = None) -> DataChoice:
    """Read a built-in split, a file, a hub dataset or a TOFU/MUSE name; validated row by row (see :func:`load_qa`)."""
    from unlearnkit.data.qa import QA_FIELDS, load_qa

    split = str(source) if builtin is not None and builtin.owns(source) else None
    rows = load_qa(source, role=role, builtin=builtin.rows if split else None, required=required or QA_FIELDS)
    return DataChoice(str(source), role, rows, split)


@dataclass(frozen=True)
class ModelChoice:
    """A model as the loaders take it (a folder or a hub name), what the user called it, and its prompt format."""

    source: str
    named: str
    fmt: PromptFormat

    @property
    def builtin(self) -> bool:
        return self.named in BUILTIN_MODELS


def resolve_model(
    name: str, prompt_format: PromptFormat = PromptFormat(), builtin: Builtin | None = None, forget_split: str | None = None
) -> ModelChoice:
    """The built-in models by name (plain prompts, as they were trained); anything else with ``--prompt-format``.

    A pretrained model's name (``smollm2-135m``) stands for its converted folder in the cache: converted now
    on first use, checked and reused after, so the run records and hashes that folder like any model folder.
    """
    if name in BUILTIN_MODELS and builtin is not None:
        check_builtin_format(prompt_format, builtin)
        return ModelChoice(str(builtin.model_dir(name, forget_split)), name, builtin.prompt_format)
    return ModelChoice(model_source(name), str(name), prompt_format)


def is_wrapped_source(name: str) -> bool:
    """Whether ``name`` is a wrapped model (``unlearnkit wrap``): its folder, or a wrap results folder holding it in ``model/``."""
    folder = Path(str(name))
    return (folder / WRAPPER_FILE).is_file() or (folder / "model" / WRAPPER_FILE).is_file()


def model_source(name: str) -> str:
    """Where a model loads from: a pretrained model's converted folder (converting it on first use), else ``name`` itself.

    A local folder of the same name wins, as it does everywhere a model is loaded.
    """
    from unlearnkit.pretrained import ensure_converted, is_pretrained_name

    text = str(name)
    if is_pretrained_name(text) and not Path(text).exists():
        return str(ensure_converted(text))
    return text


def check_builtin_format(prompt_format: PromptFormat, builtin: Builtin) -> None:
    """The built-in models are asked as they were trained: refuse another prompt format rather than ignore it."""
    if prompt_format in (PromptFormat(), builtin.prompt_format):
        return
    given = [f"--prompt-format {prompt_format.style}"] if prompt_format.style not in ("auto", builtin.prompt_format.style) else []
    given += [option for option, value in (("--system-prompt", prompt_format.system_prompt), ("--date-string", prompt_format.date_string))
              if value is not None]
    raise UnlearnkitError(f"The built-in models are asked in {builtin.prompt_format.style} prompts, as they were trained: "
                          f"drop {' and '.join(given)}.")


@dataclass(frozen=True)
class Evaluation:
    """What a run evaluates on: named splits of rows, the oracle's reference (for forget quality), the settings."""

    splits: dict[str, list[dict]] = field(repr=False)
    reference: dict[str, Any] | None
    config: Any


def load_oracle_reference(path: Path | str | None) -> dict[str, Any] | None:
    from unlearnkit.evaluation.evaluator import load_reference

    return load_reference(path) if path else None


@dataclass(frozen=True)
class RunOptions:
    """How a command writes its results folder and reports progress."""

    output: Path
    overwrite: bool = False
    show_progress: bool = True
    checkpoint_every: int = 0
    resume: bool = False
    trust_remote_code: bool = False


def check_outputs(
    output: Path | None,
    overwrite: bool,
    *,
    builtin: Builtin | None = None,
    files: Mapping[str, Path | None] | None = None,
    **inputs: Any,
) -> None:
    """Before any work: no output may destroy what the command reads (its models, data, references, the cache).

    ``inputs`` are the command's options and arguments that name something it
    reads, keyword by option name (an argument's name in capitals, e.g. ``MODEL``);
    ``files`` are outputs other than the results folder (a reference file, a report).
    """
    from unlearnkit.runs.folder import check_output_dir, check_spares_inputs

    read: dict[str, Any] = {}
    for name, value in inputs.items():
        for each in value if isinstance(value, (list, tuple)) else [value]:
            read.update(local_inputs(name if name.isupper() else f"--{name.replace('_', '-')}", each))
    if builtin is not None:
        read["the built-in benchmark's cache"] = builtin.root
    if output is not None:
        check_output_dir(output, overwrite, read)
    check_spares_inputs({role: path for role, path in (files or {}).items() if path is not None}, read)


def local_inputs(role: str, value: Any) -> dict[str, Any]:
    """The local paths behind one input: a file or folder, a TOFU/MUSE name's ``@DIR``, an adapter's base model, a
    pretrained model's converted folder (its path known without converting; a missing package is refused here)."""
    from unlearnkit.pretrained import converted_dir, is_pretrained_name

    if value is None:
        return {}
    text = str(value)
    found: dict[str, Any] = {role: text}
    if role in MODEL_ROLES and is_pretrained_name(text) and not Path(text).exists():
        found[role] = str(converted_dir(text))
    _, sep, rest = text.partition(":")
    if sep and "@" in rest and not Path(text).exists():
        found[role] = rest.rpartition("@")[2]  # tofu:forget10@DIR reads DIR
    wrapper = Path(text) / WRAPPER_FILE
    if wrapper.is_file():  # a wrapped model reads its target and any other model it names
        with contextlib.suppress(ValueError, OSError, AttributeError, TypeError):  # the loader reports a damaged wrapper.json
            record = json.loads(wrapper.read_text(encoding="utf-8"))
            found[f"the target of {role}"] = record.get("target")
            for name, source in (record.get("references") or {}).items():
                found[f"the {name} model of {role}"] = source
    adapter = Path(text) / "adapter_config.json"
    if adapter.is_file():
        with contextlib.suppress(ValueError, OSError, AttributeError):  # the model loader reports a damaged adapter
            found[f"the base model of {role}"] = json.loads(adapter.read_text(encoding="utf-8")).get("base_model_name_or_path")
    return found
