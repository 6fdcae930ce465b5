"""Localization: find where a fact lives in the network, so that unlearning changes only that.

Each localizer is one module registered with :func:`register_localizer`; importing
this package registers them all.
"""

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
