"""vLLM engine, colocated: a ``vllm.LLM`` in the trainer's own process (``rollout.engine: vllm``).

The engine runs in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: one ``UniProcExecutor`` worker in this
process, as TRL's colocate mode does), which is what lets three things work without serialisation:

- weight sync: ``load_weights`` hands the learner's tensors to the worker's ``reload_weights`` through
  ``collective_rpc`` (rlpost/engines/vllm_worker.py), then resets the prefix cache, whose KV entries were
  computed with the old weights;
- rlpost's Python logits processors (``SamplingParams.logits_processors``, e.g. HAPO's per-token temperature)
  run inside vLLM's sampler through one V1 logits processor, before temperature, as in the hf engine;
- per-token entropies are computed in that processor from the same logits vLLM samples from.

LoRA adapters (``model.lora.sync: adapter``, rlpost/models/lora_sync.py): with ``max_lora_rank`` set the engine
starts with ``enable_lora`` and ``max_loras`` slots; ``load_adapter`` writes an adapter version to a directory of
the engine's own and adds it to vLLM (``LoRARequest(name, id, path)``), the oldest live one is unloaded when the
slots are full, and every generate / score call runs with the active adapter until another is loaded or
activated (``use_adapter``). ``load_weights`` (full weights) deactivates it.

Log-prob convention. The hf engine returns log softmax(z/T) of the sampled token, after the logits processors
and before top-k/top-p. vLLM returns "raw" logprobs (log softmax(z), before processors and temperature) unless
``logprobs_mode="processed_logprobs"``, which gives log softmax of the logits it actually sampled from: after
processors, repetition penalty and temperature, and after min-p/top-k/top-p, i.e. renormalised over the kept
tokens. rlpost uses ``processed_logprobs``: without truncation it is exactly the hf convention; with min-p/top-k/
top-p the processor records log(kept mass) per token and the engine adds it back. Greedy (T = 0) gives
log softmax(z), as in the hf engine. vLLM applies the repetition penalty after rlpost's processor, so the processor
applies it itself (to its own copy) where it computes entropies and kept mass.

Continuous batching (:class:`EngineDriver`): ``generate`` may be called from many threads at once. vLLM 0.32's
``AsyncLLM`` always runs its engine core in another process, so the driver steps the in-process core
(``LLM.llm_engine``) itself: each call queues its rows, one waiting thread adds them (``LLM.enqueue``, as
``LLM.generate`` does) and steps the engine until its own call is done, then hands over; rows that arrive while
others run join the batch at the next step. Per-row seeds make a row's sample independent of its batch. Weight and
adapter loads, ``score`` and ``close`` wait for the calls in flight (sleep mode: the first call wakes the engine,
the last one to end puts it to sleep).

Tensor parallelism (``tensor_parallel_size`` > 1; ``rollout.tensor_parallel_size``; ``rlpost serve
--tensor-parallel-size`` runs the async engine, rlpost/engines/vllm_async.py, with the same keywords): the engine
core stays in this process, the model runs in one vLLM worker process per rank. A weight sync then goes through a
shared-memory file that every rank maps, and each rank's weight loader (``model.load_weights``) keeps its own
shard. rlpost's logits processor runs in every rank's process: a call that needs it (Python logits processors,
entropies, top-k/top-p/min-p) is registered on every rank through ``collective_rpc`` (its processors must pickle)
and rank 0's records are fetched after generation with ``collective_rpc("rlpost_take_records")``, as the async
engine fetches its own.

Each (request, sample) becomes its own vLLM request with ``n=1`` and seed ``seed + global_row`` (vLLM's own
parallel sampling gives child ``j`` seed ``seed + j`` in the same way); ``seed_offset`` keeps row seeds global
when a batch is split across ``rlpost serve`` workers, so the split does not change the samples. A request with a
seed of its own (``GenRequest.seed``, set by evaluation) gives its sample ``j`` seed ``stable_seed(seed, j)``
instead, whatever the rest of the batch is.
"""
from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import threading
import time
import uuid
from typing import Iterable

import torch

from rlpost.engines.base import ENGINES, EngineError, GenRequest, SamplingParams, sample_seeds
from rlpost.models.lora_sync import AdapterWeights, EngineAdapters
from rlpost.types import Sample

