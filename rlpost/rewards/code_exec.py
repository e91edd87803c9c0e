"""``code_exec``: run the completion's program against the row's tests in the sandbox; reward = share passed.

    rewards:
      - name: code_exec
        kwargs: {tests_column: tests, timeout_s: 2, memory_mb: 512, max_workers: 8}

The program is the completion's last fenced code block (```` ```python ... ``` ````, or a bare ```` ``` ````
fence; an unclosed fence, as left by a completion cut at the length limit, does not count). No block: 0.

The row's ``tests`` column holds either

* **assert tests**: a list of Python statements (``["assert add(1, 2) == 3", ...]``), or one string with one
  statement per line. The program runs once, then each statement in its namespace; a test passes when it
  raises nothing.
* **stdin/stdout tests**: a list of ``{"input": str, "output": str}``, or ``{"inputs": [...], "outputs": [...]}``
  (the APPS / CodeContests layout). Each test runs the program afresh as ``__main__`` with that stdin; it passes
  when its stdout equals the expected output, compared line by line with trailing whitespace and trailing empty
  lines ignored.

A JSON string holding either form is decoded first (parquet files often store tests that way).

reward = passed / number of tests   (0 for no code block, a syntax error or a crash of the whole program)

One sandboxed process per completion (rlpost/sandbox.py: a fresh interpreter, standard library only, no network,
address-space and CPU limits, a wall-clock kill), ``max_workers`` of them at once. Inside it each test has its
own time limit (``timeout_s``, a SIGALRM the program's ``except Exception`` cannot swallow), so an infinite loop
or a crash costs that test only; the whole process is killed after ``timeout_s`` x tests + 2 s at the latest
(``max_total_s`` caps it), and tests that had not reported by then fail. Results are printed with a random token
per run, so a program that prints "passed" or exits early (``sys.exit(0)`` before the tests) gains nothing.
"""
from __future__ import annotations

import base64
import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

from rlpost.rewards import REWARDS
from rlpost.sandbox import run_python

_FENCE = re.compile(r"```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)```", re.S)

_HARNESS = r'''
import base64 as _b64, io as _io, os as _os, signal as _signal, sys as _sys
_TOKEN, _MODE, _LIMIT = {token!r}, {mode!r}, {limit!r}
_SOURCE, _TESTS = {source!r}, {tests!r}
_write = _os.write   # exit() and quit() come from the site module, which the sandbox does not load: given below

class _TestTimeout(BaseException):
    pass

def _alarm(signum, frame):
    raise _TestTimeout()

def _report(i, ok, out=b""):
    _write(1, ("\n%s %d %d %s\n" % (_TOKEN, i, int(ok), _b64.b64encode(out).decode())).encode())

def _timed(fn):
    _signal.signal(_signal.SIGALRM, _alarm)
    _signal.setitimer(_signal.ITIMER_REAL, _LIMIT)
    try:
        fn()
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)

try:
    _code = compile(_SOURCE, "solution.py", "exec")
except BaseException:
    _code = None

if _code is None:
    pass
elif _MODE == "assert":
    _g = {{"__name__": "__main__", "exit": _sys.exit, "quit": _sys.exit}}
    try:
        _timed(lambda: exec(_code, _g))
        _ok_program = True
    except BaseException:
        _ok_program = False
    for _i, _test in enumerate(_TESTS):
        _ok = False
        if _ok_program:
            try:
                _timed(lambda: exec(compile(_test, "test_%d" % _i, "exec"), _g))
                _ok = True
            except BaseException:
                pass
        _report(_i, _ok)
else:
    for _i, _stdin in enumerate(_TESTS):
        _path = "stdin_%d.txt" % _i                 # the test's input on fd 0: input(), sys.stdin, open(0) all read it
        with open(_path, "w", encoding="utf-8") as _f:
            _f.write(_stdin)
        _fd = _os.open(_path, _os.O_RDONLY)
        if _fd != 0:                                 # 0 itself when the last test's open(0) closed it
            _os.dup2(_fd, 0)
            _os.close(_fd)
        _sys.stdin = _io.TextIOWrapper(_io.BufferedReader(_io.FileIO(0, "r", closefd=False)), encoding="utf-8")
        _out = _io.BytesIO()
        _sys.stdout = _io.TextIOWrapper(_out, encoding="utf-8", write_through=True)
        _ok = True
        try:
            _timed(lambda: exec(_code, {{"__name__": "__main__", "exit": _sys.exit, "quit": _sys.exit}}))
        except SystemExit as _e:
            _ok = _e.code in (None, 0)
        except BaseException:
            _ok = False
        try:
            _sys.stdout.flush()
        except BaseException:
            pass
        _report(_i, _ok, _out.getvalue())
'''


def last_code_block(text: str) -> str | None:
    """The body of the last closed ``` fence in ``text`` (any language tag), or None when there is none."""
    blocks = _FENCE.findall(text or "")
    return blocks[-1][1] if blocks else None


