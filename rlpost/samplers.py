"""Prompt samplers: which training rows each step uses. ``uniform`` walks seeded epoch permutations."""
from __future__ import annotations

import random

from rlpost.config import component
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


def build_sampler(spec, num_rows: int, seed: int, shuffle: bool):
    name, params = component(spec)
    cls = PROMPT_SAMPLERS.get(name)
    if name == "uniform":
        return cls(num_rows, seed, shuffle, **params)
    return cls(num_rows, seed, **params)
