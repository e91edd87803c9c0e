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
(rlpost.serving.weights.weights_fingerprint), which the trainer compares with what it sent. Generation
(/generate and the OpenAI routes) runs with the active adapter. The functions take the
:class:`~rlpost.serving.server.Worker` and run on its engine thread; the routes in server.py are one line each.
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


def load_adapter(worker, body: dict) -> dict:
    """Receive an adapter (file or broadcast) and load it into the engine as the active adapter."""
    from rlpost.models.lora_sync import AdapterWeights, read_adapter
    from rlpost.serving.weights import weights_fingerprint
    start = time.perf_counter()
    if getattr(worker.engine, "max_lora_rank", None) is None:
        raise RuntimeError("this worker was started without LoRA: restart it with rlpost serve --max-lora-rank R "
                           "--max-loras N (model.lora.sync=adapter), or set model.lora.sync=merged")
    if body["transport"] == "file":
        if not body.get("path"):
            raise ValueError("load_adapter with transport=file needs a path")
        adapter = read_adapter(body["path"], body["name"])
    else:
        if worker.comm is None:
            raise RuntimeError("load_adapter with transport=dist before init_communicator")
        if not body.get("config") or body.get("meta") is None:
            raise ValueError("load_adapter with transport=dist needs meta and config")
        adapter = AdapterWeights(body["name"], worker.comm.recv(body["meta"]), body["config"])
    worker.engine.load_adapter(adapter)
    worker.weights_version += 1
    worker.weights_fingerprint = weights_fingerprint(adapter.tensors)
    return {"ok": True, "tensors": len(adapter.tensors), "seconds": time.perf_counter() - start,
            "weights_version": worker.weights_version, "weights_fingerprint": worker.weights_fingerprint,
            "adapter": adapter.name}


def use_adapter(worker, body: dict) -> dict:
    return {"ok": bool(worker.engine.use_adapter(body["name"]))}


def adapter_health(engine) -> dict:
    """The LoRA part of /health."""
    active = getattr(engine, "active_lora", None)
    live = getattr(engine, "adapters", None)
    return {"max_lora_rank": getattr(engine, "max_lora_rank", None), "max_loras": live.capacity if live else None,
            "live_adapters": engine.live_adapters() if hasattr(engine, "live_adapters") else [],
            "adapter": active.lora_name if active is not None else None}
