"""The search space of ``unlearnkit tune``: one dimension per method setting, parsed, checked and sampled.

A dimension is written ``NAME=KIND:ARGS``:

* ``log:LOW:HIGH``: a float drawn log-uniformly in [LOW, HIGH] (LOW > 0), e.g. ``learning_rate=log:1e-5:1e-3``;
* ``float:LOW:HIGH[:STEP]``: a float drawn uniformly (on a grid of STEP when given), e.g. ``beta=float:0.05:1``;
* ``int:LOW:HIGH[:STEP]``: a whole number, e.g. ``lora_rank=int:0:16:4`` (also for a float setting: whole epochs);
* ``choice:A,B,...``: one of the values, each written as ``--set`` writes it, e.g. ``localizer=choice:none,saliency``.

Every dimension is checked against the method's configuration before anything runs: the setting
exists (closest names otherwise), the kind fits its type, and the configuration accepts both ends of
a range and every choice (with the benchmark's settings and the fixed ``--set`` values around it).

Without ``--space`` the default space is derived from the method's configuration (:func:`default_space`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from unlearnkit.errors import UnlearnkitError, did_you_mean
from unlearnkit.settings import split_optional

KINDS = ("log", "float", "int", "choice")
# The kinds each setting type accepts (an int range suits a float setting: whole epochs).
KINDS_BY_TYPE: dict[type, tuple[str, ...]] = {float: ("log", "float", "int", "choice"), int: ("int", "choice"),
                                              bool: ("choice",), str: ("choice",)}
# How far around its starting value the default space searches a learning rate or a coefficient (log-uniform).
DEFAULT_SPREAD = 10.0
# Float settings that guard the arithmetic (a probability floor, an epsilon) rather than weigh a term: never searched by default.
NUMERICAL_GUARDS = ("floor", "eps", "epsilon")


@dataclass(frozen=True)
class Dimension:
    """One setting searched: a range (``log``, ``float``, ``int``) or a list of choices (strings, as ``--set`` takes them)."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[str, ...] = ()

    def values_to_check(self) -> list[Any]:
        """The values the method's configuration must accept: a range's two ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        if self.kind == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]

    def suggest(self, trial: Any) -> Any:
        """Draw this dimension's value for an Optuna trial (the study records it under ``name``)."""
        if self.kind == "log":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def __str__(self) -> str:
        if self.kind == "choice":
            return f"{self.name}=choice:{','.join(self.choices)}"
        numbers = [self.low, self.high] + ([self.step] if self.step is not None else [])
        return f"{self.name}={self.kind}:" + ":".join(_number_text(value, self.kind) for value in numbers)


def _number_text(value: float | None, kind: str) -> str:
    return str(int(value)) if kind == "int" else repr(float(value))


def _round(value: float) -> float:
    """Six significant digits: a derived range end reads as written (5e-05, not 5.000000000000001e-05)."""
    return float(f"{value:.6g}")


def parse_dimension(text: str) -> Dimension:
    """``"learning_rate=log:1e-5:1e-3"`` -> a :class:`Dimension`; a malformed entry fails with an example."""
    name, sep, rest = (part.strip() for part in str(text).partition("="))
    kind, _, args = (part.strip() for part in rest.partition(":"))
    example = "e.g. --space learning_rate=log:1e-5:1e-3 or --space retain_loss=choice:nll,kl"
    if not sep or not name or not kind:
        raise UnlearnkitError(f"--space {text!r}: write NAME=KIND:ARGS with KIND one of {', '.join(KINDS)} ({example}).")
    if kind not in KINDS:
        raise UnlearnkitError(f"--space {text!r}: unknown kind {kind!r}.{did_you_mean(kind, KINDS)} Use one of {', '.join(KINDS)} "
                              f"({example}).")
    if kind == "choice":
        choices = tuple(choice.strip() for choice in args.split(",") if choice.strip())
        if len(choices) < 2:
            raise UnlearnkitError(f"--space {text!r}: a choice needs two values or more, comma-separated; to fix one value "
                                  f"use --set {name}=VALUE instead.")
        if len(set(choices)) < len(choices):
            raise UnlearnkitError(f"--space {text!r}: a value is listed twice; list each once.")
        return Dimension(name, kind, choices=choices)
    return _range(text, name, kind, [part.strip() for part in args.split(":")])


def _range(text: str, name: str, kind: str, parts: list[str]) -> Dimension:
    shape = "LOW:HIGH" if kind == "log" else "LOW:HIGH[:STEP]"
    if len(parts) not in ((2,) if kind == "log" else (2, 3)) or not all(parts):
        raise UnlearnkitError(f"--space {text!r}: {kind} takes {shape}, e.g. {name}={kind}:{'1e-5:1e-3' if kind == 'log' else '1:10'}.")
    numbers = []
    for part in parts:
        try:
            number = int(part) if kind == "int" else float(part)
        except ValueError:
            raise UnlearnkitError(f"--space {text!r}: {part!r} is not {'a whole number' if kind == 'int' else 'a number'}.") from None
        if not math.isfinite(number):
            raise UnlearnkitError(f"--space {text!r}: {part!r} is not a finite number.")
        numbers.append(number)
    low, high, step = numbers[0], numbers[1], numbers[2] if len(numbers) == 3 else None
    if low > high:
        raise UnlearnkitError(f"--space {text!r}: LOW ({parts[0]}) is above HIGH ({parts[1]}); write the range LOW:HIGH.")
    if low == high:
        raise UnlearnkitError(f"--space {text!r}: the range is empty (LOW = HIGH); to fix one value use --set {name}={parts[0]}.")
    if kind == "log" and low <= 0:
        raise UnlearnkitError(f"--space {text!r}: a log range needs LOW > 0 (got {parts[0]}); use float:LOW:HIGH to include 0.")
    if step is not None and not 0 < step <= high - low:
        raise UnlearnkitError(f"--space {text!r}: STEP must be > 0 and at most HIGH - LOW ({high - low:g}).")
    return Dimension(name, kind, float(low), float(high), None if step is None else float(step))


