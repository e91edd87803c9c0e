"""multi_turn with the official chat templates of today's model families (tests/envs/chat_templates/, from TRL),
on character tokenizers with each family's special tokens: several turns with tool calls and feedback; the
trained ids are exactly the sampled ids, the loss mask covers only them, and every observation is the
template's rendering of the new messages, written out here by hand from the template files."""
import logging

import pytest
from family_tokenizers import FAMILIES, build_family_tokenizer
from helper_envs import add

from rlpost.engines.base import SamplingParams
from rlpost.envs.base import tool_schemas
from rlpost.envs.testing import ScriptedEngine
from rlpost.types import Prompt
from rlpost.workflows.multi_turn import MultiTurnWorkflow

FB = "Wrong, try again."
TOOLS = tool_schemas({"add": add})
HERMES = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
XML = "<tool_call>\n<function=add>\n<parameter=a>\n3\n</parameter>\n<parameter=b>\n4\n</parameter>\n</function>\n</tool_call>"
LLAMA_CALL = '{"name": "add", "parameters": {"a": 3, "b": 4}}'
HARMONY_CALL = ('<|channel|>analysis<|message|>Add them.<|end|><|start|>assistant to=functions.add<|channel|>commentary '
                'json<|message|>{"a": 3, "b": 4}<|call|>')
GLM_CALL = "\n<think>Add them.</think>\n<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value>\n" \
           "<arg_key>b</arg_key>\n<arg_value>4</arg_value>\n</tool_call>"

CHATML_TOOL = "\n<|im_start|>user\n<tool_response>\n7\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
CHATML_FB = f"\n<|im_start|>user\n{FB}<|im_end|>\n<|im_start|>assistant\n"
LLAMA_TOOL = '<|start_header_id|>ipython<|end_header_id|>\n\n"7"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'
LLAMA_FB = f"<|start_header_id|>user<|end_header_id|>\n\n{FB}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
R1_TOOL = "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>7<｜tool▁output▁end｜><｜tool▁outputs▁end｜>"
R1_FB = f"<｜User｜>{FB}<｜Assistant｜><think>\n"

# family -> (the four sampled turns: call, wrong answer, call, right answer; each with its end-of-turn token),
#           (the three observations that follow the first three turns)
SCRIPTS = {
    "qwen2_5": ([HERMES + "<|im_end|>", "8<|im_end|>", HERMES + "<|im_end|>", "7<|im_end|>"],
                [CHATML_TOOL, CHATML_FB, CHATML_TOOL]),
    "qwen3": (["<think>\nAdd them.\n</think>\n\n" + HERMES + "<|im_end|>", "<think>\n\n</think>\n\n8<|im_end|>",
               HERMES + "<|im_end|>", "<think>\nIt is 7.\n</think>\n\n7<|im_end|>"],
              [CHATML_TOOL, CHATML_FB, CHATML_TOOL]),
    "qwen3_5_think": (["Add them.\n</think>\n\n" + XML + "<|im_end|>", "\n</think>\n\n8<|im_end|>",
                       "Again.\n</think>\n\n" + XML + "<|im_end|>", "It is 7.\n</think>\n\n7<|im_end|>"],
                      [CHATML_TOOL + "<think>\n", CHATML_FB + "<think>\n", CHATML_TOOL + "<think>\n"]),
    "qwen3_5_nothink": ([XML + "<|im_end|>", "8<|im_end|>", XML + "<|im_end|>", "7<|im_end|>"],
                        [CHATML_TOOL + "<think>\n\n</think>\n\n", CHATML_FB + "<think>\n\n</think>\n\n",
                         CHATML_TOOL + "<think>\n\n</think>\n\n"]),
    "qwen3_2507": ([HERMES + "<|im_end|>", "8<|im_end|>", HERMES + "<|im_end|>", "7<|im_end|>"],
                   [CHATML_TOOL, CHATML_FB, CHATML_TOOL]),
    "llama3_1": ([LLAMA_CALL + "<|eot_id|>", "8<|eot_id|>", LLAMA_CALL + "<|eot_id|>", "7<|eot_id|>"],
                 [LLAMA_TOOL, LLAMA_FB, LLAMA_TOOL]),
    "llama3_2": ([LLAMA_CALL + "<|eot_id|>", "8<|eot_id|>", LLAMA_CALL + "<|eot_id|>", "7<|eot_id|>"],
                 [LLAMA_TOOL, LLAMA_FB, LLAMA_TOOL]),
    "gpt_oss": ([HARMONY_CALL, "<|channel|>final<|message|>8<|return|>", HARMONY_CALL,
                 "<|channel|>analysis<|message|>It is 7.<|end|><|start|>assistant<|channel|>final<|message|>7<|return|>"],
                ['<|start|>functions.add to=assistant<|channel|>commentary<|message|>"7"<|end|><|start|>assistant',
                 f"<|start|>user<|message|>{FB}<|end|><|start|>assistant",   # the template's <|end|> for <|return|>
                 '<|start|>functions.add to=assistant<|channel|>commentary<|message|>"7"<|end|><|start|>assistant']),
    "glm4": ([GLM_CALL + "<|observation|>", "\n<think></think>\n8<|user|>", GLM_CALL + "<|observation|>",
              "\n<think>It is 7.</think>\n7<|user|>"],
             ["\n<tool_response>\n7\n</tool_response><|assistant|>", f"\n{FB}<|assistant|>",
              "\n<tool_response>\n7\n</tool_response><|assistant|>"]),
    "deepseek_r1_distill": (["Add them.\n</think>\n\n" + HERMES + "<｜end▁of▁sentence｜>",
                             "Hm.\n</think>\n\n8<｜end▁of▁sentence｜>",
                             "Again.\n</think>\n\n" + HERMES + "<｜end▁of▁sentence｜>",
                             "It is 7.\n</think>\n\n7<｜end▁of▁sentence｜>"],
                            [R1_TOOL, R1_FB, R1_TOOL]),
}


