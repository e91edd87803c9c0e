"""multi_turn over a token-exact scripted engine: trained ids are the sampled ids, observations are masked,
limits end episodes, malformed and failing tool calls are answered, a raising environment is named."""
import pytest

from rlpost.batch import collate
from rlpost.engines.base import SamplingParams
from rlpost.envs import EnvError
from rlpost.envs.testing import ScriptedEngine, rollout_once
from rlpost.models.tokenizer import build_char_tokenizer
from rlpost.types import Prompt
from rlpost.workflows.multi_turn import MultiTurnWorkflow

CALC = "rlpost.envs.examples:CalculatorEnv"
GUESS = "rlpost.envs.examples:GuessNumberEnv"
EOT = "<|im_end|>"


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def enc(tok, text):
    return tok.encode(text, add_special_tokens=False)


def prompt(text, answer, i=0):
    return Prompt(id=i, text=text, messages=[{"role": "user", "content": text}], columns={"answer": answer})


def run(tok, respond, env, prompts, n=1, max_tokens=256, **kw):
    engine = ScriptedEngine(tok, respond)
    wf = MultiTurnWorkflow(engine, tok, env=env, **kw)
    return wf, engine, wf.rollout(prompts, SamplingParams(n=n, max_tokens=max_tokens, seed=0))


def test_tool_turn_is_token_in_token_out_with_masked_observation(tok):
    call = '<tool_call>{"name": "calculator", "arguments": {"expression": "12*34"}}</tool_call>' + EOT
    wf, engine, (traj,) = run(tok, lambda ctx, turn: [call, "408" + EOT][turn], CALC, [prompt("12*34=", "408")])
    system = wf.env_cls().system_prompt
    head = f"<|im_start|>system\n{system}{EOT}\n<|im_start|>user\n12*34={EOT}\n<|im_start|>assistant\n"
    obs = f"\n<|im_start|>tool\n408{EOT}\n<|im_start|>assistant\n"   # "\n" closes the sampled <|im_end|>
    s = traj.samples[0]
    assert s.prompt_ids == enc(tok, head)
    assert s.completion_ids == enc(tok, call) + enc(tok, obs) + enc(tok, "408" + EOT)
    assert s.loss_mask == [1] * len(enc(tok, call)) + [0] * len(enc(tok, obs)) + [1] * 4
    n0, no = len(enc(tok, call)), len(enc(tok, obs))
    assert s.logprobs == [-1 - k / 1000 for k in range(n0)] + [0.0] * no + [-2 - k / 1000 for k in range(4)]
    # token-in: the second call continued from exactly the ids so far; nothing was re-tokenised
    assert engine.requests == [[s.prompt_ids], [s.prompt_ids + s.completion_ids[:n0 + no]]]
    trained = [t for t, m in zip(s.completion_ids, s.loss_mask) if m]
    assert trained == enc(tok, call) + enc(tok, "408" + EOT)
    batch = collate([traj], tok.pad_token_id)
    assert batch.completion_ids[0].tolist() == s.completion_ids and batch.response_mask[0].tolist() == s.loss_mask
    assert traj.final_text == "408" and traj.info["env_reward"] == 1.0 and traj.info["ended_by"] == "env"
    assert [m["role"] for m in traj.info["conversation"]] == ["system", "user", "assistant", "tool", "assistant"]
    assert traj.info["conversation"][2]["tool_calls"] == [
        {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "12*34"}}}]
    assert wf.metrics([traj]) == {"env/turns_per_episode": 2.0, "env/tool_calls_per_episode": 1.0,
                                  "env/tool_error_rate": 0.0, "env/ended_by_limit": 0.0,
                                  "env/tokens_per_turn": (n0 + 4) / 2, "env/ended_by/env": 1.0}


