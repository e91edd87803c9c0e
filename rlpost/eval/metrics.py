"""Sampling metrics over k samples per problem, with bootstrap confidence intervals.

For P problems, problem i has n_i samples of which c_i are correct.

mean@k (a.k.a. avg@k): the expected accuracy of one sample, averaged over problems::

    mean@k = (1/P) Σ_i c_i / n_i

pass@k, the unbiased estimator of Chen et al. 2021 (Codex, arXiv:2107.03374) of the chance that at
least one of k samples drawn without replacement from the n_i is correct::

    pass@k_i = 1 − C(n_i − c_i, k) / C(n_i, k)        (= 1 when n_i − c_i < k)

computed as ``1 − Π_{j=n−c+1}^{n} (1 − k/j)``, which never forms the huge binomials. pass@1 equals
mean@k.

maj@k (majority voting, "cons@k"): take the first k samples' extracted answers, drop the missing ones
(``None``), and pick the most frequent answer key; the problem scores 1 when that answer is correct.
Ties are broken deterministically: among the answers with the top count, the one that appears FIRST in
sample order wins. A problem with no extracted answer among its k samples scores 0.

Confidence intervals: the percentile bootstrap over problems (resample the P problems with replacement
B times with a seeded generator, recompute the metric's mean, take the (1−conf)/2 and (1+conf)/2
quantiles). Every metric shares the same resamples.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / j for j in range(n - c + 1, n + 1))


def maj_at_k(keys: Sequence[Hashable | None], correct: Sequence[bool], k: int | None = None) -> float:
    """1.0 when the majority answer among the first ``k`` samples is correct, else 0.0.

    keys:    one answer key per sample (normalised answer string), None = no answer extracted
    correct: one bool per sample; the winner's correctness is that of its first occurrence
    Ties go to the answer that appears first.
    """
    if len(keys) != len(correct):
        raise ValueError(f"{len(keys)} answer keys but {len(correct)} correctness flags")
    k = len(keys) if k is None else k
    votes = [(key, ok) for key, ok in list(zip(keys, correct))[:k] if key is not None and key != ""]
    if not votes:
        return 0.0
    counts = Counter(key for key, _ in votes)
    top = max(counts.values())
    for key, ok in votes:  # first in sample order among the most frequent
        if counts[key] == top:
            return float(bool(ok))
    raise AssertionError("unreachable")


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, plus n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def per_problem_scores(correct: Sequence[Sequence[bool]], keys: Sequence[Sequence[Hashable | None]] | None = None,
                       ks: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """{metric name: [P] per-problem score}; all problems must have the same number of samples n.

    Names: ``mean@n``, ``pass@k`` for each k, and ``maj@k`` for each k >= 2 when ``keys`` are given.
    """
    if not correct:
        return {}
    n = len(correct[0])
    if n == 0 or any(len(c) != n for c in correct):
        raise ValueError("every problem needs the same, non-zero number of samples")
    ks = default_ks(n) if ks is None else sorted(set(ks))
    counts = [sum(bool(x) for x in c) for c in correct]
    scores = {f"mean@{n}": np.array([c / n for c in counts], dtype=np.float64)}
    for k in ks:
        scores[f"pass@{k}"] = np.array([pass_at_k(n, c, k) for c in counts], dtype=np.float64)
    if keys is not None:
        for k in ks:
            if k >= 2:
                scores[f"maj@{k}"] = np.array([maj_at_k(kk, cc, k) for kk, cc in zip(keys, correct)],
                                              dtype=np.float64)
    return scores


def bootstrap_ci(scores: dict[str, np.ndarray], n_boot: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap CI of the mean of each [P] score vector, resampling problems together."""
    if not scores or n_boot <= 0:
        return {}
    p = len(next(iter(scores.values())))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, p, size=(n_boot, p))  # [B, P] the same resamples for every metric
    lo_q, hi_q = (1 - confidence) / 2, (1 + confidence) / 2
    out = {}
    for name, s in scores.items():
        means = s[idx].mean(axis=1)  # [B]
        out[name] = (float(np.quantile(means, lo_q)), float(np.quantile(means, hi_q)))
    return out


def summarize(correct: Sequence[Sequence[bool]], keys: Sequence[Sequence[Hashable | None]] | None = None,
              ks: Sequence[int] | None = None, n_boot: int = 1000, seed: int = 0,
              confidence: float = 0.95) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """(metrics, confidence intervals) over problems; values are fractions in [0, 1]."""
    scores = per_problem_scores(correct, keys, ks)
    metrics = {name: float(s.mean()) for name, s in scores.items()}
    return metrics, bootstrap_ci(scores, n_boot, seed, confidence)
