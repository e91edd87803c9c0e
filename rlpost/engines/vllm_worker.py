"""Code that runs inside vLLM's worker: the weight-loading extension and rlpost's logits processor.

The colocated engine (rlpost/engines/vllm_engine.py) runs them in-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``,
a single ``UniProcExecutor`` worker) or, with tensor parallelism, in one worker process per rank; the async engine
of ``rlpost serve`` (rlpost/engines/vllm_async.py) runs them in its engine-core process (and, under TP, in its
rank processes). Whatever is not in this process is reached by name and ``collective_rpc``:

- ``RlpostWorkerExtension`` (``worker_extension_cls``): ``collective_rpc("rlpost_load_weights", args=(payload,))``
  hands the learner's tensors to the worker's own ``reload_weights``, which also redoes the CPU backend's weight
  repacking (calling ``model.load_weights`` directly fails on CPU). In-process the payload is the list of
  tensors itself (no copy, no serialisation); a ``torch.save`` byte blob or a file path also work, for engines
  whose worker lives in another process. With tensor parallelism (one worker process per rank) the engine sends
  a file path; every rank gets the full tensors and ``reload_weights`` -> ``model.load_weights`` keeps that rank's
  shard (each vLLM parameter's ``weight_loader`` narrows to its TP slice), so one call updates every shard.
- ``RlpostLogitsProcessor`` (vLLM V1 logits-processor API, passed as ``LLM(logits_processors=[...])``; it reads
  the calls registered in its own process): for the rows of a ``generate`` call that registered a
  :class:`CallSpec` (in-process; on every TP rank through ``rlpost_register_call``), or whose ``extra_args`` carry
  one (``SPEC_KEY``, from the async engine's other process; no Python processors then), it runs rlpost's Python
  logits processors
  (``fn(step, input_ids [N,L], logits [N,V]) -> logits``, before temperature, like the hf engine), and records
  per sampled token the entropy of softmax(z/T) and, when min-p/top-k/top-p is on, log of the probability mass the
  filter keeps (vLLM's ``processed_logprobs`` are normalised over the kept tokens only; adding that term gives
  rlpost's convention, log softmax(z/T) before truncation).
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor, MoveDirectionality

from rlpost.algos.core import entropy_from_logprobs
from rlpost.algos.logits_processors import needs_input_ids
from rlpost.sampling import apply_repetition_penalty, filter_min_p, filter_top_k_top_p, seen_tokens

ROW_KEY = "rlpost_row"    # SamplingParams.extra_args key: "<call id>:<row>"
SPEC_KEY = "rlpost_spec"  # SamplingParams.extra_args key: CallSpec.wire() (engines whose worker is another process)


@dataclass
class CallSpec:
    """What one ``generate`` call asks of the logits processor (shared by all its rows)."""
    processors: list                     # rlpost logits processors, applied in order
    temperature: float
    top_k: int
    top_p: float
    want_entropy: bool
    pad_id: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    # filled during generation: (step, rows [n], values [n]) per batch group, turned into per-row lists at the end
    entropy_records: list = field(default_factory=list)
    mass_records: list = field(default_factory=list)
    error: Exception | None = None       # what a processor raised: the call's rows are left alone from then on

    def wire(self) -> dict:
        """The fields a worker in another process needs to rebuild this spec (no Python processors)."""
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, want_entropy=self.want_entropy,
                    pad_id=self.pad_id, min_p=self.min_p, repetition_penalty=self.repetition_penalty)

    @property
    def needs_history(self) -> bool:
        """Whether a processor reads input_ids (HAPO's temperature declares it does not)."""
        return needs_input_ids(self.processors)

    @property
    def truncates(self) -> bool:
        return self.temperature > 0 and (0 < self.top_k or self.top_p < 1.0 or self.min_p > 0)

    def per_row(self, records: list, num_rows: int) -> list[dict[int, float]]:
        """records -> [row] {step: value} (a later write for the same step wins, e.g. after a preemption)."""
        out: list[dict[int, float]] = [{} for _ in range(num_rows)]
        for step, rows, values in records:
            for r, v in zip(rows, values.tolist()):
                out[r][step] = v
        return out


_CALLS: dict[str, CallSpec] = {}
_CALLS_LOCK = threading.Lock()


def register_call(call_id: str, spec: CallSpec) -> None:
    with _CALLS_LOCK:
        _CALLS[call_id] = spec


def unregister_call(call_id: str) -> None:
    with _CALLS_LOCK:
        _CALLS.pop(call_id, None)


class RlpostLogitsProcessor(LogitsProcessor):
    """A batch-level vLLM logits processor that serves every rlpost ``generate`` call (see the module docstring).

    Rows without ``extra_args[ROW_KEY]`` (or whose call registered nothing) pass through untouched, so the cost is
    one dict lookup per step when nothing is asked for.
    """

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool):
        self.device = device
        self.rows: dict[int, tuple[str, int, list[int], list[int]]] = {}  # batch index -> (call, row, prompt, out)

    def is_argmax_invariant(self) -> bool:
        return False  # user processors may change the argmax; also makes vLLM call us for greedy rows

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, prompt_ids, output_ids in batch_update.added:
            key = (params.extra_args or {}).get(ROW_KEY) if params is not None else None
            if key is None:
                self.rows.pop(index, None)
                continue
            call_id, row = key.rsplit(":", 1)
            spec = params.extra_args.get(SPEC_KEY)
            if spec is not None and call_id not in _CALLS:   # a call from another process: its spec travels along
                register_call(call_id, CallSpec(processors=[], **spec))
            self.rows[index] = (call_id, int(row), list(prompt_ids or []), output_ids)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if direction == MoveDirectionality.SWAP and row_b is not None:
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.rows:
            return logits
        groups: dict[tuple[str, int], list[int]] = {}
        for index, (call_id, _, _, output_ids) in self.rows.items():
            if index < logits.shape[0]:
                groups.setdefault((call_id, len(output_ids)), []).append(index)
        for (call_id, step), indices in groups.items():
            spec = _CALLS.get(call_id)
            if spec is None or spec.error is not None:
                continue
            try:
                self._apply_call(spec, step, indices, logits)
            except Exception as err:   # fails this call alone (the engine raises it), not the batch it shares
                spec.error = err
        return logits

    def _apply_call(self, spec: CallSpec, step: int, indices: list[int], logits: torch.Tensor) -> None:
        """One call's rows at one decoding step: its processors (logits changed in place) and its records."""
        idx = torch.tensor(indices, device=logits.device)
        rows = [self.rows[i][1] for i in indices]
        z = logits.index_select(0, idx).float()
        if spec.processors:
            # the [n, L] token history is rebuilt in Python from every row's ids: only for processors that read it
            history = self._history(indices, spec.pad_id, logits.device) if spec.needs_history else None
            for proc in spec.processors:
                z = proc(step, history, z)
            logits.index_copy_(0, idx, z.to(logits.dtype))
        if spec.want_entropy or spec.truncates:
            if spec.repetition_penalty != 1.0:  # vLLM penalises after this processor: mirror it for the records
                seen = seen_tokens([self.rows[i][2] + list(self.rows[i][3]) for i in indices], z.shape[-1], z.device)
                z = apply_repetition_penalty(z, seen, spec.repetition_penalty)
            scaled = z / spec.temperature if spec.temperature > 0 else z
            logp = torch.log_softmax(scaled, dim=-1)
            if spec.want_entropy:
                ent = entropy_from_logprobs(logp)
                spec.entropy_records.append((step, rows, ent.detach().cpu()))
            if spec.truncates:
                kept = filter_top_k_top_p(filter_min_p(scaled, spec.min_p), spec.top_k, spec.top_p)
                log_mass = torch.logsumexp(kept, -1) - torch.logsumexp(scaled, -1)
                spec.mass_records.append((step, rows, log_mass.detach().cpu()))

    def _history(self, indices: list[int], pad_id: int, device) -> torch.Tensor:
        """[n, L] left-padded prompt + generated ids of the rows (what the hf engine passes as input_ids)."""
        seqs = [self.rows[i][2] + list(self.rows[i][3]) for i in indices]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        for r, s in enumerate(seqs):
            if s:
                ids[r, width - len(s):] = torch.tensor(s)
        return ids.to(device)