def test_feedback_turns_and_rewards_per_episode(tok):
    guesses = {"Guess.": ["8" + EOT, "12" + EOT, "11" + EOT]}
    respond = lambda ctx, turn: guesses["Guess."][turn]   # noqa: E731
    wf, engine, trajs = run(tok, respond, GUESS, [prompt("Guess.", "11"), prompt("Guess.", "12", 1)], max_turns=5)
    a, b = trajs
    fb = lambda text: f"\n<|im_start|>user\n{text}{EOT}\n<|im_start|>assistant\n"   # noqa: E731
    assert a.samples[0].completion_ids == enc(tok, "8" + EOT + fb("Higher.") + "12" + EOT + fb("Lower.") + "11" + EOT)
    assert a.samples[0].loss_mask == [1, 1] + [0] * len(enc(tok, fb("Higher."))) + [1] * 3 + \
        [0] * len(enc(tok, fb("Lower."))) + [1] * 3
    assert b.samples[0].completion_ids == enc(tok, "8" + EOT + fb("Higher.") + "12" + EOT)
    assert (a.info["turns"], a.info["env_reward"], a.info["turn_rewards"]) == (3, 1.0, [0.0, 0.0, 1.0])
    assert (b.info["turns"], b.info["env_reward"]) == (2, 1.0)
    assert b.info["conversation"][-1] == {"role": "user", "content": "Correct!"}   # logged, not tokenised
    assert [len(r) for r in engine.requests] == [2, 2, 1]   # one batched call per turn over running episodes


def test_max_turns_ends_the_episode(tok):
    wf, _, (traj,) = run(tok, lambda ctx, turn: "1" + EOT, GUESS, [prompt("Guess.", "9")], max_turns=3)
    s = traj.samples[0]
    assert traj.info["ended_by"] == "max_turns" and traj.info["turns"] == 3 and s.finish_reason == "stop"
    assert s.loss_mask[-2:] == [1, 1] and s.completion_ids[-2:] == enc(tok, "1" + EOT)  # no observation after it
    assert traj.info["env_reward"] == 0.0 and wf.metrics([traj])["env/ended_by_limit"] == 1.0


def test_max_total_tokens_cuts_the_last_turn(tok):
    p = prompt("Guess.", "9")
    head = len(enc(tok, f"<|im_start|>user\nGuess.{EOT}\n<|im_start|>assistant\n"))
    fb = len(enc(tok, f"\n<|im_start|>user\nHigher.{EOT}\n<|im_start|>assistant\n"))
    budget = head + 2 + fb + 2     # room for "1<|im_end|>", the feedback, then 2 tokens of the next turn
    wf, engine, (traj,) = run(tok, lambda ctx, turn: ["1" + EOT, "1234" + EOT][turn], GUESS, [p], max_turns=9, max_total_tokens=budget,
                              max_tokens=4)
    s = traj.samples[0]
    assert engine.max_tokens == [4, 2]          # the second call asked for the remaining budget
    assert len(s.prompt_ids) + len(s.completion_ids) == budget and s.finish_reason == "length" and traj.truncated
    assert s.completion_ids[-2:] == enc(tok, "12") and traj.info["ended_by"] == "max_total_tokens"
    assert traj.info["conversation"][-1] == {"role": "assistant", "content": "12"}


def test_turn_cut_at_max_tokens_ends_the_episode(tok):
    wf, _, (traj,) = run(tok, lambda ctx, turn: "123456" + EOT, GUESS, [prompt("Guess.", "9")], max_tokens=3)
    assert traj.samples[0].completion_ids == enc(tok, "123") and traj.samples[0].loss_mask == [1, 1, 1]
    assert traj.info["ended_by"] == "turn_length" and traj.info["turns"] == 1


def test_malformed_unknown_failing_and_slow_tool_calls_are_answered(tok):
    turns = ['<tool_call>{"name": "add", "arguments": {"a": 3,</tool_call>' + EOT,
             '<tool_call>{"name": "mul", "arguments": {}}\n{"name": "crash", "arguments": {"x": 1}}</tool_call>' + EOT,
             '<tool_call>{"name": "sleepy", "arguments": {"seconds": 5}}\n'
             '{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>' + EOT,
             "7" + EOT]
    wf, _, (traj,) = run(tok, lambda ctx, turn: turns[turn], "helper_envs:AddEnv", [prompt("3+4?", "7")],
                         max_turns=6, tool_timeout_s=0.2)
    tool_msgs = [m for m in traj.info["conversation"] if m["role"] == "tool"]
    contents = [m["content"] for m in tool_msgs]
    assert contents[0] == ("Error: the tool call could not be parsed (no JSON object found in the tool call block). "
                           'Write <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>.')
    assert contents[1] == "Error: unknown tool 'mul'; available: add, crash, sleepy"
    assert contents[2] == "Error: crash raised RuntimeError: boom"
    assert contents[3] == "Error: sleepy timed out after 0.2 s" and contents[4] == "7"
    assert traj.info["tool_calls"] == 5 and traj.info["tool_errors"] == 4 and traj.info["env_reward"] == 1.0
    assert wf.metrics([traj])["env/tool_error_rate"] == 4 / 5
    # every observation token is masked, every sampled token trained
    s = traj.samples[0]
    trained = [t for t, m in zip(s.completion_ids, s.loss_mask) if m]
    assert trained == sum((enc(tok, t) for t in turns), [])


