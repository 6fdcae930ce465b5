"""Unlearning methods. Importing this package registers every method module in it."""

from __future__ import annotations

import importlib
import pkgutil

from unlearnkit.methods.base import METHODS, MethodConfig, MethodSpec, UnlearnTrainer, register_method

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["METHODS", "MethodConfig", "MethodSpec", "UnlearnTrainer", "register_method"]
