"""Asynchronous rollouts: per-step time and held-out accuracy for rollout.async_level 0 (synchronous), 1 and 2.

    python scripts/bench_async.py                                          # the issue's benchmark (~1 h on 2 cores)
    python scripts/bench_async.py --settings arith --levels 0 1 --seeds 0 --steps 6    # a quick look

The learner runs on one core (``taskset -c 0``, one torch thread) and one ``rlpost serve`` worker on another
(``taskset -c 1``, OMP_NUM_THREADS=1), talking over HTTP with weight_sync=file, so generation and learning can
really overlap. Two settings:

- ``arith``: the README's tiny GRPO run (shipped arithmetic model, answers of ~3 tokens): learning dominates.
- ``long``:  generation-heavy: a random-init model of the same shape, which rarely emits EOS, with 64-token
  completions; its held-out accuracy stays ~0 (the setting measures time, not learning).

Per run: the step time is the median of ``step_time`` over the steps after the first (the first waits for the
initial batches), with the medians of the learner's wait for rollouts, its update and the batch's generation
(``async/generate_time``: on the generation thread, overlapping the update); per mode: the mean over seeds, "speedup 1.xx" against async_level 0, and the final held-out
accuracy (greedy) as mean [min, max] over seeds. Figures taken on a machine shared with other jobs are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "arith": {"model": "tiny:qwen2:arithmetic", "overrides": ["rollout.max_completion_length=8"]},
    "long": {"model": "random", "overrides": ["rollout.max_completion_length=64"]},
}
WORKER_ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "512"]


def pinned(core: int | None) -> list[str]:
    """A ``taskset -c core`` prefix (nothing when taskset is missing or no core is given)."""
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


def model_path(setting: str, scratch: Path) -> str:
    from rlpost.models.tiny import ensure_tiny, save_random_tiny
    name = SETTINGS[setting]["model"]
    return save_random_tiny(scratch / "random-model") if name == "random" else str(ensure_tiny(name))


def start_worker(path: str, core: int | None, log_dir: Path):
    """One ``rlpost serve`` worker pinned to ``core``; returns (url, process)."""
    from rlpost.engines.vllm_server import free_port, wait_healthy
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = log_dir / f"worker-{port}.log"
    cmd = [*pinned(core), sys.executable, "-m", "rlpost.cli", "serve", path, "--port", str(port),
           "--log-file", str(log), *WORKER_ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy([url], None, 600)
    except BaseException:
        proc.kill()
        raise
    return url, proc


def stop_worker(url: str, proc) -> None:
    """POST /shutdown and wait; kill the worker if it does not go."""
    import requests
    try:
        requests.post(f"{url}/shutdown", timeout=5)
        proc.wait(timeout=60)
    except Exception:
        proc.kill()


def train(path: str, setting: str, level: int, seed: int, url: str, args, out: Path) -> list[dict]:
    """One run of configs/tiny/arith_grpo.yaml on the worker; its metrics.jsonl rows."""
    cmd = [*pinned(args.learner_core), sys.executable, "-m", "rlpost.cli", "train", "configs/tiny/arith_grpo.yaml",
           f"model.name_or_path={path}", f"trainer.output_dir={out}", f"trainer.seed={seed}",
           f"trainer.max_steps={args.steps}", f"trainer.eval_steps={args.steps}", f"data.num_eval={args.num_eval}",
           "trainer.save_steps=0", "trainer.progress_bar=false", "trainer.report_to=[]", "trainer.num_threads=1",
           f"rollout.prompts_per_step={args.prompts}", "rollout.engine=vllm_server", f"rollout.server_urls=[{url}]",
           "rollout.max_model_len=512", f"rollout.async_level={level}", *SETTINGS[setting]["overrides"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"train failed ({setting}, level {level}, seed {seed}):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def summarize(rows: list[dict]) -> dict:
    """Median step time after the first step, the time the learner waited for rollouts, the final accuracy."""
    steps = [r for r in rows if r.get("step", 0) >= 2 and "step_time" in r]
    waits = [r.get("timing/generate_wait", r.get("timing/generate", 0.0)) for r in steps]
    gen = [r.get("async/generate_time", r.get("timing/generate", 0.0)) for r in steps]   # the batch's generation
    return {"step_time": statistics.median(r["step_time"] for r in steps), "wait": statistics.median(waits),
            "update": statistics.median(r.get("timing/update", 0.0) for r in steps),
            "generate": statistics.median(gen),
            "accuracy": [r for r in rows if "eval/accuracy" in r][-1]["eval/accuracy"]}


def report(results: dict) -> None:
    """One line per (setting, level): step time, learner wait, speedup vs level 0, accuracy mean [min, max]."""
    print(f"\n{'setting':8} {'level':>5} {'step s':>8} {'wait s':>8} {'update s':>8} {'gen s':>8}  {'speedup':14} "
          "held-out accuracy")
    for setting, by_level in results.items():
        base = statistics.mean(s["step_time"] for s in by_level.get(0, [])) if 0 in by_level else None
        for level, runs in sorted(by_level.items()):
            step = statistics.mean(s["step_time"] for s in runs)
            wait = statistics.mean(s["wait"] for s in runs)
            update = statistics.mean(s["update"] for s in runs)
            gen = statistics.mean(s["generate"] for s in runs)
            acc = [s["accuracy"] for s in runs]
            speed = f"speedup {base / step:.2f}" if base else "speedup -"
            print(f"{setting:8} {level:>5} {step:8.3f} {wait:8.3f} {update:8.3f} {gen:8.3f}  {speed:14} "
                  f"{statistics.mean(acc):.3f} "
                  f"[{min(acc):.3f}, {max(acc):.3f}] (n={len(acc)})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--levels", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=30, help="RL steps per run")
    p.add_argument("--prompts", type=int, default=16, help="rollout.prompts_per_step (8 samples each)")
    p.add_argument("--num-eval", type=int, default=128, help="held-out prompts (greedy) at the last step")
    p.add_argument("--learner-core", type=int, default=0)
    p.add_argument("--worker-core", type=int, default=1)
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    args = p.parse_args(argv)
    scratch = Path(args.out or tempfile.mkdtemp(prefix="rlpost-bench-async-"))
    scratch.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for setting in args.settings:
        path = model_path(setting, scratch)
        url, proc = start_worker(path, args.worker_core, scratch)
        try:
            for level in args.levels:
                for seed in args.seeds:
                    rows = train(path, setting, level, seed, url, args, scratch / f"{setting}-a{level}-s{seed}")
                    s = summarize(rows)
                    results.setdefault(setting, {}).setdefault(level, []).append(s)
                    print(f"{setting} async_level={level} seed={seed}: step {s['step_time']:.3f} s, wait "
                          f"{s['wait']:.3f} s, update {s['update']:.3f} s, generate {s['generate']:.3f} s, "
                          f"accuracy {s['accuracy']:.3f}", flush=True)
        finally:
            stop_worker(url, proc)
    report(results)
    (scratch / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nruns and results.json: {scratch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
