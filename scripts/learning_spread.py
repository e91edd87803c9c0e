#!/usr/bin/env python
"""The spread that the learning tests' margins rest on: every test marked ``learning`` for several seeds on the
native and a capped float path.

    python scripts/learning_spread.py                        # seeds 0 1 2 x native, capped
    python scripts/learning_spread.py --seeds 0 -k reward_model

Each (seed, path) is one ``pytest -m learning`` process with ``RLPOST_TEST_SEED`` set (the ``learning_seed``
fixture) and ``RLPOST_LEARNING_LOG`` pointing at a file where the tests record what they learned
(``report_learning``). "capped" forces generic (non-AVX) kernels in ATen, MKL and oneDNN, as on a CPU with other
vector units. Prints pass/fail per run and, per reported quantity, min / max / mean over all runs.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlpost.provenance import CAPPED_ENV as CAPPED, cpu_vector_flags  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--paths", nargs="+", choices=["native", "capped"], default=["native", "capped"])
    p.add_argument("-k", default=None, help="pytest -k expression (a subset of the learning tests)")
    args = p.parse_args(argv)
    print(f"learning-test spread, {datetime.date.today()}, CPU vector flags: {cpu_vector_flags()}")
    values: dict[str, list[tuple[str, int, float]]] = defaultdict(list)
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            for seed in args.seeds:
                log = Path(tmp) / f"{path}-{seed}.jsonl"
                env = {**os.environ, "RLPOST_TEST_SEED": str(seed), "RLPOST_LEARNING_LOG": str(log),
                       **(CAPPED if path == "capped" else {})}
                cmd = ["bash", str(ROOT / "scripts" / "test.sh"), "-m", "learning", "-p", "no:warnings"]
                if args.k:
                    cmd += ["-k", args.k]
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
                last = (proc.stdout.strip().splitlines() or ["(no output)"])[-1]
                failed += proc.returncode != 0
                print(f"  {path:6s} float path, seed {seed}: {last}", flush=True)
                if proc.returncode != 0:
                    print("\n".join(line for line in proc.stdout.splitlines() if line.startswith(("FAILED", "E "))))
                for line in (log.read_text().splitlines() if log.exists() else []):
                    r = json.loads(line)
                    values[r["name"]].append((path, seed, r["value"]))
    for name, vals in values.items():
        xs = [v for _, _, v in vals]
        each = ", ".join(f"{p[0]}{s}:{v:.3f}" for p, s, v in vals)
        print(f"{name}: min {min(xs):.3f}, max {max(xs):.3f}, mean {sum(xs) / len(xs):.3f} over {len(xs)} runs ({each})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
