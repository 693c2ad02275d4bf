"""Registries: name -> factory, for every pluggable part (datasets, models, quantizers,
attacks, MCU profiles).

Registering a factory imports nothing heavy, so the CLI can list and validate names
without TensorFlow; the factory itself imports what it needs when called.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from sweeper.errors import UserError, preview

T = TypeVar("T")


class Registry(Generic[T]):
    """A named set of factories with helpful errors for unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` above a factory."""

        def add(factory: T) -> T:
            self.add(name, factory)
            return factory

        return add

    def add(self, name: str, entry: T) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value is no name either
            raise UserError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        return f"unknown {self.kind} {preview(name)}; available: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable value (a list where a name belongs) is no name
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
