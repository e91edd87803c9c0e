"""Multi-rank tests: run a script under torchrun and read what each rank reports from its own file.

A rank never reports on stdout: two ranks' prints interleave (``'rank 0 okrank 1 ok'`` on one line made a passing
run fail). A worker calls :func:`write_rank_result` once, at its end, which writes ``rank-<r>.json`` atomically
into the folder named by ``$RLPOST_RANK_RESULTS``; :func:`run_ranks` starts the ranks, checks the exit status and
returns the results in rank order, failing with the output tail when a rank wrote none.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
RESULTS_ENV = "RLPOST_RANK_RESULTS"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env() -> dict:
    """The environment of a test subprocess: one thread, offline, the repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def torchrun_cmd(nproc: int) -> list[str]:
    return [TORCHRUN, "--nproc_per_node", str(nproc), "--master_port", str(free_port())]


def run_ranks(script: Path, nproc: int, results_dir: Path, args: list[str] | tuple = (), timeout: int = 900,
              env: dict | None = None) -> list[dict]:
    """``torchrun --nproc_per_node nproc script *args``; each rank's :func:`write_rank_result` dict, by rank."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    for old in results_dir.glob("rank-*.json"):
        old.unlink()
    proc = subprocess.run([*torchrun_cmd(nproc), str(script), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**(env or subprocess_env()), RESULTS_ENV: str(results_dir)})
    tail = proc.stdout[-3000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, tail
    missing = [r for r in range(nproc) if not (results_dir / f"rank-{r}.json").exists()]
    assert not missing, f"ranks {missing} wrote no result\n{tail}"
    return [json.loads((results_dir / f"rank-{r}.json").read_text()) for r in range(nproc)]


def write_rank_result(result: dict) -> None:
    """Called by a worker rank: its result as ``rank-<RANK>.json`` in ``$RLPOST_RANK_RESULTS`` (atomic rename)."""
    folder = Path(os.environ[RESULTS_ENV])
    rank = int(os.environ.get("RANK", "0"))
    tmp = folder / f".rank-{rank}.json.tmp"
    tmp.write_text(json.dumps(result))
    os.replace(tmp, folder / f"rank-{rank}.json")


def train_run(config: str, out: Path, overrides: list[str] | tuple, nproc: int = 1, timeout: int = 900) -> list[dict]:
    """``rlpost train`` on ``nproc`` ranks (a plain process for 1); the metrics rows from ``metrics.jsonl``, which
    rank 0 alone writes (never read from the ranks' stdout, where their lines interleave)."""
    launcher = torchrun_cmd(nproc) if nproc > 1 else [sys.executable]
    cmd = [*launcher, "-m", "rlpost.cli", "train", config, f"trainer.output_dir={out}", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
