"""Typed settings dataclasses (method hyperparameters, audit settings) built from ``KEY=VALUE`` strings."""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any, TypeVar, get_args, get_type_hints

from unlearnkit.errors import UnlearnkitError, did_you_mean

T = TypeVar("T")


def build_config(config_cls: type[T], overrides: dict[str, Any], what: str = "hyperparameter") -> T:
    """Instantiate the dataclass ``config_cls`` from string or typed overrides; unknown keys fail with did-you-mean.

    ``what`` names a setting in messages ("hyperparameter", "audit setting").
    """
    known = {f.name: f for f in fields(config_cls)}
    hints = get_type_hints(config_cls)
    values: dict[str, Any] = {}
    for key, raw in overrides.items():
        if key not in known:
            raise UnlearnkitError(
                f"Unknown {what} {key!r} for {config_cls.__name__}.{did_you_mean(key, known)} "
                f"Known: {', '.join(sorted(known))}."
            )
        values[key] = _coerce(key, raw, hints[key], what)
    return config_cls(**values)


def _coerce(key: str, raw: Any, hint: Any, what: str) -> Any:
    if not isinstance(raw, str):
        return raw
    optional = get_args(hint)
    if optional:  # ``X | None``
        if raw.lower() == "none":
            return None
        hint = next(arg for arg in optional if arg is not type(None))
    try:
        if hint is bool:
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1", "yes")
        if hint in (int, float):
            return hint(raw)
    except ValueError:
        raise UnlearnkitError(f"{what.capitalize()} {key!r} needs a {hint.__name__}, got {raw!r}.") from None
    return raw


def config_help(config_cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, help) for each field of the dataclass ``config_cls``, for listings."""
    hints = get_type_hints(config_cls)
    rows = []
    for f in fields(config_cls):
        default = f.default if f.default is not MISSING else None
        rows.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), default, f.metadata.get("help", "")))
    return rows
