"""Prompt samplers (``data.sampler``): which dataset rows make up the next RL step.

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


@DATA_SAMPLERS.register("random")
class RandomSampler:
    """Epoch-wise shuffling without replacement: permutation e = randperm(N, seed + e); a batch may
    span two epochs. State is (epoch, position), so resume reproduces the same stream."""

    needs_scores = False

    def __init__(self, num_rows: int, params: Any = None, seed: int = 0, scores=None):
        if num_rows < 1:
            raise ValueError("data sampler needs at least one dataset row")
        self.num_rows, self.seed = num_rows, seed
        self.epoch, self.pos = 0, 0
        self._cache: tuple[int, torch.Tensor] | None = None

    def _perm(self) -> torch.Tensor:
        if self._cache is None or self._cache[0] != self.epoch:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            self._cache = (self.epoch, torch.randperm(self.num_rows, generator=gen))
        return self._cache[1]

    def next_indices(self, batch_size: int) -> list[int]:
        out: list[int] = []
        while len(out) < batch_size:
            perm = self._perm()
            take = perm[self.pos:self.pos + batch_size - len(out)].tolist()
            out += take
            self.pos += len(take)
            if self.pos >= self.num_rows:
                self.epoch, self.pos = self.epoch + 1, 0
        return out

    def update(self, metrics: dict) -> dict[str, float]:
        return {}

    def metrics(self) -> dict[str, float]:
        return {"data/epoch": float(self.epoch)}

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
