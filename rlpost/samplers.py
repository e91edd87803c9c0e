"""Prompt samplers: which training rows each step uses. ``uniform`` walks seeded epoch permutations;
every ``DATA_SAMPLERS`` entry (rlpost/algos/data_samplers.py, e.g. ``gain_rl``) is accepted too."""
from __future__ import annotations

import random

from rlpost.config import ConfigError, component
from rlpost.registry import Registry

PROMPT_SAMPLERS = Registry("prompt sampler")


@PROMPT_SAMPLERS.register("uniform")
class UniformSampler:
    """Epoch-wise permutations of ``range(num_rows)`` (seeded by run seed and epoch), consumed in order."""

    def __init__(self, num_rows: int, seed: int, shuffle: bool = True):
        self.num_rows, self.seed, self.shuffle = num_rows, seed, shuffle
        self.epoch, self.position = 0, 0

    def _order(self) -> list[int]:
        order = list(range(self.num_rows))
        if self.shuffle:
            random.Random(f"{self.seed}-{self.epoch}").shuffle(order)
        return order

    def next_indices(self, count: int) -> list[int]:
        out = []
        while len(out) < count:
            order = self._order()
            take = order[self.position:self.position + count - len(out)]
            out += take
            self.position += len(take)
            if self.position >= self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def update(self, metrics: dict) -> None:
        pass

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]


class PendingScores:
    """Stands in for a ``DATA_SAMPLERS`` entry that needs per-row scores until the method that computes
    them (e.g. ``method.gain_rl``) rebuilds the sampler with :func:`build_sampler` (..., scores=...)."""

    def __init__(self, name: str, num_rows: int):
        self.name, self.num_rows = name, num_rows

    def next_indices(self, count: int) -> list[int]:
        raise ConfigError(f"data.sampler {self.name} needs one score per training row, which its method computes: "
                          f"add `method: {{{self.name}: {{}}}}` to the config")

    def update(self, metrics: dict) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_sampler(spec, num_rows: int, seed: int, shuffle: bool, scores=None):
    """``data.sampler`` -> a sampler. ``uniform`` (this module) or any ``DATA_SAMPLERS`` entry
    (rlpost/algos/data_samplers.py: ``random``, ``gain_rl`` ...) built with its params dataclass.
    ``scores``: one float per row, or a zero-argument callable returning them, for entries with
    ``needs_scores`` (without them a :class:`PendingScores` placeholder is returned)."""
    name, params = component(spec)
    if name in PROMPT_SAMPLERS:
        cls = PROMPT_SAMPLERS.get(name)
        if name == "uniform":
            return cls(num_rows, seed, shuffle, **params)
        return cls(num_rows, seed, **params)
    from rlpost.algos import build_params
    from rlpost.algos.data_samplers import DATA_SAMPLERS
    if name not in DATA_SAMPLERS:
        known = sorted(set(PROMPT_SAMPLERS.names()) | set(DATA_SAMPLERS.names()))
        raise ConfigError(f"data.sampler: unknown sampler {name!r}; known: {', '.join(known)}")
    entry = DATA_SAMPLERS.entry(name)
    try:
        sampler_params = build_params(entry.params, None, params, where=f"data.sampler ({name})")
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    if getattr(entry.fn, "needs_scores", False):
        if scores is None:
            return PendingScores(name, num_rows)
        scores = scores() if callable(scores) else scores
    return entry.fn(num_rows, sampler_params, seed, scores=scores)
