#!/usr/bin/env python
"""Rerun one cell of a committed miniature table on another float path and compare it with the table's spread.

    python scripts/check_table_cell.py                              # hapo / arithmetic / GRPO, capped float path
    python scripts/check_table_cell.py adora countdown ADORA --path native

A cell is one method on one task over the table's seeds (results/<recipe>/runs.json). The rerun is
``rlpost reproduce <recipe> --tasks <task> --methods <method>`` in a fresh process, into a temporary folder, with
generic (non-AVX) kernels for "capped": the same code rounding differently, as on a CPU with other vector units.
Passes when the rerun's mean final accuracy lies within the committed min..max of that cell (widened by one
held-out prompt). Slow (a minute or two per seed); not part of CI.
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


def cell(runs_json: Path, task: str, method: str) -> dict[int, float]:
    runs = json.loads(runs_json.read_text())["runs"]
    return {r["seed"]: r["final"] for r in runs if r["task"] == task and r["method"] == method}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", nargs="?", default="hapo")
    p.add_argument("task", nargs="?", default="arithmetic")
    p.add_argument("method", nargs="?", default="GRPO")
    p.add_argument("--path", choices=["native", "capped"], default="capped")
    args = p.parse_args(argv)
    committed_json = ROOT / "results" / args.recipe / "runs.json"
    meta = json.loads(committed_json.read_text())
    committed = cell(committed_json, args.task, args.method)
    if not committed:
        raise SystemExit(f"no cell {args.task}/{args.method} in {committed_json}")
    seeds = sorted(committed)
    budget = meta["budget"]
    print(f"rerun of {args.recipe} / {args.task} / {args.method}, seeds {seeds}, {args.path} float path "
          f"(CPU vector flags: {cpu_vector_flags()})", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(CAPPED_ENV if args.path == "capped" else {})}
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [str(ROOT / ".venv" / "bin" / "rlpost"), "reproduce", args.recipe, "--tasks", args.task,
               "--methods", args.method, "--seeds", ",".join(map(str, seeds)), "--steps", str(budget["steps"]),
               "--eval-every", str(budget["eval_every"]), "--num-eval", str(budget["num_eval"]),
               "--out", f"{tmp}/results", "--runs-dir", f"{tmp}/runs"]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"rerun failed:\n{proc.stderr[-3000:]}")
        rerun = cell(Path(tmp) / "results" / args.recipe / "runs.json", args.task, args.method)
    for s in seeds:
        print(f"  seed {s}: committed {committed[s]:.3f}, rerun {rerun[s]:.3f} ({rerun[s] - committed[s]:+.3f})")
    lo, hi = min(committed.values()), max(committed.values())
    mean = sum(rerun.values()) / len(rerun)
    slack = 1.0 / budget["num_eval"]
    ok = lo - slack <= mean <= hi + slack
    print(f"rerun mean {mean:.3f}; committed min..max {lo:.3f}..{hi:.3f}: "
          f"{'within the spread' if ok else 'OUTSIDE the spread'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