log = logging.getLogger("rlpost")
DEFAULT_PROMPT_BUDGET = 1024  # tokens reserved for the prompt when rollout.max_model_len is unset


def context_overrides(model_init_kwargs: dict) -> dict:
    """The context-window settings of ``model.model_init_kwargs`` (``rope_scaling``, ``max_position_embeddings``),
    which transformers' from_pretrained applies to the learner's model, as vLLM ``hf_overrides`` for the sampler."""
    return {k: model_init_kwargs[k] for k in ("rope_scaling", "max_position_embeddings") if k in model_init_kwargs}


def default_max_model_len(model_path: str, max_completion_length: int, trust_remote_code: bool = False) -> int:
    """Prompt budget + completion cap, rounded up to a multiple of 256, capped at the model's context length."""
    from transformers import AutoConfig
    hf_cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    context = getattr(hf_cfg, "max_position_embeddings", None) or 1 << 20
    wanted = 256 * math.ceil((DEFAULT_PROMPT_BUDGET + max_completion_length) / 256)
    return int(min(context, wanted))


def sampling_kwargs(params: SamplingParams) -> dict:
    """Our SamplingParams -> vllm.SamplingParams keywords (one sampled sequence; n is expanded by the caller).
    Only the finished output is wanted (``FINAL_ONLY``: the async engine builds no output per step) and text is
    decoded by rlpost from the token ids, so vLLM detokenizes only when stop strings need it."""
    from vllm.sampling_params import RequestOutputKind
    return dict(output_kind=RequestOutputKind.FINAL_ONLY, detokenize=bool(params.stop),
                n=1, temperature=params.temperature, top_p=params.top_p,
                top_k=params.top_k if params.top_k > 0 else -1,      # vLLM: -1 (or 0 in new versions) = off
                min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                max_tokens=params.max_tokens, stop=list(params.stop) or None, include_stop_str_in_output=True,
                logprobs=0)                                          # 0: only the sampled token's logprob


def call_spec(params: SamplingParams, pad_id: int):
    """What a generate call asks of rlpost's logits processor (rlpost/engines/vllm_worker.py CallSpec)."""
    from rlpost.engines.vllm_worker import CallSpec
    return CallSpec(processors=list(params.logits_processors), temperature=params.temperature, top_k=params.top_k,
                    top_p=params.top_p, want_entropy=params.return_entropy, pad_id=pad_id, min_p=params.min_p,
                    repetition_penalty=params.repetition_penalty)


