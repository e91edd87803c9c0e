"""A²FM: route tags, formats, forced/adaptive rollouts with tools, APO reward and mixed-group advantages."""
import pytest

from rlpost.engines.base import SamplingParams
from rlpost.types import Prompt, Trajectory
from rlpost.workflows import WORKFLOWS
from rlpost.workflows.a2fm import (A2FMParams, A2FMWorkflow, a2fm_metrics, agent_tools, apo_advantages,
                                   apo_cost_metrics, apo_easiness, apo_reward, check_format, exact_match,
                                   forced_prefix, parse_route, route_tag, score_apo_batch, score_apo_group,
                                   tool_response)

from scripted_engine import CharTokenizer, ScriptedEngine


SP = SamplingParams(temperature=1.0, max_tokens=10_000)
TOOL_CALL = '<plan>\n## Goal 1: compute\n</plan>\nLet me run it.\n<tool_call>\n{"id": 1, "name": "python", ' \
            '"arguments": {"code": "print(6 * 7)"}}\n</tool_call>'


def policy(ctx: str) -> str:
    """A scripted policy. The context is prompt + the assistant turn so far."""
    q = ctx.split("<|assistant|>")[0]
    turn = ctx.split("<|assistant|>", 1)[1]
    if "toolcalling_agent\n</classification>" in turn:
        if "LOOP" in q:  # never answers: calls the tool again and again
            return TOOL_CALL.split("</plan>")[1] if "</plan>" in turn else TOOL_CALL
        if "<tool_response>" in turn:
            return "\nThe tool says 42.\n<answer>42</answer>"
        if "BADJSON" in q:
            return "<plan>p</plan>\n<tool_call>{name: python}</tool_call>"
        return TOOL_CALL
    if "reasoning_agent\n</classification>" in turn:
        return "<reasoning>6 times 7 is 42.</reasoning>\n<answer>42</answer>"
    if "default_agent\n</classification>" in turn:
        return "<answer>41</answer>"  # the cheap path is wrong on this question
    if "INVALID" in q:
        return "I pick.\n<classification>\nmagic_agent\n</classification>\n<answer>42</answer>"
    return "Easy arithmetic.\n" + route_tag("instant") + "<answer>42</answer>"  # adaptive: routes itself to instant


def prompt(i, q="What is 6 times 7?", **cols):
    return Prompt(i, f"<|user|>{q}<|assistant|>", columns={"answer": "42", **cols})


# ----------------------------------------------------------------------------- formats

def test_route_tags_and_formats():
    assert route_tag("instant") == "<classification>\ndefault_agent\n</classification>\n"
    assert route_tag("reasoning") == "<classification>\nreasoning_agent\n</classification>\n"
    assert route_tag("agentic") == "<classification>\ntoolcalling_agent\n</classification>\n"
    assert parse_route("x <classification>\ntoolcalling_agent\n</classification>") == "agentic"
    assert parse_route("<classification>other</classification>") is None
    inst, reas = forced_prefix("instant"), forced_prefix("reasoning")
    assert check_format("instant", inst + "<answer>4</answer>")
    assert not check_format("instant", inst + "<reasoning>r</reasoning><answer>4</answer>")
    assert check_format("reasoning", reas + "<reasoning>r</reasoning>\n<answer>4</answer>")
    assert not check_format("reasoning", reas + "<answer>4</answer>")
    assert not check_format("reasoning", reas + "<reasoning>r</reasoning><tool_call>{}</tool_call><answer>4</answer>")
    ag = forced_prefix("agentic") + "<plan>p</plan>\nthink<tool_call>{}</tool_call>\n<tool_response>\nr\n</tool_response>\n"
    assert check_format("agentic", ag + "<summary>s</summary><answer>4</answer>")
    assert not check_format("agentic", ag + "<answer>4</answer><answer>5</answer>")
    assert not check_format("agentic", ag + "<tool_call>{}</tool_call><answer>4</answer>")   # call without response
    assert not check_format("agentic", ag.replace("<plan>p</plan>", "") + "<answer>4</answer>")  # no plan
    assert not check_format("agentic", ag + "<answer>4")                                       # unclosed
    assert not check_format(None, "<answer>4</answer>")
    assert exact_match("\\boxed{42}", 42) == 1.0 and exact_match("42.0", "42") == 1.0 and exact_match("41", "42") == 0.0


# ----------------------------------------------------------------------------- APO math

def test_agentic_body_without_tags_is_a_format_failure_not_a_crash():
    # a random model's turn: a valid agentic route tag followed by free text only
    assert not check_format("agentic", "x\n" + route_tag("agentic") + "no tags at all")
    assert not check_format("agentic", "x\n" + route_tag("agentic") + "   ")