def segments(mask):
    """[(trained, start, end)] runs of equal mask values."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((bool(mask[start]), start, i))
            start = i
    return out


def play(family, **kw):
    tok = build_family_tokenizer(family)
    turns, _ = SCRIPTS[family]
    engine = ScriptedEngine(tok, lambda ctx, t: turns[t])
    wf = MultiTurnWorkflow(engine, tok, env="helper_envs:AddFeedbackEnv", parser=FAMILIES[family][4], max_turns=6,
                           max_total_tokens=5000, **kw)
    prompt = Prompt(0, "3+4?", [{"role": "user", "content": "3+4?"}], {"answer": "7"})
    (traj,) = wf.rollout([prompt], SamplingParams(n=1, max_tokens=400, seed=0))
    return tok, engine, traj


@pytest.mark.parametrize("family", sorted(SCRIPTS))
def test_official_template_several_turns_with_tool_calls(family, caplog):
    tok, engine, traj = play(family)
    turns, observations = SCRIPTS[family]
    enc = lambda text: tok.encode(text, add_special_tokens=False)   # noqa: E731
    s = traj.samples[0]
    # the episode went call -> tool -> wrong answer -> feedback -> call -> tool -> right answer
    assert [m["role"] for m in traj.info["conversation"]] == \
        ["user", "assistant", "tool", "assistant", "user", "assistant", "tool", "assistant"]
    calls = [m["tool_calls"] for m in traj.info["conversation"] if m.get("tool_calls")]
    assert calls == [[{"type": "function", "function": {"name": "add", "arguments": {"a": 3, "b": 4}}}]] * 2
    assert [m["content"] for m in traj.info["conversation"] if m["role"] == "tool"] == ["7", "7"]
    assert traj.info["env_reward"] == 1.0 and traj.turn_rewards == [0.0, 0.0, 0.0, 1.0]
    # the completion alternates sampled turns (mask 1) and observations (mask 0), each exactly as expected
    runs = segments(s.loss_mask)
    assert [t for t, _, _ in runs] == [True, False, True, False, True, False, True]
    sampled = [s.completion_ids[a:b] for t, a, b in runs if t]
    assert sampled == [enc(t) for t in turns]                           # trained ids == sampled ids
    assert [tok.decode(s.completion_ids[a:b], skip_special_tokens=False) for t, a, b in runs if not t] == observations
    assert [s.completion_ids[a:b] for t, a, b in runs if not t] == [enc(o) for o in observations]
    # token-in: each engine call continued from exactly the ids so far
    assert engine.requests == [[s.prompt_ids + s.completion_ids[:a]] for t, a, _ in runs if t]
    # the sampler's log-probs on the sampled tokens, 0 on observations; turn index per token
    lp = [s.logprobs[a:b] for t, a, b in runs if t]
    assert lp == [[-(c + 1) - k / 1000 for k in range(len(enc(turns[c])))] for c in range(4)]
    assert all(x == 0.0 for t, a, b in runs if not t for x in s.logprobs[a:b])
    assert [s.turn_index[a] for t, a, _ in runs] == [0, -1, 1, -1, 2, -1, 3]
    assert s.prompt_ids == enc(tok.apply_chat_template([{"role": "user", "content": "3+4?"}], tools=TOOLS,
                                                       tokenize=False, add_generation_prompt=True))


# Families whose template renders a whole conversation as the concatenation of its turns when the model writes
# its tool calls as the template does: the trained sequence is then exactly the official rendering.
PREFIX_FAMILIES = ["qwen2_5", "qwen3_2507", "llama3_1", "llama3_2"]


def official_and_trained(family):
    tok, _, traj = play(family)
    s = traj.samples[0]
    call = {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "add", "arguments": {"a": 3, "b": 4}}}]}
    conversation = [{"role": "user", "content": "3+4?"}, call, {"role": "tool", "name": "add", "content": "7"},
                    {"role": "assistant", "content": "8"}, {"role": "user", "content": FB}, call,
                    {"role": "tool", "name": "add", "content": "7"}, {"role": "assistant", "content": "7"}]
    official = tok.apply_chat_template(conversation, tools=TOOLS, tokenize=False)
    return official, tok.decode(s.prompt_ids + s.completion_ids, skip_special_tokens=False)


@pytest.mark.parametrize("family", PREFIX_FAMILIES)
def test_trained_sequence_is_the_official_rendering_of_the_conversation(family):
    official, trained = official_and_trained(family)
    assert official.startswith(trained) and official[len(trained):] in ("", "\n")   # ChatML's last "\n" is not sampled


def test_qwen3_5_differs_from_the_official_rendering_only_by_the_earlier_think_blocks():
    """Qwen3.5 re-renders the turns before the last user message without their (here empty) think block; the
    trained sequence keeps them as sampled after the generation prompt's "<think>\\n\\n</think>\\n\\n"."""
    official, trained = official_and_trained("qwen3_5_nothink")
    empty = "<think>\n\n</think>\n\n"
    assert trained.count(empty) == 4 and official.count(empty) == 2
    assert official == trained.replace(empty, "", 2) + "\n"


