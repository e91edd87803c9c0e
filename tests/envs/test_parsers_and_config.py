"""Tool-call parsers on hand-written turns, tool schemas, and the environment check of `rlpost validate`."""
import pytest

from rlpost.config import ConfigError
from rlpost.envs.base import tool_schemas, tool_table
from rlpost.envs.calls import ToolParseError
from rlpost.envs.parsers import parse_hermes, parse_llama3_json
from rlpost.resolve import resolve_file


def calls(parsed):
    return [(c.name, c.arguments, c.error) for c in parsed]


def test_hermes_parser():
    assert parse_hermes("The answer is 4.") == []
    two = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call> and <tool_call>{"name": "b", "arguments": {}}</tool_call>'
    assert calls(parse_hermes(two)) == [("add", {"a": 1}, None), ("b", {}, None)]
    assert isinstance(parse_hermes('<tool_call>{"name": "add"'), ToolParseError)
    assert calls(parse_hermes('<tool_call>{"arguments": {}}</tool_call>')) == [("", {}, "tool call 1 has no 'name'")]


def test_llama3_json_parser():
    assert parse_llama3_json("The answer is 4.") == []
    one = '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}'
    assert calls(parse_llama3_json(one)) == [("add", {"a": 1, "b": 2}, None)]
    both = '{"name": "a", "parameters": {}}; {"name": "b", "arguments": {"x": 1}}'
    assert calls(parse_llama3_json(both)) == [("a", {}, None), ("b", {"x": 1}, None)]
    bad = parse_llama3_json('{"name": "add", "parameters": ')
    assert isinstance(bad, ToolParseError) and bad.message == "no JSON object found in the tool call block"


def test_tool_schemas_from_type_hints_and_docstrings():
    from rlpost.envs.examples import CalculatorEnv
    (schema,) = tool_schemas(tool_table(CalculatorEnv().tools))
    assert schema == {"type": "function", "function": {
        "name": "calculator", "description": "Evaluate an arithmetic expression exactly.",
        "parameters": {"type": "object", "properties": {"expression": {
            "type": "string", "description": 'numbers with + - * / ** % and parentheses, e.g. "1234*5678"'}},
            "required": ["expression"]}, "return": {"type": "string"}}}


TOOL_CONFIG = "configs/tiny/arith_tool_calculator.yaml"


def test_validate_resolves_the_environment_and_its_kwargs():
    _, resolved = resolve_file(TOOL_CONFIG, ["rollout.workflow.env_kwargs.use_python=true"])
    wf = resolved["rollout"]["workflow"]
    assert wf["name"] == "multi_turn" and wf["env"] == "rlpost.envs.examples:CalculatorEnv"
    assert wf["env_kwargs"] == {"system_prompt": "Use the calculator.", "use_python": True}


@pytest.mark.parametrize("override, message", [
    ("rollout.workflow.env=rlpost.envs.examples:NoSuchEnv",
     "rollout.workflow.env: cannot import environment 'rlpost.envs.examples:NoSuchEnv'"),
    ("rollout.workflow.env=rlpost.envs.examples",
     "rollout.workflow.env: expected 'package.module:ClassName'"),
    ("rollout.workflow.env_kwargs.use_pyton=true",
     "rollout.workflow.env_kwargs (rlpost.envs.examples:CalculatorEnv): unknown parameter 'use_pyton' "
     "(known: use_python, system_prompt)"),
    ("rollout.workflow.env_kwargs.use_python=3",
     "rollout.workflow.env_kwargs (rlpost.envs.examples:CalculatorEnv).use_python: expected bool"),
    ("rollout.workflow.parser=hermez", "rollout.workflow (multi_turn): parser: unknown tool-call parser 'hermez'; did you mean 'hermes'?"),
])
def test_validate_names_a_bad_environment(override, message):
    with pytest.raises(ConfigError) as err:
        resolve_file(TOOL_CONFIG, [override])
    assert message in str(err.value)


def test_qwen3_xml_glm4_and_harmony_parsers():
    from rlpost.envs.parsers import harmony_final, parse_glm4, parse_harmony, parse_qwen3_xml
    xml = ("<tool_call>\n<function=add>\n<parameter=a>\n3\n</parameter>\n<parameter=note>\ntwo\nlines\n</parameter>\n"
           "</function>\n</tool_call>")
    (call,) = parse_qwen3_xml("Thinking.\n</think>\n\n" + xml + "<|im_end|>")
    assert (call.name, call.arguments, call.error) == ("add", {"a": 3, "note": "two\nlines"}, None)
    assert parse_qwen3_xml("7") == []
    assert isinstance(parse_qwen3_xml("<tool_call>\n<function=add>"), ToolParseError)
    assert parse_qwen3_xml("<tool_call>add</tool_call>")[0].error == "tool call 1 has no <function=...>...</function>"
    glm = "<tool_call>add\n<arg_key>a</arg_key>\n<arg_value>3</arg_value>\n<arg_key>b</arg_key>\n<arg_value>[1, 2]</arg_value>\n</tool_call>"
    assert [(c.name, c.arguments) for c in parse_glm4(glm * 2)] == [("add", {"a": 3, "b": [1, 2]})] * 2
    assert parse_glm4("<tool_call>\n<arg_key>a</arg_key></tool_call>")[0].error == "tool call 1 has no function name"
    turn = ('<|channel|>analysis<|message|>Add.<|end|><|start|>assistant to=functions.add<|channel|>commentary json'
            '<|message|>{"a": 3, "b": 4}<|call|>')
    assert [(c.name, c.arguments) for c in parse_harmony(turn)] == [("add", {"a": 3, "b": 4})]
    assert parse_harmony("<|channel|>commentary to=functions.add <|constrain|>json<|message|>{\"a\": 1}<|call|>")[0].arguments == {"a": 1}
    assert parse_harmony("<|channel|>final<|message|>7<|return|>") == []
    assert isinstance(parse_harmony("<|start|>assistant to=functions.add<|channel|>commentary json<|message|>{"), ToolParseError)
    assert parse_harmony("to=functions.add<|message|>[1]<|call|>")[0].error.startswith("tool call 1 (add): the arguments")
    assert harmony_final("<|channel|>analysis<|message|>hm<|end|><|start|>assistant<|channel|>final<|message|>7<|return|>") == "7"
