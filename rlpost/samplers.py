"""``data.sampler`` -> the prompt sampler of a run, from the one registry of them (``DATA_SAMPLERS``,
rlpost/algos/data_samplers.py: ``uniform``, ``random``, ``gain_rl`` ...)."""
from __future__ import annotations

from rlpost.config import ConfigError, component


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
    """``data.sampler`` -> a sampler built with its params dataclass (``shuffle``: data.shuffle_dataset, for the
    entries that declare it). ``scores``: one float per row, or a zero-argument callable returning them, for
    entries with ``needs_scores`` (without them a :class:`PendingScores` placeholder is returned)."""
    from rlpost.algos import build_params
    from rlpost.algos.data_samplers import DATA_SAMPLERS
    name, params = component(spec)
    if name not in DATA_SAMPLERS:
        raise ConfigError(f"data.sampler: unknown sampler {name!r}; known: {', '.join(DATA_SAMPLERS.names())}")
    entry = DATA_SAMPLERS.entry(name)
    try:
        sampler_params = build_params(entry.params, {"shuffle": shuffle}, params, where=f"data.sampler ({name})")
    except (ValueError, TypeError) as err:
        raise ConfigError(str(err)) from None
    if getattr(entry.fn, "needs_scores", False):
        if scores is None:
            return PendingScores(name, num_rows)
        scores = scores() if callable(scores) else scores
    return entry.fn(num_rows, sampler_params, seed, scores=scores)
