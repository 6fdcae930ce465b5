"""Robustness attacks: ways to bring forgotten knowledge back. Importing this package registers every attack module in it."""

from __future__ import annotations

import importlib
import pkgutil

from unlearnkit.attacks.base import ATTACKS, AttackOutcome, AttackSpec, AuditConfig, AuditData, register_attack

for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("base", "knowledge"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ATTACKS", "AttackOutcome", "AttackSpec", "AuditConfig", "AuditData", "register_attack"]
