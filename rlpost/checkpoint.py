"""Atomic checkpoints with everything needed to resume exactly.

Layout: ``<output_dir>/checkpoints/step-<N>/`` holding ``model/`` (save_pretrained + tokenizer),
``state.pt`` (optimizer, scheduler, sampler, LR controller, RNG states, step). A checkpoint is written
into a temporary sibling folder and renamed into place, so an interrupted save never leaves a
half-written checkpoint that resume would pick up.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def checkpoint_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, state: dict, keep: int = 2) -> Path:
    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".step-{step}."))
    model.save_pretrained(tmp / "model")
    tokenizer.save_pretrained(tmp / "model")
    torch.save({**state, "step": step, "rng": rng_state()}, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
