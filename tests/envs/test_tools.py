"""The shipped tools (rlpost/envs/tools.py: calculator, sandboxed python, BM25 search), JSON tool-call reading
(never raises) and how the workflow's runner answers each call (rlpost/envs/base.py)."""
import math
import random

import pytest

from rlpost.envs.base import plan_calls, run_jobs, tool_messages, tool_schemas, tool_table
from rlpost.envs.calls import ToolCall, ToolParseError
from rlpost.envs.parsers import parse_hermes
from rlpost.envs.tools import BM25Index, PythonSandbox, Search, calculate, calculator, format_number


def answer(calls, tools, timeout_s=5.0, max_chars=2000) -> list[str]:
    """The tool messages' contents the multi-turn workflow would send back."""
    jobs = plan_calls(calls, tool_table(tools))
    run_jobs(jobs, timeout_s)
    return [m["content"] for m in tool_messages(jobs, max_chars)]


def test_parse_json_literal_list_and_parallel_calls():
    one = parse_hermes('think <tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>')
    assert one == [ToolCall("calculator", {"expression": "1+1"}, 1,
                            '{"name": "calculator", "arguments": {"expression": "1+1"}}')]
    # A²FM style: several Python-literal dicts with ids in one block
    many = parse_hermes("<tool_call>{'id': 7, 'name': 'web_search', 'arguments': {'query': 'a'}}\n"
                        "{'id': 8, 'name': 'code_execute', 'arguments': {'code': 'print(1)'}}</tool_call>")
    assert [(c.id, c.name, c.arguments) for c in many] == [(7, "web_search", {"query": "a"}),
                                                           (8, "code_execute", {"code": "print(1)"})]
    listed = parse_hermes('<tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": "{\\"x\\": 1}"}]'
                          '</tool_call>')
    assert [(c.name, c.arguments) for c in listed] == [("a", {}), ("b", {"x": 1})]
    # braces inside strings do not split objects
    tricky = parse_hermes('<tool_call>{"name": "python", "arguments": {"code": "print({1: \'}\'})"}}</tool_call>')
    assert tricky[0].arguments == {"code": "print({1: '}'})"}


@pytest.mark.parametrize("text, message", [
    ('<tool_call>{"name": "python"', "<tool_call> is not closed with </tool_call>"),
    ("<tool_call>   </tool_call>", "empty tool call block"),
    ("<tool_call>just words</tool_call>", "no JSON object found in the tool call block"),
    ("<tool_call>{name: python, arguments: {}}</tool_call>", "could not parse '{name: python, arguments: {}}' as JSON"),
])
def test_parse_errors_are_values_not_exceptions(text, message):
    err = parse_hermes(text)
    assert isinstance(err, ToolParseError) and err.message == message


def test_per_call_errors_and_unknown_tools():
    calls = parse_hermes('<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}\n{oops}\n'
                         '{"arguments": {}}\n{"name": "rm_rf", "arguments": {}}\n'
                         '{"name": "calculator", "arguments": [1]}</tool_call>')
    assert [c.error is None for c in calls] == [True, False, False, True, False]
    assert answer(calls, [calculator]) == [
        "6", "Error: tool call 2 could not be parsed as JSON: '{oops}'", "Error: tool call 3 has no 'name'",
        "Error: unknown tool 'rm_rf'; available: calculator",
        "Error: tool call 5 (calculator): 'arguments' must be an object"]
    # a tool that raises on the model's arguments is answered with the error, naming the tool
    bad = parse_hermes('<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}\n'
                       '{"name": "calculator", "arguments": {"expr": "1"}}</tool_call>')
    assert answer(bad, [calculator]) == [
        "Error: calculator raised ValueError: division by zero",
        "Error: calculator raised TypeError: calculator() got an unexpected keyword argument 'expr'"]


def test_parser_never_raises_on_garbage():
    rng = random.Random(0)
    alphabet = ['<tool_call>', '</tool_call>', '{', '}', '"', "'", ':', ',', '[', ']', 'name', 'arguments', '\\', 'x', ' ']
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        result = parse_hermes(text)
        assert isinstance(result, (list, ToolParseError))
        if isinstance(result, list):
            assert all(isinstance(a, str) for a in answer(result, [calculator]))


def test_calculator():
    assert format_number(calculate("(3 + 4) * 2 ** 3 % 5")) == "1"       # 56 % 5
    assert format_number(calculate("-2 ** 2")) == "-4"                     # Python precedence
    assert format_number(calculate("10 / 4")) == "2.5" and format_number(calculate("0.1 + 0.2")) == "0.3"
    assert format_number(calculate("2 ** -2")) == "0.25" and math.isclose(calculate("2 ** 0.5"), math.sqrt(2))
    assert calculator("123*45") == "5535"
    for bad, msg in [("__import__('os')", "not Call"), ("x + 1", "not Name"), ("(1).real", "not Attribute"),
                     ("1 / 0", "division by zero"), ("9 ** 9 ** 9", "too large"), ("'a' * 3", "not Constant"),
                     ("[1] * 3", "not List"), ("1 +", "not an arithmetic expression"), ("True + 1", "not Constant")]:
        with pytest.raises(ValueError, match=msg):
            calculator(bad)


def test_bm25_hand_computed():
    # docs: d0 "apple banana" (2 terms), d1 "apple apple cherry" (3), d2 "banana" (1); avgdl = 2
    # idf(apple) = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6) = 0.470004
    # d0: f=1, |d|=2: idf * 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 2/2)) = idf * 2.5 / 2.5 = 0.470004
    # d1: f=2, |d|=3: idf * 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 3/2)) = idf * 5 / 4.0625 = 0.578467
    index = BM25Index(["apple banana", "apple apple cherry", "banana"])
    assert index.scores("apple") == pytest.approx([0.470004, 0.578467, 0.0], abs=1e-6)
    assert index.search("Apple!", top_k=5) == [(1, pytest.approx(0.578467, abs=1e-6)), (0, pytest.approx(0.470004, abs=1e-6))]


def test_search_tool_on_task_corpus():
    search = Search([{"title": "France", "text": "Paris is the capital of France."},
                     "Berlin is the capital of Germany.", "Bananas are yellow."], top_k=2).search
    assert search("capital of France") == ("[1] France\nParis is the capital of France.\n\n"
                                           "[2] document 1\nBerlin is the capital of Germany.")
    assert search(["capital", "France"]).startswith("[1] France")     # a list of words is one query
    assert search("zebra") == "No results for 'zebra'."
    with pytest.raises(ValueError, match="no documents are available"):
        Search(None).search("x")
    (schema,) = tool_schemas(tool_table([search]))
    assert schema["function"]["name"] == "search" and schema["function"]["parameters"]["required"] == ["query"]


def test_python_tool_runs_in_the_sandbox():
    python = PythonSandbox(timeout_s=1).python
    assert python("```python\nprint(6 * 7)\n```") == "42"
    assert python("1/0").startswith("stderr:\nTraceback") and "ZeroDivisionError" in python("1/0")
    assert python("while True: pass") == "[killed: exceeded 1 s]"
    assert python("x = 1") == "(no output)"
    with pytest.raises(ValueError, match="non-empty 'code'"):
        python("  ")
    (schema,) = tool_schemas(tool_table([python]))   # a bound method: its schema has no `self`
    assert schema["function"]["name"] == "python" and list(schema["function"]["parameters"]["properties"]) == ["code"]
