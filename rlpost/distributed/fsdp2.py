"""The learner under torch FSDP2 (``distributed.backend: fsdp2``): ``fully_shard`` per decoder layer and on the
root, an optional mixed-precision policy and CPU offload, gathers for generation, weight sync and saving, and
sharded checkpoints through torch.distributed.checkpoint (DCP).

Sharding. Every module whose class the model names in ``_no_split_modules`` (its decoder layers; transformers'
own list, which accelerate's FSDP wrapping uses too) gets its own ``fully_shard`` unit, then the root module
(embeddings, final norm, LM head, tied or not). Each parameter becomes a DTensor sharded on dim 0 over the ranks;
a unit's parameters are all-gathered before its forward and backward and freed after them
(``distributed.reshard_after_forward``), and its gradients are reduce-scattered in backward, averaged over ranks:
the learner scales each rank's loss by the world size, as under DDP and ZeRO, so gradients are the single-process
sums. The optimizer is rlpost's own, re-pointed at the sharded parameters (same parameter groups), so AdamW's state
is sharded too. LoRA: frozen base weights and trainable adapters shard together (FSDP2 keeps ``requires_grad`` per
parameter).

Mixed precision (``distributed.mixed_precision: bfloat16 | float16``): parameters and optimizer state stay in the
model's dtype (float32 master weights), forwards and backwards run in the given dtype, gradients are reduced in
float32. CPU offload (``distributed.offload_param: true``): the sharded parameters, their gradients and the
optimizer step live in CPU memory (``CPUOffloadPolicy``); each unit is copied to the device for its compute.

Gathers. Generation with the learner's model (hf engine) runs with every unit unsharded and resharding after forward
switched off, so that ranks may run different numbers of decoding forwards (a sharded forward is collective).
Weight sync and saving read each parameter's full tensor (``DTensor.full_tensor``, one all-gather per parameter,
collective on all ranks in the same order); LoRA's merged sync unshards the unit that owns the adapted layer while
it merges.

Checkpoints. ``save_shards`` writes the sharded model and optimizer state dicts with DCP (every rank its shards,
rank 0 the metadata); ``load_shards`` reads them back into the live sharded model and optimizer, so a resume
continues the same AdamW state (exact resume; tested on the same world size).
"""
from __future__ import annotations

import contextlib

import torch

from rlpost.distributed.learner_ops import _Ops


def _dtensor_cls():
    from torch.distributed.tensor import DTensor
    return DTensor


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (an all-gather: collective); a plain tensor unchanged."""
    return t.full_tensor() if isinstance(t, _dtensor_cls()) else t


def decoder_layer_classes(model) -> set[str]:
    """Class names of the units to shard one by one: the ``_no_split_modules`` of every transformers model inside
    ``model`` (a peft wrapper holds one)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    return names


def shard_model(model, cfg) -> list:
    """``fully_shard`` each decoder layer, then the root; returns the FSDP units, root last."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard
    from rlpost.config import ConfigError
    from rlpost.distributed.process import world_size
    d = cfg.distributed
    device = next(model.parameters()).device
    mesh = init_device_mesh(device.type, (world_size(),))
    kwargs = {"mesh": mesh, "reshard_after_forward": d.reshard_after_forward}
    if d.mixed_precision != "none":
        dtype = getattr(torch, d.mixed_precision)
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    if d.offload_param:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    classes = decoder_layer_classes(model)
    layers = [m for m in model.modules() if type(m).__name__ in classes]
    if not layers:
        raise ConfigError(f"distributed.backend=fsdp2: found no decoder layers to shard in {type(model).__name__} "
                          f"(looked for the classes in the model's _no_split_modules: {sorted(classes) or 'none'})")
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **{**kwargs, "reshard_after_forward": False})
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def repoint_optimizer(optimizer, before: dict, after: dict) -> None:
    """Replace each parameter in ``optimizer``'s groups by the sharded parameter of the same name (``before`` and
    ``after``: name -> parameter, taken around ``fully_shard``, which replaces every parameter). The optimizer
    has not stepped yet, so it holds no state to move."""
    if optimizer.state:
        raise RuntimeError("fsdp2: the optimizer was stepped before the model was sharded")
    name_of = {id(p): name for name, p in before.items()}
    for group in optimizer.param_groups:
        group["params"] = [after[name_of[id(p)]] for p in group["params"]]


def owners(units: list) -> dict:
    """id(sharded parameter) -> the FSDP unit that gathers it (the innermost unit containing it)."""
    out = {}
    for unit in units:  # modules() order: outer units first, so inner units overwrite them
        for p in unit.parameters():
            out[id(p)] = unit
    return out


@contextlib.contextmanager
def unsharded(units: list, reshard_after_forward: dict):
    """Each of ``units`` all-gathered for the body (collective), resharded on exit. Inside, the units' modules hold
    plain full parameters and forwards do not reshard them, so ranks may run different numbers of forwards.
    ``reshard_after_forward``: unit -> its setting, restored on exit."""
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(reshard_after_forward[unit], recurse=False)


class FSDP2Ops(_Ops):
    """torch FSDP2: gradients are reduce-scattered (averaged over ranks) in every backward and accumulate as
    sharded gradients; the learner clips and steps its own optimizer on the sharded parameters."""

    def __init__(self, runtime, learner):
        super().__init__(runtime)
        model = learner.model
        before = dict(model.named_parameters())
        self.units = shard_model(model, runtime.cfg)
        # the root keeps its parameters after forward (FSDP2's own choice for the root: backward needs them at once)
        self.reshard_setting = {unit: runtime.cfg.distributed.reshard_after_forward and unit is not model
                                for unit in self.units}
        repoint_optimizer(learner.optimizer, before, dict(model.named_parameters()))
        self.owner = owners(self.units)
        self.learner = learner
        self.train_model = model

    def backward(self, loss: torch.Tensor, index: int) -> None:
        (loss * self.world).backward()  # FSDP2 averages over ranks; shares are already global

    # ------------------------------------------------------------------ gathers
    def gather_context(self, params):
        """The units owning ``params`` unsharded for the body (collective)."""
        units = list(dict.fromkeys(self.owner[id(p)] for p in params if id(p) in self.owner))
        return unsharded(units, self.reshard_setting)

    def full_parameters(self):
        return unsharded(self.units, self.reshard_setting)

    def full_state_dict(self, model, is_main: bool) -> dict | None:
        """Full parameters and persistent buffers (CPU) on rank 0, None elsewhere (collective)."""
        out = {}
        for name, p in model.named_parameters():
            t = full(p.detach())
            if is_main:
                out[name] = t.cpu().clone()
        if is_main:
            for mod_name, mod in model.named_modules():
                for name, b in mod.named_buffers(recurse=False):
                    if name not in mod._non_persistent_buffers_set:
                        out[f"{mod_name}.{name}" if mod_name else name] = full(b).detach().cpu().clone()
        return out if is_main else None

    # ------------------------------------------------------------------ sharded checkpoints (DCP)
    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict
        model_sd, optim_sd = get_state_dict(self.learner.model, self.learner.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def save_shards(self, path) -> None:
        import torch.distributed.checkpoint as dcp
        dcp.save(self._state(), checkpoint_id=str(path))

    def load_shards(self, path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict
        state = self._state()
        dcp.load(state, checkpoint_id=str(path))
        set_state_dict(self.learner.model, self.learner.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
