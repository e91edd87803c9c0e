"""Shipped tools, written the way users write environment tools (plain functions or bound methods with type
hints and an ``Args:`` docstring): ``calculator``, ``python`` (in :func:`rlpost.sandbox.run_python`, never
in-process) and ``search`` (BM25 over documents shipped with the task; nothing is downloaded).

    from rlpost.envs.tools import PythonSandbox, Search, calculator, python
    tools = [calculator, python]                                  # default sandbox limits
    tools = [PythonSandbox(timeout_s=2).python, Search(row["corpus"]).search]

A tool raises ``ValueError`` on arguments it cannot use; the workflow answers the model with the error
(``Error: calculator raised ValueError: division by zero``, rlpost/envs/base.py). :class:`rlpost.envs.examples.
CalculatorEnv` and A²FM's agentic mode (:func:`rlpost.workflows.a2fm.agent_tools`) use these tools.
"""
from __future__ import annotations

import ast
import math
import operator
import re
from collections import Counter
from fractions import Fraction

from rlpost.sandbox import run_python

# ----------------------------------------------------------------------------------- calculator

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_MAX_BITS = 35_000  # about 10,000 decimal digits


def calculate(expression: str) -> Fraction | float:
    """Evaluate + - * / ** % and parentheses on numeric literals. Raises ValueError on anything else.

    Integers and decimals are exact (``Fraction``); a non-integer power falls back to float.
    Results beyond ~10,000 digits are refused instead of computed.
    """
    if len(expression) > 1000:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an arithmetic expression: {err.msg}") from None

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, (ast.Div, ast.Mod)) and b == 0:
                raise ValueError("division by zero")
            if isinstance(node.op, ast.Pow):
                return _power(a, b)
            out = _BINOPS[type(node.op)](a, b)
            _check_size(out)
            return out
        raise ValueError(f"only numbers, + - * / ** % and parentheses are allowed, not {type(node).__name__}")

    return ev(tree)


def _power(a, b):
    if isinstance(b, Fraction) and b.denominator == 1 and isinstance(a, Fraction):
        e = int(b)
        if a == 0 and e < 0:
            raise ValueError("division by zero")
        size = max(abs(a.numerator).bit_length(), a.denominator.bit_length())
        if abs(e) * size > _MAX_BITS:
            raise ValueError("result too large")
        return a ** e
    if float(a) < 0:
        raise ValueError("fractional power of a negative number")
    try:
        return math.pow(float(a), float(b))
    except OverflowError:
        raise ValueError("result too large") from None


def _check_size(v):
    if isinstance(v, Fraction) and max(abs(v.numerator).bit_length(), v.denominator.bit_length()) > _MAX_BITS:
        raise ValueError("result too large")


