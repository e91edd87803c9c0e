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
- tensor parallelism (``tensor_parallel_size`` > 1, rlpost/engines/vllm_engine.py ``tensor_parallel_kwargs``):
  one worker process per rank. A weight file reaches every rank (each loads it and keeps its own shard) and the
  logits processor runs on every rank (each row's spec travels with it; rank 0's records are returned). The
  broadcast is received by this process instead (the group has one member per server, not per rank) and loaded
  through a shared-memory file, as the colocated engine does under TP.
- data parallelism (``data_parallel_size`` > 1): vLLM runs that many engine cores and balances requests over them.
  ``AsyncLLM.collective_rpc`` reaches every core but answers with the first one's result, so rlpost's calls go
  through :meth:`AsyncVLLMEngine.on_every_engine`: a weight file is loaded by every core (their fingerprints must
  agree), a call's records are gathered from every core (each row was served by one of them), and the broadcast
  group is joined by this process, as under TP.
- LoRA (``max_lora_rank``, model.lora.sync=adapter): the slots and directories of
  :class:`rlpost.models.lora_sync.EngineAdapters`, ``AsyncLLM.add_lora`` / ``remove_lora``; every request of a
  generate call carries the adapter active when the call started. An adapter sent by broadcast is received where
  the group is (the worker at TP 1: ``rlpost_recv_adapter`` writes it to a directory this process reads).

Seeds, log-prob convention (``processed_logprobs`` plus the kept-mass correction) and the per-row layout are those
of rlpost/engines/vllm_engine.py (``vllm_rows``, ``to_samples``), so a batch gives the same samples on both.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid

from rlpost.engines.base import EngineError, GenRequest, SamplingParams
from rlpost.engines.vllm_engine import (_quiet_expected_reload_warnings, call_spec, default_max_model_len,
                                        tensor_parallel_kwargs, to_samples, vllm_rows)
from rlpost.models.lora_sync import AdapterWeights, EngineAdapters
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
    data_parallel_size = kwargs.get("data_parallel_size", 1)
    kwargs.update(tensor_parallel_kwargs(kwargs.pop("tensor_parallel_size", 1), data_parallel_size))
    max_lora_rank, max_loras = kwargs.pop("max_lora_rank", None), kwargs.pop("max_loras", 1)
    if max_lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=max_loras, max_cpu_loras=max_loras)
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


def merge_records(per_core: list) -> tuple[list | None, list | None]:
    """Records of one call from every engine core ([core] (entropy rows, kept-mass rows), each row a {step: value}
    dict, empty on the cores that did not serve it) -> one (entropy rows, kept-mass rows)."""
    def merge(kind: int) -> list | None:
        tables = [core[kind] for core in per_core if core[kind] is not None]
        if not tables:
            return None
        return [{k: v for table in tables for k, v in table[row].items()} for row in range(len(tables[0]))]
    return merge(0), merge(1)


