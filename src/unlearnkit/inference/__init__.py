"""Inference-time unlearning: wrappers that change a model's prompt or logits, never its weights.

Importing this package registers every wrapper module in it (:mod:`.base` holds the interface, :mod:`.loading`
saves and loads wrapped-model folders).
"""

from __future__ import annotations

import importlib
import pkgutil

from unlearnkit.inference.base import WRAPPERS, WrapData, WrappedModel, WrapperSpec, register_wrapper

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "loading", "prompting", "offsets"):  # the interface and what wrappers share
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["WRAPPERS", "WrapData", "WrappedModel", "WrapperSpec", "register_wrapper"]
