"""vLLM's async engine (``vllm.v1.engine.async_llm.AsyncLLM``) with rlpost's conventions: what ``rlpost serve``
runs (rlpost/serving/server.py). Requests from any number of callers are scheduled together by vLLM (continuous
batching): a call's rows join the running batch as soon as they arrive and leave it when they finish.

The engine core runs in a process of its own, so the colocated engine's in-process shortcuts do not apply:

- rlpost's logits processor (rlpost/engines/vllm_worker.py) is loaded in that process by name; each row carries
  its call's spec in ``SamplingParams.extra_args`` (entropies wanted, temperature, truncation), the processor keeps
  the records there, and they are fetched after the call with ``collective_rpc("rlpost_take_records")``. Python
  logits processors (HAPO's adaptive temperature) cannot travel to that process and are refused.
- weights: ``collective_rpc("rlpost_load_weights_checked", path)`` loads a ``torch.save`` file inside the worker;
  the ``dist`` transport is received by the worker itself (``rlpost_init_communicator`` / ``rlpost_recv_weights``),
  straight onto the device that holds the model. Either answers the fingerprint of what was loaded. The prefix
  cache is reset after a load (its KV entries were computed with the old weights).

Seeds, log-prob convention (``processed_logprobs`` plus the kept-mass correction) and the per-row layout are those
of rlpost/engines/vllm_engine.py (``vllm_rows``, ``to_samples``), so a batch gives the same samples on both.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.engines.vllm_engine import (_quiet_expected_reload_warnings, call_spec, default_max_model_len, to_samples,
                                        vllm_rows)
from rlpost.types import Sample

log = logging.getLogger("rlpost")
PROCESSOR = "rlpost.engines.vllm_worker:RlpostLogitsProcessor"
EXTENSION = "rlpost.engines.vllm_worker.RlpostWorkerExtension"


def engine_args(model_path: str, *, max_model_len: int | None = None, max_completion_length: int = 256,
                enable_prefix_caching: bool = True, enforce_eager: bool = True, **kwargs):
    """``vllm.AsyncEngineArgs`` with rlpost's fixed settings (logits processor, worker extension, processed
    log-probs, the default context length); every other keyword goes to AsyncEngineArgs as it is (dtype, seed,
    tensor_parallel_size, ...)."""
    from vllm.engine.arg_utils import AsyncEngineArgs
    trust = kwargs.get("trust_remote_code", False)
    kwargs.setdefault("disable_log_stats", True)   # periodic stat lines would crowd the log tail errors quote
    from vllm.platforms import current_platform
    if current_platform.is_cpu():
        # vLLM 0.32 CPU: a seeded request whose prefill is split across steps kills the engine core
        # ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync); whole prefills avoid it
        kwargs.setdefault("enable_chunked_prefill", False)
    return AsyncEngineArgs(model=str(model_path), tokenizer=str(model_path),
                           max_model_len=max_model_len or default_max_model_len(str(model_path), max_completion_length,
                                                                                 trust),
                           enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
                           logprobs_mode="processed_logprobs", logits_processors=[PROCESSOR],
                           worker_extension_cls=EXTENSION, **kwargs)


class AsyncVLLMEngine:
    """``AsyncLLM`` with rlpost's ``generate`` / weight-sync API as coroutines; build it inside the event loop that
    will use it (vLLM starts its output handler on the running loop)."""

    def __init__(self, model_path: str, tokenizer, **kwargs):
        from vllm.v1.engine.async_llm import AsyncLLM
        _quiet_expected_reload_warnings()
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        start = time.perf_counter()
        args = engine_args(model_path, **kwargs)
        self.max_model_len = args.max_model_len
        self.llm = AsyncLLM.from_engine_args(args)
        log.info("vLLM async engine ready in %.1f s (max_model_len %d)", time.perf_counter() - start,
                 self.max_model_len)

    async def generate(self, requests: list[GenRequest], params: SamplingParams, seed_offset: int = 0) -> list[Sample]:
        """len(requests) * params.n samples, request-major; every row is its own vLLM request, scheduled with
        whatever else the engine is running."""
        if params.logits_processors:
            raise NotImplementedError("the async vLLM engine (rlpost serve) cannot run Python logits processors "
                                      "(e.g. HAPO's adaptive temperature): its engine core is another process. "
                                      "Use rollout.engine=vllm (colocated) or hf.")
        longest = max((len(r.prompt_ids) for r in requests), default=0)
        if longest + params.max_tokens > self.max_model_len:
            raise ValueError(f"vllm engine: a prompt of {longest} tokens + max_tokens {params.max_tokens} exceeds "
                             f"max_model_len {self.max_model_len}; raise rollout.max_model_len")
        from rlpost.engines.vllm_worker import ROW_KEY, SPEC_KEY
        spec = call_spec(params, self.pad_id)
        wants = spec.want_entropy or spec.truncates
        call_id = uuid.uuid4().hex
        prompts, sps = vllm_rows(requests, params, seed_offset,
                                 lambda row: {ROW_KEY: f"{call_id}:{row}", SPEC_KEY: spec.wire()} if wants else None)
        try:
            outputs = await asyncio.gather(*[self._one(p, sp, f"{call_id}-{row}")
                                             for row, (p, sp) in enumerate(zip(prompts, sps))])
        finally:
            records = (None, None)
            if wants:
                records = (await self.llm.collective_rpc("rlpost_take_records", args=(call_id, len(prompts))))[0]
        return to_samples(self.tokenizer, requests, params.n, outputs, *records)

    async def _one(self, prompt, sp, request_id: str):
        final = None
        async for out in self.llm.generate(prompt, sp, request_id):
            final = out
        return final

    async def load_weights_file(self, path: str) -> tuple[int, str]:
        """Load a ``torch.save`` file of {name: tensor} in the worker; reset the prefix cache.
        Returns (tensors, fingerprint of what was loaded)."""
        n, fingerprint = (await self.llm.collective_rpc("rlpost_load_weights_checked", args=(path,)))[0]
        await self.llm.reset_prefix_cache()
        return n, fingerprint

    async def init_communicator(self, host: str, port: int, rank: int, world_size: int, backend: str,
                                timeout_s: float) -> None:
        await self.llm.collective_rpc("rlpost_init_communicator",
                                      args=(host, port, rank, world_size, backend, timeout_s))

    async def recv_weights(self, meta: list) -> tuple[int, str]:
        """Receive one broadcast of the trainer's weights in the worker and load them (see the module docstring)."""
        n, fingerprint = (await self.llm.collective_rpc("rlpost_recv_weights", args=(meta,)))[0]
        await self.llm.reset_prefix_cache()
        return n, fingerprint

    async def close_communicator(self) -> None:
        await self.llm.collective_rpc("rlpost_close_communicator")

    async def reset_prefix_cache(self) -> None:
        await self.llm.reset_prefix_cache()

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.shutdown()
