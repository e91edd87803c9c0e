#!/usr/bin/env python
"""The demo's held-out gain over RL seeds and float paths: the figures the README quotes.

    python scripts/demo_spread.py                       # seeds 0 1 2 x native and capped float path
    python scripts/demo_spread.py --seeds 0 --paths capped -- rollout.num_generations=16   # extra overrides

Each run is ``bash scripts/demo.sh trainer.seed=S`` (the README's main job, from the shipped tiny checkpoint) in a
fresh process with one torch thread. "capped" forces generic (non-AVX) kernels in ATen, MKL and oneDNN: the same
code then rounds differently, as on a CPU with other vector units or on a GPU. Prints one line per run, the worst
gain and the spread, with the date, the CPU's vector flags and the torch version.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from rlpost.provenance import CAPPED_ENV as CAPPED, cpu_vector_flags  # noqa: E402


def accuracy_curve(metrics: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]


def run_demo(seed: int, path: str, overrides: list[str], out: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(CAPPED if path == "capped" else {})}
    start = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), f"trainer.seed={seed}",
                           f"trainer.output_dir={out}", "trainer.progress_bar=false", *overrides],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"demo seed {seed} ({path}) failed:\n{proc.stderr[-2000:]}")
    curve = accuracy_curve(out / "metrics.jsonl")
    return {"seed": seed, "path": path, "first": curve[0][1], "last": curve[-1][1],
            "gain": curve[-1][1] - curve[0][1], "wall_s": wall, "curve": curve}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--paths", nargs="+", choices=["native", "capped"], default=["native", "capped"])
    p.add_argument("--json", help="also write the runs here")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for every run (after --)")
    args = p.parse_args(argv)
    import torch
    print(f"demo spread, {datetime.date.today()}, CPU vector flags: {cpu_vector_flags()}, torch {torch.__version__}, "
          f"{os.cpu_count()} cores; overrides: {' '.join(args.overrides) or 'none'}")
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.paths:
            for seed in args.seeds:
                r = run_demo(seed, path, args.overrides, Path(tmp) / f"{path}-{seed}")
                runs.append(r)
                evals = ", ".join(f"{100 * a:.0f}" for _, a in r["curve"])
                print(f"  {path:6s} float path, seed {seed}: {100 * r['first']:.1f}% -> {100 * r['last']:.1f}% "
                      f"(gain {100 * r['gain']:+.1f} points) in {r['wall_s']:.0f} s; evals: {evals}", flush=True)
    gains = [r["gain"] for r in runs]
    print(f"gain over {len(runs)} runs: worst {100 * min(gains):+.1f}, best {100 * max(gains):+.1f}, "
          f"mean {100 * sum(gains) / len(gains):+.1f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