def test_apo_reward_hand_computed():
    # p = 1/2 (forced instant: one of two right), alpha = 2:  r_adaptive = 1 - 0.5**2 = 0.75
    assert apo_easiness([1.0, 0.0]) == 0.5 and apo_easiness([]) == 0.0
    assert apo_reward(1, 1, "reasoning", adaptive=True, p=0.5) == 0.75
    assert apo_reward(1, 1, "agentic", adaptive=True, p=0.5) == 0.75
    assert apo_reward(1, 1, "instant", adaptive=True, p=0.5) == 1.0     # instant route is never discounted
    assert apo_reward(1, 1, "reasoning", adaptive=False, p=0.5) == 1.0  # forced rollouts are never discounted
    assert apo_reward(0, 1, "instant", adaptive=True, p=0.5) == 0.0
    assert apo_reward(1, 0, "agentic", adaptive=True, p=0.0) == 0.0    # format failure
    assert apo_reward(1, 1, "agentic", adaptive=True, p=1.0, alpha=3.0) == 0.0


def test_mixed_group_advantages_match_the_paper_figure():
    # A²FM Fig. 3: forced agentic [1, 0], reasoning [0, 0], instant [0, 1]; adaptive [0.8, 0.8, 1].
    # mean = 4.6 / 9 = 0.51111
    # population var = (3 * 0.48889**2 + 4 * 0.51111**2 + 2 * 0.28889**2) / 9
    #                = (0.71704 + 1.04494 + 0.16691) / 9 = 0.21432,  std = 0.46295
    # A(1) = 0.48889 / 0.46295 = 1.0560;  A(0) = -0.51111 / 0.46295 = -1.1040;  A(0.8) = 0.28889 / 0.46295 = 0.6240
    adv = apo_advantages([1, 0, 0, 0, 0, 1, 0.8, 0.8, 1], eps=0.0)
    assert adv == pytest.approx([1.0560, -1.1040, -1.1040, -1.1040, -1.1040, 1.0560, 0.6240, 0.6240, 1.0560], abs=1e-4)
    assert apo_advantages([1, 1, 1]) == [0.0, 0.0, 0.0]


def _traj(mode, forced, answer, fmt=True):
    return Trajectory(Prompt(0, "q", columns={"answer": "42"}), 0, [], answer,
                      info={"mode": mode, "forced": forced, "format_ok": fmt})


def test_score_group_forced_and_adaptive_normalised_together():
    group = [_traj("instant", True, "42"), _traj("instant", True, "41"),       # p = 1/2
             _traj("reasoning", True, "42"), _traj("agentic", True, "42", fmt=False),
             _traj("reasoning", False, "42"), _traj("instant", False, "42"), _traj(None, False, "42", fmt=False)]
    rewards = score_apo_group(group)
    # forced: 1, 0, 1, 0 (format);  adaptive: reasoning 1 * 0.75, instant 1, invalid route 0
    assert rewards == [1.0, 0.0, 1.0, 0.0, 0.75, 1.0, 0.0]
    assert group[4].reward_components == {"acc": 1.0, "format": 1.0, "easiness": 0.5, "adaptive_factor": 0.75}
    # one group of 7: mean = 3.75 / 7 = 0.535714; var = (3 * 0.464286**2 + 3 * 0.535714**2 + 0.214286**2) / 7
    #   = (0.646684 + 0.860969 + 0.045918) / 7 = 0.221939; std = 0.471104
    adv = apo_advantages(rewards, eps=0.0)
    assert adv == pytest.approx([0.98553, -1.13715, 0.98553, -1.13715, 0.45486, 0.98553, -1.13715], abs=1e-4)