def format_number(v: Fraction | float) -> str:
    """An integer as its digits; anything else as Python's shortest float repr (``0.1 + 0.2`` -> ``0.3``)."""
    if isinstance(v, Fraction):
        return str(v.numerator) if v.denominator == 1 else repr(float(v))
    return repr(v)


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: numbers with + - * / ** % and parentheses, e.g. "1234*5678"
    """
    return format_number(calculate(expression))


# --------------------------------------------------------------------------------------- python

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


class PythonSandbox:
    """The ``python`` tool with its sandbox limits: ``PythonSandbox(timeout_s, memory_mb, max_output_chars).python``.

    Output: stdout, then ``stderr:`` and stderr when there is any, then ``[killed: exceeded T s]``,
    ``[killed: <reason>]`` or ``[exit status N]`` (non-zero, without stderr); ``(no output)`` when empty.
    """

    def __init__(self, timeout_s: float = 5.0, memory_mb: int = 256, max_output_chars: int = 4000):
        self.timeout_s, self.memory_mb, self.max_output_chars = timeout_s, memory_mb, max_output_chars

    def python(self, code: str) -> str:
        """Run Python code (standard library only) in a sandbox and return what it prints.

        Args:
            code: the program (a Markdown code fence around it is removed); print the values you need
        """
        if not isinstance(code, str) or not code.strip():
            raise ValueError("python needs a non-empty 'code' string")
        if m := _FENCE.match(code):
            code = m.group(1)
        res = run_python(code, timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                         max_output_bytes=self.max_output_chars)
        text = res.stdout
        if res.stderr.strip():
            text += ("\n" if text and not text.endswith("\n") else "") + "stderr:\n" + res.stderr
        if res.timed_out:
            text += f"\n[killed: exceeded {self.timeout_s:g} s]"
        elif res.killed_reason:
            text += f"\n[killed: {res.killed_reason}]"
        elif res.returncode != 0 and not res.stderr.strip():
            text += f"\n[exit status {res.returncode}]"
        return text.strip() or "(no output)"


python = PythonSandbox().python   # the python tool with the default limits (5 s, 256 MB, 4000 characters)


# --------------------------------------------------------------------------------------- search

_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25Index:
    """Okapi BM25 over a small in-memory corpus (k1=1.5, b=0.75, idf = ln(1 + (N-df+0.5)/(df+0.5))).

    docs: strings or dicts with "text" (and optional "title", which is searched too, and "id")
    """

    def __init__(self, docs: list, k1: float = 1.5, b: float = 0.75):
        self.docs = [d if isinstance(d, dict) else {"text": str(d)} for d in docs]
        self.k1, self.b = k1, b
        self.tfs = [Counter(_terms(f"{d.get('title', '')} {d.get('text', '')}")) for d in self.docs]
        self.lengths = [sum(tf.values()) for tf in self.tfs]
        self.avg_len = sum(self.lengths) / len(self.lengths) if self.lengths else 0.0
        df = Counter(t for tf in self.tfs for t in tf)
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}

    def scores(self, query: str) -> list[float]:
        q = _terms(query)
        out = []
        for tf, length in zip(self.tfs, self.lengths):
            s = 0.0
            for t in q:
                f = tf.get(t, 0)
                if f:
                    s += self.idf[t] * f * (self.k1 + 1) / (f + self.k1 * (1 - self.b + self.b * length / self.avg_len))
            out.append(s)
        return out

    def search(self, query: str, top_k: int = 3) -> list[tuple[int, float]]:
        """``[(doc index, score)]``, best first, score > 0 only."""
        ranked = sorted(enumerate(self.scores(query)), key=lambda p: (-p[1], p[0]))
        return [(i, s) for i, s in ranked[:top_k] if s > 0]


class Search:
    """The ``search`` tool over one task's documents: ``Search(corpus, top_k).search`` (the index is built on the
    first search). Output: the ``top_k`` best hits as ``[rank] title`` (or id, or ``document i``) and the first
    ``max_chars`` characters of their text, or ``No results for 'query'.``"""

    def __init__(self, corpus: list | None, top_k: int = 3, max_chars: int = 800):
        self.corpus, self.top_k, self.max_chars = list(corpus or []), top_k, max_chars
        self._index: BM25Index | None = None

    def search(self, query: str) -> str:
        """Search the documents provided with the task.

        Args:
            query: the words to look for
        """
        if isinstance(query, list):
            query = " ".join(map(str, query))
        if not isinstance(query, str) or not query.strip():
            raise ValueError("search needs a 'query' string")
        if not self.corpus:
            raise ValueError("no documents are available to search for this task")
        if self._index is None:
            self._index = BM25Index(self.corpus)
        hits = self._index.search(query, self.top_k)
        if not hits:
            return f"No results for {query!r}."
        lines = []
        for rank, (i, _) in enumerate(hits, start=1):
            d = self._index.docs[i]
            title = d.get("title") or d.get("id") or f"document {i}"
            lines.append(f"[{rank}] {title}\n{str(d.get('text', ''))[:self.max_chars]}")
        return "\n\n".join(lines)
