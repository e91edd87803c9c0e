"""Reward functions of a step run at the same time (threads for plain functions, an event loop for async ones),
each with a time limit; results keep the config's order whatever finishes first.

Concurrency is checked by construction, not by timing: a barrier that only opens when all parties are inside
their reward function at once (sequential calls would break it), and start/end stamps whose intervals overlap.
The wall-clock gain is measured by scripts/bench_rewards.py."""
import asyncio
import threading
import time

import pytest

from rlpost.config import ConfigError, RewardConfig
from rlpost.rewards import RewardError, RewardManager
from rlpost.rewards.manager import RewardSpec, in_caller_thread, split_call_options


def barrier_judges(n: int, timeout_s: float = 10.0):
    """n plain reward functions that each wait at a barrier of n parties: it opens only if all n run at once."""
    barrier = threading.Barrier(n, timeout=timeout_s)

    def make(k):
        def judge(prompts, completions, **kwargs):
            barrier.wait()   # BrokenBarrierError after timeout_s when the others are not running
            return [float(k)] * len(completions)
        return judge
    return [RewardSpec(f"judge{k}", make(k), 1.0, {}) for k in range(n)]


def test_four_plain_functions_run_at_once():
    manager = RewardManager(barrier_judges(4))
    totals, components = manager.score(["p", "q"], ["a", "b"], {})
    assert list(components) == ["judge0", "judge1", "judge2", "judge3"]
    assert totals == [0.0 + 1.0 + 2.0 + 3.0] * 2


def test_sequential_mode_cannot_pass_the_barrier():
    """The same four functions called one after another: the first waits alone at the barrier and fails,
    which shows the barrier test above really needs concurrency."""
    manager = RewardManager(barrier_judges(4, timeout_s=0.3), concurrent=False)
    with pytest.raises(RewardError, match="'judge0' raised BrokenBarrierError"):
        manager.score(["p"], ["a"], {})


def test_async_functions_run_at_once_on_the_event_loop():
    arrived, n = [], 4

    def make(k):
        async def judge(prompts, completions, **kwargs):
            arrived.append(k)
            while len(arrived) < n:       # yields to the loop; all four must be in here together to leave
                await asyncio.sleep(0.005)
            return [10.0 * k + i for i in range(len(completions))]
        return judge
    specs = [RewardSpec(f"async{k}", make(k), 0.5, {}, timeout_s=10) for k in range(n)]
    totals, components = RewardManager(specs).score(["p", "q"], ["a", "b"], {})
    assert components == {"async0": [0.0, 1.0], "async1": [10.0, 11.0], "async2": [20.0, 21.0], "async3": [30.0, 31.0]}
    assert totals == [0.5 * (0 + 10 + 20 + 30), 0.5 * (1 + 11 + 21 + 31)]


def test_plain_async_and_caller_thread_functions_overlap_and_keep_config_order():
    """A slow plain function listed first, an async one, and a caller-thread one: their [start, end] intervals
    overlap, the caller-thread one ran on the calling thread, and components come out in config order."""
    stamps, threads = {}, {}

    def slow_plain(prompts, completions, **kwargs):
        stamps["plain"] = [time.monotonic()]
        time.sleep(1.0)
        stamps["plain"].append(time.monotonic())
        return [1.0] * len(completions)

    async def async_judge(prompts, completions, **kwargs):
        stamps["async"] = [time.monotonic()]
        await asyncio.sleep(1.0)
        stamps["async"].append(time.monotonic())
        return [2.0] * len(completions)

    @in_caller_thread
    def main_only(prompts, completions, **kwargs):
        threads["main_only"] = threading.current_thread()
        stamps["main"] = [time.monotonic()]
        time.sleep(1.0)
        stamps["main"].append(time.monotonic())
        return [4.0] * len(completions)

    specs = [RewardSpec("plain", slow_plain, 1.0, {}), RewardSpec("async", async_judge, 1.0, {}),
             RewardSpec("main", main_only, 1.0, {})]
    totals, components = RewardManager(specs).score(["p"], ["c"], {})
    assert list(components) == ["plain", "async", "main"] and totals == [7.0]
    assert threads["main_only"] is threading.current_thread()
    latest_start = max(s for s, _ in stamps.values())
    earliest_end = min(e for _, e in stamps.values())
    assert latest_start < earliest_end, stamps    # all three were running at one moment