def test_apo_cost_factor_is_logged_and_alpha_acts_only_on_partial_easiness():
    """Group 0: forced instant 1, 0 -> p = 1/2 (rho = 2); adaptive reasoning and agentic rollouts get 1 - p^alpha:
    alpha 2 -> 0.75, alpha 3 -> 0.875. Group 1: one forced instant rollout, right -> p = 1 -> factor 0 whatever
    alpha (rho = 1: p is 0 or 1). Adaptive instant rollouts and forced ones carry no cost factor."""
    def groups():
        g0 = [_traj("instant", True, "42"), _traj("instant", True, "41"), _traj("reasoning", False, "42"),
              _traj("agentic", False, "42"), _traj("instant", False, "42")]
        g1 = [_traj("instant", True, "42"), _traj("reasoning", False, "42")]
        for t in g1:
            t.group_id = 1
        return g0, g1
    for alpha, factor in ((2.0, 0.75), (3.0, 0.875)):
        g0, g1 = groups()
        score_apo_group(g0, alpha=alpha)
        score_apo_group(g1, alpha=alpha)
        m = apo_cost_metrics(g0 + g1)
        assert m["a2fm/apo_cost_factor"] == pytest.approx((2 * factor + 0.0) / 3)
        assert m["a2fm/apo_cost_factor_partial"] == pytest.approx(2 / 3)       # the p = 1 group's rollout: 0
        assert m["a2fm/apo_easiness"] == pytest.approx((0.5 + 1.0) / 2)
        assert a2fm_metrics(g0 + g1)["a2fm/apo_cost_factor"] == m["a2fm/apo_cost_factor"]
    g0, _ = groups()
    assert "a2fm/apo_cost_factor" not in a2fm_metrics(g0)                      # unscored: nothing to report
    assert apo_cost_metrics([]) == {}


# ----------------------------------------------------------------------------- rollouts

def test_forced_prefix_is_masked_and_tool_output_is_masked():
    engine = ScriptedEngine(policy)
    wf = A2FMWorkflow(engine, CharTokenizer(), rho=1, gamma=1)
    trajs = wf.rollout([prompt(5)], SP)
    assert [(t.info["mode"], t.info["forced"]) for t in trajs] == [
        ("instant", True), ("reasoning", True), ("agentic", True), ("instant", False)]
    assert {t.group_id for t in trajs} == {5}
    inst, reas, agent, adapt = trajs

    # forced instant: completion = injected prefix (mask 0, logprob 0) + sampled answer (mask 1)
    pre = forced_prefix("instant")
    s = inst.samples[0]
    assert s.text == pre + "<answer>41</answer>"
    assert s.loss_mask == [0] * len(pre) + [1] * len("<answer>41</answer>")
    assert s.logprobs[:len(pre)] == [0.0] * len(pre) and inst.final_text == "41" and inst.info["format_ok"]

    # forced agentic: prefix 0 | plan + tool call 1 | tool response 0 | answer 1
    s = agent.samples[0]
    pre, seg2 = forced_prefix("agentic"), "\nThe tool says 42.\n<answer>42</answer>"
    response = s.text[len(pre) + len(TOOL_CALL):-len(seg2)]
    assert response == "\n<tool_response>\nResults for tool call 1 (python):\n42\n</tool_response>\n"
    assert s.loss_mask == [0] * len(pre) + [1] * len(TOOL_CALL) + [0] * len(response) + [1] * len(seg2)
    assert len(s.completion_ids) == len(s.logprobs) == len(s.loss_mask)
    assert agent.info["turns"] == 1 and agent.info["tool_calls"] == 1 and agent.info["format_ok"]
    assert agent.final_text == "42" and agent.info["engine_calls"] == 2

    # adaptive: the model wrote its own route, so every token is trained
    assert adapt.samples[0].loss_mask == [1] * len(adapt.samples[0].completion_ids) and adapt.info["format_ok"]
    # one engine call per round for all rollouts: round 1 (4 rollouts), round 2 (the agentic one after its tool)
    assert [len(c) for c in engine.calls] == [4, 1]


def test_adaptive_rollouts_score_and_metrics():
    engine = ScriptedEngine(policy)
    wf = A2FMWorkflow(engine, CharTokenizer(), rho=1, gamma=2)
    trajs = wf.rollout([prompt(0), prompt(1, "INVALID question")], SP)
    rewards = score_apo_batch(trajs)
    # query 0: forced instant wrong (p = 0) -> forced [0, 1, 1], adaptive instant right [1, 1]
    # query 1: same forced; adaptive routes to an unknown label -> format 0 -> [0, 0]
    assert rewards == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    m = a2fm_metrics(trajs)
    assert m["a2fm/non_instant_rate"] == 0.0 and m["a2fm/invalid_route_rate"] == 0.5
    assert m["a2fm/acc/instant"] == pytest.approx(2 / 4) and m["a2fm/acc/reasoning"] == 1.0
    assert m["a2fm/acc/adaptive"] == 1.0   # the invalid-route rollouts still answered 42 (acc), only format fails
    # tokens per correct over adaptive rollouts: 2 correct (acc * format) of 4
    out_tokens = sum(t.info["output_tokens"] for t in trajs if not t.info["forced"])
    assert m["a2fm/tokens_per_correct"] == out_tokens / 2
    cost = sum(t.info["input_tokens"] + t.info["output_tokens"] for t in trajs if not t.info["forced"]) / 1e6
    assert m["a2fm/cost_per_correct"] == pytest.approx(cost / 2)


