"""reset(row) gets every dataset column; environments with ``async def`` reset/step/tools; errors still name the
environment, episode and turn; plain and async steps of a turn overlap instead of running one after another."""
import time

import helper_envs
import pytest

from rlpost.data import build_prompts
from rlpost.engines.base import SamplingParams
from rlpost.envs import EnvError
from rlpost.envs.testing import ScriptedEngine, rollout_once
from rlpost.models.tokenizer import build_char_tokenizer
from rlpost.types import Prompt
from rlpost.workflows.multi_turn import MultiTurnWorkflow

EOT = "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def run(tok, respond, env, prompts, n=1, **kw):
    wf = MultiTurnWorkflow(ScriptedEngine(tok, respond), tok, env=env, **kw)
    return wf.rollout(prompts, SamplingParams(n=n, max_tokens=256, seed=0))


def test_reset_receives_every_dataset_column_including_the_prompt(tok):
    helper_envs.SEEN_ROWS.clear()
    rows = [{"question": "2+2=", "answer": "4", "level": 3}]
    prompts = build_prompts(rows, tok, prompt_column="question", answer_column="answer")
    run(tok, lambda ctx, t: "4" + EOT, "helper_envs:RowEnv", prompts)
    (row,) = helper_envs.SEEN_ROWS
    assert row == {"question": "2+2=", "answer": "4", "level": 3, "messages": [{"role": "user", "content": "2+2="}],
                   "prompt_id": 0}
    helper_envs.SEEN_ROWS.clear()
    rollout_once("helper_envs:RowEnv", {"prompt": "1+1=", "answer": "2"}, ["2"])
    assert helper_envs.SEEN_ROWS[0]["prompt"] == "1+1=" and helper_envs.SEEN_ROWS[0]["answer"] == "2"


def test_async_reset_step_and_tools(tok):
    call = '<tool_call>{"name": "slow_add", "arguments": {"a": 3, "b": 4}}</tool_call>' + EOT
    prompts = [Prompt(i, "3+4?", [{"role": "user", "content": "3+4?"}], {"answer": "7"}) for i in range(2)]
    trajs = run(tok, lambda ctx, t: [call, "7" + EOT][t], "helper_envs:AsyncAddEnv", prompts, n=2)
    for traj in trajs:
        assert [m["content"] for m in traj.info["conversation"]] == ["3+4?", call[:-len(EOT)], "7", "7"]
        assert traj.info["env_reward"] == 1.0 and traj.info["tool_errors"] == 0


def test_async_tool_past_its_timeout_is_cancelled_and_answered(tok):
    call = '<tool_call>{"name": "hang", "arguments": {"seconds": 30}}</tool_call>' + EOT
    prompt = Prompt(0, "3+4?", [{"role": "user", "content": "3+4?"}], {"answer": "7"})
    start = time.monotonic()
    (traj,) = run(tok, lambda ctx, t: [call, "7" + EOT][t], "helper_envs:AsyncAddEnv", [prompt], tool_timeout_s=0.2)
    assert time.monotonic() - start < 5
    assert traj.info["conversation"][2]["content"] == "Error: hang timed out after 0.2 s"
    assert traj.info["tool_errors"] == 1 and traj.info["env_reward"] == 1.0


@pytest.mark.parametrize("env", ["helper_envs:AsyncAddEnv", "helper_envs:SlowPlainEnv"])
def test_steps_of_a_turn_overlap(tok, env):
    """8 episodes whose step takes 0.3 s each: run one after another they would take 2.4 s."""
    prompts = [Prompt(0, "x", [{"role": "user", "content": "x"}], {"answer": "7"})]
    start = time.monotonic()
    trajs = MultiTurnWorkflow(ScriptedEngine(tok, lambda ctx, t: "7" + EOT), tok, env=env,
                              env_kwargs={"delay": 0.3}).rollout(prompts, SamplingParams(n=8, max_tokens=8, seed=0))
    elapsed = time.monotonic() - start
    assert len(trajs) == 8 and all(t.info["env_reward"] == 1.0 for t in trajs)
    assert elapsed < 1.2, elapsed


def test_raising_async_step_and_reset_are_named_with_episode_and_turn(tok):
    ps = [Prompt(0, "ok", [{"role": "user", "content": "ok"}]), Prompt(1, "FAIL", [{"role": "user", "content": "FAIL"}])]
    with pytest.raises(EnvError, match=r"environment helper_envs:AsyncRaisingEnv \(step, episode 1, turn 1\) raised "
                                       r"KeyError: 'secret'"):
        run(tok, lambda ctx, t: "x" + EOT, "helper_envs:AsyncRaisingEnv", ps, max_turns=4)
    bad = [Prompt(0, "ok", [{"role": "user", "content": "ok"}]), Prompt(1, "BADRESET", [{"role": "user", "content": "BADRESET"}])]
    with pytest.raises(EnvError, match=r"helper_envs:AsyncRaisingEnv \(reset, episode 1, turn 0\) raised "
                                       r"ValueError: no such level"):
        run(tok, lambda ctx, t: "x" + EOT, "helper_envs:AsyncRaisingEnv", bad)


def test_raising_async_tool_is_an_answer(tok):
    call = '<tool_call>{"name": "slow_add", "arguments": {"a": "x"}}</tool_call>' + EOT
    prompt = Prompt(0, "3+4?", [{"role": "user", "content": "3+4?"}], {"answer": "7"})
    (traj,) = run(tok, lambda ctx, t: [call, "7" + EOT][t], "helper_envs:AsyncAddEnv", [prompt])
    assert traj.info["conversation"][2]["content"].startswith("Error: slow_add raised TypeError:")
