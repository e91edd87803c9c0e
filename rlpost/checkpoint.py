"""Atomic checkpoints with everything needed to resume exactly; the only module that writes them.

Layout: ``<output_dir>/checkpoints/step-<N>/`` holding ``model/`` (save_pretrained + tokenizer),
``state.pt`` (optimizer, scheduler, sampler, LR controller, RNG states, step). A checkpoint is written
into a temporary sibling folder and renamed into place, so an interrupted save never leaves a
half-written checkpoint that resume would pick up.

Several processes (a :class:`rlpost.distributed.Runtime` passed as ``runtime``; every rank calls the same
functions): rank 0 writes ``model/`` (gathered under ZeRO-3 / FSDP2) and ``state.pt`` (with ``world_size`` and
``distributed``); every rank adds ``rank-<r>.pt`` (its RNG state) and, with DeepSpeed, its ZeRO shard under
``deepspeed/`` (optimizer state and fp32 master weights), with FSDP2 its shards of the model and optimizer state
under ``fsdp/`` (torch.distributed.checkpoint); state.pt's ``optimizer`` is then None. The runtime
provides the gathered state dicts and writes its shards into the folder it is given; this module decides the
layout, the temporary folder and the rename.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from rlpost.config import ConfigError
from rlpost.distributed.sharding import SINGLE_PROCESS, Runtime


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, state: dict, keep: int = 2,
                    runtime: Runtime | None = None) -> Path:
    """Write ``checkpoints/step-<step>/`` (layout in the module docstring) and keep the newest ``keep``."""
    rt = runtime or SINGLE_PROCESS
    root = checkpoint_dir(output_dir)
    if rt.is_main:
        root.mkdir(parents=True, exist_ok=True)
    tmp = Path(rt.broadcast_object(tempfile.mkdtemp(dir=root, prefix=f".step-{step}.") if rt.is_main else None))
    if rt.shards_optimizer:
        rt.save_shards(tmp / rt.shard_folder)
    save_model(model, tokenizer, tmp / "model", rt)
    if rt.enabled:
        torch.save({"rng": rng_state()}, tmp / f"rank-{rt.rank}.pt")
    if rt.is_main:
        ranks = {"world_size": rt.world_size, "distributed": rt.backend} if rt.enabled else {}
        torch.save({**state, "step": step, "rng": rng_state(), **ranks}, tmp / "state.pt")
    rt.barrier()
    final = root / f"step-{step}"
    if rt.is_main:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    rt.barrier()
    return final


def save_model(model, tokenizer, path: str | Path, runtime: Runtime | None = None, save_merged: bool = False) -> None:
    """``save_pretrained`` of model and tokenizer into ``path`` on rank 0. A LoRA model saves its adapter, and with
    ``save_merged`` the merged full model under ``path/merged`` too. ZeRO-3 / FSDP2: the weights are gathered first
    (collective: every rank calls this)."""
    from rlpost.distributed.weight_sync import named_parameters_for_sync
    from rlpost.models.lora import is_peft_model, save_final
    rt = runtime or SINGLE_PROCESS
    peft = is_peft_model(model)
    state = rt.full_state_dict(model) if rt.gathers_parameters else None
    merged = ({name: t.cpu() for name, t in named_parameters_for_sync(model, rt)}  # merged LoRA weights, gathered
              if rt.gathers_parameters and peft and save_merged else None)
    if rt.is_main:
        if peft:
            save_final(model, tokenizer, path, save_merged=save_merged, state_dict=state, merged=merged)
        else:
            model.save_pretrained(path, state_dict=state)
            tokenizer.save_pretrained(path)
    rt.barrier()


def remove_stale_temporaries(output_dir: str | Path) -> list[Path]:
    """Delete what a killed run left half-written: ``checkpoints/.step-N.*`` folders (a checkpoint being saved)
    and ``final_model/.tmp*`` files. Called when a run starts in ``output_dir``; returns what it removed."""
    out = Path(output_dir)
    stale = sorted(checkpoint_dir(out).glob(".step-*")) + sorted((out / "final_model").glob(".tmp*"))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = checkpoint_dir(output_dir)
    if not root.exists():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.pt").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """``"latest"`` -> newest complete checkpoint (or None when there is none); a path -> that path."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"trainer.resume_from_checkpoint: {path} is not a checkpoint (no state.pt)")
    return path


def load_state(path: Path) -> dict:
    return torch.load(path / "state.pt", weights_only=False)


def load_model_and_optimizer(path: Path, state: dict, model, optimizer, runtime: Runtime | None = None) -> None:
    """Resume the weights and the optimizer state (every rank): from the shards when DeepSpeed or FSDP2 holds the
    optimizer, else from ``model/`` and state.pt."""
    rt = runtime or SINGLE_PROCESS
    if rt.shards_optimizer:
        folder = path / rt.shard_folder
        if not folder.exists():
            raise ConfigError(f"{path} was not written with distributed.backend={rt.backend} (no {rt.shard_folder}/ "
                              f"folder; it was written with {state.get('distributed', 'none')})")
        if rt.shard_folder == "deepspeed" and state.get("world_size") not in (None, rt.world_size):
            raise ConfigError(f"{path} was written by {state['world_size']} ranks, this run has "
                              f"{rt.world_size}: DeepSpeed ZeRO shards need the same world size")
        rt.load_shards(folder)
        return
    if state.get("optimizer") is None:
        written = state.get("distributed", "deepspeed")
        raise ConfigError(f"{path} keeps its optimizer state in {written}'s shards: resume it with "
                          f"distributed.backend={written} (DeepSpeed: on {state.get('world_size')} ranks)")
    from rlpost.models.loading import load_state_into
    load_state_into(model, path / "model")
    optimizer.load_state_dict(state["optimizer"])


def rank_rng_state(path: Path, state: dict, runtime: Runtime | None = None) -> dict:
    """The RNG state this rank resumes with: its own ``rank-<r>.pt`` in a multi-process run, else state.pt's."""
    rt = runtime or SINGLE_PROCESS
    own = path / f"rank-{rt.rank}.pt"
    if rt.enabled and own.exists():
        return torch.load(own, weights_only=False)["rng"]
    return state["rng"]


def writable_output_dir(path: Path) -> None:
    """Create ``path`` and check that files can be written there; a ConfigError naming trainer.output_dir if not
    (before any model loads, rather than at the first checkpoint)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".rlpost-write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"trainer.output_dir: cannot write to {str(path)!r} ({err.strerror or err})") from None
