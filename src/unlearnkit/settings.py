"""Typed settings dataclasses (method hyperparameters, audit settings) built from ``KEY=VALUE`` strings, and their checks.

Every settings dataclass is checked completely when it is built, before any data,
model or output folder is touched: a value of the wrong type, a number that is not
finite, a number out of range or a name the underlying library does not know fails
here, with one message naming the fix, instead of after the results staging folder
exists (or, worse, silently: ``nan`` compares false with every bound, so a check
like ``learning_rate <= 0`` lets it through).

:func:`build_config` turns strings (``--set beta=0.2``) into typed values and
type-checks values given already typed; the ``require_*``/``check_*`` helpers are
what each dataclass's ``__post_init__`` calls.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import numbers
import types
from collections.abc import Iterable
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from unlearnkit.errors import UnlearnkitError, did_you_mean

T = TypeVar("T")

# numpy's global generator (``transformers.set_seed`` seeds it) takes seeds in [0, 2**32 - 1]; torch takes more.
SEED_MAX = 2**32 - 1
_BOOL_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_TYPE_NAMES = {bool: "a bool (true or false)", int: "an int", float: "a float", str: "a string"}

# Schedules the Trainer can build from the settings unlearnkit passes it (no lr_scheduler_kwargs, no evaluation
# strategy): the others of ``transformers.SchedulerType`` stop the run after its staging folder exists.
SCHEDULER_NEEDS = {
    "reduce_lr_on_plateau": "an evaluation strategy during training, which unlearnkit's Trainer runs without",
    "greedy": "an evaluation strategy during training, which unlearnkit's Trainer runs without",
    "cosine_with_min_lr": "min_lr or min_lr_rate in lr_scheduler_kwargs, which unlearnkit does not pass",
    "cosine_warmup_with_min_lr": "min_lr or min_lr_rate in lr_scheduler_kwargs, which unlearnkit does not pass",
    "warmup_stable_decay": "num_decay_steps in lr_scheduler_kwargs, which unlearnkit does not pass",
}
# Optimisers the Trainer builds from torch alone (listed in messages as what always works).
TORCH_OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor", "adagrad", "rmsprop")
# Optimisers unlearnkit builds itself (unlearnkit.optimizers; UnlearnTrainer.create_optimizer), not transformers.
UNLEARNKIT_OPTIMIZERS = ("soul",)
# Optimisers the Trainer builds only with a package torch lacks: (importable module, how to install it).
_BITSANDBYTES = ("bitsandbytes", "pip install bitsandbytes")
OPTIMIZER_PACKAGES: dict[str, tuple[str, str]] = {
    **{name: _BITSANDBYTES for name in (
        "ademamix", "adamw_bnb_8bit", "adamw_8bit", "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit",
        "paged_adamw_8bit", "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
        "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit",
    )},
    "adamw_torch_xla": ("torch_xla", "a TPU/XLA build of torch"),
    "adamw_torch_npu_fused": ("torch_npu", "an Ascend NPU build of torch"),
    "adamw_anyprecision": ("torchdistx", "pip install torchdistx"),
    "adamw_torch_4bit": ("torchao", "pip install torchao"),
    "adamw_torch_8bit": ("torchao", "pip install torchao"),
    "lomo": ("lomo_optim", "pip install lomo-optim"),
    "adalomo": ("lomo_optim", "pip install lomo-optim"),
    "grokadamw": ("grokadamw", "pip install grokadamw"),
    "schedule_free_radam": ("schedulefree", "pip install schedulefree"),
    "schedule_free_adamw": ("schedulefree", "pip install schedulefree"),
    "schedule_free_sgd": ("schedulefree", "pip install schedulefree"),
    "stable_adamw": ("optimi", "pip install torch-optimi"),
}
# Optimisers that also need ``optim_target_modules``, a Trainer setting unlearnkit does not pass: they can never run.
OPTIMIZERS_NEEDING_TARGET_MODULES = (
    "galore_adamw", "galore_adamw_8bit", "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise", "apollo_adamw", "apollo_adamw_layerwise",
)


def build_config(config_cls: type[T], overrides: dict[str, Any], what: str = "hyperparameter") -> T:
    """Instantiate the dataclass ``config_cls`` from string or typed overrides; unknown keys fail with did-you-mean.

    ``what`` names a setting in messages ("hyperparameter", "audit setting").
    """
    known = {f.name: f for f in fields(config_cls)}
    hints = _hints(config_cls)
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in known:
            raise UnlearnkitError(
                f"Unknown {what} {key!r} for {config_cls.__name__}.{did_you_mean(str(key), known)} "
                f"Known: {', '.join(sorted(known))}."
            )
        values[key] = _coerce(key, raw, hints[key], what, known[key].default)
    return config_cls(**values)


def _coerce(key: str, raw: Any, hint: Any, what: str, default: Any = MISSING) -> Any:
    """``raw`` (a ``--set`` string, or a value already typed) as a value of the field's type ``hint``, or a clear error."""
    base, optional = split_optional(hint)
    label = f"{what.capitalize()} {key!r}"
    if not isinstance(raw, str):
        return check_value(label, raw, hint)
    text = raw.strip()
    if not text:
        example = "none" if default is None else default if default is not MISSING else "VALUE"
        raise UnlearnkitError(
            f"{label} has an empty value: give {_TYPE_NAMES.get(base, 'a value')}{' or none' if optional else ''} "
            f"(e.g. {key}={example}), or leave it out to keep its default."
        )
    if optional and text.lower() == "none":
        return None
    if base is bool:
        if text.lower() not in _BOOL_WORDS:
            raise UnlearnkitError(f"{label} needs {_TYPE_NAMES[bool]}, got {raw!r}.")
        return _BOOL_WORDS[text.lower()]
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise UnlearnkitError(f"{label} needs {_TYPE_NAMES[int]} (a whole number such as 8), got {raw!r}.") from None
    if base is float:
        try:
            value = float(text)
        except ValueError:
            raise UnlearnkitError(f"{label} needs {_TYPE_NAMES[float]}, got {raw!r}.") from None
        return check_value(label, value, hint, shown=raw)
    return text