def test_differences_to_the_official_template_are_logged_once(caplog, monkeypatch):
    import rlpost.workflows.multi_turn as mt
    monkeypatch.setattr(mt, "_NOTED", set())
    with caplog.at_level(logging.WARNING, logger="rlpost.workflows.multi_turn"):
        play("qwen2_5")
        assert caplog.records == []    # a prefix-preserving template whose closing the model samples: nothing to say
        play("gpt_oss")
        play("gpt_oss")
    notes = [r.getMessage() for r in caplog.records]
    assert len(notes) == 2
    assert "ends an assistant turn that more messages follow with '<|end|>' where the model sampled '<|return|>'" in notes[1]
    assert "renders an assistant turn differently once more messages follow" in notes[0]


def test_qwen3_no_think_through_chat_template_kwargs():
    """Qwen3's official template with enable_thinking=false: the generation prompt, and so every observation,
    ends with the empty think block; the model's turns follow it."""
    tok, engine, traj = play("qwen3", chat_template_kwargs={"enable_thinking": False})
    s = traj.samples[0]
    empty = "<think>\n\n</think>\n\n"
    assert tok.decode(s.prompt_ids, skip_special_tokens=False).endswith("<|im_start|>assistant\n" + empty)
    observations = [tok.decode(s.completion_ids[a:b], skip_special_tokens=False)
                    for t, a, b in segments(s.loss_mask) if not t]
    assert observations == [CHATML_TOOL + empty, CHATML_FB + empty, CHATML_TOOL + empty]


def test_schedule_and_parser_are_checked_as_workflow_params():
    from rlpost.workflows.multi_turn import MultiTurnParams
    with pytest.raises(ValueError, match="schedule must be one of lockstep, per_episode, got 'eager'"):
        MultiTurnParams(env="helper_envs:AddFeedbackEnv", schedule="eager")
    with pytest.raises(ValueError, match="unknown tool-call parser 'xml'"):
        MultiTurnParams(env="helper_envs:AddFeedbackEnv", parser="xml")
    assert MultiTurnParams(env="helper_envs:AddFeedbackEnv", parser="harmony", schedule="per_episode").parser == "harmony"
