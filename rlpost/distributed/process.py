"""Who this process is in the launcher's process group, and the tensors collectives exchange."""
from __future__ import annotations

import hashlib
import os
import socket

import torch


def torch_dist():
    import torch.distributed
    return torch.distributed


def is_initialized() -> bool:
    d = torch_dist()
    return d.is_available() and d.is_initialized()


def rank() -> int:
    return torch_dist().get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return torch_dist().get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main() -> bool:
    return rank() == 0


def comm_device() -> torch.device:
    """Where collective tensors live: the current GPU for NCCL, the CPU for gloo."""
    if is_initialized() and torch_dist().get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def comm_tensor(values) -> torch.Tensor:
    """float64 values on the collective device."""
    return torch.tensor(values, dtype=torch.float64, device=comm_device())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_for_rank(seed: int | None, r: int) -> int | None:
    """Rank r's sampling seed: the run's own on rank 0, a stable hash of (seed, r) elsewhere."""
    if seed is None or r == 0:
        return seed
    return int.from_bytes(hashlib.sha256(repr((seed, "rank", r)).encode()).digest()[:8], "little") >> 2
