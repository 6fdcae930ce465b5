from __future__ import annotations

import pytest

from unlearnkit.errors import UnlearnkitError
from unlearnkit.methods import METHODS
from unlearnkit.registry import Registry


def test_register_and_get() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("one")(1)
    assert registry.get("one") == 1
    assert registry.names() == ["one"]
    assert "one" in registry


def test_duplicate_name_refused() -> None:
    registry: Registry[int] = Registry("thing")
    registry.register("one")(1)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("one")(2)
    assert registry.get("one") == 1


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(UnlearnkitError, match=r"Unknown method 'npoo'\. Did you mean: npo.*Available: .*\bga\b"):
        METHODS.get("npoo")


def test_bad_name_refused() -> None:
    with pytest.raises(ValueError, match="lower-case"):
        Registry("thing").register("Bad Name")


def test_first_methods_registered_with_papers() -> None:
    assert {"ga", "graddiff", "npo", "simnpo", "idk", "idk_dpo"} <= set(METHODS.names())
    for name in METHODS.names():
        spec = METHODS.get(name)
        assert spec.paper and spec.summary and spec.name == name
