"""How learner weights travel from the trainer to ``rlpost serve`` workers (``rollout.weight_sync``).

file: the trainer writes one ``torch.save`` file of {name: tensor} under ``rollout.weight_sync_dir`` (default
      /dev/shm, i.e. shared memory, when it exists) and every worker loads it memory-mapped; the file is removed
      once all workers answered. Needs a directory both sides see (same machine, or a shared file system).
dist: a torch.distributed process group of its own (not the default group, which vLLM owns in the worker):
      rank 0 is the trainer, worker i is rank i + 1; gloo on CPU, NCCL on GPU. Tensors are broadcast in
      buckets of one dtype (at most ``BUCKET_BYTES``); the worker learns the names, dtypes and shapes from the
      HTTP request that tells it to receive, so both sides cut the buckets identically.
"""
from __future__ import annotations

import datetime
import os
import tempfile
import uuid
from pathlib import Path

import torch

BUCKET_BYTES = 256 << 20
_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64,
                                                       torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)}


def default_sync_dir() -> str:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else tempfile.gettempdir()


def save_weights_file(named_tensors, directory: str | None = None) -> str:
    """{name: tensor} -> ``<directory>/rlpost-weights-<uuid>.pt`` (written to a temporary name, then renamed)."""
    directory = Path(directory or default_sync_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"rlpost-weights-{uuid.uuid4().hex}.pt"
    tmp = path.with_suffix(".tmp")
    torch.save({name: t.detach().cpu().contiguous() for name, t in named_tensors}, tmp)
    tmp.rename(path)
    return str(path)


def load_weights_file(path: str) -> list[tuple[str, torch.Tensor]]:
    return list(torch.load(path, map_location="cpu", weights_only=True, mmap=True).items())


def weights_fingerprint(named_tensors) -> str:
    """A cheap fingerprint of a set of weights (16 hex digits): sha256 over each tensor's name, dtype, shape and up
    to 64 evenly strided values (only those are copied, so a sync of a large model stays cheap). Both sides of a sync
    compute it (the trainer on what it sends, the worker on what it loaded), so a run can check which weights a
    worker holds without hashing every byte; a training step moves almost every value, so stale weights differ."""
    import hashlib
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda nt: nt[0]):
        flat = t.detach().reshape(-1)
        stride = max(1, flat.numel() // 64)
        h.update(f"{name}|{str(t.dtype)}|{list(t.shape)}|".encode())
        h.update(flat[::stride][:64].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def tensor_meta(named_tensors) -> tuple[list[tuple[str, torch.Tensor]], list[list]]:
    tensors = [(name, t.detach()) for name, t in named_tensors]
    return tensors, [[name, str(t.dtype).removeprefix("torch."), list(t.shape)] for name, t in tensors]


def buckets(meta: list[list]) -> list[list[int]]:
    """Indices of consecutive tensors of one dtype, cut at BUCKET_BYTES (both sides compute the same cut)."""
    out: list[list[int]] = []
    size, dtype = 0, None
    for i, (_, dt, shape) in enumerate(meta):
        nbytes = _numel(shape) * torch.empty((), dtype=_DTYPES[dt]).element_size()
        if not out or dt != dtype or size + nbytes > BUCKET_BYTES:
            out.append([])
            size, dtype = 0, dt
        out[-1].append(i)
        size += nbytes
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class Communicator:
    """One side of the trainer -> workers weight broadcast group (see the module docstring)."""

    def __init__(self, host: str, port: int, rank: int, world_size: int, backend: str, timeout_s: float,
                 device: str | torch.device = "cpu"):
        import torch.distributed as dist
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device(device)
        self.store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout,
                                   wait_for_workers=False)
        store = dist.PrefixStore("rlpost-weights", self.store)
        if backend == "gloo":
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        elif backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, opts)
        else:
            raise ValueError(f"weight sync backend must be gloo or nccl, got {backend!r}")

    def _broadcast(self, t: torch.Tensor) -> None:
        import torch.distributed as dist
        opts = dist.BroadcastOptions()
        opts.rootRank, opts.rootTensor = 0, 0
        self.group.broadcast([t], opts).wait()

    def send(self, tensors: list[tuple[str, torch.Tensor]], meta: list[list]) -> None:
        """Rank 0: broadcast every bucket."""
        for idx in buckets(meta):
            flat = torch.cat([tensors[i][1].reshape(-1).to(self.device) for i in idx])
            self._broadcast(flat)

    def recv(self, meta: list[list]) -> list[tuple[str, torch.Tensor]]:
        """Rank > 0: receive every bucket and cut it back into named tensors."""
        out = []
        for idx in buckets(meta):
            numels = [_numel(meta[i][2]) for i in idx]
            flat = torch.empty(sum(numels), dtype=_DTYPES[meta[idx[0]][1]], device=self.device)
            self._broadcast(flat)
            for i, piece in zip(idx, flat.split(numels)):
                out.append((meta[i][0], piece.view(meta[i][2])))
        return out

    def close(self) -> None:
        group, self.group = getattr(self, "group", None), None
        if group is not None:
            try:
                group.shutdown()
            except Exception:  # pragma: no cover - older torch / gloo: dropping the object is enough
                pass
        self.store = None
