"""Per-step scoring time of several slow reward functions, one after another vs at the same time.

The "four judges" case of issue 23: four reward functions that each wait ``--wait`` seconds (as a remote LLM judge
or a reward-model server does) score a batch of ``--batch`` completions. Sequentially a step costs the sum of the
waits; rlpost's RewardManager runs them together, so a step costs about the longest one. Plain functions
(time.sleep) and ``async def`` ones (asyncio.sleep) are timed separately, plus ``code_exec`` on the tiny code set.

    python scripts/bench_rewards.py                   # 4 judges x 0.5 s, 5 steps each way
    python scripts/bench_rewards.py --judges 8 --wait 0.25 --steps 3
    python scripts/bench_rewards.py --no-code-exec

Prints one line per setting: the median seconds per step (timing/score) sequential, concurrent, and the ratio.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlpost.config import RewardConfig  # noqa: E402
from rlpost.rewards import RewardManager  # noqa: E402
from rlpost.rewards.manager import RewardSpec  # noqa: E402


def sleeping_judge(wait_s: float):
    def judge(prompts, completions, **kwargs):
        time.sleep(wait_s)
        return [float(len(c)) for c in completions]
    return judge


def async_judge(wait_s: float):
    async def judge(prompts, completions, **kwargs):
        await asyncio.sleep(wait_s)
        return [float(len(c)) for c in completions]
    return judge


def time_steps(manager: RewardManager, prompts, completions, columns, steps: int) -> tuple[float, list]:
    """Median seconds of ``manager.score`` over ``steps`` calls, and the last result (to compare the two modes)."""
    times, result = [], None
    for _ in range(steps):
        start = time.perf_counter()
        result = manager.score(prompts, completions, columns)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def compare(label: str, specs: list[RewardSpec], prompts, completions, columns, steps: int) -> None:
    seq, seq_result = time_steps(RewardManager(specs, concurrent=False), prompts, completions, columns, steps)
    conc, conc_result = time_steps(RewardManager(specs), prompts, completions, columns, steps)
    same = "same results" if seq_result == conc_result else "RESULTS DIFFER"
    print(f"{label:<44} sequential {seq:6.3f} s/step   concurrent {conc:6.3f} s/step   x{seq / conc:5.2f}   ({same})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--judges", type=int, default=4)
    parser.add_argument("--wait", type=float, default=0.5, help="seconds each judge waits per call")
    parser.add_argument("--batch", type=int, default=64, help="completions per step")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-code-exec", action="store_true")
    args = parser.parse_args()

    prompts, completions = ["p"] * args.batch, [f"completion {i}" for i in range(args.batch)]
    print(f"{args.judges} reward functions x {args.wait} s wait, {args.batch} completions, median of {args.steps} steps")
    compare(f"plain functions (time.sleep {args.wait} s)",
            [RewardSpec(f"judge{k}", sleeping_judge(args.wait), 1.0, {}) for k in range(args.judges)],
            prompts, completions, {}, args.steps)
    compare(f"async def functions (asyncio.sleep {args.wait} s)",
            [RewardSpec(f"judge{k}", async_judge(args.wait), 1.0, {}) for k in range(args.judges)],
            prompts, completions, {}, args.steps)
    if not args.no_code_exec:
        rows = [json.loads(line) for line in (ROOT / "configs/tiny/code_exec_tasks.jsonl").read_text().splitlines()]
        code = "```python\ndef add(a, b):\n    return a + b\n```"
        tests = [r["tests"] for r in rows] * 2
        batch = [code] * len(tests)
        for workers in (1, 8):
            manager = RewardManager.from_config([RewardConfig("code_exec", 1.0, {"max_workers": workers})])
            seconds, _ = time_steps(manager, [""] * len(batch), batch, {"tests": tests}, max(1, args.steps // 2))
            print(f"code_exec, {len(batch)} completions, max_workers={workers:<2}          {seconds:6.3f} s/step")


if __name__ == "__main__":
    main()
