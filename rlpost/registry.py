"""One small registry used for everything chosen by name in a config.

Advantage estimators, policy losses, loss aggregations, KL estimators, reward functions, engines,
data samplers and LR controllers are each a :class:`Registry`. An entry holds the function (or class)
and, optionally, the dataclass of its own hyperparameters, so a YAML node such as
``algo.loss: {name: hapo, tau: 0.5}`` is validated against that dataclass and nothing else.

    LOSSES = Registry("policy loss")

    @LOSSES.register("vanilla", params=ClipParams)
    def vanilla(...): ...

    LOSSES.get("vanila")  # KeyError: unknown policy loss 'vanila'; did you mean 'vanilla'? known: ...
"""
from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterator


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Any
    params: type | None = None  # dataclass of the entry's own hyperparameters, if any


class Registry:
    """A name -> :class:`Entry` map that refuses duplicates and explains misses."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, params: type | None = None) -> Callable:
        def deco(fn):
            self.add(name, fn, params)
            return fn
        return deco

    def add(self, name: str, fn: Any, params: type | None = None) -> None:
        if name in self._entries and self._entries[name].fn is not fn:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, fn, params)

    def entry(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(self.unknown_message(name))
        return self._entries[name]

    def get(self, name: str) -> Any:
        return self.entry(name).fn

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint} known: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    @contextlib.contextmanager
    def scoped(self) -> Iterator["Registry"]:
        """Registrations made inside the block are removed afterwards (for tests)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries = saved
