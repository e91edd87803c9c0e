#!/usr/bin/env python
"""Held-out gain of configs/tiny/arith_agent_calculator.yaml (the agent workflow, rlpost/workflows/agent.py) over
seeds on the native and a capped float path. Too slow for the suite (~3 min a run on a shared 2-core CPU), so the
docs quote what this prints (docs/environments.md, "Results").

    python scripts/agent_calculator_gain.py                      # seeds 0 1 2 x native, capped
    python scripts/agent_calculator_gain.py --seeds 0 --paths native

Each run is ``rlpost train`` on the shipped config (40 steps, 128 held-out prompts, greedy) with ``trainer.seed``
set, one torch thread; "capped" forces generic (non-AVX) kernels in ATen, MKL and oneDNN. Prints per run the
held-out accuracy at steps 0 / 20 / 40, the gain and the model requests per greedy episode at the end (1 when the
model answers directly, 2 after a tool call), then min / mean / max of the gain over all runs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlpost.provenance import CAPPED_ENV, cpu_vector_flags  # noqa: E402

CONFIG = "configs/tiny/arith_agent_calculator.yaml"


def run(path: str, seed: int, out: Path) -> list[dict]:
    """One training run; its eval rows."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           **(CAPPED_ENV if path == "capped" else {})}
    cmd = [sys.executable, "-m", "rlpost.cli", "train", CONFIG, f"trainer.output_dir={out}", f"trainer.seed={seed}",
           "trainer.progress_bar=false", "trainer.save_steps=0", "trainer.report_to=[]"]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/accuracy" in r]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--paths", nargs="+", choices=["native", "capped"], default=["native", "capped"])
    args = p.parse_args(argv)
    print(f"{CONFIG}: held-out accuracy (greedy, 128 prompts); CPU vector flags: {cpu_vector_flags()}")
    gains = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            for seed in args.seeds:
                evals = run(path, seed, Path(tmp) / f"{path}_{seed}")
                acc = " ".join(f"step {r['step']}: {r['eval/accuracy']:.3f}" for r in evals)
                gain = evals[-1]["eval/accuracy"] - evals[0]["eval/accuracy"]
                gains.append(gain)
                print(f"{path:7s} seed {seed}: {acc} | gain {gain:+.3f} | model requests per greedy episode at the "
                      f"end {evals[-1]['eval/agent/requests_per_episode']:.2f} (1: a direct answer)", flush=True)
    print(f"gain over {len(gains)} runs: min {min(gains):+.3f} mean {sum(gains) / len(gains):+.3f} "
          f"max {max(gains):+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
