"""transformers engine: a compact KV-cached sampling loop over any HF causal LM.

Why not ``model.generate``: we need, per sampled token, the log-prob and entropy of the exact
distribution it was drawn from, a logits-processor hook that sees every row, seeded sampling and stop
strings, without ``generate``'s per-step overhead. The loop is: left-padded prefill of each distinct prompt
once (the n samples of a prompt share its KV cache rows by index), then one token per
step for the rows still running: a row that finishes (EOS or a stop string) leaves the batch and its KV
cache rows are dropped, so a long tail of unfinished rows does not pay for the finished ones.

Log-probs and entropies refer to the temperature-scaled distribution softmax(z / T) after the logits
processors (and the repetition penalty, when one is set) and before min-p/top-k/top-p truncation — the same
quantity the learner recomputes, so the sampler/learner mismatch is zero up to numerics. With temperature 0
(greedy) they refer to softmax(z). The order is vLLM's: processors, repetition penalty, temperature, min-p,
top-k, top-p. A repetition penalty is a sampling-time change the learner does not make (as in TRL): with
``rollout.repetition_penalty`` != 1 the sampler's and learner's log-probs differ by design
(``rollout/logprob_diff``; ``algo.vllm_importance_sampling_correction`` weighs it).
"""
from __future__ import annotations

from typing import Iterable

import torch

from rlpost.algos.core import entropy_from_logprobs
from rlpost.engines.base import ENGINES, GenRequest, SamplingParams, sample_seeds
from rlpost.logprobs import forward_accepts
from rlpost.sampling import apply_repetition_penalty, filter_min_p, filter_top_k_top_p, seen_tokens
from rlpost.types import Sample


