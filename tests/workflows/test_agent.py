"""The agent workflow (rlpost/workflows/agent.py): a user's ``async def rollout(client, row)`` with a real
``openai.AsyncOpenAI`` client on the hf engine and the shipped tiny calculator model; what is recorded on the
serving side is exactly what the engine sampled, and the learner's log-probs of it equal the sampler's."""
import copy
import json
import logging

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
