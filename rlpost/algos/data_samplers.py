"""Prompt samplers (``data.sampler``): which dataset rows make up the next RL step. The one registry of them:
``uniform`` (the default) and ``random`` here, ``gain_rl`` in rlpost/algos/gain_rl.py; rlpost/samplers.py
builds the configured one.

An entry is a class. The trainer drives it once per RL step::

    entry = DATA_SAMPLERS.entry(name)
    scores = ... if entry.fn.needs_scores else None     # one float per row (GAIN-RL: offline angle scores)
    sampler = entry.fn(num_rows, params, seed, scores=scores)
    idx = sampler.next_indices(batch_size)              # list[int] of row ids for this step's prompts
    ... rollout, rewards, learner update ...
    metrics |= sampler.update({"accuracy": acc, "angle": angle})   # keys documented per sampler
    metrics |= sampler.metrics()                         # signals of the last draw and update
    checkpoint["data_sampler"] = sampler.state_dict()    # resume: sampler.load_state_dict(...)

``update`` is called once per training step (not per generation batch when dynamic sampling draws
several batches), so the curriculum moves at the rate the paper describes.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from rlpost.registry import Registry

DATA_SAMPLERS = Registry("data sampler")


class DataSampler(Protocol):
    needs_scores: bool

    def __init__(self, num_rows: int, params: Any, seed: int, scores: Sequence[float] | None = None): ...

    def next_indices(self, batch_size: int) -> list[int]: ...

    def update(self, metrics: dict) -> dict[str, float]: ...

    def metrics(self) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass
class PermutationParams:
    shuffle: bool = True   # a new order every epoch (data.shuffle_dataset); False: rows in dataset order


class PermutationSampler:
    """Epoch-wise permutations of ``range(num_rows)`` consumed in order: every row once per epoch, and a draw may
    span two epochs. State is (epoch, position), so resume reproduces the same stream. Subclasses choose how epoch
    e's order is drawn (:meth:`permutation`) and the state key of the position (kept as each wrote it)."""

    needs_scores = False
    position_key = "position"

    def __init__(self, num_rows: int, params: PermutationParams | None = None, seed: int = 0, scores=None):
        if num_rows < 1:
            raise ValueError("data sampler needs at least one dataset row")
        self.num_rows, self.seed = num_rows, seed
        self.shuffle = (params or PermutationParams()).shuffle
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, list[int]] | None = None

    def permutation(self, epoch: int) -> list[int]:
        """Epoch ``epoch``'s order of the rows: the one thing each registered subclass defines (its own RNG)."""
        raise NotImplementedError(f"{type(self).__name__} must define permutation(epoch)")

    def _order(self) -> list[int]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self.permutation(self.epoch) if self.shuffle else list(range(self.num_rows)))
        return self._cache[1]

    def next_indices(self, batch_size: int) -> list[int]:
        out: list[int] = []
        while len(out) < batch_size:
            take = self._order()[self.position:self.position + batch_size - len(out)]
            out += take
            self.position += len(take)
            if self.position >= self.num_rows:
                self.epoch, self.position = self.epoch + 1, 0
        return out

    def update(self, metrics: dict) -> dict[str, float]:
        return {}

    def metrics(self) -> dict[str, float]:
        return {"data/epoch": float(self.epoch)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, self.position_key: self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state[self.position_key])


@DATA_SAMPLERS.register("uniform", params=PermutationParams)
class UniformSampler(PermutationSampler):
    """The default: epoch e's order is ``random.Random(f"{seed}-{e}").shuffle(range(N))``."""

    def permutation(self, epoch: int) -> list[int]:
        order = list(range(self.num_rows))
        random.Random(f"{self.seed}-{epoch}").shuffle(order)
        return order


@DATA_SAMPLERS.register("random", params=PermutationParams)
class RandomSampler(PermutationSampler):
    """Epoch e's order is ``torch.randperm(N, generator seeded with seed + e)``."""

    position_key = "pos"

    def permutation(self, epoch: int) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.num_rows, generator=gen).tolist()