def test_tool_loop_limits_and_errors_never_crash():
    engine = ScriptedEngine(policy)
    wf = A2FMWorkflow(engine, CharTokenizer(), max_turns=2)
    loop, bad = wf.run([(prompt(0, "LOOP"), "agentic"), (prompt(1, "BADJSON"), "agentic")], SP)
    assert loop.info["turns"] == 2 and loop.final_text == "" and not loop.info["format_ok"]
    assert loop.samples[0].text.count("<tool_response>") == 2 and loop.info["engine_calls"] == 3
    assert "Error: the tool call could not be parsed" in bad.info["text"] and bad.final_text == "42"
    # tools only run in agentic mode: a reasoning rollout that emits a tool call just ends
    eng2 = ScriptedEngine(lambda c: "<reasoning>r</reasoning><tool_call>{}</tool_call>")
    [t] = A2FMWorkflow(eng2, CharTokenizer()).run([(prompt(2), "reasoning")], SP)
    assert t.info["turns"] == 0 and not t.info["format_ok"] and len(eng2.calls) == 1


def test_tool_response_runs_the_envs_tools_with_their_error_strings():
    tools = agent_tools(corpus=["The code of Lund is 17."], timeout_s=1)
    assert list(tools) == ["python", "calculator", "search"]
    both = ('<tool_call>\n{"name": "calculator", "arguments": {"expression": "123*45"}}\n'
            "{'name': 'web_search', 'arguments': {'query': 'code of Lund'}}\n</tool_call>")
    assert tool_response(both, tools) == ("\n<tool_response>\nResults for tool call 1 (calculator):\n5535\n\n"
                                          "Results for tool call 2 (search):\n[1] document 0\nThe code of Lund is 17."
                                          "\n</tool_response>\n", 2)
    errors = ('<tool_call>{"name": "calculator", "arguments": {"expression": "1/"}}\n'
              '{"name": "code_execute", "arguments": {"code": "print(1/0)"}}\n{"name": "shell", "arguments": {}}'
              '</tool_call>')
    out, n = tool_response(errors, tools)
    assert n == 3 and out.startswith("\n<tool_response>\nResults for tool call 1 (calculator):\n"
                                     "Error: calculator raised ValueError: not an arithmetic expression: invalid syntax"
                                     "\n\nResults for tool call 2 (python):\nstderr:\nTraceback")
    assert "ZeroDivisionError: division by zero\n\nResults for tool call 3 (shell):\n" \
           "Error: unknown tool 'shell'; available: python, calculator, search\n</tool_response>\n" in out
    unread = ("\n<tool_response>\nError: the tool call could not be parsed ({}). "
              'Write <tool_call>{{"name": "<tool>", "arguments": {{...}}}}</tool_call>.\n</tool_response>\n')
    assert tool_response("<tool_call>{oops}</tool_call>", tools) == (
        unread.format("could not parse '{oops}' as JSON"), 1)
    assert tool_response("oops</tool_call>", tools) == (unread.format("no <tool_call> block found"), 1)
    long = '<tool_call>{"name": "python", "arguments": {"code": "print(\'x\' * 50)"}}</tool_call>'
    assert tool_response(long, tools, max_output_chars=10)[0] == (
        "\n<tool_response>\nResults for tool call 1 (python):\nxxxxxxxxxx\n... [truncated to 10 characters]"
        "\n</tool_response>\n")
    with pytest.raises(ValueError, match="tools: unknown tool 'browser'; available: python, calculator, search"):
        A2FMParams(tools=("python", "browser"))


def test_search_tool_uses_task_corpus_and_registry():
    corpus = [{"title": "Answer", "text": "The answer to the ultimate question is 42."}, "Bananas are yellow."]

    def respond(ctx):
        if "<tool_response>" in ctx:
            return "<answer>42</answer>"
        return '<plan>p</plan><tool_call>{"name": "web_search", "arguments": {"query": "ultimate answer"}}</tool_call>'

    entry = WORKFLOWS.entry("a2fm")
    assert entry.fn is A2FMWorkflow and entry.params is A2FMParams
    wf = entry.fn(ScriptedEngine(respond), CharTokenizer(), **vars(A2FMParams()))
    [t] = wf.run([(prompt(0, corpus=corpus), "agentic")], SP)
    assert "[1] Answer\nThe answer to the ultimate question is 42." in t.info["text"]
    response = "\n<tool_response>" + t.info["text"].split("<tool_response>")[1].split("</tool_response>")[0] \
        + "</tool_response>\n"
    assert t.samples[0].loss_mask.count(0) == len(forced_prefix("agentic")) + len(response)
