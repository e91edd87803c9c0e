"""schedule: per_episode: each episode advances on its own and the engine batches whichever episodes wait; a
slow tool in one episode does not stall the others (lock-step turns wait for it). On the real hf engine too."""
import threading
import time

import pytest

from rlpost.engines.base import SamplingParams
from rlpost.envs.testing import ScriptedEngine
from rlpost.models.tokenizer import build_char_tokenizer
from rlpost.types import Prompt
from rlpost.workflows.multi_turn import MultiTurnWorkflow

EOT = "<|im_end|>"
SLOW = '<tool_call>{"name": "sleepy", "arguments": {"seconds": 1.0}}</tool_call>' + EOT


class TimedEngine(ScriptedEngine):
    """ScriptedEngine that records (time, [(episode, turn)]) per call."""

    def __init__(self, tok, respond):
        super().__init__(tok, respond)
        self.log, self.seeds, self.lock = [], [], threading.Lock()

    def generate(self, requests, params):
        with self.lock:
            self.log.append((time.monotonic(), [(r.info["episode"], r.info["turn"]) for r in requests]))
            self.seeds.append(params.seed)
        return super().generate(requests, params)


def respond(ctx, turn):
    """Episode 0 (prompt "slow") calls the 1 s tool first; the others guess wrong twice, then right."""
    if ctx.count("slow") and turn == 0:
        return SLOW
    return ["1" + EOT, "2" + EOT, "7" + EOT][min(turn, 2)]


def play(schedule, cap=0, engine=None):
    tok = build_char_tokenizer()
    engine = engine or TimedEngine(tok, respond)
    wf = MultiTurnWorkflow(engine, tok, env="helper_envs:SlowToolEnv", schedule=schedule, max_turns=4,
                           tool_timeout_s=5.0, max_concurrent_episodes=cap)
    prompts = [Prompt(0, "slow", [{"role": "user", "content": "slow"}])] + \
        [Prompt(i, f"q{i}", [{"role": "user", "content": f"q{i}"}]) for i in range(1, 4)]
    start = time.monotonic()
    trajs = wf.rollout(prompts, SamplingParams(n=1, max_tokens=128, seed=0))
    return trajs, [(t - start, reqs) for t, reqs in engine.log], time.monotonic() - start


def test_a_slow_tool_does_not_stall_the_other_episodes():
    trajs, log, _ = play("per_episode")
    assert [t.info["env_reward"] for t in trajs] == [1.0] * 4
    assert [t.info["turns"] for t in trajs] == [3, 3, 3, 3]   # slow: tool, 2, 7; others: 1, 2, 7
    # the others played all three turns before the slow tool returned (at 1 s); the first call batched everyone
    assert sorted(log[0][1]) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    done_others = max(t for t, reqs in log if any(e != 0 for e, _ in reqs))
    slow_back = min(t for t, reqs in log if (0, 1) in reqs)
    assert done_others < 0.5 <= 1.0 <= slow_back
    # later calls batch whichever episodes are ready then (timing-dependent), each episode's turns in order
    for e in range(4):
        assert [turn for _, reqs in log for ep, turn in reqs if ep == e] == [0, 1, 2]


def test_lockstep_waits_for_the_slow_tool_and_gives_the_same_episodes():
    lock, log, _ = play("lockstep")
    assert all(t >= 1.0 for t, _ in log[1:])                 # every later turn waited for the 1 s tool
    per, _, _ = play("per_episode")
    for a, b in zip(lock, per):   # same scripted turns: same tokens, masks and rewards, whatever the schedule
        assert a.samples[0].completion_ids == b.samples[0].completion_ids
        assert a.samples[0].loss_mask == b.samples[0].loss_mask and a.turn_rewards == b.turn_rewards


def test_unknown_schedule_is_refused():
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="schedule must be one of lockstep, per_episode"):
        MultiTurnWorkflow(ScriptedEngine(tok, respond), tok, env="helper_envs:SlowToolEnv", schedule="eager")


def in_flight(log) -> int:
    """The most episodes between their first and last engine call at any call."""
    spans = {}
    for k, (_, reqs) in enumerate(log):
        for e, _ in reqs:
            first, _ = spans.get(e, (k, k))
            spans[e] = (first, k)
    return max(sum(a <= k <= b for a, b in spans.values()) for k in range(len(log)))


def test_per_episode_cap_refills_a_slot_the_moment_an_episode_ends():
    """Two slots: the slow episode holds one for its 1 s tool; the other slot plays episodes 1, 2, 3 one after
    another meanwhile (a lane starts the next row when its episode ends)."""
    trajs, log, _ = play("per_episode", cap=2)
    assert [t.info["env_reward"] for t in trajs] == [1.0] * 4 and [t.info["turns"] for t in trajs] == [3] * 4
    assert sorted(log[0][1]) == [(0, 0), (1, 0)]             # the first two rows start together
    assert in_flight(log) == 2
    first_call = {e: min(t for t, reqs in log if any(x == e for x, _ in reqs)) for e in range(4)}
    last_call = {e: max(t for t, reqs in log if any(x == e for x, _ in reqs)) for e in range(4)}
    assert last_call[1] <= first_call[2] and last_call[2] <= first_call[3]
    assert last_call[3] < 0.5 <= 1.0 <= last_call[0]         # 1, 2, 3 done before the slow tool returned


def test_lockstep_cap_plays_chunks_to_their_end_with_their_own_seeds():
    tok = build_char_tokenizer()
    engine = TimedEngine(tok, respond)
    trajs, log, _ = play("lockstep", cap=2, engine=engine)
    assert [sorted(e for e, _ in reqs) for _, reqs in log] == [[0, 1]] * 3 + [[2, 3]] * 3
    assert log[3][0] >= 1.0                                  # chunk 2 starts once chunk 1 (the slow tool) ended
    # seed of the call of turn t in chunk c: seed + 1_000_003 * (c * max_turns + t), max_turns 4
    assert engine.seeds == [1_000_003 * k for k in (0, 1, 2, 4, 5, 6)]
    uncapped, _, _ = play("lockstep")
    for a, b in zip(trajs, uncapped):   # scripted turns: the same episodes, capped or not
        assert a.samples[0].completion_ids == b.samples[0].completion_ids and a.turn_rewards == b.turn_rewards


def test_negative_cap_is_refused():
    tok = build_char_tokenizer()
    with pytest.raises(ValueError, match="max_concurrent_episodes must be >= 0"):
        MultiTurnWorkflow(ScriptedEngine(tok, respond), tok, env="helper_envs:SlowToolEnv", max_concurrent_episodes=-1)
