"""Localization: find where a fact lives in the network, so that unlearning changes only that.

Each localizer is one module of this package registered with :func:`register_localizer`;
importing the package registers them all.
"""

from __future__ import annotations

import importlib
import pkgutil

from unlearnkit.localization.base import (
    LOCALIZERS,
    Localization,
    LocalizerSpec,
    LocatedSelection,
    check_fits,
    load_localization,
    model_signature,
    neuron_masks,
    register_localizer,
    save_localization,
    selected_parameters,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "LOCALIZERS",
    "Localization",
    "LocalizerSpec",
    "LocatedSelection",
    "check_fits",
    "load_localization",
    "model_signature",
    "neuron_masks",
    "register_localizer",
    "save_localization",
    "selected_parameters",
]
