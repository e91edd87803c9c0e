"""Adapter-only LoRA sync (``model.lora.sync: adapter``): engines with their own copy of the weights (vllm,
``rlpost serve`` workers) keep the base model they loaded and receive only the LoRA tensors, which vLLM applies
with its native LoRA support (``enable_lora``, one ``LoRARequest`` per generate call).

Per sync an engine receives 2 * r * (d_in + d_out) values per adapted linear layer instead of every weight of
the model; the policy it samples from is the same: vLLM computes ``W x + scale * B (A x)`` and the learner's peft
model the same sum (merged sync folds ``W + scale * B @ A`` into one matrix first).

- :class:`AdapterWeights`: one version of the adapter: a name (``policy-v{version}``), the tensors under peft's
  saved keys (``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``) and the ``adapter_config.json``
  content. :func:`write_adapter` / :func:`read_adapter` convert it to and from the directory layout
  ``peft.PeftModel.save_pretrained`` writes (adapter_config.json + adapter_model.safetensors), which is what
  vLLM's ``LoRARequest(name, id, path)`` loads.
- :class:`LiveAdapters`: the versions an engine holds, oldest first; at most ``capacity`` (async_level + 1, so
  each queued batch generates on the adapter of its behaviour version); loading one more unloads the oldest.
- :class:`EngineAdapters`: what a vLLM engine with LoRA on keeps of them (slots, directories, the active one);
  the colocated engine and ``rlpost serve``'s async engine share it.
- :func:`lora_sync` / :func:`adapter_sync_obstacles` / :func:`lora_engine_args`: which sync a config gets and
  why not adapter (``rlpost validate`` reports it), and the vLLM engine keywords it needs.
- :func:`vllm_max_lora_rank`: the ``max_lora_rank`` to start vLLM with (it accepts a fixed set of values).
- :func:`base_named_parameters`: the base weights under the adapters. An engine that reports a base other than
  its checkpoint (``needs_base_weights``: an ``rlpost serve`` worker reused after a full-weight sync, or serving
  another model path) gets them once when the run starts; adapters alone afterwards.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # vllm.config.lora.MaxLoRARanks (vLLM 0.32)
ADAPTER_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"


def vllm_max_lora_rank(r: int) -> int:
    """The smallest rank vLLM accepts as ``max_lora_rank`` that holds rank ``r``; ValueError above 512."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= r:
            return allowed
    raise ValueError(f"LoRA rank {r} is above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")


# ------------------------------------------------------------------ which sync a run does (checked by rlpost validate)

ADAPTER_ENGINES = ("vllm", "vllm_server")   # engines that load LoRA adapters (vLLM's LoRA support)
# peft inits that change the base weights when the adapter is created (vLLM's PEFTHelper refuses them)
_BASE_CHANGING_INITS = ("pissa", "olora", "loftq", "corda")


def lora_rank(lora) -> int:
    """The adapter's largest rank: ``model.lora.r``, or the saved adapter's (``adapter_path``, rank_pattern too)."""
    config = Path(lora.adapter_path or "", "adapter_config.json")
    if lora.adapter_path and config.is_file():
        saved = json.loads(config.read_text())
        return max([int(saved.get("r", lora.r)), *map(int, (saved.get("rank_pattern") or {}).values())])
    return int(lora.r)


def adapter_sync_obstacles(cfg) -> list[str]:
    """Why vLLM could not generate with the trained adapter on top of the base model it loaded (empty: it can)."""
    m, lora, d = cfg.model, cfg.model.lora, cfg.distributed
    out = []
    if m.load_in_4bit:
        out.append("model.load_in_4bit: the learner's base weights are 4-bit, vLLM's are the full-precision "
                   "checkpoint, so sampler and learner would differ by the quantisation error")
    if lora.modules_to_save:
        out.append(f"model.lora.modules_to_save={list(lora.modules_to_save)}: vLLM's LoRA does not load fully "
                   "trained modules")
    if lora.bias != "none":
        out.append(f"model.lora.bias={lora.bias}: vLLM's LoRA does not load trained biases")
    if isinstance(lora.init_lora_weights, str) and lora.init_lora_weights.lower().startswith(_BASE_CHANGING_INITS):
        out.append(f"model.lora.init_lora_weights={lora.init_lora_weights}: this init changes the base weights, "
                   "which vLLM's copy does not have")
    targets = [lora.target_modules] if isinstance(lora.target_modules, str) else list(lora.target_modules)
    if any(t in ("lm_head", "embed_tokens") for t in targets):
        out.append(f"model.lora.target_modules={targets}: vLLM's LoRA adapts linear layers of the decoder, "
                   "not lm_head / embed_tokens")
    if lora_rank(lora) > VLLM_LORA_RANKS[-1]:
        out.append(f"model.lora.r={lora_rank(lora)}: above vLLM's largest max_lora_rank {VLLM_LORA_RANKS[-1]}")
    if d.backend == "fsdp2" or (d.backend == "deepspeed" and d.zero_stage == 3):
        out.append(f"distributed.backend={d.backend}{' zero_stage=3' if d.backend == 'deepspeed' else ''}: the "
                   "adapter is sharded across ranks and adapter sync does not gather it (merged sync does)")
    return out


