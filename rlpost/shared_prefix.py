"""Shared-prefix forward: the completions of one prompt share a single pass over that prompt (optim.shared_prefix).

GRPO-family methods sample n = num_generations completions per prompt q. The plain learner forward runs
every row [q ; o_i] from scratch, B * (P + T) tokens for B = G * n rows. Here the G unique prompts run once
with a KV cache (G * P tokens), each cache row is repeated for the completions that share it, and the
completions run on top of it (B * T tokens):

    log pi(o_t | q, o_<t) = log_softmax(f_theta([q ; o_<t]) / tau)[o_t]

is the same function of the same parameters either way. The repetition is an ``index_select`` and therefore
differentiable: gradients from all n completions of q are summed into q's keys and values, exactly what
the per-row passes accumulate. Values and gradients equal the plain path's up to float rounding
(tests/test_shared_prefix.py). The forward/backward work shrinks by about (P + T) / (P / n + T), the memory
of activations likewise; logits exist only for the completion positions, [B, T, V]. When completion lengths
vary a lot (padding to the longest would waste > 15% of the completion tokens, and at least 256 tokens per
extra pass), the rows are cut into up to 4 buckets of similar length, each continuing from its own selection
of prompt-cache rows and padded only to its own longest completion (full-attention caches only; other cache
kinds keep the single pass).

When the learner uses it (``optim.shared_prefix: true``, the default): a micro-batch whose rows repeat a
prompt, in one process (DDP broadcasts buffers at every forward, so ranks would have to make equally many
calls, which the per-micro-batch choice and the length buckets do not guarantee; DeepSpeed expects one forward
per backward), without gradient checkpointing (transformers turns the KV cache off there), without the lean
paths (``optim.logprob_chunk_size``, ``optim.padding_free``) and not under forward hooks that read a
full-sequence pass (GAIN-RL's angle). The first call per model compares the result with the plain forward
once; an architecture whose cache does not reproduce it is switched back to the plain path with a warning
instead of training on different numbers.
"""
from __future__ import annotations

import logging
import weakref

import torch

from rlpost.logprobs import forward_accepts, unwrap_causal_lm

log = logging.getLogger(__name__)

_verified: "weakref.WeakSet" = weakref.WeakSet()
_unsupported: "weakref.WeakSet" = weakref.WeakSet()


def prompt_owners(batch) -> tuple[torch.Tensor, list[int]]:
    """For each row, the number of its unique prompt (in order of first appearance); and the first row of each."""
    number: dict[tuple, int] = {}
    owners, first_rows = [], []
    for i, (row, length) in enumerate(zip(batch.input_ids.tolist(), batch.prompt_lengths.tolist())):
        key = tuple(row[:length])
        if key not in number:
            number[key] = len(first_rows)
            first_rows.append(i)
        owners.append(number[key])
    return torch.tensor(owners, dtype=torch.long, device=batch.input_ids.device), first_rows


def sharing(batch) -> tuple[torch.Tensor, list[int]] | None:
    """:func:`prompt_owners` when some prompt occurs on more than one row, else None (the plain pass is cheaper)."""
    if batch.prompt_lengths is None or len(batch) < 2:
        return None
    owners, first_rows = prompt_owners(batch)
    return (owners, first_rows) if len(first_rows) < len(batch) else None


def completion_logits(model, batch, owners_first: tuple[torch.Tensor, list[int]] | None = None) -> torch.Tensor:
    """[B, T, V] logits whose row t predicts completion token t, from one pass per unique prompt.

    Prompts are left-padded to their longest so that every prompt ends at the same cache position; the
    completions continue at position ids P_i, P_i + 1, ... as in the plain right-padded pass. ``owners_first``:
    :func:`prompt_owners` of the batch when the caller has it.
    """
    owners, first_rows = owners_first if owners_first is not None else prompt_owners(batch)
    dev = batch.input_ids.device
    row_prompt_len = batch.prompt_lengths.to(dev)
    prompt_len = row_prompt_len[first_rows]                                   # [G]
    width = int(prompt_len.max())
    src = torch.arange(width, device=dev)[None] - (width - prompt_len)[:, None]   # left padding: source column
    prompt_mask = (src >= 0).long()
    prompt_ids = batch.input_ids[first_rows].gather(1, src.clamp(min=0))
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    keep_last = {"logits_to_keep": 1} if forward_accepts(unwrap_causal_lm(model), "logits_to_keep") else {}
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True,
                **keep_last)
    first_logits = out.logits[:, -1][owners][:, None]                         # [B, 1, V]: predicts o_0
    B, T = batch.completion_ids.shape
    if T == 1:
        return first_logits
    cache = out.past_key_values
    lengths = batch.attention_mask.sum(-1).to(dev) - row_prompt_len          # completion tokens of each row
    buckets = length_buckets(lengths) if _plain_layers(cache) else [torch.arange(B, device=dev)]
    if len(buckets) == 1:                                                     # one pass: repeat the prompt rows in place
        cache.reorder_cache(owners)
        return torch.cat([first_logits, _continue(model, batch, cache, owners, prompt_mask, row_prompt_len, T)], 1)
    # rows of similar completion length together: each bucket pads only to its own longest completion
    parts = []
    for rows in buckets:
        width = int(lengths[rows].max().clamp(min=1))
        part = first_logits[rows]
        if width > 1:
            bucket_cache = _select_rows(cache, owners[rows], model)
            rest = _continue(model, batch, bucket_cache, owners[rows], prompt_mask, row_prompt_len, width, rows)
            part = torch.cat([part, rest], dim=1)
        parts.append(torch.nn.functional.pad(part, (0, 0, 0, T - part.shape[1])))  # zeros past the bucket's width
    order = torch.cat(buckets)
    return torch.cat(parts)[torch.argsort(order)]


