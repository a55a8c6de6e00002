"""Plug-point registries: a dict per kind of component, filled by a decorator.

The trainer looks components up here by the name a preset gives, so it never
names a recipe. A miss lists what is registered, so a typo in a preset points
at the fix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class UnknownComponentError(KeyError):
    """Raised for a name no component was registered under."""

    def __init__(self, kind: str, name: str, allowed: list[str]):
        self.kind, self.name, self.allowed = kind, name, allowed
        super().__init__(f"unknown {kind} {name!r}; allowed: {', '.join(allowed) or '(none registered)'}")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    config: type[BaseModel] | None  # the component's own config schema, if it takes one


class Registry(Generic[T]):
    """A named table of components; `config` is the pydantic schema of the component's preset section."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config: type[BaseModel] | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name].obj is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, obj, config)
            return obj

        return decorator

    def entry(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(self.kind, name, self.names()) from None

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def config_class(self, name: str) -> type[BaseModel] | None:
        return self.entry(name).config

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODELS: Registry[Any] = Registry("model arch")
OBJECTIVES: Registry[Any] = Registry("objective")
SOURCES: Registry[Any] = Registry("source type")
TOKENIZERS: Registry[Any] = Registry("tokenizer type")
SCHEDULES: Registry[Any] = Registry("schedule")  # LR schedules
ALPHA_SCHEDULES: Registry[Any] = Registry("alpha schedule")  # step -> loss weight (the forge controller)
GRAD_FILTERS: Registry[Any] = Registry("gradient filter")
LAYER_SWAPS: Registry[Any] = Registry("layer swap")
OPTIMIZERS: Registry[Any] = Registry("optimizer")
