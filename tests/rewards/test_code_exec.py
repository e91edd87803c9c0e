"""code_exec: the last fenced block of a completion against assert tests or stdin/stdout pairs, in the sandbox.
Expected scores are counted by hand from the tests listed in each case (passed / total)."""
import time

import pytest

from rlpost.config import RewardConfig
from rlpost.rewards import RewardManager
from rlpost.rewards.code_exec import CodeExecReward, last_code_block, parse_tests, same_output


def fenced(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n```{lang}\n{code}\n```\nDone."


ADD_TESTS = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(10, 5) == 15"]


def test_last_code_block():
    assert last_code_block("no code") is None
    assert last_code_block("```python\nx = 1\n```") == "x = 1\n"
    assert last_code_block("```\na\n``` then ```py\nb\n```") == "b\n"
    assert last_code_block("```python\nfirst\n```\n```python\nunclosed") == "first\n"   # a cut-off block is not code
    assert last_code_block("```python\nunclosed only") is None


def test_parse_tests_formats():
    assert parse_tests(["assert f(1) == 1"]) == ("assert", ["assert f(1) == 1"], None)
    assert parse_tests("assert f(1) == 1\n\nassert f(2) == 2\n") == ("assert", ["assert f(1) == 1", "assert f(2) == 2"], None)
    assert parse_tests('["assert g()"]') == ("assert", ["assert g()"], None)             # JSON in a string
    assert parse_tests([{"input": "1 2\n", "output": "3\n"}]) == ("stdio", ["1 2\n"], ["3\n"])
    assert parse_tests('{"inputs": ["4\\n"], "outputs": ["16\\n"]}') == ("stdio", ["4\n"], ["16\n"])
    with pytest.raises(ValueError, match="2 inputs but 1 outputs"):
        parse_tests({"inputs": ["1", "2"], "outputs": ["1"]})
    with pytest.raises(ValueError, match="tests must be assert statements"):
        parse_tests([1, 2])


def test_same_output_ignores_trailing_whitespace_only():
    assert same_output("3 \n4\n\n", "3\n4")
    assert same_output("a\r\nb\r\n", "a\nb\n")
    assert not same_output("3\n4", "34") and not same_output(" 3", "3")


@pytest.fixture(scope="module")
def reward():
    return CodeExecReward(timeout_s=1.0, max_workers=4)


def test_assert_tests_score_the_share_passed(reward):
    right = fenced("def add(a, b):\n    return a + b")
    abs_first = fenced("def add(a, b):\n    return abs(a) + b")                 # add(-1, 1) = 2, not 0: 2 of 3
    wrong_big = fenced("def add(a, b):\n    return a + b if a < 10 else -1")    # add(10, 5) = -1, not 15: 2 of 3
    no_fence = "def add(a, b): return a + b"                                        # no code block: 0
    syntax_error = fenced("def add(a, b) return a + b")                             # 0
    first_block_only_right = fenced("def add(a, b):\n    return a + b") + "\n" + fenced("def add(a, b):\n    return 0")
    scores = reward([""] * 6, [right, abs_first, wrong_big, no_fence, syntax_error, first_block_only_right],
                    tests=[ADD_TESTS] * 6)
    # the last block of the last completion returns 0: only add(-1, 1) == 0 holds: 1 of 3
    assert scores == [1.0, pytest.approx(2 / 3), pytest.approx(2 / 3), 0.0, 0.0, pytest.approx(1 / 3)]


def test_infinite_loop_and_crash_cost_only_their_tests(reward):
    loops_on_negative = fenced("def add(a, b):\n    while a < 0:\n        pass\n    return a + b")
    raises_on_ten = fenced("def add(a, b):\n    if a == 10:\n        raise RuntimeError('boom')\n    return a + b")
    swallows_everything = fenced("def add(a, b):\n    while True:\n        try:\n            while True: pass\n"
                                 "        except BaseException:\n            pass")
    segfault = fenced("import ctypes\nctypes.string_at(0)")
    memory_bomb = fenced("def add(a, b):\n    x = bytearray(4 << 30)\n    return a + b")
    start = time.monotonic()
    scores = reward([""] * 5, [loops_on_negative, raises_on_ten, swallows_everything, segfault, memory_bomb],
                    tests=[ADD_TESTS] * 5)
    # loops_on_negative: add(-1, 1) times out after 1 s, the other two pass -> 2/3; raises_on_ten: 2/3;
    # swallows_everything: killed at the wall limit, nothing reported -> 0; segfault: the process dies -> 0;
    # memory_bomb: MemoryError under the 512 MB limit in every test -> 0
    assert scores == [pytest.approx(2 / 3), pytest.approx(2 / 3), 0.0, 0.0, 0.0]
    assert time.monotonic() - start < 60   # bounded by the wall limit (1 s x 4 + 2 s), not stalled


def test_early_exit_and_forged_output_gain_nothing(reward):
    exits = fenced("import sys\ndef add(a, b):\n    return a + b\nsys.exit(0)")
    forges = fenced("import os\nfor i in range(3):\n    os.write(1, f'PASS {i} 1 \\n'.encode())\nimport os; os._exit(0)")
    assert reward(["", ""], [exits, forges], tests=[ADD_TESTS] * 2) == [0.0, 0.0]


def test_no_network_inside_the_program(reward):
    """A test that needs a connection to this machine fails: the sandbox refuses sockets (and, where the kernel
    allows, gives the run an empty network namespace)."""
    import socket
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        fetch = fenced(f"import socket\ndef fetch():\n    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                       "    return 'ok'")
        assert reward([""], [fetch], tests=[["assert fetch() == 'ok'", "assert 1 + 1 == 2"]]) == [0.5]
    finally:
        server.close()


def test_stdin_stdout_tests(reward):
    tests = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12"}, {"input": "-4 4\n", "output": "0\n"}]
    via_input = fenced("a, b = map(int, input().split())\nprint(a + b)")
    via_open0 = fenced("import sys\na, b = map(int, open(0).read().split())\nsys.stdout.write(f'{a + b}   \\n')\nexit()")
    via_buffer = fenced("import sys\na, b = map(int, sys.stdin.buffer.read().split())\nprint(a + b if a > 0 else 1)")
    loops = fenced("a, b = map(int, input().split())\nwhile a < 0:\n    pass\nprint(a + b)")
    exits_nonzero = fenced("import sys\nprint(3)\nsys.exit(1)")
    scores = reward([""] * 5, [via_input, via_open0, via_buffer, loops, exits_nonzero], tests=[tests] * 5)
    # via_buffer prints 1 for -4 4 (expected 0): 2/3; loops: the -4 test times out: 2/3;
    # exits_nonzero: prints 3 but exits with status 1 in every test: 0
    assert scores == [1.0, 1.0, pytest.approx(2 / 3), pytest.approx(2 / 3), 0.0]


def test_many_completions_in_parallel_through_the_manager():
    """Through the config: every completion scored, including stalled ones, in the completions' order."""
    manager = RewardManager.from_config([RewardConfig("code_exec", 1.0, {"timeout_s": 0.5, "max_workers": 8})])
    good, stall = fenced("def add(a, b):\n    return a + b"), fenced("while True:\n    pass")
    completions = [good, stall] * 6
    totals, components = manager.score([""] * 12, completions, {"tests": [ADD_TESTS] * 12})
    assert totals == [1.0, 0.0] * 6 and list(components) == ["code_exec"]


def test_missing_tests_column_is_named():
    with pytest.raises(KeyError, match="code_exec needs the 'tests' column"):
        CodeExecReward()([""], ["x"], answer=["1"])
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        CodeExecReward(timeout_s=0)


SOLUTIONS = [  # one correct program per row of configs/tiny/code_exec_tasks.jsonl, written by hand
    "def add(a, b):\n    return a + b",
    "def square(x):\n    return x * x",
    "def is_even(n):\n    return n % 2 == 0",
    "def maximum(xs):\n    return max(xs)",
    "def reverse(s):\n    return s[::-1]",
    "def count_a(s):\n    return s.count('a')",
    "a, b = map(int, input().split())\nprint(a + b)",
    "print(int(input()) * 2)",
    "print(input().upper())",
    "for i in range(1, int(input()) + 1):\n    print(i)",
    "def factorial(n):\n    return 1 if n == 0 else n * factorial(n - 1)",
    "def last_digit(n):\n    return n % 10",
]


def test_example_config_rows_pass_with_correct_programs_and_fail_with_empty_ones():
    from pathlib import Path

    from rlpost.config import load_config
    from rlpost.data import load_rows
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs/tiny/code_exec.yaml")
    rows = load_rows(str(root / cfg.data.train_path))
    assert len(rows) == len(SOLUTIONS) == 12
    manager = RewardManager.from_config(cfg.rewards)
    tests = [r["tests"] for r in rows]
    right = [fenced(s) for s in SOLUTIONS]
    empty = [fenced("pass")] * len(rows)
    assert manager.score([""] * 12, right, {"tests": tests})[0] == [1.0] * 12
    assert manager.score([""] * 12, empty, {"tests": tests})[0] == [0.0] * 12