def vllm_rows(requests: list[GenRequest], params: SamplingParams, seed_offset: int, extra_args) -> tuple[list, list]:
    """One vLLM (TokensPrompt, SamplingParams) per (request, sample), request-major: row ``i * n + j`` gets seed
    ``params.seed + (seed_offset + i) * n + j`` or, for requests with seeds of their own, ``stable_seed(seed, j)``
    (the module docstring); ``extra_args(row)`` gives the row's ``extra_args``."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs import TokensPrompt
    n, base, own_seeds = params.n, sampling_kwargs(params), sample_seeds(requests, params.n)
    prompts, sps = [], []
    for i, req in enumerate(requests):
        for j in range(n):
            row = i * n + j
            seed = None if params.seed is None else (params.seed + (seed_offset + i) * n + j) % (1 << 63)
            seed = own_seeds[row] if own_seeds is not None else seed
            sps.append(VLLMSamplingParams(**base, seed=seed, extra_args=extra_args(row)))
            prompts.append(TokensPrompt(prompt_token_ids=list(req.prompt_ids)))
    return prompts, sps


def to_samples(tokenizer, requests: list[GenRequest], n: int, outputs, entropies, log_mass) -> list[Sample]:
    """vLLM RequestOutputs (one per row, request-major) -> Samples; ``log_mass`` (per row {step: log kept mass})
    turns processed log-probs back into log softmax(z/T) before truncation."""
    samples = []
    for row, out in enumerate(outputs):
        comp = out.outputs[0]
        if comp.finish_reason not in ("stop", "length"):
            raise EngineError(f"vllm engine: request finished with {comp.finish_reason!r} ({comp.stop_reason})")
        ids = list(comp.token_ids)
        logprobs = [step[tok].logprob for step, tok in zip(comp.logprobs, ids)]
        if log_mass is not None:   # processed logprobs are normalised over the top-k/top-p set: undo that
            logprobs = [lp + log_mass[row].get(t, 0.0) for t, lp in enumerate(logprobs)]
        ents = [entropies[row].get(t, float("nan")) for t in range(len(ids))] if entropies is not None else None
        samples.append(Sample(prompt_ids=list(requests[row // n].prompt_ids), completion_ids=ids,
                              logprobs=logprobs, finish_reason=comp.finish_reason, entropies=ents,
                              request_index=row // n))
    texts = tokenizer.batch_decode([s.completion_ids for s in samples], skip_special_tokens=True)
    for s, text in zip(samples, texts):
        s.text = text
    return samples


class _ExpectedReloadWarnings(logging.Filter):
    """Drops vLLM's "<Layer>: Failed to load weights" on a weight sync for the layers that have no weights of their
    own in a state dict: RotaryEmbedding (buffers computed from the config) and ParallelLMHead when the LM head is
    tied to the embeddings (rlpost sends HF state-dict names, where the tied head has no entry). vLLM then keeps
    their tensors as they are, which is right; that the sync is complete is checked by the worker's weights
    fingerprint (rlpost.serving.weights.weights_fingerprint) and by the log-prob agreement tests."""

    EXPECTED = {"RotaryEmbedding", "ParallelLMHead", "VocabParallelEmbedding"}

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == "%s: Failed to load weights" and record.args and record.args[0] in self.EXPECTED)


def _quiet_expected_reload_warnings() -> None:
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    if not any(isinstance(f, _ExpectedReloadWarnings) for f in log.filters):
        log.addFilter(_ExpectedReloadWarnings())


def tensor_parallel_kwargs(tensor_parallel_size: int, data_parallel_size: int = 1) -> dict:
    """vLLM keywords for ``tensor_parallel_size`` ranks: one worker process per rank (the ``mp`` executor;
    each rank's weight loader slices its own shard of every full tensor it is given). On CPU builds vLLM binds
    each rank's OpenMP threads to a NUMA node of its own and refuses more ranks (TP x DP) than nodes; with fewer
    nodes (one, on most machines) the binding is switched off (``VLLM_CPU_OMP_THREADS_BIND=nobind``) unless set."""
    ranks = tensor_parallel_size * data_parallel_size
    if ranks > 1:
        from vllm.platforms import current_platform
        if current_platform.is_cpu() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            from vllm.utils.cpu_resource_utils import get_visible_memory_node
            if len(get_visible_memory_node()) < ranks:
                os.environ["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
                log.info("vLLM CPU: %d ranks on fewer NUMA nodes: OpenMP thread binding off", ranks)
    if tensor_parallel_size == 1:
        return {}
    return {"tensor_parallel_size": tensor_parallel_size, "distributed_executor_backend": "mp"}


class _Call:
    """One ``generate`` call inside :class:`EngineDriver`: its vLLM rows, the adapter they run with, what it asks
    of rlpost's logits processor (``spec``, None when nothing) and, once done, its outputs, records or error."""

    def __init__(self, call_id: str, prompts: list, sps: list, lora, spec, remote: bool):
        self.id, self.prompts, self.sps, self.lora, self.spec, self.remote = call_id, prompts, sps, lora, spec, remote
        self.outputs: list = [None] * len(prompts)
        self.left = len(prompts)
        self.request_ids: list[str] = []   # vLLM's internal ids, for aborting
        self.records: tuple = (None, None)
        self.error: BaseException | None = None
        self.done = False

    def open(self, llm) -> None:
        """Register the call with the logits processor (in this process, or on every TP rank)."""
        from rlpost.engines.vllm_worker import register_call
        if self.spec is not None and self.remote:
            llm.collective_rpc("rlpost_register_call", args=(self.id, self.spec))
        elif self.spec is not None:
            register_call(self.id, self.spec)

    def close(self, llm) -> None:
        """Unregister the call and keep its records (rank 0's under TP: every rank sampled the same rows)."""
        from rlpost.engines.vllm_worker import take_records
        if self.spec is not None and self.remote:
            entropies, log_mass, error = llm.collective_rpc("rlpost_take_records", args=(self.id, len(self.prompts)))[0]
            if error is not None:
                raise EngineError(f"vllm engine: a logits processor raised on the tensor-parallel ranks: {error}")
            self.records = entropies, log_mass
        elif self.spec is not None:
            self.records = take_records(self.id, len(self.prompts))


class EngineDriver:
    """Continuous batching over vLLM's in-process engine core (``LLM.llm_engine``), for calls from many threads.

    ``run(call)`` queues the call's rows and waits for them. Whichever waiting thread finds nobody stepping becomes
    the stepper: it adds the queued rows (``LLM.enqueue``: rendered and added as ``LLM.generate`` adds them), runs
    ``llm_engine.step()`` and hands each finished row to its call, until its own call is done; then a waiting
    thread takes over. Rows queued while others run thus join the running batch at the next step, and only the
    stepper touches the engine. An error while adding a call's rows fails that call alone; an error in a step
    fails every call whose rows were running (they are aborted), and the calls queued after it go on.

    The gate: :meth:`in_flight` brackets a call (``on_first`` runs before the first of overlapping calls starts,
    ``on_last`` after the last ends: wake / sleep); :meth:`exclusive` (weight and adapter loads, score, close)
    waits until no call is in flight and keeps new calls waiting until it ends."""

    def __init__(self, llm, on_first=None, on_last=None):
        self.llm, self.on_first, self.on_last = llm, on_first, on_last
        self.cv = threading.Condition()
        self.queued: list[_Call] = []
        self.running: dict[str, tuple[_Call, int]] = {}   # vLLM request id -> (call, row); the stepper's
        self.stepping = False
        self.calls = 0             # calls in flight
        self.exclusive_waiting = 0
        self.exclusive_held = False

    # ------------------------------------------------------------------ the gate
    @contextlib.contextmanager
    def in_flight(self):
        with self.cv:
            while self.exclusive_held or self.exclusive_waiting:
                self.cv.wait()
            if self.calls == 0 and self.on_first is not None:
                self.on_first()
            self.calls += 1
        try:
            yield
        finally:
            with self.cv:
                self.calls -= 1
                if self.calls == 0:
                    try:
                        if self.on_last is not None:
                            self.on_last()
                    finally:
                        self.cv.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self.cv:
            self.exclusive_waiting += 1
            try:
                while self.calls or self.exclusive_held:
                    self.cv.wait()
            finally:
                self.exclusive_waiting -= 1
            self.exclusive_held = True
        try:
            yield
        finally:
            with self.cv:
                self.exclusive_held = False
                self.cv.notify_all()

    # ------------------------------------------------------------------ calls
    def run(self, call: _Call) -> _Call:
        """Queue ``call``'s rows and return the call once all of them finished; raises the call's error."""
        with self.cv:
            self.queued.append(call)
            while not call.done and self.stepping:
                self.cv.wait()
            lead = not call.done
            self.stepping = self.stepping or lead
        if lead:
            try:
                self._step_until(call)
            finally:
                with self.cv:
                    self.stepping = False
                    self.cv.notify_all()
        return self._result(call)

    @staticmethod
    def _result(call: _Call) -> _Call:
        if call.error is not None:
            raise call.error
        return call

    def _step_until(self, call: _Call) -> None:
        engine = self.llm.llm_engine
        while True:
            with self.cv:
                if call.done:
                    return
                new, self.queued = self.queued, []
            for c in new:
                self._add(c)
            if not self.running:
                if not call.done:   # cannot happen: every added row is running until it finishes
                    self._finish(call, EngineError(f"vllm engine: call {call.id} has rows left but none running"))
                continue
            try:
                outputs = engine.step()
            except Exception as err:
                self._fail_running(err)
                continue
            for out in outputs:
                if out.finished and out.request_id in self.running:
                    owner, row = self.running.pop(out.request_id)
                    owner.outputs[row] = out
                    owner.left -= 1
                    if owner.left == 0:
                        self._finish(owner)
            for c in self._running_calls():   # a logits processor of this call raised: stop its rows now
                if c.spec is not None and c.spec.error is not None:
                    self._abort(c, c.spec.error)

    def _add(self, call: _Call) -> None:
        try:
            call.open(self.llm)
            call.request_ids = self.llm.enqueue(call.prompts, call.sps, lora_request=call.lora, use_tqdm=False)
        except Exception as err:   # enqueue aborts the rows it added before failing
            self._finish(call, err)
            return
        for row, rid in enumerate(call.request_ids):   # outputs carry the id given (vLLM adds "-<random>")
            self.running[rid.rsplit("-", 1)[0]] = (call, row)
        if not call.request_ids:
            self._finish(call)

    def _running_calls(self) -> list[_Call]:
        return list({id(c): c for c, _ in self.running.values()}.values())

    def _fail_running(self, err: Exception) -> None:
        for c in self._running_calls():
            failure = EngineError(f"vllm engine: a generation step failed while this call's rows ran "
                                  f"({type(err).__name__}: {err})")
            failure.__cause__ = err
            self._abort(c, failure)

    def _abort(self, call: _Call, error: BaseException) -> None:
        """Take ``call``'s rows out of the engine and fail it with ``error``."""
        self.running = {rid: v for rid, v in self.running.items() if v[0] is not call}
        try:
            self.llm.llm_engine.abort_request(call.request_ids, internal=True)
        except Exception:   # pragma: no cover - the error being reported is the one that matters
            log.exception("vllm engine: aborting the rows of call %s", call.id)
        self._finish(call, error)

    def _finish(self, call: _Call, error: BaseException | None = None) -> None:
        try:
            call.close(self.llm)
        except Exception as err:
            error = error or err
        with self.cv:
            call.error, call.done = error, True
            self.cv.notify_all()


@ENGINES.register("vllm")
class VLLMEngine:
    """``vllm.LLM`` in this process; see the module docstring for the conventions."""

    # generate may be called from many threads at once; their rows are batched continuously (EngineDriver):
    # per-episode rollouts send each episode's turn as its own call (rlpost/workflows/multi_turn.py Batcher)
    continuous_batching = True

    def __init__(self, model_path: str, tokenizer, *, dtype: str = "auto", gpu_memory_utilization: float = 0.3,
                 max_model_len: int | None = None, max_completion_length: int = 256,
                 enable_prefix_caching: bool = True, enforce_eager: bool = True, enable_sleep_mode: bool = False,
                 seed: int = 0, trust_remote_code: bool = False, revision: str | None = None,
                 hf_overrides: dict | None = None, tensor_parallel_size: int = 1, data_parallel_size: int = 1,
                 max_lora_rank: int | None = None, max_loras: int = 1):
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"   # in-process engine core: see the module docstring
        if data_parallel_size != 1:
            raise ValueError(
                f"data_parallel_size={data_parallel_size}: one vLLM engine in this process cannot be data-parallel "
                "(vllm.LLM refuses it). Start one `rlpost serve` worker per replica (each on its own devices, "
                "e.g. CUDA_VISIBLE_DEVICES) and list them all in rollout.server_urls: the trainer dispatches to "
                "them by load (docs/distributed.md)")
        if tensor_parallel_size < 1:
            raise ValueError(f"rollout.tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        from vllm import LLM
        _quiet_expected_reload_warnings()
        from vllm.platforms import current_platform

        from rlpost.engines.vllm_worker import RlpostLogitsProcessor

        if enable_sleep_mode and not current_platform.is_sleep_mode_available():
            raise ValueError(f"rollout.enable_sleep_mode: vLLM sleep mode is not available on this platform "
                             f"({current_platform.device_type}); it needs CUDA, ROCm or XPU. Set it to false.")
        self.tokenizer = tokenizer
        self.model_path = str(model_path)
        self.max_model_len = max_model_len or default_max_model_len(self.model_path, max_completion_length,
                                                                    trust_remote_code)
        self.sleep_mode = enable_sleep_mode
        self.tensor_parallel_size = tensor_parallel_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        start = time.perf_counter()
        try:
            self.llm = LLM(model=self.model_path, tokenizer=self.model_path, dtype=dtype, seed=seed,
                           revision=revision, trust_remote_code=trust_remote_code,
                           gpu_memory_utilization=gpu_memory_utilization, max_model_len=self.max_model_len,
                           enable_prefix_caching=enable_prefix_caching, enforce_eager=enforce_eager,
                           enable_sleep_mode=enable_sleep_mode, logprobs_mode="processed_logprobs",
                           logits_processors=[RlpostLogitsProcessor],
                           worker_extension_cls="rlpost.engines.vllm_worker.RlpostWorkerExtension",
                           **tensor_parallel_kwargs(tensor_parallel_size),
                           **({"hf_overrides": hf_overrides} if hf_overrides else {}),
                           **({"enable_lora": True, "max_lora_rank": max_lora_rank, "max_loras": max_loras,
                               "max_cpu_loras": max_loras} if max_lora_rank else {}))
        except ValueError as err:
            if "memory" in str(err).lower():
                raise ValueError(f"vLLM could not reserve memory: {err}\n(rollout.gpu_memory_utilization is the "
                                 "share of GPU memory, or of one NUMA node's CPU memory on CPU builds, including "
                                 "what this process already uses; try 0.2-0.5)") from err
            raise
        self.sleeping = False
        self.driver = EngineDriver(self.llm, on_first=self._wake, on_last=self._sleep if self.sleep_mode else None)
        self.max_lora_rank = max_lora_rank
        self.adapters = EngineAdapters(max_lora_rank, max_loras) if max_lora_rank else None
        log.info("vLLM engine ready in %.1f s (max_model_len %d)", time.perf_counter() - start, self.max_model_len)
        if self.sleep_mode:
            self._sleep()

    @classmethod
    def from_config(cls, cfg, model_path: str, tokenizer) -> "VLLMEngine":
        from rlpost.models.lora_sync import lora_engine_args
        r, m = cfg.rollout, cfg.model
        return cls(model_path, tokenizer, dtype=m.dtype, gpu_memory_utilization=r.gpu_memory_utilization,
                   max_model_len=r.max_model_len, max_completion_length=r.max_completion_length,
                   enable_prefix_caching=r.enable_prefix_caching, enforce_eager=r.enforce_eager,
                   enable_sleep_mode=r.enable_sleep_mode, seed=cfg.trainer.seed,
                   trust_remote_code=m.trust_remote_code, revision=m.revision,
                   hf_overrides=context_overrides(m.model_init_kwargs), tensor_parallel_size=r.tensor_parallel_size,
                   **lora_engine_args(cfg))

    # ------------------------------------------------------------------ generation
    def generate(self, requests: list[GenRequest], params: SamplingParams, seed_offset: int = 0) -> list[Sample]:
        """len(requests) * params.n samples, request-major. ``seed_offset``: index of requests[0] in a larger batch
        (``rlpost serve`` workers get slices of one batch). Thread-safe: concurrent calls share the running batch
        (:class:`EngineDriver`); each call's rows run with the adapter active when it started."""
        from rlpost.engines.vllm_worker import ROW_KEY

        self._check_lengths(requests, params)
        spec = call_spec(params, self.pad_id)
        needs_processor = bool(spec.processors) or spec.want_entropy or spec.truncates
        call_id = uuid.uuid4().hex
        prompts, sps = vllm_rows(requests, params, seed_offset,
                                 lambda row: {ROW_KEY: f"{call_id}:{row}"} if needs_processor else None)
        remote = needs_processor and self.tensor_parallel_size > 1   # the processor runs in the ranks' processes
        if remote:
            self._check_picklable(spec)
        with self.driver.in_flight():   # the first of overlapping calls wakes the engine, the last puts it to sleep
            call = self.driver.run(_Call(call_id, prompts, sps, self.active_lora,
                                         spec if needs_processor else None, remote))
        return to_samples(self.tokenizer, requests, params.n, call.outputs, *call.records)

    def _check_picklable(self, spec) -> None:
        """Tensor parallelism: the call's spec (its logits processors included) goes to every rank's process."""
        import pickle
        try:
            pickle.dumps(spec.processors)
        except Exception as err:
            raise EngineError(f"vllm engine with tensor_parallel_size={self.tensor_parallel_size}: the logits "
                              f"processors must be picklable to reach the TP ranks' processes "
                              f"({type(err).__name__}: {err}); define them as module-level classes or functions")

    def _check_lengths(self, requests: list[GenRequest], params: SamplingParams) -> None:
        longest = max((len(r.prompt_ids) for r in requests), default=0)
        if longest + params.max_tokens > self.max_model_len:
            raise ValueError(f"vllm engine: a prompt of {longest} tokens + max_tokens {params.max_tokens} exceeds "
                             f"max_model_len {self.max_model_len}; raise rollout.max_model_len")

    @torch.no_grad()
    def score(self, sequences: list[tuple[list[int], list[int]]]) -> list[list[float]]:
        """log softmax(z) (temperature 1, no processors) of each completion token given prompt + earlier
        completion tokens, by vLLM's prompt-logprobs path. For tests and diagnostics."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        with self.driver.exclusive():
            self._wake()
            try:
                prompts = [TokensPrompt(prompt_token_ids=list(p) + list(c)) for p, c in sequences]
                outs = self.llm.generate(prompts, VLLMSamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
                                         use_tqdm=False, lora_request=self.active_lora)
            finally:
                if self.sleep_mode:
                    self._sleep()
        result = []
        for (p, c), out in zip(sequences, outs):
            full = list(p) + list(c)
            result.append([out.prompt_logprobs[k][full[k]].logprob for k in range(len(p), len(full))])
        return result

    # ------------------------------------------------------------------ weights, memory, shutdown
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Learner weights (HF names) -> vLLM, in place; the prefix cache is reset (its KV used the old weights)."""
        weights = [(name, t.detach()) for name, t in named_tensors]
        with self.driver.exclusive():
            self._load_weights(weights)

    def _load_weights(self, weights: list) -> None:
        self._wake()   # and stay awake: the next call is the rollout
        if self.tensor_parallel_size == 1:   # the worker is in this process: hand it the tensors themselves
            self.llm.collective_rpc("rlpost_load_weights", args=(weights,))
        else:   # one worker process per TP rank: each maps one shared-memory file and loads its own shard
            from rlpost.serving.weights import save_weights_file
            path = save_weights_file(weights)
            try:
                self.llm.collective_rpc("rlpost_load_weights", args=(path,))
            finally:
                os.unlink(path)
        self.llm.reset_prefix_cache()
        if self.adapters is not None:
            self.adapters.active = None   # full weights: no adapter on top of them

    @property
    def active_lora(self):
        """The LoRARequest generate / score run with (None: base weights)."""
        return self.adapters.active if self.adapters is not None else None

    def load_adapter(self, adapter: AdapterWeights) -> None:
        """Load one adapter version (a new vLLM LoRA id; a live one of the same name is replaced) and make it the
        active one; the oldest live adapter is unloaded when all ``max_loras`` slots are taken."""
        if self.adapters is None:
            raise EngineError(f"vllm engine: adapter {adapter.name!r} sent to an engine started without LoRA "
                              "(max_lora_rank unset; rlpost serve: --max-lora-rank)")
        with self.driver.exclusive():
            self._wake()
            request, evicted = self.adapters.stage(adapter)
            for old in evicted:
                self.llm.llm_engine.remove_lora(old)
            self.llm.llm_engine.add_lora(request)
            self.adapters.active = request

    def use_adapter(self, name: str) -> bool:
        """Make the live adapter ``name`` the active one; False when it is not live (load it instead)."""
        if self.adapters is None:
            return False
        with self.driver.exclusive():
            return self.adapters.use(name)

    def live_adapters(self) -> list[str]:
        return self.adapters.live.names() if self.adapters is not None else []

    def reset_prefix_cache(self) -> None:
        with self.driver.exclusive():
            self.llm.reset_prefix_cache()

    def _sleep(self) -> None:
        if not self.sleeping:
            self.llm.sleep(level=1)   # level 1: weights offloaded to CPU, KV cache dropped
            self.sleeping = True

    def _wake(self) -> None:
        if getattr(self, "llm", None) is None:
            raise EngineError("vllm engine: used after close()")
        if self.sleeping:
            self.llm.wake_up()
            self.sleeping = False

    def close(self) -> None:
        """Free the engine (and vLLM's in-process distributed state, so another engine can start later)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        with self.driver.exclusive():   # after the calls in flight
            self.llm = self.driver.llm = None
        if getattr(self, "adapters", None) is not None:
            self.adapters.close()
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # pragma: no cover - best effort
            pass
        del llm
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel
            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:  # pragma: no cover - best effort
            pass
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