def take_records(call_id: str, num_rows: int) -> tuple[list | None, list | None]:
    """Unregister a call and return its per-row records: ([row] {step: entropy} or None, [row] {step: log kept
    mass} or None); raises what one of the call's logits processors raised."""
    with _CALLS_LOCK:
        spec = _CALLS.pop(call_id, None)
    if spec is None:
        return None, None
    if spec.error is not None:
        raise spec.error
    return (spec.per_row(spec.entropy_records, num_rows) if spec.want_entropy else None,
            spec.per_row(spec.mass_records, num_rows) if spec.truncates else None)


class RlpostWorkerExtension:
    """Mixed into vLLM's worker class (``LLM(worker_extension_cls=...)``); reached through ``collective_rpc``.

    For an engine whose worker runs in another process (``AsyncLLM``: rlpost/engines/vllm_async.py) the records
    of the logits processor are fetched with ``rlpost_take_records`` and the trainer's weight broadcast is received
    here, in the worker (``rlpost_init_communicator`` / ``rlpost_recv_weights``), so the tensors go straight to
    the device that holds the model."""

    def rlpost_load_weights(self, payload) -> int:
        """payload: a list of (name, tensor) (in-process), a ``torch.save`` byte blob of a name -> tensor dict, or
        the path of such a file. Returns the number of tensors loaded."""
        if isinstance(payload, (bytes, bytearray)):
            weights = list(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True).items())
        elif isinstance(payload, str):
            weights = list(torch.load(payload, map_location="cpu", weights_only=True, mmap=True).items())
        else:
            weights = list(payload)
        self.reload_weights(weights_iterator=iter(weights))
        self._rlpost_repack_tied_heads()
        return len(weights)

    def rlpost_register_call(self, call_id: str, spec: CallSpec) -> bool:
        """Tensor parallelism: each rank's logits processor reads the calls registered in its own process."""
        register_call(call_id, spec)
        return True

    def rlpost_load_weights_checked(self, payload) -> list:
        """As :meth:`rlpost_load_weights` (payload: a path or a byte blob); returns [tensors, fingerprint] with the
        fingerprint (rlpost.serving.weights.weights_fingerprint) of what was loaded."""
        from rlpost.serving.weights import weights_fingerprint
        if isinstance(payload, (bytes, bytearray)):
            weights = list(torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True).items())
        else:
            weights = list(torch.load(payload, map_location="cpu", weights_only=True, mmap=True).items())
        self.rlpost_load_weights(weights)
        return [len(weights), weights_fingerprint(weights)]

    def rlpost_take_records(self, call_id: str, num_rows: int) -> tuple:
        """:func:`take_records` in this worker's process: how an engine whose processor runs elsewhere (TP ranks,
        the async engine's core) gets a call's records; ``collective_rpc`` clears them on every rank. Returns
        (entropy rows, kept-mass rows, error): what a processor raised comes back as "Type: message" (raising here
        would leave the other ranks' replies queued for the executor's next call) and the caller raises it."""
        try:
            return (*take_records(call_id, num_rows), None)
        except Exception as err:
            return None, None, f"{type(err).__name__}: {err}"

    def rlpost_init_communicator(self, host: str, port: int, rank: int, world_size: int, backend: str,
                                 timeout_s: float) -> bool:
        """Join the trainer's weight-broadcast group (rlpost/serving/weights.py) from this worker."""
        from rlpost.serving.weights import Communicator
        self.rlpost_close_communicator()
        device = self.device if backend == "nccl" else "cpu"
        self._rlpost_comm = Communicator(host, port, rank, world_size, backend, timeout_s, device)
        return True

    def rlpost_recv_weights(self, meta: list) -> list:
        """Receive one broadcast of the weights described by ``meta`` and load them; returns [tensors, fingerprint]."""
        from rlpost.serving.weights import weights_fingerprint
        comm = getattr(self, "_rlpost_comm", None)
        if comm is None:
            raise RuntimeError("update_weights with transport=dist before init_communicator")
        weights = comm.recv(meta)
        fingerprint = weights_fingerprint(weights)
        self.rlpost_load_weights(weights)
        return [len(weights), fingerprint]

    def rlpost_recv_adapter(self, meta: list, config: dict, directory: str) -> int:
        """Receive one broadcast of LoRA adapter tensors (``meta``) and write them with ``config`` to ``directory``
        (peft layout, rlpost/models/lora_sync.py), from where the engine loads them; returns the tensor count."""
        from rlpost.models.lora_sync import AdapterWeights, write_adapter
        comm = getattr(self, "_rlpost_comm", None)
        if comm is None:
            raise RuntimeError("load_adapter with transport=dist before init_communicator")
        tensors = [(name, t.cpu()) for name, t in comm.recv(meta)]
        write_adapter(AdapterWeights("received", tensors, config), directory)
        return len(tensors)

    def rlpost_close_communicator(self) -> bool:
        comm = getattr(self, "_rlpost_comm", None)
        if comm is not None:
            comm.close()
            self._rlpost_comm = None
        return True

    def _rlpost_repack_tied_heads(self) -> None:
        """CPU backend: an LM head tied to the input embeddings keeps a packed copy of the weight for its GEMM
        (``layer.cpu_linear``). ``reload_weights`` updates the shared embedding but never re-packs the head,
        since no checkpoint tensor is addressed to it (measured: logprobs off by up to 0.8 nats after a sync).
        Re-running its post-load step re-packs it; it is idempotent, so untied heads are safe too."""
        model = self.model_runner.get_model()
        for module in model.modules():
            if hasattr(module, "cpu_linear") and type(module.quant_method).__name__ == "UnquantizedEmbeddingMethod":
                module.quant_method.process_weights_after_loading(module)
