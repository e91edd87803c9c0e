"""Memory-lean per-token log-probs for the learner (``optim.logprob_chunk_size``, ``optim.padding_free``).

The plain path (rlpost/learner.py ``token_logprobs``) runs the model, which materialises logits for every
position, [B, W, V], then gathers the completion positions. For long sequences and large vocabularies
(150k for Qwen) that tensor dominates learner memory. Two independent options remove it:

chunked LM head (``chunk_size`` > 0)
    The model runs with ``logits_to_keep=1`` and ``output_hidden_states=True``; the final hidden states at the
    completion positions ([B*T, H]) go through the LM head ``chunk_size`` tokens at a time, each chunk under
    activation checkpointing, so at most one [chunk, V] block of logits exists at a time in forward and
    backward. The head is the model's own output-embedding module (tied weights and peft adapters on the head
    are therefore handled), and the post-processing some architectures apply to logits (Gemma's final
    soft-capping, Cohere's ``logit_scale``, Granite's ``logits_scaling``) is reproduced. On the first call per
    model the result at the last position is compared with the model's own logits; an architecture that
    transforms logits in a way rlpost does not know stops with an error instead of training on wrong values.

padding-free packing (``packed``)
    The rows of a micro-batch are concatenated into one row with no pad tokens, ``position_ids`` restarting at
    0 for each sample and no attention mask. transformers then builds a block-diagonal causal mask (sdpa /
    eager, via ``find_packed_sequence_indices``) or uses variable-length kernels (flash_attention_2/3), so
    every token attends exactly to its own sample's prefix: the log-probs equal the padded path's up to float
    rounding (tests/test_lean_logprobs.py). Where it pays: the MLP and projections skip the pad tokens, and with
    flash-attention varlen the attention does too. With sdpa/eager the packed row's mask is (sum L)^2, so on
    those backends packing trades attention cost for pad-free MLPs; the learner already sorts rows by length so
    that micro-batches are length-bucketed, which is the better choice there (see docs/distributed.md).
    Only the completion positions' logits are computed (``logits_to_keep`` = their indices).
"""
from __future__ import annotations

import weakref

import torch
from torch.utils.checkpoint import checkpoint

from rlpost.algos.core import entropy_from_logprobs
from rlpost.distributed.deepspeed_internals import is_zero3_partitioned

_checked: "weakref.WeakSet" = weakref.WeakSet()


def unwrap_causal_lm(model):
    """The transformers causal LM inside DistributedDataParallel / DeepSpeedEngine / peft wrappers."""
    for _ in range(8):
        if isinstance(model, torch.nn.parallel.DistributedDataParallel) or type(model).__name__ == "DeepSpeedEngine":
            model = model.module
        elif hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        elif hasattr(model, "peft_model") and type(model).__name__ == "AdapterDisabledView":
            model = model.peft_model.get_base_model()
        else:
            return model
    return model


def forward_accepts(model, name: str) -> bool:
    """The model's forward takes keyword ``name`` (peft wrappers pass keywords on to the base model)."""
    import inspect
    target = model.get_base_model() if hasattr(model, "get_base_model") else model
    return name in inspect.signature(target.forward).parameters


def logits_postprocess(lm):
    """The transformation the model's forward applies to ``lm_head(h)`` (identity for most models)."""
    cfg = getattr(lm, "config", None)
    scale = getattr(cfg, "logit_scale", None)            # Cohere: logits * logit_scale
    divide = getattr(cfg, "logits_scaling", None)        # Granite: logits / logits_scaling
    cap = getattr(cfg, "final_logit_softcapping", None)  # Gemma 2/3: cap * tanh(logits / cap)

    def post(logits: torch.Tensor) -> torch.Tensor:
        if scale is not None:
            logits = logits * scale
        if divide is not None:
            logits = logits / divide
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits
    return post


def _head_chunk(head, post, temperature: float, need_entropy: bool, need_sum_p_sq: bool):
    def fn(hidden: torch.Tensor, ids: torch.Tensor):
        logits = post(head(hidden)).float()
        if temperature > 0:
            logits = logits / temperature
        logp_all = torch.log_softmax(logits, dim=-1)
        lp = logp_all.gather(-1, ids[:, None]).squeeze(-1)
        ent = entropy_from_logprobs(logp_all) if need_entropy else lp.new_zeros(0)
        sq = (2 * logp_all).exp().sum(-1) if need_sum_p_sq else lp.new_zeros(0)
        return lp, ent, sq
    return fn


def _pack(batch):
    """One row of every sample's real tokens; flat indices (into that row) of the completion positions."""
    lengths = batch.attention_mask.sum(-1)
    keep = batch.attention_mask.bool()  # right padding: real tokens are a prefix of each row
    input_ids = batch.input_ids[keep][None]
    starts = torch.cumsum(lengths, 0) - lengths
    position_ids = torch.arange(int(keep.sum()), device=lengths.device)[None] - torch.repeat_interleave(starts, lengths)[None]
    flat = (starts[:, None] + batch.completion_index.clamp(min=0)).reshape(-1)
    flat = torch.minimum(flat, (starts + lengths - 1).repeat_interleave(batch.completion_index.shape[1]))
    return input_ids, position_ids, flat