def draw(probs: torch.Tensor, active: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` [N, V]: all from the call's one generator, or row r from ``generators[active[r]]``
    (its own: then what a row samples does not depend on the other rows)."""
    if len(generators) == 1:
        return torch.multinomial(probs, 1, generator=generators[0]).squeeze(-1)
    return torch.cat([torch.multinomial(p[None], 1, generator=generators[row])
                      for p, row in zip(probs, active.tolist())]).squeeze(-1)


@ENGINES.register("hf")
class HFEngine:
    """Rollout engine on a transformers model, usually the learner's own model object (no sync needed)."""

    def __init__(self, model, tokenizer, device: str | torch.device | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.eos_ids = self._eos_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]
        # the prefill needs the last position's logits only (transformers' logits_to_keep, where the forward has it)
        self.prefill_kwargs = {"logits_to_keep": 1} if forward_accepts(model, "logits_to_keep") else {}

    @staticmethod
    def _eos_ids(model, tokenizer) -> list[int]:
        ids = {tokenizer.eos_token_id}
        gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        ids.update(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        return sorted(i for i in ids if i is not None)

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy weights in by name (a no-op in effect when they are the model's own tensors)."""
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"hf engine: load_weights got unknown parameter {name!r}")
                if params[name].data_ptr() != tensor.data_ptr():
                    params[name].copy_(tensor.to(params[name].dtype))

    def close(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Sample]:
        prompts = [r.prompt_ids for r in requests for _ in range(params.n)]
        samples = self._generate_batch(prompts, params, sample_seeds(requests, params.n))
        for i, s in enumerate(samples):
            s.request_index = i // params.n
        return samples

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams,
                        seeds: list[int] | None = None) -> list[Sample]:
        was_training = self.model.training
        self.model.eval()
        try:
            return self._sample_loop(prompts, params, seeds)
        finally:
            self.model.train(was_training)

    def _sample_loop(self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None) -> list[Sample]:
        """seeds: one per row (each row draws from its own generator), or None: one generator for the call."""
        num_rows = len(prompts)
        dev = self.device
        number: dict[tuple, int] = {}  # each distinct prompt is prefilled once, its cache rows repeated per sample
        owners = torch.tensor([number.setdefault(tuple(p), len(number)) for p in prompts], dtype=torch.long, device=dev)
        unique = list(number)
        width = max(len(p) for p in unique)
        input_ids = torch.full((len(unique), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(unique), width), dtype=torch.long)
        for i, p in enumerate(unique):  # left padding
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention[i, width - len(p):] = 1
        input_ids, attention = input_ids.to(dev), attention.to(dev)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        if seeds is None:
            seeds = [params.seed if params.seed is not None else int(torch.randint(0, 2**62, (1,)).item())]
        generators = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        eos = torch.tensor(self.eos_ids, device=dev)

        out = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True,
                         **self.prefill_kwargs)
        cache, logits = out.past_key_values, out.logits[:, -1, :][owners]
        if len(unique) < num_rows:
            cache.reorder_cache(owners)
        input_ids, attention, positions = input_ids[owners], attention[owners], positions[owners]
        next_pos = positions[:, -1] + 1
        tokens = torch.full((num_rows, params.max_tokens), self.pad_id, dtype=torch.long, device=dev)
        logprobs = torch.zeros((num_rows, params.max_tokens), device=dev)
        entropies = torch.zeros((num_rows, params.max_tokens), device=dev) if params.return_entropy else None
        lengths = torch.full((num_rows,), params.max_tokens, dtype=torch.long, device=dev)
        finished = torch.zeros(num_rows, dtype=torch.bool, device=dev)
        active = torch.arange(num_rows, device=dev)  # rows still generating; finished rows leave the batch
        history = input_ids
        penalise = params.repetition_penalty != 1.0
        seen = seen_tokens([list(p) for p in prompts], logits.shape[-1], dev) if penalise else None

        for step in range(params.max_tokens):
            logits = logits.float()
            for proc in params.logits_processors:
                logits = proc(step, history, logits)
            if penalise:
                logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
            scaled = logits / params.temperature if params.temperature > 0 else logits
            logp_full = torch.log_softmax(scaled, dim=-1)
            if params.temperature > 0:
                filtered = filter_top_k_top_p(filter_min_p(scaled, params.min_p), params.top_k, params.top_p)
                next_tok = draw(torch.softmax(filtered, dim=-1), active, generators)
            else:
                next_tok = scaled.argmax(-1)
            tokens[active, step] = next_tok
            logprobs[active, step] = logp_full.gather(-1, next_tok[:, None]).squeeze(-1)
            if entropies is not None:
                entropies[active, step] = entropy_from_logprobs(logp_full)
            done_now = torch.isin(next_tok, eos)
            if params.stop:
                done_now |= self._hits_stop_string(tokens[active, : step + 1], params.stop)
            lengths[active[done_now]] = step + 1
            finished[active[done_now]] = True
            if bool(done_now.all()) or step == params.max_tokens - 1:
                break
            if params.logits_processors:
                history = torch.cat([history, next_tok[:, None]], dim=-1)
            if penalise:
                seen[torch.arange(len(next_tok), device=dev), next_tok] = True
            if bool(done_now.any()):  # compact: drop finished rows from the batch and the KV cache
                keep = torch.nonzero(~done_now).flatten()
                cache.reorder_cache(keep)
                active, attention, next_pos, next_tok = active[keep], attention[keep], next_pos[keep], next_tok[keep]
                history = history[keep]
                seen = seen[keep] if penalise else None
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=-1)
            out = self.model(input_ids=next_tok[:, None], attention_mask=attention, position_ids=next_pos[:, None],
                             past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[:, -1, :]
            next_pos = next_pos + 1

        return self._to_samples(prompts, tokens, logprobs, entropies, lengths, finished)

    def _hits_stop_string(self, tokens: torch.Tensor, stop: list[str]) -> torch.Tensor:
        """[N] bool: the decoded tail of each row contains a stop string."""
        tail = max(len(s) for s in stop) + 8
        texts = self.tokenizer.batch_decode(tokens[:, -tail:].tolist(), skip_special_tokens=True)
        return torch.tensor([any(s in text for s in stop) for text in texts], device=tokens.device)

    def _to_samples(self, prompts, tokens, logprobs, entropies, lengths, finished) -> list[Sample]:
        tokens, logprobs, lengths = tokens.cpu(), logprobs.cpu(), lengths.cpu()
        entropies = entropies.cpu() if entropies is not None else None
        texts = self.tokenizer.batch_decode([tokens[i, : lengths[i]].tolist() for i in range(len(prompts))],
                                            skip_special_tokens=True)
        samples = []
        for i, prompt in enumerate(prompts):
            n = int(lengths[i])
            samples.append(Sample(
                prompt_ids=list(prompt), completion_ids=tokens[i, :n].tolist(), logprobs=logprobs[i, :n].tolist(),
                text=texts[i], finish_reason="stop" if bool(finished[i]) else "length",
                entropies=entropies[i, :n].tolist() if entropies is not None else None))
        return samples
