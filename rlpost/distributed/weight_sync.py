"""Weight sync: the learner's full weights, pushed to a rollout engine that holds its own copy (vllm, a
``rlpost serve`` worker). Under ZeRO-3 and FSDP2 the weights are gathered parameter by parameter (collective on
all ranks, in the same order); LoRA weights are merged on the fly (rlpost/models/lora.py; under FSDP2 the unit that
owns each adapted layer is unsharded while it merges). With adapter sync (``model.lora.sync: adapter``,
rlpost/models/lora_sync.py) the payload is the adapter alone (:class:`~rlpost.models.lora_sync.AdapterWeights`),
which the engine loads with ``load_adapter``; :func:`push` sends either kind."""
from __future__ import annotations

from rlpost.distributed.sharding import SINGLE_PROCESS, Runtime


def named_parameters_for_sync(model, runtime: Runtime | None = None):
    """(HF name, tensor) for an engine: merged LoRA weights for peft models, gathered under ZeRO-3 / FSDP2."""
    from rlpost.models.lora import is_peft_model, merged_named_parameters
    rt = runtime or SINGLE_PROCESS
    if is_peft_model(model) and rt.fsdp2:  # weights outside adapted layers are read as sharded DTensors: all-gather
        from rlpost.distributed.fsdp2 import full
        for name, t in merged_named_parameters(model, gather=rt.gather_context):
            yield name, full(t)
    elif is_peft_model(model):
        yield from merged_named_parameters(model, gather=rt.gather_context if rt.zero3 else None)
    elif rt.fsdp2:
        from rlpost.distributed.fsdp2 import full
        for name, p in model.named_parameters():
            yield name, full(p.detach())
    elif rt.zero3:
        for name, p in model.named_parameters():
            with rt.gather_context([p]):
                t = p.data.detach().clone()
            yield name, t
    else:
        yield from model.named_parameters()


def push(engine, payload) -> None:
    """An adapter version -> ``engine.load_adapter``; (name, tensor) pairs -> ``engine.load_weights``."""
    from rlpost.models.lora_sync import AdapterWeights
    if isinstance(payload, AdapterWeights):
        engine.load_adapter(payload)
    else:
        engine.load_weights(iter(payload))


def sync_engine(engine, model, runtime: Runtime | None = None, adapter_name: str | None = None) -> None:
    """Push the learner weights to an engine with its own copy (``adapter_name``: only the LoRA adapter, under
    that name). rlpost serve workers are shared by all ranks: rank 0 sends, the others take part in the ZeRO-3
    gathers and wait."""
    rt = runtime or SINGLE_PROCESS
    if adapter_name is not None:
        from rlpost.models.lora_sync import adapter_weights
        tensors = adapter_weights(model, adapter_name) if rt.is_main or not _shared(engine, rt) else None
    else:
        tensors = named_parameters_for_sync(model, rt)
    if not rt.enabled:
        push(engine, tensors)
        return
    if not _shared(engine, rt):
        push(engine, tensors)
        return
    failure = None
    if rt.is_main:
        try:
            push(engine, tensors)
        except Exception as err:  # tell the other ranks, so that every rank stops now instead of timing out
            failure = err
    elif tensors is not None:
        for _ in tensors:
            pass
    message = rt.broadcast_object(None if failure is None else f"{type(failure).__name__}: {failure}")
    if failure is not None:
        raise failure
    if message is not None:
        from rlpost.engines.base import EngineError
        raise EngineError(f"rank 0 could not send the weights to the rollout workers: {message}")


def _shared(engine, rt: Runtime) -> bool:
    """Whether all ranks share the engine (rlpost serve workers): then rank 0 alone sends."""
    shared = getattr(engine, "shared_across_ranks", None)
    if shared is None:
        shared = rt.enabled and rt.cfg.rollout.engine == "vllm_server"
    return bool(shared)
