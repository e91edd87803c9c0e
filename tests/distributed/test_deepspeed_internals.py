"""rlpost/distributed/deepspeed_internals.py against a real two-rank ZeRO-3 engine (torchrun, gloo on CPU); the
checks themselves are in zero3_internals_worker.py."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_gathered_without_hooks_on_a_two_rank_zero3_engine():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(_port()),
           str(ROOT / "tests" / "distributed" / "zero3_internals_worker.py")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert {"rank 0 ok", "rank 1 ok"} <= set(proc.stdout.split("\n")), proc.stdout[-2000:]