def test_tool_call_that_stopped_on_a_stop_string_gets_the_whole_closing(tok):
    call = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'   # no <|im_end|> sampled
    wf, _, (traj,) = run(tok, lambda ctx, turn: [call, "3" + EOT][turn], "helper_envs:AddEnv", [prompt("1+2?", "3")])
    obs = f"{EOT}\n<|im_start|>tool\n3{EOT}\n<|im_start|>assistant\n"
    assert traj.samples[0].completion_ids == enc(tok, call + obs + "3" + EOT)


def test_a_raising_environment_is_named_with_episode_and_turn(tok):
    ps = [prompt("ok", "1"), prompt("FAIL", "1", 1)]
    with pytest.raises(EnvError, match=r"environment helper_envs:RaisingEnv \(step, episode 1, turn 1\) raised "
                                       r"KeyError: 'secret'"):
        run(tok, lambda ctx, turn: "x" + EOT, "helper_envs:RaisingEnv", ps, max_turns=4)


def test_reset_that_returns_no_messages_is_named(tok):
    class Bad:
        def reset(self, row):
            return "hello"
    import helper_envs
    helper_envs.Bad = Bad
    with pytest.raises(EnvError, match=r"helper_envs:Bad \(reset, episode 0, turn 0\): expected a non-empty list"):
        run(tok, lambda ctx, turn: "x", "helper_envs:Bad", [prompt("a", "1")])


def test_rollout_once_plays_a_scripted_episode():
    traj = rollout_once("rlpost.envs.examples:GuessNumberEnv", {"prompt": "Guess.", "answer": "5"}, ["3", "6", "5"])
    assert [m["content"] for m in traj.info["conversation"]] == ["Guess.", "3", "Higher.", "6", "Lower.", "5", "Correct!"]
    assert traj.info["turn_rewards"] == [0.0, 0.0, 1.0] and traj.info["ended_by"] == "env"


# A Qwen2.5-like template: the tool list in a system block, consecutive tool messages merged into one user turn.
TOOL_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools: {{ tools | map(attribute='function.name') | join(', ') }}<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' %}"
    "{% if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|im_start|>user\n{% endif %}"
    "<tool_response>\n{{ m.content }}\n</tool_response>\n"
    "{% if loop.last or messages[loop.index0 + 1].role != 'tool' %}<|im_end|>\n{% endif %}"
    "{% else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_observations_follow_a_tool_aware_template():
    tok = build_char_tokenizer()
    tok.chat_template = TOOL_TEMPLATE
    call = ('<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>'
            '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 1}}</tool_call>' + EOT)
    wf, _, (traj,) = run(tok, lambda ctx, turn: [call, "7" + EOT][turn], "helper_envs:AddEnv", [prompt("3+4?", "7")])
    s = traj.samples[0]
    assert s.prompt_ids == enc(tok, f"<|im_start|>system\nTools: add, crash, sleepy{EOT}\n"
                                    f"<|im_start|>user\n3+4?{EOT}\n<|im_start|>assistant\n")
    obs = f"\n<|im_start|>user\n<tool_response>\n7\n</tool_response>\n<tool_response>\n2\n</tool_response>\n{EOT}\n" \
          f"<|im_start|>assistant\n"
    assert s.completion_ids == enc(tok, call + obs + "7" + EOT)
    assert s.loss_mask == [1] * len(enc(tok, call)) + [0] * len(enc(tok, obs)) + [1, 1]