def lean_token_logprobs(model, batch, temperature: float, need_entropy: bool, need_sum_p_sq: bool,
                        chunk_size: int, packed: bool):
    """Same outputs as rlpost.learner.token_logprobs (see the module docstring for the two modes)."""
    if type(model).__name__ == "AdapterDisabledView":  # LoRA reference: adapters off for the head chunks too
        with model.peft_model.disable_adapter(), torch.no_grad():
            return _lean(model.peft_model, batch, temperature, need_entropy, need_sum_p_sq, chunk_size, packed)
    return _lean(model, batch, temperature, need_entropy, need_sum_p_sq, chunk_size, packed)


def _lean(model, batch, temperature, need_entropy, need_sum_p_sq, chunk_size, packed):
    B, T = batch.completion_index.shape
    if packed:
        input_ids, position_ids, flat = _pack(batch)
        inputs = dict(input_ids=input_ids, position_ids=position_ids)
    else:
        W = batch.input_ids.shape[1]
        idx = batch.completion_index.clamp(max=W - 1)
        flat = (torch.arange(B, device=idx.device)[:, None] * W + idx).reshape(-1)
        inputs = dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    ids = batch.completion_ids.reshape(-1)

    if chunk_size <= 0:  # packed, full head on the completion positions only
        logits = model(**inputs, use_cache=False, logits_to_keep=flat).logits[0]  # [B*T, V]
        fn = _head_chunk(lambda x: x, lambda x: x, temperature, need_entropy, need_sum_p_sq)
        lp, ent, sq = fn(logits, ids)
        return _shape(lp, ent, sq, B, T, need_entropy, need_sum_p_sq)

    out = model(**inputs, use_cache=False, logits_to_keep=1, output_hidden_states=True)
    hidden_all = out.hidden_states[-1]                      # final (normed) hidden states [b, w, H]
    hidden = hidden_all.reshape(-1, hidden_all.shape[-1])[flat]  # [B*T, H]
    lm = unwrap_causal_lm(model)
    head, post = lm.get_output_embeddings(), logits_postprocess(lm)
    _self_check(lm, head, post, hidden_all, out.logits)
    fn = _head_chunk(head, post, temperature, need_entropy, need_sum_p_sq)
    # recompute each chunk in backward (one [chunk, V] block alive at a time); not with ZeRO-3-partitioned weights,
    # which DeepSpeed cannot re-gather inside torch.utils.checkpoint's recomputation
    recompute = torch.is_grad_enabled() and hidden.requires_grad and not _zero3_partitioned(head)
    run = (lambda h, t: checkpoint(fn, h, t, use_reentrant=False)) if recompute else fn
    starts = range(0, hidden.shape[0], chunk_size)
    # DeepSpeed ZeRO-3 gathers the head's weight collectively at every call (and again in the backward
    # recomputation): every rank must make as many calls, so ranks with fewer chunks add zero-weighted ones
    calls = _chunks_on_every_rank(head, len(starts))
    parts = [run(hidden[start:start + chunk_size], ids[start:start + chunk_size]) for start in starts]
    lp, ent, sq = (torch.cat([p[i] for p in parts]) for i in range(3))
    for _ in range(len(starts), calls):
        pad = run(hidden[:1] * 0.0, ids[:1])[0]
        lp = lp + 0.0 * pad.sum()
    return _shape(lp, ent, sq, B, T, need_entropy, need_sum_p_sq)


def _zero3_partitioned(head) -> bool:
    return is_zero3_partitioned(getattr(head, "weight", None))


def _chunks_on_every_rank(head, count: int) -> int:
    """The largest chunk count over ranks when the head's weight is ZeRO-3 partitioned, else ``count``."""
    if not _zero3_partitioned(head):
        return count
    weight = head.weight
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    most = torch.tensor([float(count)], dtype=torch.float64, device=weight.device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    return int(most.item())


def _shape(lp, ent, sq, B, T, need_entropy, need_sum_p_sq):
    logp = lp.view(B, T)
    entropy = ent.view(B, T) if need_entropy else None
    if need_sum_p_sq:
        return logp, entropy, sq.view(B, T)
    return logp, entropy


@torch.no_grad()
def _self_check(lm, head, post, hidden_all, logits_last) -> None:
    if lm in _checked:
        return
    mine = post(head(hidden_all[:, -1:])).float()
    ref = logits_last[:, -1:].float()
    tol = 1e-3 if mine.dtype == torch.float32 and hidden_all.dtype == torch.float32 else 5e-2
    if not torch.allclose(mine, ref, rtol=tol, atol=tol * max(1.0, float(ref.abs().max()))):
        raise NotImplementedError(
            f"optim.logprob_chunk_size: {type(lm).__name__} transforms its logits in a way rlpost's chunked LM head "
            f"does not reproduce (max difference {float((mine - ref).abs().max()):.3g}); set optim.logprob_chunk_size=0")
    _checked.add(lm)