class AsyncVLLMEngine:
    """``AsyncLLM`` with rlpost's ``generate`` / weight-sync API as coroutines; build it inside the event loop that
    will use it (vLLM starts its output handler on the running loop)."""

    def __init__(self, model_path: str, tokenizer, **kwargs):
        from vllm.v1.engine.async_llm import AsyncLLM
        _quiet_expected_reload_warnings()
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        start = time.perf_counter()
        self.tensor_parallel_size = kwargs.get("tensor_parallel_size", 1)
        self.data_parallel_size = kwargs.get("data_parallel_size", 1)
        # the weight-broadcast group is joined by this process when the model lives in several workers
        self.receives_here = self.tensor_parallel_size > 1 or self.data_parallel_size > 1
        self.comm = None   # that group, once joined
        self.max_lora_rank = kwargs.get("max_lora_rank")
        self.adapters = EngineAdapters(self.max_lora_rank, kwargs.get("max_loras", 1)) if self.max_lora_rank else None
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
        lora = self.active_lora   # the whole call runs on the adapter active when it started
        prompts, sps = vllm_rows(requests, params, seed_offset,
                                 lambda row: {ROW_KEY: f"{call_id}:{row}", SPEC_KEY: spec.wire()} if wants else None)
        try:
            outputs = await asyncio.gather(*[self._one(p, sp, f"{call_id}-{row}", lora)
                                             for row, (p, sp) in enumerate(zip(prompts, sps))])
        finally:
            records = (None, None)
            if wants:
                per_core = await self.on_every_engine("rlpost_take_records", call_id, len(prompts))
                errors = [core[2] for core in per_core if len(core) > 2 and core[2] is not None]
                if errors:
                    raise EngineError(f"vllm async engine: rlpost's logits processor raised: {errors[0]}")
                records = merge_records(per_core)
        return to_samples(self.tokenizer, requests, params.n, outputs, *records)

    async def on_every_engine(self, method: str, *args) -> list:
        """``collective_rpc(method, args)`` on every engine core (one per data-parallel rank): [core] rank 0's
        answer. (``AsyncLLM.collective_rpc`` sends to every core but returns only the first core's answers.)"""
        per_core = await self.llm.engine_core.call_utility_all_async("collective_rpc", method, None, args, None)
        return [workers[0] for workers in per_core]

    async def _one(self, prompt, sp, request_id: str, lora):
        final = None
        async for out in self.llm.generate(prompt, sp, request_id, lora_request=lora):
            final = out
        return final

    async def load_weights_file(self, path: str) -> tuple[int, str]:
        """Load a ``torch.save`` file of {name: tensor} in the worker; reset the prefix cache.
        Returns (tensors, fingerprint of what was loaded)."""
        loaded = await self.on_every_engine("rlpost_load_weights_checked", path)
        if any(tuple(x) != tuple(loaded[0]) for x in loaded):
            raise EngineError(f"vllm engine: the data-parallel engine cores loaded different weights from {path}: "
                              f"{loaded} (tensors, fingerprint) per core")
        n, fingerprint = loaded[0]
        await self.llm.reset_prefix_cache()
        self._base_weights_loaded()
        return n, fingerprint

    async def init_communicator(self, host: str, port: int, rank: int, world_size: int, backend: str,
                                timeout_s: float) -> None:
        if self.receives_here:   # this process joins the group (one member per server, not per rank or core)
            from rlpost.serving.weights import Communicator
            await self.close_communicator()
            if backend == "nccl":
                import torch
                torch.cuda.set_device(0)
            self.comm = await asyncio.to_thread(Communicator, host, port, rank, world_size, backend, timeout_s,
                                                "cuda" if backend == "nccl" else "cpu")
            return
        await self.llm.collective_rpc("rlpost_init_communicator",
                                      args=(host, port, rank, world_size, backend, timeout_s))

    async def recv_weights(self, meta: list) -> tuple[int, str]:
        """Receive one broadcast of the trainer's weights in the worker and load them (see the module docstring)."""
        if self.comm is None and self.receives_here:
            raise RuntimeError("update_weights with transport=dist before init_communicator")
        if self.comm is not None:   # TP/DP: received here; every rank of every core loads one shared-memory file
            from rlpost.serving.weights import save_weights_file
            weights = await asyncio.to_thread(self.comm.recv, meta)
            path = await asyncio.to_thread(save_weights_file, weights)
            try:
                return await self.load_weights_file(path)
            finally:
                os.unlink(path)
        n, fingerprint = (await self.llm.collective_rpc("rlpost_recv_weights", args=(meta,)))[0]
        await self.llm.reset_prefix_cache()
        self._base_weights_loaded()
        return n, fingerprint

    def _base_weights_loaded(self) -> None:
        if self.adapters is not None:
            self.adapters.active = None   # full weights: no adapter on top of them

    # ------------------------------------------------------------------ LoRA adapters
    @property
    def active_lora(self):
        """The LoRARequest a generate call runs with (None: base weights)."""
        return self.adapters.active if self.adapters is not None else None

    async def load_adapter(self, adapter: AdapterWeights) -> None:
        """As rlpost/engines/vllm_engine.py ``load_adapter``: a new live adapter, then the active one."""
        if self.adapters is None:
            raise EngineError(f"vllm engine: adapter {adapter.name!r} sent to an engine started without LoRA "
                              "(rlpost serve: --max-lora-rank)")
        request, evicted = self.adapters.stage(adapter)
        for old in evicted:
            await self.llm.remove_lora(old)
        await self.llm.add_lora(request)
        self.adapters.active = request

    async def recv_adapter(self, name: str, meta: list, config: dict) -> AdapterWeights:
        """One adapter broadcast by the trainer, received in the worker (which holds the group)."""
        import shutil
        import tempfile

        from rlpost.models.lora_sync import read_adapter
        from rlpost.serving.weights import default_sync_dir
        if self.comm is not None:   # TP/DP: the group is joined by this process
            tensors = await asyncio.to_thread(self.comm.recv, meta)
            return AdapterWeights(name, [(k, t.cpu()) for k, t in tensors], config)
        directory = tempfile.mkdtemp(prefix="rlpost-lora-recv-", dir=default_sync_dir())
        try:
            await self.llm.collective_rpc("rlpost_recv_adapter", args=(meta, config, directory))
            return read_adapter(directory, name)
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def use_adapter(self, name: str) -> bool:
        return self.adapters is not None and self.adapters.use(name)

    def live_adapters(self) -> list[str]:
        return self.adapters.live.names() if self.adapters is not None else []

    async def close_communicator(self) -> None:
        if self.comm is not None:
            self.comm.close()
            self.comm = None
        if not self.receives_here:
            await self.llm.collective_rpc("rlpost_close_communicator")

    async def reset_prefix_cache(self) -> None:
        await self.llm.reset_prefix_cache()

    def close(self) -> None:
        comm, self.comm = getattr(self, "comm", None), None
        if comm is not None:
            comm.close()
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.shutdown()
        if getattr(self, "adapters", None) is not None:
            self.adapters.close()