def check_value(label: str, value: Any, hint: Any, shown: Any = None) -> Any:
    """``value`` if it is of the declared type ``hint`` (an int counts as a float; a bool is no number), else a clear error.

    Floats must be finite: ``nan`` passes every ``<=`` check and ``inf`` overflows
    every schedule, so neither can be a meaningful setting.
    """
    base, optional = split_optional(hint)
    shown = value if shown is None else shown
    if value is None:
        if optional:
            return None
        raise UnlearnkitError(f"{label} needs {_TYPE_NAMES.get(base, 'a value')}, got None.")
    if base is bool:
        if not isinstance(value, bool):
            raise UnlearnkitError(f"{label} needs {_TYPE_NAMES[bool]}, got {shown!r} ({type(value).__name__}).")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise UnlearnkitError(f"{label} needs {_TYPE_NAMES[int]}, got {shown!r} ({type(value).__name__}).")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise UnlearnkitError(f"{label} needs {_TYPE_NAMES[float]}, got {shown!r} ({type(value).__name__}).")
        if not math.isfinite(value):
            raise UnlearnkitError(f"{label} must be a finite number, got {shown!r}.")
        return value
    if base is str and not isinstance(value, str):
        raise UnlearnkitError(f"{label} needs {_TYPE_NAMES[str]}, got {shown!r} ({type(value).__name__}).")
    return value


def check_field_types(config: Any) -> None:
    """Every field of the dataclass instance ``config`` holds a value of its declared type (floats finite).

    Called first in ``__post_init__``, so a config built directly in Python is held to what
    :func:`build_config` enforces on ``--set`` strings, and the range checks after it see real numbers.
    """
    hints = _hints(type(config))
    for item in fields(config):
        check_value(item.name, getattr(config, item.name), hints[item.name])


def split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); ``X`` -> (X, False)."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in get_args(hint) if arg is not type(None)]
        return (args[0] if len(args) == 1 else hint), len(args) < len(get_args(hint))
    return hint, False


@functools.cache
def _hints(config_cls: type) -> dict[str, Any]:
    if not is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass.")
    return get_type_hints(config_cls)


# --- Range checks shared by the settings dataclasses -------------------------------------------------------------


