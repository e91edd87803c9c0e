"""Lock-step vs per-episode multi-turn rollouts (rollout.workflow.schedule) on an environment whose every answer
takes a random 0-``--latency-ms`` ms (an ``async def step``, standing in for a tool or a remote judge).

    python scripts/bench_agent_rollouts.py                      # hf engine, tiny:qwen2:arithmetic, 32 episodes
    python scripts/bench_agent_rollouts.py --episodes 64 --latency-ms 500 --repeats 3

The environment is the guess-the-number game (rlpost/envs/examples.py GuessNumberEnv); each answer's latency is
drawn from a generator seeded by (prompt id, turn), so both schedules see the same latencies. Prints episodes
per second of each schedule and "speedup X.XX" (per_episode / lockstep). Engine: hf on the learner's model
object (what runs here); the vLLM engines take the same calls.
"""
from __future__ import annotations

import argparse
import asyncio
import random
import time

from rlpost.envs.examples import GuessNumberEnv


class LatencyGuessEnv(GuessNumberEnv):
    """GuessNumberEnv whose step waits a random 0-max_latency_ms ms first (seeded by prompt id and turn)."""

    def __init__(self, max_latency_ms: float = 500.0):
        self.max_latency_ms, self.turn = max_latency_ms, 0

    def reset(self, row: dict) -> list[dict]:
        self.prompt_id = row["prompt_id"]
        return super().reset(row)

    async def step(self, message: dict):
        delay = random.Random(self.prompt_id * 1000 + self.turn).uniform(0, self.max_latency_ms) / 1000
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
    args = ap.parse_args()

    from rlpost.config import ModelConfig
    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.models.loading import load_model, load_tokenizer, resolve_model_ref
    from rlpost.data import build_prompts
    from rlpost.tasks import TASKS
    from rlpost.workflows.multi_turn import MultiTurnWorkflow

    path = resolve_model_ref(args.model)
    cfg = ModelConfig(name_or_path=args.model)
    tok, model = load_tokenizer(path, cfg), load_model(path, cfg, device="cpu", frozen=True)
    engine = HFEngine(model, tok)
    rows = TASKS.get("guess_number")("train", args.episodes, seed=0, low=1, high=16)
    prompts = build_prompts(rows, tok)
    params = SamplingParams(n=1, max_tokens=6, temperature=1.0, seed=0)
    rates = {}
    for schedule in ("lockstep", "per_episode"):
        wf = MultiTurnWorkflow(engine, tok, env="__main__:LatencyGuessEnv", env_kwargs={"max_latency_ms": args.latency_ms},
                               max_turns=args.max_turns, max_total_tokens=256, schedule=schedule)
        wf.rollout(prompts[:4], params)   # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            trajs = wf.rollout(prompts, params)
            best = min(best, time.perf_counter() - start)
        turns = sum(t.info["turns"] for t in trajs) / len(trajs)
        rates[schedule] = len(trajs) / best
        print(f"{schedule:12s} {rates[schedule]:7.2f} episodes/s  ({best:.2f} s for {len(trajs)} episodes, "
              f"{turns:.2f} turns per episode)")
    print(f"speedup {rates['per_episode'] / rates['lockstep']:.2f}")


if __name__ == "__main__":
    main()
