"""A strict name → object registry shared by methods (and later metrics and attacks).

Lookups of an unknown name fail with the closest names and the full list;
registering a name twice fails instead of silently replacing the first entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from unlearnkit.errors import UnlearnkitError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps lower-case names to registered objects of one kind (``kind`` is used in messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@registry.register("npo")`` registers the decorated object under ``name``."""
        if not name or name != name.lower() or not name.replace("_", "").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be lower-case letters, digits and underscores.")

        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered by {self._entries[name]!r}; choose another name."
                )
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        """Return the entry for ``name`` or raise :class:`UnlearnkitError` with suggestions."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnlearnkitError(
                f"Unknown {self.kind} {name!r}.{did_you_mean(name, self._entries)} "
                f"Available: {', '.join(sorted(self._entries))}."
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