def lora_sync(cfg) -> tuple[str, str | None]:
    """``model.lora.sync`` as the run does it: (``adapter`` | ``merged``, why not adapter or None).

    adapter needs an engine that loads adapters (vllm, vllm_server) and none of :func:`adapter_sync_obstacles`.
    The hf engine generates with the learner's own peft model (nothing to sync); with async_level > 0 its
    generation copy is a plain model loaded with merged weights. Set explicitly, adapter with an obstacle is a
    ConfigError; left at its default it falls back to merged (the run logs the reason)."""
    lora = cfg.model.lora
    if lora.sync == "merged":
        return "merged", None
    if cfg.rollout.engine not in ADAPTER_ENGINES:
        return "merged", (f"rollout.engine={cfg.rollout.engine} loads no adapters: it generates with the learner's "
                          "own peft model (async_level > 0: a copy loaded with merged weights)")
    obstacles = adapter_sync_obstacles(cfg)
    if not obstacles:
        return "adapter", None
    if "sync" in lora.__dict__.get("_explicit", ()):
        from rlpost.config import ConfigError
        raise ConfigError("model.lora.sync=adapter cannot work here: " + "; ".join(obstacles) +
                          " (set model.lora.sync=merged)")
    return "merged", "; ".join(obstacles)


def lora_engine_args(cfg) -> dict:
    """vLLM engine kwargs for adapter sync: ``max_lora_rank`` (the smallest vLLM accepts for the adapter's rank)
    and ``max_loras`` = async_level + 1 (one per version a queued batch may generate on); else {}."""
    if cfg.model.lora.r <= 0 or lora_sync(cfg)[0] != "adapter":
        return {}
    return {"max_lora_rank": vllm_max_lora_rank(lora_rank(cfg.model.lora)), "max_loras": cfg.rollout.async_level + 1}


@dataclass
class AdapterWeights:
    """One version of the policy's LoRA adapter (see the module docstring)."""
    name: str
    tensors: list[tuple[str, torch.Tensor]]
    config: dict

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.tensors)

    @property
    def rank(self) -> int:
        return max([int(self.config["r"]), *map(int, (self.config.get("rank_pattern") or {}).values())])


def _json_ready(value):
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


@torch.no_grad()
def adapter_weights(peft_model, name: str) -> AdapterWeights:
    """A copy of the active adapter's tensors (on the CPU) and its config, named ``name``. The keys are peft's
    saved keys (what ``get_peft_model_state_dict`` returns: the parameter name without the adapter's name,
    ``...q_proj.lora_A.default.weight`` -> ``...q_proj.lora_A.weight``), read from ``named_parameters`` directly:
    peft's function walks the whole state dict, ~10x slower on the 20M model."""
    adapter = peft_model.active_adapter if isinstance(peft_model.active_adapter, str) else peft_model.active_adapters[0]
    inner, last = f".{adapter}.", f".{adapter}"
    tensors = []
    for key, p in peft_model.named_parameters():
        if ".lora_" in key and (inner in key or key.endswith(last)):
            key = key.replace(inner, ".") if inner in key else key[: -len(last)]
            tensors.append((key, p.detach().to("cpu", copy=True).contiguous()))
    config = _json_ready(peft_model.peft_config[adapter].to_dict())
    config["inference_mode"] = True
    return AdapterWeights(name, tensors, config)


def base_named_parameters(peft_model):
    """(Hugging Face name, tensor) of the base model under the adapters (what an engine with adapter sync must hold
    under them), without the adapter tensors. Plain LoRA only (no modules_to_save, unsharded)."""
    from rlpost.models.lora import hf_name
    for name, p in peft_model.named_parameters():
        if ".lora_" not in name:
            yield hf_name(name), p.detach()


