"""Sampling filters shared by the rollout engines and the vLLM logits processor.

They act on one row of next-token logits z per sequence, [N, V], in vLLM's order (the hf engine and
rlpost/engines/vllm_worker.py apply them the same way): logits processors, :func:`apply_repetition_penalty`,
temperature (z / T), :func:`filter_min_p`, then :func:`filter_top_k_top_p`. A filtered-out token gets logit -inf;
kept logits are returned unchanged. Nothing here imports an engine, so the learner side (rlpost/shared_prefix.py)
and vLLM's worker can use it without loading the hf engine.
"""
from __future__ import annotations

import torch


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Set logits outside the top-k and outside the smallest nucleus with mass >= top_p to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cum - torch.softmax(sorted_logits, dim=-1) >= top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def filter_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Set logits of tokens with p < min_p * max_v p_v to -inf (p = softmax(logits); vLLM's min-p)."""
    if min_p <= 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    return logits.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), float("-inf"))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as vLLM and transformers apply it): for every token already in the prompt or the
    completion (``seen`` [N, V] bool), z -> z / r when z > 0 and z * r otherwise."""
    if penalty == 1.0:
        return logits
    return torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)


def seen_tokens(rows: list[list[int]], vocab_size: int, device) -> torch.Tensor:
    """[N, V] bool: token v occurs in row n."""
    seen = torch.zeros(len(rows), vocab_size, dtype=torch.bool, device=device)
    for n, ids in enumerate(rows):
        if ids:
            seen[n, torch.tensor(ids, device=device)] = True
    return seen