def _continue(model, batch, cache, owner_rows, prompt_mask, row_prompt_len, width: int, rows=None) -> torch.Tensor:
    """Logits [b, width - 1, V] of completion tokens 1 .. width-1 for ``rows`` (all rows when None), on top of
    ``cache`` (one prompt cache row per row)."""
    ids = batch.completion_ids if rows is None else batch.completion_ids[rows]
    prompt_len = row_prompt_len if rows is None else row_prompt_len[rows]
    attention = torch.cat([prompt_mask[owner_rows], prompt_mask.new_ones(len(ids), width - 1)], dim=1)
    steps = torch.arange(width - 1, device=ids.device)[None]
    return model(input_ids=ids[:, :width - 1], attention_mask=attention, position_ids=prompt_len[:, None] + steps,
                 past_key_values=cache, use_cache=True).logits


def length_buckets(lengths: torch.Tensor, max_buckets: int = 4, tolerated_waste: float = 0.15,
                   min_waste_tokens: int = 256) -> list[torch.Tensor]:
    """Row indices sorted by completion length, cut into up to ``max_buckets`` equal-count runs; one bucket when
    padding every row to the longest wastes at most ``tolerated_waste`` of the padded tokens or fewer than
    ``min_waste_tokens`` per extra bucket (then the extra forward calls would cost more than the padding)."""
    real, longest = float(lengths.sum()), float(lengths.max())
    waste = longest * len(lengths) - real
    if (waste <= tolerated_waste * longest * len(lengths) or waste < min_waste_tokens * (max_buckets - 1)
            or len(lengths) < 2 * max_buckets):
        return [torch.arange(len(lengths), device=lengths.device)]
    order = torch.argsort(lengths, stable=True)
    return [chunk for chunk in torch.tensor_split(order, max_buckets) if len(chunk)]


def _plain_layers(cache) -> bool:
    """Every layer a full-attention DynamicLayer (sliding-window and other layer kinds keep the one-pass path)."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _select_rows(cache, index: torch.Tensor, model):
    """A new DynamicCache holding rows ``index`` of ``cache`` (differentiable: gradients reach the prompt pass)."""
    from transformers import DynamicCache

    picked = DynamicCache(config=unwrap_causal_lm(model).config)
    for layer_idx, layer in enumerate(cache.layers):
        picked.update(layer.keys.index_select(0, index), layer.values.index_select(0, index), layer_idx)
    return picked


def usable(model) -> bool:
    """Not yet found to disagree with the plain pass, and the KV cache is on (no gradient checkpointing)."""
    lm = unwrap_causal_lm(model)
    return lm not in _unsupported and not getattr(lm, "is_gradient_checkpointing", False)


@torch.no_grad()
def verify_once(model, batch, plain_logits_fn, owners_first=None) -> bool:
    """On the first call per model, compare the completion tokens' log-probs with the plain pass; remember the answer."""
    lm = unwrap_causal_lm(model)
    if lm in _verified:
        return True
    if lm in _unsupported:
        return False
    ids = batch.completion_ids[:, :, None]
    try:
        mine = torch.log_softmax(completion_logits(model, batch, owners_first).float(), -1).gather(-1, ids).squeeze(-1)
    except (TypeError, ValueError, NotImplementedError, AttributeError) as err:  # a forward without cache support
        _unsupported.add(lm)
        log.warning("optim.shared_prefix: %s cannot run the shared-prefix pass (%s: %s); using the plain forward",
                    type(lm).__name__, type(err).__name__, err)
        return False
    ref = torch.log_softmax(plain_logits_fn().float(), -1).gather(-1, ids).squeeze(-1)
    mask = batch.response_mask.bool()
    gap = (mine - ref)[mask].abs() if mask.any() else torch.zeros(1)   # log-probs of the completion tokens
    # fp32: both are the same math up to rounding. bf16/fp16: different kernel shapes round differently, so the
    # mean gap is the test there (a misaligned cache is off by ~1 nat, far above either bound)
    full_precision = next(lm.parameters()).dtype == torch.float32
    max_gap, mean_gap = float(gap.max()), float(gap.mean())
    if (max_gap <= 1e-3) if full_precision else (mean_gap <= 2e-2 and max_gap <= 0.5):
        _verified.add(lm)
        return True
    _unsupported.add(lm)
    log.warning("optim.shared_prefix: %s's KV cache does not reproduce the plain forward (log-prob difference max "
                "%.3g, mean %.3g); using the plain forward for this model", type(lm).__name__, max_gap, mean_gap)
    return False
