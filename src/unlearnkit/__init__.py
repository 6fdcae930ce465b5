"""unlearnkit: machine unlearning for large language models.

The package's top-level names are the Python API (:mod:`unlearnkit.api`): :func:`load_data`, :func:`unlearn`,
:func:`evaluate`, :func:`audit`, :func:`localize`, :func:`forget`, :func:`wrap` and :func:`write_report`, with :class:`Results`;
the tracks' (:mod:`unlearnkit.api_tracks`): :func:`private`, :func:`harmful`, :func:`hazard`, :func:`copyright` and
:func:`side_effects`. They load
on first use, so that ``import unlearnkit`` stays light (no torch). No submodule shares their names (the unlearning loop is
:mod:`unlearnkit.unlearning`, the audit :mod:`unlearnkit.auditing`), so a name always means the function.
"""

import importlib

__version__ = "0.1.0"

API = ("load_data", "unlearn", "evaluate", "audit", "localize", "forget", "write_report", "influence", "wrap", "tune", "Results", "Report")
TRACKS = ("private", "harmful", "hazard", "copyright", "side_effects")  # unlearnkit.api_tracks
__all__ = [*API, *TRACKS, "__version__"]


def __getattr__(name: str) -> object:  # called only for names the package does not hold (PEP 562)
    if name in API:
        return getattr(importlib.import_module("unlearnkit.api"), name)
    if name in TRACKS:
        return getattr(importlib.import_module("unlearnkit.api_tracks"), name)
    raise AttributeError(f"module 'unlearnkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API, *TRACKS})
