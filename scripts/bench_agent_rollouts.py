"""Lock-step vs per-episode multi-turn rollouts (rollout.workflow.schedule) on an environment whose every answer
takes a random 0-``--latency-ms`` ms (an ``async def step``, standing in for a tool or a remote judge).

    python scripts/bench_agent_rollouts.py                      # hf engine, tiny:qwen2:arithmetic, 32 episodes
    python scripts/bench_agent_rollouts.py --episodes 64 --latency-ms 500 --repeats 3
    python scripts/bench_agent_rollouts.py --engine vllm         # colocated vLLM engine in this process
    python scripts/bench_agent_rollouts.py --engine vllm_server  # starts one `rlpost serve` worker
    python scripts/bench_agent_rollouts.py --engine vllm_server --episodes 128 --max-concurrent 32

``--max-concurrent C`` (``rollout.workflow.max_concurrent_episodes``) caps the episodes in flight: lock-step then
plays the episodes in chunks of C, each to its end; per-episode keeps C slots busy, starting the next episode the
moment one ends. Without it every episode starts at once, and the batch ends with its slowest episode either way.

The environment is the guess-the-number game (rlpost/envs/examples.py GuessNumberEnv); each answer's latency is
drawn from a generator seeded by (prompt id, turn), so both schedules see the same latencies. Prints episodes
per second of each schedule, the time the waits alone take on each schedule (a free engine's bound on the
speedup) and "speedup X.XX" (per_episode / lockstep). Engines: hf on the learner's model object (per_episode
batches the episodes waiting whenever the engine is free); vllm, the colocated engine in this process, or
vllm_server, one `rlpost serve` worker this script starts: per_episode sends each episode's turn as its own call
the moment it is ready, and the engine batches them continuously (vllm: rlpost's driver over the in-process
engine core; vllm_server: the worker's async vLLM engine).
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time

from rlpost.envs.examples import GuessNumberEnv


class LatencyGuessEnv(GuessNumberEnv):
    """GuessNumberEnv whose step waits a random 0-max_latency_ms ms first (seeded by prompt id and turn).
    Every wait is recorded in DELAYS[(prompt id, turn)]."""

    DELAYS: dict[tuple[int, int], float] = {}

    def __init__(self, max_latency_ms: float = 500.0):
        self.max_latency_ms, self.turn = max_latency_ms, 0

    def reset(self, row: dict) -> list[dict]:
        self.prompt_id = row["prompt_id"]
        return super().reset(row)

    async def step(self, message: dict):
        delay = random.Random(self.prompt_id * 1000 + self.turn).uniform(0, self.max_latency_ms) / 1000
        LatencyGuessEnv.DELAYS[(self.prompt_id, self.turn)] = delay
        self.turn += 1
        await asyncio.sleep(delay)
        return super().step(message)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny:qwen2:arithmetic")
    ap.add_argument("--episodes", type=int, default=32)
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--latency-ms", type=float, default=500.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--engine", choices=["hf", "vllm", "vllm_server"], default="hf")
    ap.add_argument("--max-tokens", type=int, default=6, help="sampled tokens per turn")
    ap.add_argument("--max-concurrent", type=int, default=0,
                    help="episodes in flight at once (rollout.workflow.max_concurrent_episodes); 0: all")
    args = ap.parse_args()

    from rlpost.config import ModelConfig
    from rlpost.engines.hf import HFEngine
    from rlpost.models.loading import load_model, load_tokenizer, resolve_model_ref

    path = resolve_model_ref(args.model)
    cfg = ModelConfig(name_or_path=args.model)
    tok = load_tokenizer(path, cfg)
    if args.engine == "hf":
        engine = HFEngine(load_model(path, cfg, device="cpu", frozen=True), tok)
    elif args.engine == "vllm":
        from rlpost.engines.vllm_engine import VLLMEngine
        engine = VLLMEngine(str(path), tok, dtype="float32", gpu_memory_utilization=0.2, max_model_len=512)
    else:
        from rlpost.engines.vllm_server import VLLMServerEngine, start_workers
        workers = start_workers(str(path), 1, engine_args=["--dtype", "float32", "--gpu-memory-utilization", "0.2",
                                                           "--max-model-len", "512"])
        engine = VLLMServerEngine([w.url for w in workers], tok, workers=workers)
    try:
        run(engine, tok, args)
    finally:
        if hasattr(engine, "close"):
            engine.close()


def latency_bounds(delays: dict[tuple[int, int], float], cap: int) -> tuple[float, float]:
    """Seconds the waits alone take (generation free), episodes in row order, at most ``cap`` in flight.
    Lock-step: chunks of ``cap`` episodes one after another, each turn of a chunk as long as its slowest wait
    (sum over chunks and turns of the max over the chunk's episodes). Per-episode: ``cap`` lanes, each episode
    (the sum of its waits) on the lane free first, the last lane's end."""
    waits: dict[int, dict[int, float]] = {}
    for (episode, turn), d in delays.items():
        waits.setdefault(episode, {})[turn] = d
    order = sorted(waits)
    cap = cap or len(order) or 1
    lockstep = 0.0
    for first in range(0, len(order), cap):
        chunk = [waits[e] for e in order[first:first + cap]]
        lockstep += sum(max(w.get(t, 0.0) for w in chunk) for t in {t for w in chunk for t in w})
    lanes = [0.0] * min(cap, len(order))
    for e in order:
        k = lanes.index(min(lanes))
        lanes[k] += sum(waits[e].values())
    return lockstep, max(lanes, default=0.0)


def run(engine, tok, args) -> None:
    from rlpost.data import build_prompts
    from rlpost.engines.base import SamplingParams
    from rlpost.tasks import TASKS
    from rlpost.workflows.multi_turn import MultiTurnWorkflow

    rows = TASKS.get("guess_number")("train", args.episodes, seed=0, low=1, high=16)
    prompts = build_prompts(rows, tok)
    params = SamplingParams(n=1, max_tokens=args.max_tokens, temperature=1.0, seed=0)
    rates, bounds = {}, {}
    for schedule in ("lockstep", "per_episode"):
        wf = MultiTurnWorkflow(engine, tok, env="__main__:LatencyGuessEnv", env_kwargs={"max_latency_ms": args.latency_ms},
                               max_turns=args.max_turns, max_total_tokens=256, schedule=schedule,
                               max_concurrent_episodes=args.max_concurrent)
        wf.rollout(prompts[:4], params)   # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            LatencyGuessEnv.DELAYS.clear()
            start = time.perf_counter()
            trajs = wf.rollout(prompts, params)
            best = min(best, time.perf_counter() - start)
        lock_wait, episode_wait = latency_bounds(LatencyGuessEnv.DELAYS, args.max_concurrent)
        bounds[schedule] = lock_wait if schedule == "lockstep" else episode_wait
        turns = sum(t.info["turns"] for t in trajs) / len(trajs)
        rates[schedule] = len(trajs) / best
        print(f"{schedule:12s} {rates[schedule]:7.2f} episodes/s  ({best:.2f} s for {len(trajs)} episodes, "
              f"{turns:.2f} turns per episode)")
    print(f"waits alone: lockstep {bounds['lockstep']:.2f} s, per_episode {bounds['per_episode']:.2f} s "
          f"(the speedup of a free engine: {bounds['lockstep'] / bounds['per_episode']:.2f})")
    cap = f"at most {args.max_concurrent} in flight" if args.max_concurrent else "all at once"
    print(f"speedup {rates['per_episode'] / rates['lockstep']:.2f} (engine {args.engine}, {args.episodes} episodes, "
          f"{cap}, up to {args.max_turns} turns, waits 0-{args.latency_ms:.0f} ms)")


if __name__ == "__main__":
    main()