def test_results_do_not_depend_on_finish_order():
    """Functions that finish in a random order give the same components (order and values) and totals every time."""
    import random

    def make(k, weight):
        def fn(prompts, completions, **kwargs):
            time.sleep(random.random() * 0.05)
            return [0.1 * (k + 1) * (i + 1) for i in range(len(completions))]
        return RewardSpec(f"f{k}", fn, weight, {})
    specs = [make(k, w) for k, w in enumerate([0.3, 1.7, -0.2, 0.9, 2.5])]
    runs = [RewardManager(specs).score(["p"] * 3, ["a", "b", "c"], {}) for _ in range(5)]
    assert all(run == runs[0] for run in runs)
    assert list(runs[0][1]) == ["f0", "f1", "f2", "f3", "f4"]
    # the total is summed in config order: w0*r0 + w1*r1 + ... (sample 0: r_k = 0.1 (k+1))
    expected0 = 0.0
    for k, w in enumerate([0.3, 1.7, -0.2, 0.9, 2.5]):
        expected0 += w * (0.1 * (k + 1))
    assert runs[0][0][0] == expected0


def test_each_function_gets_its_own_column_lists():
    def mutating(prompts, completions, answer, **kwargs):
        answer.clear()
        return [0.0] * len(completions)

    def reading(prompts, completions, answer, **kwargs):
        time.sleep(0.05)
        return [float(a) for a in answer]
    specs = [RewardSpec("mutating", mutating, 1.0, {}), RewardSpec("reading", reading, 1.0, {})]
    columns = {"answer": ["1", "2"]}
    _, components = RewardManager(specs).score(["p", "p"], ["x", "y"], columns)
    assert components["reading"] == [1.0, 2.0] and columns["answer"] == ["1", "2"]


def stuck(prompts, completions, **kwargs):
    time.sleep(30)
    return [0.0] * len(completions)


cancelled = threading.Event()


async def stuck_async(prompts, completions, **kwargs):
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return [0.0] * len(completions)


@pytest.mark.parametrize("name", ["test_concurrent_rewards:stuck", "test_concurrent_rewards:stuck_async"])
def test_timeout_names_the_function_and_the_key(name):
    cancelled.clear()
    manager = RewardManager.from_config([RewardConfig("format", 1.0),
                                         RewardConfig(name, 1.0, {"call_timeout_s": 0.3})])
    assert manager.specs[1].timeout_s == 0.3 and "call_timeout_s" not in manager.specs[1].kwargs
    start = time.monotonic()
    with pytest.raises(RewardError, match=rf"'{name}' did not finish within 0.3 s \(rewards.1.kwargs.call_timeout_s\)"):
        manager.score(["p"], ["12"], {})
    assert time.monotonic() - start < 5      # the step does not wait for the stuck function
    if name.endswith("async"):
        assert cancelled.wait(5), "the timed-out coroutine was not cancelled"


def test_call_timeout_s_is_checked_and_kept_out_of_the_function():
    assert split_call_options({"pattern": "x", "call_timeout_s": 2}, "rewards.0") == ({"pattern": "x"}, 2.0)
    assert split_call_options({}, "rewards.0")[1] == 300.0
    for bad in (0, -1, "soon", True):
        with pytest.raises(ConfigError, match=r"rewards.3.kwargs.call_timeout_s must be a number of seconds > 0"):
            split_call_options({"call_timeout_s": bad}, "rewards.3")
    # a reward class without **kwargs (the remote reward model) accepts it: the manager takes it out first
    from rlpost.config import load_config
    cfg = load_config(None, ['rewards=[{name: remote_reward_model, kwargs: {url: "http://127.0.0.1:9/score", '
                             'call_timeout_s: 45}}]'])
    from rlpost.resolve import load_checked, resolve_train
    assert resolve_train(cfg)["rewards"][0]["kwargs"]["call_timeout_s"] == 45.0
    with pytest.raises(ConfigError, match="rewards.0.kwargs.call_timeout_s"):
        load_checked(None, ["rewards=[{name: format, kwargs: {call_timeout_s: 0}}]"])
