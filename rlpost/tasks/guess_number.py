"""Guess the number: ``{"prompt": "Guess my number (1-16).", "answer": "11"}``; the game itself is
:class:`rlpost.envs.examples.GuessNumberEnv`. Train and test use disjoint hidden numbers only when ``high`` is
large; with a small range they differ in their draws, which is what the game needs (the skill is the search)."""
from __future__ import annotations

import random

from rlpost.tasks import TASKS


@TASKS.register("guess_number")
def make_split(split: str, n: int, seed: int = 0, low: int = 1, high: int = 16) -> list[dict]:
    """``n`` rows with a hidden number drawn uniformly from [low, high]."""
    if split not in ("train", "test"):
        raise ValueError(f"guess_number split must be 'train' or 'test', got {split!r}")
    rng = random.Random(f"guess_number-{split}-{seed}-{low}-{high}")
    return [{"prompt": f"Guess my number ({low}-{high}).", "answer": str(rng.randint(low, high))} for _ in range(n)]
