"""One registry for every named thing (heads, losses, benchmarks, data sources, presets), as timm has one for models.

An entry is an object (a class, a factory, a function, a value) plus metadata known without building it
(`about`, `trainable`, ...). Names are unique: registering one twice is a bug and raises. Asking for an unknown
name is the user's mistake: a NotFoundError that lists the names there are.

`provide({name: module})` says which module registers a name without importing it: `get` imports only
that module, so `score --head global` never imports torch; listing all names imports every provider.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .errors import NotFoundError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind  # "head", "loss", ...: used in messages
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._providers: dict[str, str] = {}  # name -> module that registers it when imported

    def provide(self, providers: dict[str, str]) -> None:
        self._providers.update(providers)

    def _load(self, name: str | None = None) -> None:
        """Import the provider of `name` (every provider when None) if it has not registered yet."""
        modules = {self._providers[name]} if name in self._providers else set() if name else set(self._providers.values())
        for module in sorted(modules):
            importlib.import_module(module)

    def register(self, name: str, obj: T, **meta: Any) -> T:
        if name in self._entries:
            raise RuntimeError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        self._meta[name] = meta
        return obj

    def decorator(self, name: str, **meta: Any) -> Callable[[T], T]:
        """`@reg.decorator("name", about=...)` registers what it decorates and returns it unchanged."""
        return lambda obj: self.register(name, obj, **meta)

    def names(self, **where: Any) -> list[str]:
        """Sorted names; `where` keeps entries whose metadata has those values (`trainable=True`)."""
        self._load()
        return sorted(n for n in self._entries if all(self._meta[n].get(k) == v for k, v in where.items()))

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._load(name)
        if name not in self._entries:
            raise NotFoundError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        """Call the entry (a class or a factory) with `kwargs`."""
        return self.get(name)(**kwargs)  # type: ignore[operator]

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def providers(self) -> dict[str, str]:
        return dict(self._providers)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._providers