def require_positive(**values: float | None) -> None:
    """Each value (None: unset, skipped) is a finite number > 0."""
    for name, value in values.items():
        if value is not None and not (_finite(value) and value > 0):
            raise UnlearnkitError(f"{name} must be > 0 (a finite number), got {value}.")


def require_non_negative(**values: float | None) -> None:
    """Each value (None: unset, skipped) is a finite number >= 0 (0 typically switches a term off)."""
    for name, value in values.items():
        if value is not None and not (_finite(value) and value >= 0):
            raise UnlearnkitError(f"{name} must be >= 0 (a finite number), got {value}.")


def require_at_least(minimum: int, **values: int | None) -> None:
    """Each count (None: unset, skipped) is at least ``minimum``."""
    for name, value in values.items():
        if value is not None and not value >= minimum:
            raise UnlearnkitError(f"{name} must be >= {minimum}, got {value}.")


def require_fraction(name: str, value: float | None, *, low_open: bool = False, high_open: bool = False) -> None:
    """``value`` (None: unset, skipped) lies in [0, 1], each end excluded when asked."""
    if value is None:
        return
    above = value > 0 if low_open else value >= 0
    below = value < 1 if high_open else value <= 1
    if not (_finite(value) and above and below):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise UnlearnkitError(f"{name} must be in {interval}, got {value}.")


def check_seed(name: str, value: int) -> None:
    """A seed every generator accepts: numpy's takes [0, 2**32 - 1]."""
    if not 0 <= value <= SEED_MAX:
        raise UnlearnkitError(f"{name} must be in [0, {SEED_MAX}] (numpy's seed range), got {value}.")


def check_choice(name: str, value: str, choices: Iterable[str]) -> None:
    """``value`` is one of ``choices``; otherwise the closest ones and the full list."""
    options = list(choices)
    if value not in options:
        raise UnlearnkitError(f"{name} must be one of {', '.join(options)}; got {value!r}.{did_you_mean(str(value), options)}")


def check_lr_scheduler(value: str, name: str = "lr_scheduler") -> None:
    """A ``transformers`` scheduler name the Trainer can build from the settings unlearnkit passes."""
    from transformers.trainer_utils import SchedulerType

    known = [member.value for member in SchedulerType]
    usable = [schedule for schedule in known if schedule not in SCHEDULER_NEEDS]
    if value in SCHEDULER_NEEDS:
        raise UnlearnkitError(f"{name}={value} needs {SCHEDULER_NEEDS[value]}. Use one of {', '.join(usable)}.")
    check_choice(name, value, usable)


def check_optimizer(value: str, name: str = "optimizer") -> None:
    """An optimiser the Trainer can build here: unlearnkit's own (``soul``), or a ``transformers`` name whose package is
    installed and that needs no setting unlearnkit lacks."""
    from transformers.training_args import OptimizerNames

    if value in UNLEARNKIT_OPTIMIZERS:
        return
    known = [member.value for member in OptimizerNames]
    if value not in known:
        raise UnlearnkitError(
            f"{name} {value!r} is not an optimiser name transformers knows, nor unlearnkit's own ({', '.join(UNLEARNKIT_OPTIMIZERS)})."
            f"{did_you_mean(str(value), [*UNLEARNKIT_OPTIMIZERS, *known])} "
            f"Torch provides {', '.join(TORCH_OPTIMIZERS)}; the others of transformers' OptimizerNames need a package."
        )
    if value in OPTIMIZERS_NEEDING_TARGET_MODULES:
        raise UnlearnkitError(
            f"{name}={value} needs the Trainer's optim_target_modules, which unlearnkit does not pass. "
            f"Use one torch provides ({', '.join(TORCH_OPTIMIZERS)}); target_modules/layers restrict what is trained."
        )
    package = OPTIMIZER_PACKAGES.get(value)
    if package is not None and not _importable(package[0]):
        raise UnlearnkitError(
            f"{name}={value} needs the {package[0]} package, which is not installed ({package[1]}); "
            f"or use one torch provides: {', '.join(TORCH_OPTIMIZERS)}."
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def config_help(config_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field of the dataclass ``config_cls``, for listings."""
    hints = get_type_hints(config_cls)
    rows = []
    for f in fields(config_cls):
        default = f.default if f.default is not MISSING else None
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), default, f.metadata.get("help", "")))
    return rows
