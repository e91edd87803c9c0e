"""LoRA adapter routes of an ``rlpost serve`` worker (adapter-only sync, ``model.lora.sync: adapter``).

    POST /load_adapter   {"name", "transport": "file", "path"}: an adapter directory in peft's layout
                         (adapter_config.json + adapter_model.safetensors), written by the trainer;
                         {"name", "transport": "dist", "meta": [[name, dtype, shape]], "config": {...}}: the
                         tensors arrive by the weight-broadcast group (rlpost/serving/weights.py), the
                         adapter_config.json content in the body.
                         -> {"ok", "tensors", "seconds", "weights_version", "weights_fingerprint", "adapter"}
    POST /use_adapter    {"name"}: activate a live adapter -> {"ok": false} when it is not live

The worker's engine must be started with LoRA (``rlpost serve --max-lora-rank R --max-loras N``); /health reports
``max_lora_rank`` (null: LoRA off), ``max_loras``, ``live_adapters`` and the active ``adapter``. A loaded adapter counts as a
weight update: ``weights_version`` + 1 and ``weights_fingerprint`` = the fingerprint of the adapter tensors
(rlpost.serving.weights.weights_fingerprint), which the trainer compares with what it sent. /generate runs
with the active adapter; so do the OpenAI routes, on the sync :class:`~rlpost.serving.server.Worker` (rlpost's
routes) and on ``rlpost serve``'s async worker (vLLM's OpenAI server: a request for the served model is rewritten
to the active adapter's name, :func:`openai_model`; a live adapter named as the request's ``model`` is served as
named; /v1/models lists the served name and the live adapters). The functions take the
:class:`~rlpost.serving.server.Worker` (run on its engine thread) or the
:class:`~rlpost.serving.server.AsyncWorker` (``load_adapter_async``); the routes in server.py are one line each.
"""
from __future__ import annotations

import time


def adapter_bodies():
    """Pydantic models of the two request bodies (unknown keys refused, as for the other routes)."""
    from pydantic import BaseModel, ConfigDict, Field

    class LoadAdapterBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(min_length=1)
        transport: str = Field(pattern="^(file|dist)$")
        path: str | None = None
        meta: list | None = None
        config: dict | None = None

    class UseAdapterBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        name: str = Field(min_length=1)

    return LoadAdapterBody, UseAdapterBody


def check_body(worker, body: dict) -> None:
    """Refuse a load the worker cannot serve: LoRA off, a file without a path, a broadcast without meta/config."""
    if getattr(worker.engine, "max_lora_rank", None) is None:
        raise RuntimeError("this worker was started without LoRA: restart it with rlpost serve --max-lora-rank R "
                           "--max-loras N (model.lora.sync=adapter), or set model.lora.sync=merged")
    if body["transport"] == "file" and not body.get("path"):
        raise ValueError("load_adapter with transport=file needs a path")
    if body["transport"] == "dist" and (not body.get("config") or body.get("meta") is None):
        raise ValueError("load_adapter with transport=dist needs meta and config")


def loaded(worker, adapter, start: float) -> dict:
    """Count an adapter load as a weight update (version + 1, its fingerprint); the route's answer."""
    from rlpost.serving.weights import weights_fingerprint
    worker.weights_version += 1
    worker.weights_fingerprint = weights_fingerprint(adapter.tensors)
    return {"ok": True, "tensors": len(adapter.tensors), "seconds": time.perf_counter() - start,
            "weights_version": worker.weights_version, "weights_fingerprint": worker.weights_fingerprint,
            "adapter": adapter.name}


def load_adapter(worker, body: dict) -> dict:
    """:class:`~rlpost.serving.server.Worker` (engine thread): receive an adapter (file or broadcast) and load it
    into the engine as the active adapter."""
    from rlpost.models.lora_sync import AdapterWeights, read_adapter
    start = time.perf_counter()
    check_body(worker, body)
    if body["transport"] == "file":
        adapter = read_adapter(body["path"], body["name"])
    else:
        if worker.comm is None:
            raise RuntimeError("load_adapter with transport=dist before init_communicator")
        adapter = AdapterWeights(body["name"], worker.comm.recv(body["meta"]), body["config"])
    worker.engine.load_adapter(adapter)
    return loaded(worker, adapter, start)


async def load_adapter_async(worker, body: dict) -> dict:
    """:class:`~rlpost.serving.server.AsyncWorker`: as :func:`load_adapter` on the async engine (the broadcast is
    received by its worker, which holds the group), one weight or adapter update at a time."""
    import asyncio

    from rlpost.models.lora_sync import read_adapter
    start = time.perf_counter()
    check_body(worker, body)
    async with worker.weights_lock:
        if body["transport"] == "file":
            adapter = await asyncio.to_thread(read_adapter, body["path"], body["name"])
        else:
            adapter = await worker.engine.recv_adapter(body["name"], body["meta"], body["config"])
        await worker.engine.load_adapter(adapter)
        if worker.openai_models is not None:   # vLLM's OpenAI routes serve the live adapters by name
            worker.openai_models.lora_requests = worker.engine.adapters.requests()
        return loaded(worker, adapter, start)


def openai_model(worker, requested):
    """The ``model`` a request to vLLM's OpenAI routes of ``rlpost serve`` runs on. A request for the served model
    (``worker.served_model_name``, the checkpoint path ``worker.model`` that /v1/models gives as its root, or no
    model) gets the current policy, as /generate does: the active adapter's name (vLLM serves the live adapters by
    name, :func:`load_adapter_async` keeps its list), else the served name (the engine's full weights). Anything
    else (a live adapter's name, a model vLLM refuses) is left as asked."""
    if requested not in (None, "", worker.served_model_name, worker.model):
        return requested
    active = getattr(worker.engine, "active_lora", None)
    return active.lora_name if active is not None else worker.served_model_name


def use_adapter(worker, body: dict) -> dict:
    return {"ok": bool(worker.engine.use_adapter(body["name"]))}


def adapter_health(engine) -> dict:
    """The LoRA part of /health."""
    active = getattr(engine, "active_lora", None)
    live = getattr(engine, "adapters", None)
    return {"max_lora_rank": getattr(engine, "max_lora_rank", None), "max_loras": live.capacity if live else None,
            "live_adapters": engine.live_adapters() if hasattr(engine, "live_adapters") else [],
            "adapter": active.lora_name if active is not None else None}