def write_adapter(adapter: AdapterWeights, directory: str | Path) -> str:
    """``adapter`` -> ``directory`` in peft's save_pretrained layout (files written under temporary names, then
    renamed, so a reader never sees half a file). Returns the directory."""
    from safetensors.torch import save_file
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / (ADAPTER_FILE + ".tmp")
    save_file(dict(adapter.tensors), str(tmp), metadata={"format": "pt"})
    tmp.rename(directory / ADAPTER_FILE)
    tmp = directory / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(adapter.config))
    tmp.rename(directory / CONFIG_FILE)
    return str(directory)


def read_adapter(directory: str | Path, name: str) -> AdapterWeights:
    """The adapter saved in ``directory`` (peft layout) as :class:`AdapterWeights` named ``name``."""
    from safetensors.torch import load_file
    directory = Path(directory)
    tensors = load_file(str(directory / ADAPTER_FILE))
    return AdapterWeights(name, list(tensors.items()), json.loads((directory / CONFIG_FILE).read_text()))


class LiveAdapters:
    """The adapters an engine holds: name -> vLLM int id, oldest first, at most ``capacity``.

    ``add(name)`` returns (the new id, the ids to unload now); ids are never reused, so a name loaded again (a new
    run on a reused worker) gets a new id and vLLM never serves a stale cached copy."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"LiveAdapters: capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.ids: dict[str, int] = {}
        self.next_id = 1

    def add(self, name: str) -> tuple[int, list[int]]:
        evicted = [self.ids.pop(name)] if name in self.ids else []
        while len(self.ids) >= self.capacity:
            evicted.append(self.ids.pop(next(iter(self.ids))))
        self.ids[name] = self.next_id
        self.next_id += 1
        return self.ids[name], evicted

    def touch(self, name: str) -> int | None:
        """The id of a live adapter, moved to the newest end (the last one evicted); None when not live."""
        if name not in self.ids:
            return None
        self.ids[name] = self.ids.pop(name)
        return self.ids[name]

    def names(self) -> list[str]:
        return list(self.ids)


class EngineAdapters:
    """Adapter bookkeeping of a vLLM engine with LoRA on, shared by the colocated engine
    (rlpost/engines/vllm_engine.py, ``vllm.LLM``) and ``rlpost serve``'s async engine (rlpost/engines/vllm_async.py,
    ``AsyncLLM``); they differ only in how they call vLLM's ``add_lora`` / ``remove_lora``.

    ``stage(adapter)`` checks the rank, takes a slot (:class:`LiveAdapters`), writes the adapter to a directory of
    its own and returns (the ``LoRARequest`` to add, the vLLM ids to remove, whose directories are deleted);
    ``active`` is the request every generate runs with (None: base weights); ``use(name)`` activates a live one."""

    def __init__(self, max_lora_rank: int, max_loras: int):
        self.max_lora_rank = max_lora_rank
        self.live = LiveAdapters(max_loras)
        self.dirs: dict[int, str] = {}   # vLLM lora id -> the directory it was loaded from
        self.active = None

    @property
    def capacity(self) -> int:
        return self.live.capacity

    def stage(self, adapter: AdapterWeights):
        import shutil
        import tempfile

        from vllm.lora.request import LoRARequest

        from rlpost.engines.base import EngineError
        from rlpost.serving.weights import default_sync_dir
        if adapter.rank > self.max_lora_rank:
            raise EngineError(f"vllm engine: adapter {adapter.name!r} has rank {adapter.rank}, above the engine's "
                              f"max_lora_rank {self.max_lora_rank}")
        lora_id, evicted = self.live.add(adapter.name)
        for old in evicted:
            shutil.rmtree(self.dirs.pop(old, ""), ignore_errors=True)
        path = write_adapter(adapter, tempfile.mkdtemp(prefix=f"rlpost-lora-{lora_id}-", dir=default_sync_dir()))
        self.dirs[lora_id] = path
        return LoRARequest(adapter.name, lora_id, path), evicted

    def use(self, name: str) -> bool:
        """Make the live adapter ``name`` the active one; False when it is not live (load it instead)."""
        from vllm.lora.request import LoRARequest
        lora_id = self.live.touch(name)
        if lora_id is None:
            return False
        self.active = LoRARequest(name, lora_id, self.dirs[lora_id])
        return True

    def requests(self) -> dict:
        """name -> LoRARequest of every live adapter (what vLLM's OpenAI server lists and serves by name)."""
        from vllm.lora.request import LoRARequest
        return {name: LoRARequest(name, i, self.dirs[i]) for name, i in self.live.ids.items()}

    def close(self) -> None:
        import shutil
        for path in self.dirs.values():
            shutil.rmtree(path, ignore_errors=True)
        self.dirs.clear()
