"""The agent workflow (rlpost/workflows/agent.py): a user's ``async def rollout(client, row)`` with a real
``openai.AsyncOpenAI`` client on the hf engine and the shipped tiny calculator model; what is recorded on the
serving side is exactly what the engine sampled, and the learner's log-probs of it equal the sampler's."""
import copy
import json
import logging
import math

import openai
import pytest
import torch

from rlpost.engines.base import SamplingParams
from rlpost.engines.hf import HFEngine
from rlpost.types import Prompt, Sample
from rlpost.workflows.agent import AgentError, AgentWorkflow, Request, episode_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingEngine:
    """The hf engine, with a copy of every call's requests, params and samples (before the workflow cuts them)."""

    def __init__(self, engine):
        self.engine, self.calls = engine, []
        self.max_model_len = None

    def generate(self, requests, params):
        out = self.engine.generate(requests, params)
        self.calls.append((copy.deepcopy(requests), params, copy.deepcopy(out)))
        return out


@pytest.fixture(scope="module")
def tiny():
    import rlpost.models.tiny as tiny
    from transformers import AutoModelForCausalLM, AutoTokenizer
    path = tiny.ensure_tiny("tiny:qwen2:calculator_tool")
    return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()


def prompts(k=2):
    return [Prompt(i, "", [{"role": "user", "content": f"{123 + i}+456="}], {"answer": str(579 + i)}, {"extra": i})
            for i in range(k)]


def test_rows_merge_a_request_that_extends_the_previous_one():
    """Hand-built: request 2's prompt = request 1's prompt + completion + [9, 9]: one row, mask 1 1 0 0 1;
    request 3 starts over (a row of its own)."""
    r1 = Request([1, 2], Sample([1, 2], [3, 4], [-0.5, -0.25]))
    r2 = Request([1, 2, 3, 4, 9, 9], Sample([], [5], [-1.0], finish_reason="length"))
    r3 = Request([7], Sample([7], [8], [-2.0]))
    rows = episode_rows([r1, r2, r3], merge_prefix=True)
    assert [(s.prompt_ids, s.completion_ids, s.loss_mask, s.logprobs, s.finish_reason) for s in rows] == [
        ([1, 2], [3, 4, 9, 9, 5], [1, 1, 0, 0, 1], [-0.5, -0.25, 0.0, 0.0, -1.0], "length"),
        ([7], [8], [1], [-2.0], "stop")]
    assert [s.completion_ids for s in episode_rows([r1, r2, r3], merge_prefix=False)] == [[3, 4], [5], [8]]