def parse_tests(tests) -> tuple[str, list, list | None]:
    """A row's tests -> (mode, inputs, expected outputs): ("assert", [statements], None) or
    ("stdio", [stdin strings], [stdout strings]). Raises ValueError naming what it got."""
    if isinstance(tests, str) and tests.strip()[:1] in ("[", "{"):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError:
            pass
    if isinstance(tests, str):
        return "assert", [line for line in tests.splitlines() if line.strip()], None
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        if len(tests["inputs"]) != len(tests["outputs"]):
            raise ValueError(f"tests: {len(tests['inputs'])} inputs but {len(tests['outputs'])} outputs")
        return "stdio", [str(i) for i in tests["inputs"]], [str(o) for o in tests["outputs"]]
    if isinstance(tests, (list, tuple)) and all(isinstance(t, str) for t in tests):
        return "assert", list(tests), None
    if isinstance(tests, (list, tuple)) and all(isinstance(t, dict) and "input" in t and "output" in t for t in tests):
        return "stdio", [str(t["input"]) for t in tests], [str(t["output"]) for t in tests]
    raise ValueError(f"tests must be assert statements (a list of strings or one string) or stdin/stdout pairs "
                     f"([{{input, output}}] or {{inputs, outputs}}), got {tests!r:.120}")


def same_output(got: str, expected: str) -> bool:
    """Equal line by line after removing trailing whitespace of each line and trailing empty lines."""
    def lines(text):
        out = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out
    return lines(got) == lines(expected)


@REWARDS.register("code_exec")
class CodeExecReward:
    """Share of the row's tests the completion's last code block passes, run in the sandbox (module docstring).

    kwargs:
      tests_column   the column with the tests (default ``tests``)
      timeout_s      wall-clock limit per test, in seconds (default 2)
      max_total_s    cap on one completion's whole run (default 30)
      memory_mb      address-space limit of each run (default 512)
      max_workers    sandboxes running at once (default 8)
      max_output_kb  stdout kept per run (default 1024); tests whose report falls beyond it fail
      name           component name (default ``code_exec``)
    """

    def __init__(self, tests_column: str = "tests", timeout_s: float = 2.0, max_total_s: float = 30.0,
                 memory_mb: int = 512, max_workers: int = 8, max_output_kb: int = 1024, name: str = "code_exec"):
        for key, value in (("timeout_s", timeout_s), ("max_total_s", max_total_s), ("memory_mb", memory_mb),
                           ("max_workers", max_workers), ("max_output_kb", max_output_kb)):
            if not value > 0:
                raise ValueError(f"code_exec: {key} must be > 0, got {value!r}")
        self.tests_column, self.name = tests_column, name
        self.timeout_s, self.max_total_s = float(timeout_s), float(max_total_s)
        self.memory_mb, self.max_workers, self.max_output_kb = int(memory_mb), int(max_workers), int(max_output_kb)

    @staticmethod
    def required_columns(tests_column: str = "tests", **kwargs) -> list[str]:
        """The dataset column this reward reads (``rlpost doctor`` checks the first rows have it)."""
        return [tests_column]

    @staticmethod
    def check_rows(rows: list[dict], tests_column: str = "tests", **kwargs) -> None:
        """Raise ValueError naming the row when its tests are in no known format (``rlpost doctor``)."""
        for i, row in enumerate(rows):
            try:
                parse_tests(row.get(tests_column))
            except ValueError as err:
                raise ValueError(f"row {i}: {err}") from None

    def __call__(self, prompts, completions, **columns) -> list[float]:
        if self.tests_column not in columns:
            raise KeyError(f"code_exec needs the {self.tests_column!r} column (kwargs.tests_column); the rows have "
                           f"{sorted(k for k, v in columns.items() if isinstance(v, list))}")
        tests = [parse_tests(t) for t in columns[self.tests_column]]
        with ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="code_exec") as pool:
            return list(pool.map(self.score_one, completions, tests))

    def score_one(self, completion: str, tests: tuple[str, list, list | None]) -> float:
        """passed / len(tests) for one completion (0.0 when there are no tests or no code block)."""
        mode, inputs, expected = tests
        source = last_code_block(completion)
        if source is None or not inputs:
            return 0.0
        results = self.run(source, mode, inputs)
        if mode == "assert":
            passed = sum(ok for ok, _ in results.values())
        else:
            passed = sum(ok and same_output(out, expected[i]) for i, (ok, out) in results.items())
        return passed / len(inputs)

    def run(self, source: str, mode: str, inputs: list[str]) -> dict[int, tuple[bool, str]]:
        """Run the harness in the sandbox -> {test index: (ran without error, its stdout)} for the tests that
        reported (a test missing from the dict did not finish before the process ended)."""
        token = secrets.token_hex(16)
        code = _HARNESS.format(token=token, mode=mode, limit=self.timeout_s, source=source, tests=inputs)
        wall = min(self.max_total_s, self.timeout_s * (len(inputs) + 1) + 2.0)
        res = run_python(code, timeout_s=wall, memory_mb=self.memory_mb, max_output_bytes=self.max_output_kb * 1024)
        results = {}
        for match in re.finditer(rf"^{token} (\d+) ([01]) ([A-Za-z0-9+/=]*)$", res.stdout, re.M):
            index = int(match.group(1))
            if 0 <= index < len(inputs) and index not in results:
                results[index] = (match.group(2) == "1",
                                  base64.b64decode(match.group(3)).decode("utf-8", "replace"))
        return results

    def __repr__(self) -> str:
        return f"CodeExecReward(name={self.name!r}, tests_column={self.tests_column!r}, timeout_s={self.timeout_s})"