def parse_space(entries: Sequence[str] | None) -> tuple[Dimension, ...]:
    """Every ``--space`` entry, each setting once."""
    dimensions = tuple(parse_dimension(entry) for entry in entries or ())
    names = [dimension.name for dimension in dimensions]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise UnlearnkitError(f"--space names {', '.join(twice)} more than once; give each setting one range or choice.")
    return dimensions


def check_space(method: str, dimensions: Sequence[Dimension], fixed: Mapping[str, Any], build: Any) -> None:
    """Refuse, before anything runs, a space the method's configuration cannot take.

    ``build(overrides)`` builds the method's configuration from settings on top of the benchmark's (raising
    :class:`UnlearnkitError`); each range end and each choice is built with the fixed settings around it.
    """
    from unlearnkit.methods import METHODS

    if not dimensions:
        raise UnlearnkitError(f"The search space for {method} is empty: give at least one --space NAME=KIND:ARGS "
                              "(e.g. --space learning_rate=log:1e-5:1e-3).")
    config_cls = METHODS.get(method).config
    hints = get_type_hints(config_cls)
    known = [item.name for item in fields(config_cls)]
    for dimension in dimensions:
        label = f"--space {dimension}"
        if dimension.name not in hints:
            raise UnlearnkitError(f"{label}: {method} has no setting {dimension.name!r}.{did_you_mean(dimension.name, known)} "
                                  f"Its settings: {', '.join(known)} (`unlearnkit methods -v`).")
        if dimension.name == "seed":
            raise UnlearnkitError(f"{label}: seeds are not searched; give them with --seeds (each trial runs every seed).")
        if dimension.name in fixed:
            raise UnlearnkitError(f"{label}: {dimension.name} is also fixed by --set {dimension.name}={fixed[dimension.name]}; "
                                  "search it or fix it, not both.")
        base, _ = split_optional(hints[dimension.name])
        allowed = KINDS_BY_TYPE.get(base, ("choice",))
        if dimension.kind not in allowed:
            raise UnlearnkitError(f"{label}: {dimension.name} is {_type_name(base)}, which takes "
                                  f"{' or '.join(allowed)}, not {dimension.kind}.")
        for value in dimension.values_to_check():
            try:
                build({**fixed, dimension.name: value})
            except UnlearnkitError as error:
                raise UnlearnkitError(f"{label}: {method} refuses {dimension.name}={value}: {error}") from None


def _type_name(base: Any) -> str:
    names = {float: "a float setting", int: "a whole-number setting", bool: "a true/false setting", str: "a text setting"}
    return names.get(base, "a setting")


def default_space(method: str, config: Any, fixed: Mapping[str, Any], build: Any) -> tuple[Dimension, ...]:
    """The space searched without ``--space``, derived from the method's configuration ``config`` (as resolved).

    * ``learning_rate``: log-uniform within 10x either side of the resolved value (the benchmark's for its tiny
      models), and ``num_epochs``: whole epochs from half to twice the resolved value; for methods trained
      by an optimiser only;
    * each float coefficient the method declares itself (not the shared optimisation settings, not a numerical
      guard such as a probability floor or an epsilon), with a value > 0: log-uniform within 10x either side, its
      top end cut to 1 where the configuration only takes fractions; a coefficient whose range the configuration
      refuses is left out.

    Settings fixed with ``--set`` are not searched.
    """
    from unlearnkit.methods import METHODS
    from unlearnkit.methods.base import MethodConfig

    spec = METHODS.get(method)
    candidates: list[Dimension] = []
    if spec.trainer.uses_optimizer:
        rate = float(config.learning_rate)
        candidates.append(Dimension("learning_rate", "log", _round(rate / DEFAULT_SPREAD), _round(rate * DEFAULT_SPREAD)))
        epochs = float(config.num_epochs)
        low = max(1, round(epochs / 2))
        candidates.append(Dimension("num_epochs", "int", float(low), float(max(low + 1, round(2 * epochs)))))
    shared = {item.name for item in fields(MethodConfig)}
    hints = get_type_hints(type(config))
    for item in fields(config):
        value = getattr(config, item.name)
        if item.name in shared or hints[item.name] is not float or not isinstance(value, float) or value <= 0:
            continue
        if set(item.name.split("_")) & set(NUMERICAL_GUARDS):
            continue
        candidates.append(_coefficient(item.name, value, fixed, build))
    return tuple(dimension for dimension in candidates if dimension is not None and dimension.name not in fixed)


def _coefficient(name: str, value: float, fixed: Mapping[str, Any], build: Any) -> Dimension | None:
    """``name`` searched log-uniformly around ``value``; None when the configuration takes no such range."""
    highs = [_round(value * DEFAULT_SPREAD)] + ([1.0] if value < 1.0 else [])
    for high in highs:
        dimension = Dimension(name, "log", _round(value / DEFAULT_SPREAD), high)
        try:
            for end in dimension.values_to_check():
                build({**fixed, name: end})
        except UnlearnkitError:
            continue
        return dimension
    return None


def dimensions_json(dimensions: Sequence[Dimension]) -> list[str]:
    """The space as ``tune.json`` records it: one ``NAME=KIND:ARGS`` per dimension, sorted by name."""
    return sorted(str(dimension) for dimension in dimensions)
