"""Tool-call parsing (never raises), the calculator, BM25 search and the python tool."""
import math
import random

import pytest

from rlpost.tools import (TOOLS, BM25Index, ToolCall, ToolContext, ToolParseError, calculate, calculator_tool,
                          format_number, parse_tool_calls, run_tool_calls)


def test_parse_json_literal_list_and_parallel_calls():
    one = parse_tool_calls('think <tool_call>\n{"name": "calculator", "arguments": {"expression": "1+1"}}\n</tool_call>')
    assert one == [ToolCall("calculator", {"expression": "1+1"}, 1,
                            '{"name": "calculator", "arguments": {"expression": "1+1"}}')]
    # A²FM style: several Python-literal dicts with ids in one block
    many = parse_tool_calls("<tool_call>{'id': 7, 'name': 'web_search', 'arguments': {'query': 'a'}}\n"
                            "{'id': 8, 'name': 'code_execute', 'arguments': {'code': 'print(1)'}}</tool_call>")
    assert [(c.id, c.name, c.arguments) for c in many] == [(7, "web_search", {"query": "a"}),
                                                           (8, "code_execute", {"code": "print(1)"})]
    listed = parse_tool_calls('<tool_call>[{"name": "a", "arguments": {}}, {"name": "b", "arguments": "{\\"x\\": 1}"}]'
                              '</tool_call>')
    assert [(c.name, c.arguments) for c in listed] == [("a", {}), ("b", {"x": 1})]
    # braces inside strings do not split objects
    tricky = parse_tool_calls('<tool_call>{"name": "python", "arguments": {"code": "print({1: \'}\'})"}}</tool_call>')
    assert tricky[0].arguments == {"code": "print({1: '}'})"}


@pytest.mark.parametrize("text, fragment", [
    ("no tags here", "no <tool_call> block"),
    ('<tool_call>{"name": "python"', "not closed"),
    ("<tool_call>   </tool_call>", "empty"),
    ("<tool_call>just words</tool_call>", "no JSON object"),
    ("<tool_call>{name: python, arguments: {}}</tool_call>", "could not parse"),
])
def test_parse_errors_are_values_not_exceptions(text, fragment):
    err = parse_tool_calls(text)
    assert isinstance(err, ToolParseError) and fragment in err.message
    message = run_tool_calls(err, ToolContext())
    assert message.startswith("Error: the tool call could not be parsed") and "<tool_call>" in message


def test_per_call_errors_and_unknown_tools():
    calls = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {"expression": "2*3"}}\n{oops}\n'
                             '{"arguments": {}}\n{"name": "rm_rf", "arguments": {}}\n'
                             '{"name": "calculator", "arguments": [1]}</tool_call>')
    assert [c.error is None for c in calls] == [True, False, False, True, False]
    out = run_tool_calls(calls, ToolContext(), allowed=("calculator",))
    assert "Results for tool call 1 (calculator):\n6" in out
    assert "could not be parsed as JSON" in out and "has no 'name'" in out
    assert "unknown tool 'rm_rf'; available: calculator" in out and "'arguments' must be an object" in out
    assert "unknown tool 'python'" in run_tool_calls([ToolCall("python", {"code": "1"})], ToolContext(), ("calculator",))


def test_parser_never_raises_on_garbage():
    rng = random.Random(0)
    alphabet = ['<tool_call>', '</tool_call>', '{', '}', '"', "'", ':', ',', '[', ']', 'name', 'arguments', '\\', 'x', ' ']
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        result = parse_tool_calls(text)
        assert isinstance(result, (list, ToolParseError))
        assert isinstance(run_tool_calls(result, ToolContext(), allowed=("calculator",)), str)


def test_calculator():
    assert format_number(calculate("(3 + 4) * 2 ** 3 % 5")) == "1"       # 56 % 5
    assert format_number(calculate("-2 ** 2")) == "-4"                     # Python precedence
    assert format_number(calculate("10 / 4")) == "2.5" and format_number(calculate("0.1 + 0.2")) == "0.3"
    assert format_number(calculate("2 ** -2")) == "0.25" and math.isclose(calculate("2 ** 0.5"), math.sqrt(2))
    for bad, msg in [("__import__('os')", "not Call"), ("x + 1", "not Name"), ("(1).real", "not Attribute"),
                     ("1 / 0", "division by zero"), ("9 ** 9 ** 9", "too large"), ("'a' * 3", "not Constant"),
                     ("[1] * 3", "not List"), ("1 +", "not an arithmetic expression"), ("True + 1", "not Constant")]:
        assert calculator_tool({"expression": bad}, ToolContext()) .startswith("Error"), bad
        with pytest.raises(ValueError, match=msg):
            calculate(bad)


def test_bm25_hand_computed():
    # docs: d0 "apple banana" (2 terms), d1 "apple apple cherry" (3), d2 "banana" (1); avgdl = 2
    # idf(apple) = ln(1 + (3 - 2 + 0.5) / (2 + 0.5)) = ln(1.6) = 0.470004
    # d0: f=1, |d|=2: idf * 1 * 2.5 / (1 + 1.5 * (0.25 + 0.75 * 2/2)) = idf * 2.5 / 2.5 = 0.470004
    # d1: f=2, |d|=3: idf * 2 * 2.5 / (2 + 1.5 * (0.25 + 0.75 * 3/2)) = idf * 5 / 4.0625 = 0.578467
    index = BM25Index(["apple banana", "apple apple cherry", "banana"])
    assert index.scores("apple") == pytest.approx([0.470004, 0.578467, 0.0], abs=1e-6)
    assert index.search("Apple!", top_k=5) == [(1, pytest.approx(0.578467, abs=1e-6)), (0, pytest.approx(0.470004, abs=1e-6))]


def test_search_tool_on_task_corpus():
    ctx = ToolContext(corpus=[{"title": "France", "text": "Paris is the capital of France."},
                              "Berlin is the capital of Germany.", "Bananas are yellow."], top_k=2)
    out = TOOLS.get("search")({"query": "capital of France"}, ctx)
    assert out.startswith("[1] France\nParis is the capital of France.") and "[2] document 1" in out
    assert "No results" in TOOLS.get("search")({"query": "zebra"}, ctx)
    assert "no documents" in TOOLS.get("search")({"query": "x"}, ToolContext())


def test_python_tool_runs_in_the_sandbox():
    ctx = ToolContext(timeout_s=1)
    assert TOOLS.get("python")({"code": "```python\nprint(6 * 7)\n```"}, ctx) == "42"
    assert "ZeroDivisionError" in TOOLS.get("python")({"code": "1/0"}, ctx)
    assert "[killed: exceeded 1 s]" in TOOLS.get("python")({"code": "while True: pass"}, ctx)
    assert TOOLS.get("python")({"code": "x = 1"}, ctx) == "(no output)"
    assert TOOLS.get("python")({}, ctx).startswith("Error")
    out = run_tool_calls(parse_tool_calls("<tool_call>{'name': 'code_execute', 'arguments': {'code': 'print(3)'}}"
                                          "</tool_call>"), ctx)
    assert out == "Results for tool call 1 (code_execute):\n3"
