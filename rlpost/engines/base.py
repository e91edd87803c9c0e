"""The engine interface every rollout backend implements.

An engine turns prompt token ids into sampled completions with their sampler log-probs (and
optionally per-token entropies). It knows nothing about rewards, groups or algorithms.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import torch

from rlpost.registry import Registry
from rlpost.types import Sample

ENGINES = Registry("rollout engine")

# A logits processor sees the raw next-token logits of every active row and returns new logits.
#   fn(step: int, input_ids [N, L], logits [N, V]) -> logits [N, V]
# It runs before temperature / top-k / top-p, so it can implement per-token temperatures (HAPO).
LogitsProcessor = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplingParams:
    n: int = 1                        # samples per request
    temperature: float = 1.0          # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0                    # 0 = off
    min_p: float = 0.0                # keep tokens with p >= min_p * p_max (after temperature); 0 = off
    repetition_penalty: float = 1.0   # tokens already in prompt or completion: z / r if z > 0 else z * r; 1 = off
    max_tokens: int = 64
    stop: list[str] = field(default_factory=list)   # stop strings (kept in the text, then generation ends)
    seed: int | None = None           # seeds the whole call (requests without a seed of their own)
    return_entropy: bool = False
    logits_processors: list[LogitsProcessor] = field(default_factory=list)


@dataclass
class GenRequest:
    prompt_ids: list[int]
    info: dict[str, Any] = field(default_factory=dict)
    # A seed of its own: sample j is drawn with seed stable_seed(seed, j) whatever else is in the call, so the
    # samples do not depend on the batch (evaluation sets it). None: the call's params.seed decides (training).
    seed: int | None = None


def stable_seed(*parts) -> int:
    """A 62-bit seed that depends only on ``parts``: the first 8 bytes of sha256(repr(parts)), shifted right by 2
    (the trainer's rollout seeds and eval's per-problem seeds)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 2


def sample_seeds(requests: list[GenRequest], n: int) -> list[int] | None:
    """The seed of every sample, request-major, when the requests carry seeds of their own; None when none does."""
    seeded = [r.seed is not None for r in requests]
    if not any(seeded):
        return None
    if not all(seeded):
        raise ValueError("GenRequest.seed: set it on every request of a call or on none")
    return [stable_seed(r.seed, j) for r in requests for j in range(n)]


class Engine(Protocol):
    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Sample]:
        """Return len(requests) * params.n samples, request-major (all n of request 0 first)."""

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Replace the engine's weights with the learner's (names as in the HF state dict)."""

    def close(self) -> None: ...


class EngineError(RuntimeError):
    """A rollout engine failed: a worker died, timed out or answered with an error. The message carries the
    worker's last log lines; the trainer checkpoints the last finished step before letting it propagate."""