def test_agent_requests_are_recorded_as_sampled_and_the_learner_agrees(tiny, caplog):
    import agent_helpers
    tok, model = tiny
    engine = RecordingEngine(HFEngine(model, tok))
    wf = AgentWorkflow(engine, tok, rollout="agent_helpers:tool_agent", max_requests=4)
    agent_helpers.SEEN.clear()
    with caplog.at_level(logging.WARNING, logger="rlpost.workflows.agent"):
        trajs = wf.rollout(prompts(2), SamplingParams(n=2, temperature=1.0, max_tokens=24, seed=3))
    assert len(trajs) == 4 and [t.group_id for t in trajs] == [0, 0, 1, 1]
    # the openai client was really used: its parsed response types, with the served token ids
    seen = agent_helpers.SEEN
    assert len(seen) == 4 and all(isinstance(s["client"], openai.AsyncOpenAI) for s in seen)
    assert all(isinstance(s["replies"][0], openai.types.chat.ChatCompletion) for s in seen)
    assert all(isinstance(s["replies"][2], openai.types.Completion) for s in seen)
    assert seen[0]["row"]["extra"] == 0 and seen[0]["row"]["answer"] == "579"   # every dataset column
    # the rollout's settings win: temperature 1.0 (the agent sent 0.3), max_tokens capped at 24 (it asked 500)
    assert {p.temperature for _, p, _ in engine.calls} == {1.0} and max(p.max_tokens for _, p, _ in engine.calls) <= 24
    assert "the rollout's temperature=1.0 is used, not the 0.3" in caplog.text
    # what the engine sampled, per episode in request order
    sampled: dict[int, list] = {}
    for requests, _, samples in engine.calls:
        for r, s in zip(requests, samples):
            sampled.setdefault(r.info["episode"], []).append((r.info["request"], r.prompt_ids, s))
    for k, traj in enumerate(trajs):
        calls = [(p, s) for _, p, s in sorted(sampled[k], key=lambda x: x[0])]
        assert len(calls) == 3 == traj.info["requests"]
        # the replies carry exactly the sampled ids (vLLM's token_ids extension)
        replies = seen[[s["row"]["prompt_id"] for s in seen].index(traj.prompt.id)]["replies"]   # an episode of the row
        assert all(r.choices[0].model_extra["token_ids"] for r in replies)
        # trained ids = sampled ids (mask 1), the rows' prompts = the served prompts
        trained = [t for s in traj.samples for t, m in zip(s.completion_ids, s.loss_mask) if m]
        assert trained == [t for _, s in calls for t in s.completion_ids]
        assert traj.samples[0].prompt_ids == calls[0][0] and traj.samples[-1].prompt_ids == calls[2][0]
        assert len(traj.samples) == 2   # the second chat turn extends the first; the completion is its own row
        merged = traj.samples[0]
        assert merged.prompt_ids + merged.completion_ids == calls[1][0] + calls[1][1].completion_ids
    # learner log-probs of the recorded ids (temperature 1.0) equal the sampler's, on every trained token
    worst = 0.0
    for traj in trajs:
        for s in traj.samples:
            ids = torch.tensor([s.prompt_ids + s.completion_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            P = len(s.prompt_ids)
            learner = logp[P - 1:-1].gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0]
            mask = torch.tensor(s.loss_mask, dtype=torch.bool)
            worst = max(worst, (learner[mask] - torch.tensor(s.logprobs)[mask]).abs().max().item())
    assert worst < 1e-4, worst


def test_errors_in_the_users_rollout_name_the_function_episode_and_row(tiny):
    tok, model = tiny
    engine = HFEngine(model, tok)
    rows = [Prompt(i, "", [{"role": "user", "content": "1+1="}], {"answer": "2"}) for i in (5, 7)]
    params = SamplingParams(n=1, max_tokens=4, seed=0)
    with pytest.raises(AgentError, match=r"agent rollout agent_helpers:failing_agent \(episode 1, dataset row 7\) "
                                         r"raised ValueError: boom in my agent"):
        AgentWorkflow(engine, tok, rollout="agent_helpers:failing_agent").rollout(rows, params)
    with pytest.raises(AgentError, match=r"greedy_n_agent \(episode 0, dataset row 5\) raised BadRequestError.*n: "):
        AgentWorkflow(engine, tok, rollout="agent_helpers:greedy_n_agent").rollout(rows, params)
    with pytest.raises(AgentError, match=r"tools_agent .*raised BadRequestError.*tools: Extra inputs"):
        AgentWorkflow(engine, tok, rollout="agent_helpers:tools_agent").rollout(rows, params)
    with pytest.raises(AgentError, match="made more than rollout.workflow.max_requests=2"):
        AgentWorkflow(engine, tok, rollout="agent_helpers:tool_agent", max_requests=2).rollout(rows, params)
    with pytest.raises(AgentError, match=r"no_request_agent \(episode 0, dataset row 5\): made no request"):
        AgentWorkflow(engine, tok, rollout="agent_helpers:no_request_agent").rollout(rows, params)


@pytest.mark.parametrize("cap, most", [(2, 2), (0, 5)])
def test_max_concurrent_episodes_caps_the_episodes_in_flight(tiny, cap, most):
    import agent_helpers
    tok, model = tiny
    agent_helpers.IN_FLIGHT.update(now=0, most=0, done=0)
    wf = AgentWorkflow(HFEngine(model, tok), tok, rollout="agent_helpers:counting_agent", max_concurrent_episodes=cap)
    trajs = wf.rollout(prompts(5), SamplingParams(n=1, max_tokens=2, seed=0))
    assert len(trajs) == 5 and agent_helpers.IN_FLIGHT == {"now": 0, "most": most, "done": 5}


def test_validate_names_the_rollout_key_and_the_agent_composes(capsys):
    from rlpost.cli import main
    config = "configs/tiny/arith_agent_calculator.yaml"
    assert main(["validate", config, "rollout.workflow.rollout=agent_helpers:not_async"]) == 2
    assert "rollout.workflow.rollout" in capsys.readouterr().err
    for overrides in (["rollout.async_level=1"], ["rollout.engine=vllm", "rollout.max_model_len=512"],
                      ["rollout.engine=vllm_server", "rollout.server_urls=[http://127.0.0.1:9]", "rollout.async_level=2"],
                      ["model.lora.r=8"]):
        assert main(["validate", config, *overrides]) == 0, (overrides, capsys.readouterr().err)
    for backend in (["distributed.backend=ddp"], ["distributed.backend=fsdp2"]):   # every rank runs its own episodes
        assert main(["validate", config, "rollout.async_level=1", *backend, "--world-size", "2"]) == 0, backend


@pytest.mark.slow
def test_agent_config_trains_asynchronously_on_the_served_ids(tmp_path):
    """The shipped config one step off (async_level 1), 2 steps of 2 x 4 episodes: step 1 (generated on the
    learner's weights) has learner = sampler log-probs; metrics and completions come through."""
    from rlpost.cli import main
    out = tmp_path / "agent"
    assert main(["train", "configs/tiny/arith_agent_calculator.yaml", f"trainer.output_dir={out}", "trainer.max_steps=2",
                 "rollout.prompts_per_step=2", "rollout.num_generations=4", "data.num_train=16", "data.num_eval=4",
                 "trainer.eval_steps=0", "trainer.progress_bar=false", "trainer.save_steps=0", "trainer.report_to=[]",
                 "rollout.async_level=1"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step1 = next(r for r in rows if r["step"] == 1)
    assert step1["rollout/logprob_diff"] < 1e-4 and step1["agent/requests_per_episode"] >= 1
    assert step1["agent/rows_per_episode"] == 1.0 and "reward/agent_reward/mean" in step1


@pytest.mark.parametrize("template", ["qwen2_5", None])
def test_openai_tool_calling_agent_code_runs_unchanged(template):
    """``tool_parser: hermes``: the tools reach the chat template, a reply's Hermes call comes back as OpenAI
    ``tool_calls`` (content: the text before the call when the template writes tool_calls, qwen2_5; the whole text
    when it does not, the char tokenizer's own template), the agent's tool message goes back; the trained tokens
    are exactly the sampled ones (one merged row when the re-render extends the first request, else a row each)."""
    import agent_helpers
    from pathlib import Path

    from rlpost.envs.testing import ScriptedEngine
    from rlpost.models.tokenizer import build_char_tokenizer
    tok = build_char_tokenizer()
    if template:
        tok.chat_template = (Path(__file__).parents[1] / "envs" / "chat_templates" / f"{template}.jinja").read_text()
    call = 'Let me compute.<tool_call>\n{"name": "calculator", "arguments": {"expression": "12+34"}}\n</tool_call>'
    engine = ScriptedEngine(tok, lambda ctx, turn: (call if "<tool_response>" not in ctx and "\n46<" not in ctx
                                                     else "It is 46.") + "<|im_end|>")
    wf = AgentWorkflow(engine, tok, rollout="agent_helpers:openai_tools_agent", tool_parser="hermes")
    agent_helpers.SEEN.clear()
    (traj,) = wf.rollout([Prompt(0, "", [{"role": "user", "content": "12+34="}], {"answer": "46"})],
                         SamplingParams(n=1, max_tokens=200, seed=0))
    first, second = (s["reply"].choices[0] for s in agent_helpers.SEEN)
    assert first.finish_reason == "tool_calls" and second.finish_reason == "stop"
    assert first.message.tool_calls[0].function.name == "calculator" and first.message.tool_calls[0].id == "call_0_0_0"
    assert json.loads(first.message.tool_calls[0].function.arguments) == {"expression": "12+34"}
    assert first.message.content == ("Let me compute." if template else call)
    assert second.message.content == "It is 46." and traj.reward == 0.0 and traj.info["agent_reward"] == 1.0
    prompt1, prompt2 = (p for (p,) in engine.requests)
    assert '"name": "calculator"' in tok.decode(prompt1) or not template   # the tools went to the template
    sampled = [t for s in traj.samples for t, m in zip(s.completion_ids, s.loss_mask) if m]
    assert sampled == tok.encode(call + "<|im_end|>" + "It is 46.<|im_end|>")
    if template:   # qwen2_5 re-renders the call as "\n<tool_call>\n{...}": not the sampled text, so a row each
        assert [s.prompt_ids for s in traj.samples] == [prompt1, prompt2]
    else:          # the whole text re-rendered: the second prompt extends the first, one row
        (row,) = traj.samples
        assert row.prompt_ids == prompt1 and row.prompt_ids + row.completion_ids == prompt2 + tok.encode("It is 46.<|im_end|>")
        assert "46" in tok.decode([t for t, m in zip(row.completion_ids, row.loss_mask) if not m])


def test_an_engine_error_is_named_with_the_episode():
    class Broken:
        def generate(self, requests, params):
            raise RuntimeError("engine fell over")
    from rlpost.models.tokenizer import build_char_tokenizer
    wf = AgentWorkflow(Broken(), build_char_tokenizer(), rollout="agent_helpers:failing_agent")
    with pytest.raises(AgentError, match=r"failing_agent \(episode 0, dataset row 5\) raised .*the engine raised "
                                         r"RuntimeError: engine fell over"):
        wf.rollout([Prompt(5, "", [{"role": "user", "content": "1+1="}], {"answer": "2"})], SamplingParams(n=1))


# ---------------------------------------------------------------------------------------------- per-turn credit

TURN_EPISODES = [   # one prompt group of three episodes: (tag, what the rollout returns)
    ("a", {"reward": 1.0, "turn_rewards": [0.0, 0.5, 0.0]}),   # r~ = [0, .5, .5]: R beyond Σr at the last turn
    ("a", 0.0),                                                 # no turn rewards: r~ = [0, 0, 0] (R at the end)
    ("b", {"reward": 1.0, "turn_rewards": {1: 1.0}}),           # a dict {request: reward}: r~ = [0, 1, 0]
]


def turn_rollout(tiny, merge_prefix, episodes=TURN_EPISODES, prompt_id=0):
    """Greedy episodes of ``agent_helpers:turn_agent``, all of one prompt group; rewards as ``agent_reward`` sets
    them. Greedy: episodes with the same tag send the same three prompts (the same states)."""
    tok, model = tiny
    wf = AgentWorkflow(HFEngine(model, tok), tok, rollout="agent_helpers:turn_agent", merge_prefix=merge_prefix)
    rows = [Prompt(prompt_id, "", [{"role": "user", "content": "12+34="}], {"tag": tag, "returns": out})
            for tag, out in episodes]
    trajs = wf.rollout(rows, SamplingParams(n=1, temperature=0.0, max_tokens=8, seed=0))
    for t in trajs:
        t.reward = t.info["agent_reward"]
    return trajs


def agent_advantages(trajs, advantage: str):
    """The trainer's path: collate, then rlpost/advantage_step.py with ``algo.advantage``."""
    from rlpost.advantage_step import AdvantageStep
    from rlpost.batch import collate
    from rlpost.config import load_config
    from rlpost.distributed import Runtime
    from rlpost.learner import FixedLogprobs
    batch = collate(trajs, pad_id=0)
    step = AdvantageStep(load_config(None, [f"algo.advantage={advantage}"]).algo, Runtime())
    return batch, step(batch, FixedLogprobs())[0]


def expected_per_token(trajs, batch, turn_adv):
    """[B,T]: turn_adv[episode][k] on each row's sampled tokens of request k, 0 on the prompt tokens in between."""
    out = torch.zeros_like(batch.response_mask)
    rows = [(i, s) for i, t in enumerate(trajs) for s in t.samples]
    for b, (i, s) in enumerate(rows):
        for t, (k, m) in enumerate(zip(s.turn_index, s.loss_mask)):
            out[b, t] = turn_adv[i][k] if m else 0.0
            assert (k >= 0) == bool(m)   # sampled tokens carry their request, the tokens in between -1
    return out


def test_per_turn_credit_of_agent_episodes_by_hand(tiny):
    """Request j = turn j. turn_return (γ 0.5, group std) and gigpo (γ 0.5, ω 1, no scaling) equal the hand
    computation on every token, whether an episode is one merged row or a row per request; grpo gives every
    sampled token its episode's advantage."""
    merged, unmerged = turn_rollout(tiny, True), turn_rollout(tiny, False)
    assert [len(t.samples) for t in merged] == [1] * 3 and [len(t.samples) for t in unmerged] == [3] * 3
    for m, u in zip(merged, unmerged):   # greedy: the same episodes; the merged row's tokens of turn k = row k's
        (row,) = m.samples
        for k, s in enumerate(u.samples):
            assert s.turn_index == [k] * len(s.completion_ids)
            assert [t for t, j in zip(row.completion_ids, row.turn_index) if j == k] == s.completion_ids
        assert [j for j, mask in zip(row.turn_index, row.loss_mask) if not mask] == [-1] * row.loss_mask.count(0)
        assert m.turn_rewards == u.turn_rewards and m.turn_states == u.turn_states
    assert [t.turn_rewards for t in merged] == [[0.0, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    # the state of a turn = its request's prompt ids: turn 0 shared by all; turns 1, 2 by the two "a" episodes
    s0, s1, s2 = (t.turn_states for t in merged)
    assert s0 == s1 and s0[0] == s2[0] and s2[1] != s0[1] and s2[2] != s0[2] and len(set(s0)) == 3
    # r~ = [0, .5, .5], [0, 0, 0], [0, 1, 0]; G (γ 0.5) = [.375, .75, .5], [0, 0, 0], [.5, 1, 0]
    G = [[0.375, 0.75, 0.5], [0.0, 0.0, 0.0], [0.5, 1.0, 0.0]]
    b = (0.375 + 0.0 + 0.5) / 3                                   # turn_return: the group mean and std of G_i0
    std = math.sqrt(((0.375 - b) ** 2 + b ** 2 + (0.5 - b) ** 2) / 2)   # over episodes (not rows)
    # gigpo: A^E = R - 2/3; A^S: turn 0 over the 3 episodes (mean b), turns 1 and 2 over the two "a" episodes
    # (means .375 and .25), episode "b"'s turns 1 and 2 alone (0)
    e = [1 / 3, -2 / 3, 1 / 3]
    gigpo = [[e[0] + 0.375 - b, e[0] + 0.75 - 0.375, e[0] + 0.5 - 0.25],
             [e[1] + 0.0 - b, e[1] + 0.0 - 0.375, e[1] + 0.0 - 0.25],
             [e[2] + 0.5 - b, e[2], e[2]]]
    grpo = [[(r - 2 / 3) / (3 ** -0.5 + 1e-4)] * 3 for r in (1.0, 0.0, 1.0)]   # (R - mean) / (std + eps), the default
    for trajs in (merged, unmerged):
        batch, adv = agent_advantages(trajs, "{name: turn_return, gamma: 0.5, scale_rewards: group}")
        torch.testing.assert_close(adv, expected_per_token(trajs, batch, [[(g - b) / (std + 1e-4) for g in row]
                                                                          for row in G]))
        batch, adv = agent_advantages(trajs, "{name: gigpo, gamma: 0.5, omega: 1.0, scale_rewards: none}")
        torch.testing.assert_close(adv, expected_per_token(trajs, batch, gigpo))
        batch, adv = agent_advantages(trajs, "grpo")
        torch.testing.assert_close(adv, expected_per_token(trajs, batch, grpo))


@pytest.mark.parametrize("returns, message", [
    ({"reward": 1.0, "turn_rewards": [0.0, 1.0]}, r"turn_rewards must hold one reward per model request \(the "
                                                  r"episode made 3\)"),
    ({"reward": 1.0, "turn_rewards": {3: 1.0}}, r"turn_rewards keys must be request indices 0\.\.2"),
    ({"reward": 1.0, "turn_rewards": [0.0, "1", 0.0]}, "turn_rewards must be finite numbers"),
    ({"reward": 1.0, "turn_rewards": [0.0, float("nan"), 0.0]}, "turn_rewards must be finite numbers"),
    ({"turn_rewards": [0.0, 0.0, 1.0]}, r"a returned dict has the keys reward \(required\)"),
    ({"reward": 1.0, "turn_reward": [0.0, 0.0, 1.0]}, r"a returned dict has .*got \['reward', 'turn_reward'\]"),
])
def test_bad_turn_rewards_name_the_function_episode_and_row(tiny, returns, message):
    with pytest.raises(AgentError, match=r"agent rollout agent_helpers:turn_agent \(episode 0, dataset row 5\): "
                                         + message):
        turn_rollout(tiny, True, [("a", returns)], prompt_id=5)


def test_a_continuous_batching_engine_gets_each_request_as_its_own_call(tiny):
    """engine.continuous_batching (vllm, vllm_server): each request is its own engine call, sent from a thread pool
    the moment it is made, so several are in flight at once; the seed is the request's own (stable_seed)."""
    import threading
    tok, model = tiny

    class Continuous(RecordingEngine):
        continuous_batching = True

        def __init__(self, engine):
            super().__init__(engine)
            self.lock, self.in_flight, self.most = threading.Lock(), 0, 0

        def generate(self, requests, params):
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            try:
                with self.serial:   # the hf engine itself runs one call at a time
                    return super().generate(requests, params)
            finally:
                with self.lock:
                    self.in_flight -= 1

    engine = Continuous(HFEngine(model, tok))
    engine.serial = threading.Lock()
    trajs = AgentWorkflow(engine, tok, rollout="agent_helpers:tool_agent", max_requests=4).rollout(
        prompts(2), SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=3))
    assert len(trajs) == 4 and len(engine.calls) == 12 and engine.most > 1
    assert all(len(reqs) == 1 and reqs[0].seed is not None for reqs, _, _ in engine.calls)
    seeds = {(r[0].info["episode"], r[0].info["request"]): r[0].seed for r, _, _ in engine.calls}
    assert len(set(seeds.values())) == 12
