"""Tools a policy can call during a rollout, and the tool-call text format (A²FM agentic mode).

Format (A²FM, ``infer/prompts.py`` and ``infer/utils.py`` of OPPO-PersonalAI/Adaptive_Agent_Foundation_Models):
the model writes one ``<tool_call>`` block holding one or more calls, each a JSON (or Python-literal)
object with ``name`` and ``arguments`` (``id`` optional); several objects in one block run in parallel.
Generation stops at ``</tool_call>``; the harness appends the observations, which are not trained on::

    <tool_call>
    {"id": 1, "name": "python", "arguments": {"code": "print(2**10)"}}
    {"id": 2, "name": "search", "arguments": {"query": "capital of France"}}
    </tool_call>
    <tool_response>
    Results for tool call 1 (python):
    1024
    ...
    </tool_response>

Tools (registered in :data:`TOOLS`, each ``fn(arguments: dict, ctx: ToolContext) -> str``):

* ``python``: runs ``arguments["code"]`` in :func:`rlpost.sandbox.run_python` (never in-process).
* ``calculator``: ``arguments["expression"]`` with + - * / ** % and parentheses on numbers only.
* ``search``: BM25 over the documents shipped with the task (``ToolContext.corpus``); no downloads.

A²FM's own names are accepted as aliases: ``code_execute`` -> python, ``web_search`` -> search.
Nothing here raises on model output: every problem becomes an error string for the model.
"""
from __future__ import annotations

import ast
import json
import math
import operator
import re
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from rlpost.registry import Registry
from rlpost.sandbox import run_python

TOOLS = Registry("tool")
TOOL_ALIASES = {"code_execute": "python", "web_search": "search", "calc": "calculator"}

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"


@dataclass
class ToolCall:
    """One parsed call. ``error`` is set (and the call is not run) when its object was unusable."""
    name: str
    arguments: dict[str, Any]
    id: Any = None
    raw: str = ""
    error: str | None = None


@dataclass
class ToolParseError:
    """The block as a whole could not be read (no block, no closing tag, nothing parseable)."""
    message: str
    raw: str = ""

    def __str__(self) -> str:
        return self.message


@dataclass
class ToolContext:
    """Per-rollout tool settings and data.

    corpus: documents for ``search``: strings or dicts with "text" (and optional "title", "id")
    """
    corpus: list | None = None
    timeout_s: float = 5.0
    memory_mb: int = 256
    max_output_chars: int = 4000
    top_k: int = 3
    _index: "BM25Index | None" = field(default=None, repr=False)

    @property
    def index(self) -> "BM25Index":
        if self._index is None:
            self._index = BM25Index(self.corpus or [])
        return self._index


# ----------------------------------------------------------------------------------- parsing

def parse_tool_calls(text: str) -> list[ToolCall] | ToolParseError:
    """Parse every ``<tool_call>...</tool_call>`` block in ``text`` into calls.

    Returns a :class:`ToolParseError` (never raises) when there is no block, a block is not
    closed, or a block holds no object at all. A block's content may be a JSON object, a JSON
    list of objects, or several objects one after another; Python-literal dicts (single quotes,
    as in A²FM's examples) are accepted too. An object without a usable ``name``/``arguments``
    becomes a ``ToolCall`` with ``error`` set.
    """
    if CALL_OPEN not in text:
        return ToolParseError(f"no {CALL_OPEN} block found", text[-200:])
    calls: list[ToolCall] = []
    pos = 0
    while (start := text.find(CALL_OPEN, pos)) != -1:
        end = text.find(CALL_CLOSE, start)
        if end == -1:
            return ToolParseError(f"{CALL_OPEN} is not closed with {CALL_CLOSE}", text[start:start + 200])
        body = text[start + len(CALL_OPEN):end].strip()
        pos = end + len(CALL_CLOSE)
        objects = _objects(body)
        if isinstance(objects, str):
            return ToolParseError(objects, body[:200])
        calls += [_to_call(obj, raw, len(calls) + i + 1) for i, (obj, raw) in enumerate(objects)]
    return calls


def _objects(body: str) -> list[tuple[Any, str]] | str:
    """The objects in one block (``_BAD`` for one that does not parse), or an error message."""
    if not body:
        return "empty tool call block"
    whole = _load(body)
    if isinstance(whole, list):
        return [(obj, json.dumps(obj)) for obj in whole] or "empty list of tool calls"
    if whole is not None:
        return [(whole, body)]
    found = [((obj if (obj := _load(raw)) is not None else _BAD), raw) for raw in _top_level_braces(body)]
    if not found:
        return "no JSON object found in the tool call block"
    if len(found) == 1 and found[0][0] is _BAD:
        return f"could not parse {found[0][1][:80]!r} as JSON"
    return found


_BAD = object()


def _load(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        pass
    try:
        return ast.literal_eval(s)  # literals only: no names, calls or attribute access are evaluated
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def _top_level_braces(s: str) -> list[str]:
    """Substrings ``{...}`` at brace depth 0, skipping braces inside quoted strings."""
    out, depth, start, quote, escape = [], 0, 0, None, False
    for i, ch in enumerate(s):
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                out.append(s[start:i + 1])
    return out


def _to_call(obj: Any, raw: str, index: int) -> ToolCall:
    if obj is _BAD:
        return ToolCall("", {}, index, raw, error=f"tool call {index} could not be parsed as JSON: {raw[:80]!r}")
    if not isinstance(obj, dict):
        return ToolCall("", {}, index, raw, error=f"tool call {index} is not a JSON object")
    name, args = obj.get("name"), obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # OpenAI style: arguments as a JSON string
        args = _load(args) if args.strip() else {}
    call_id = obj.get("id", index)
    if not isinstance(name, str) or not name:
        return ToolCall("", {}, call_id, raw, error=f"tool call {index} has no 'name'")
    if not isinstance(args, dict):
        return ToolCall(name, {}, call_id, raw, error=f"tool call {index} ({name}): 'arguments' must be an object")
    return ToolCall(name, args, call_id, raw)


# --------------------------------------------------------------------------------- execution

def run_tool_calls(calls: list[ToolCall] | ToolParseError, ctx: ToolContext,
                   allowed: tuple[str, ...] | list[str] | None = None) -> str:
    """Execute parsed calls and render the observation text (the content of ``<tool_response>``).

    Errors (parse errors, unknown or disallowed tools, bad arguments, tool failures) are rendered
    as messages in the observation, never raised.
    """
    if isinstance(calls, ToolParseError):
        return (f"Error: the tool call could not be parsed ({calls.message}). Write "
                f'{CALL_OPEN}{{"name": "<tool>", "arguments": {{...}}}}{CALL_CLOSE}.')
    if not calls:
        return "Error: no tool call found."
    parts = []
    for i, call in enumerate(calls, start=1):
        name = TOOL_ALIASES.get(call.name, call.name)
        parts.append(f"Results for tool call {i} ({call.name or '?'}):\n{_run_one(call, name, ctx, allowed)}")
    return "\n\n".join(parts)


def _run_one(call: ToolCall, name: str, ctx: ToolContext, allowed) -> str:
    if call.error:
        return f"Error: {call.error}"
    allowed_names = list(allowed) if allowed is not None else TOOLS.names()
    if name not in TOOLS or name not in allowed_names:
        return f"Error: unknown tool {call.name!r}; available: {', '.join(allowed_names)}"
    try:
        out = TOOLS.get(name)(call.arguments, ctx)
    except Exception as err:  # a tool bug must not kill the rollout
        out = f"Error: {name} failed: {type(err).__name__}: {err}"
    if len(out) > ctx.max_output_chars:
        out = out[:ctx.max_output_chars] + f"\n... [truncated to {ctx.max_output_chars} characters]"
    return out


def render_tool_response(observation: str) -> str:
    """The text appended after ``</tool_call>`` (loss-masked in the rollout)."""
    return f"\n{RESPONSE_OPEN}\n{observation}\n{RESPONSE_CLOSE}\n"


# ------------------------------------------------------------------------------------- tools

_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*\s*\n(.*?)\n?\s*```\s*$", re.DOTALL)


@TOOLS.register("python")
def python_tool(arguments: dict, ctx: ToolContext) -> str:
    """Run ``arguments["code"]`` (a Markdown fence is stripped) in the sandbox; return its output."""
    code = arguments.get("code")
    if not isinstance(code, str) or not code.strip():
        return "Error: python needs a non-empty 'code' string"
    if m := _FENCE.match(code):
        code = m.group(1)
    res = run_python(code, timeout_s=ctx.timeout_s, memory_mb=ctx.memory_mb,
                     max_output_bytes=ctx.max_output_chars)
    text = res.stdout
    if res.stderr.strip():
        text += ("\n" if text and not text.endswith("\n") else "") + "stderr:\n" + res.stderr
    if res.timed_out:
        text += f"\n[killed: exceeded {ctx.timeout_s:g} s]"
    elif res.killed_reason:
        text += f"\n[killed: {res.killed_reason}]"
    elif res.returncode != 0 and not res.stderr.strip():
        text += f"\n[exit status {res.returncode}]"
    return text.strip() or "(no output)"


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
    if isinstance(v, Fraction):
        return str(v.numerator) if v.denominator == 1 else repr(float(v))
    return repr(v)


@TOOLS.register("calculator")
def calculator_tool(arguments: dict, ctx: ToolContext) -> str:
    expr = arguments.get("expression", arguments.get("expr"))
    if not isinstance(expr, str):
        return "Error: calculator needs an 'expression' string"
    try:
        return format_number(calculate(expr))
    except (ValueError, ZeroDivisionError, OverflowError) as err:
        return f"Error: {err}"


_WORD = re.compile(r"\w+")


def _terms(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class BM25Index:
    """Okapi BM25 over a small in-memory corpus (k1=1.5, b=0.75, idf = ln(1 + (N-df+0.5)/(df+0.5)))."""

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


@TOOLS.register("search")
def search_tool(arguments: dict, ctx: ToolContext) -> str:
    query = arguments.get("query")
    if isinstance(query, list):
        query = " ".join(map(str, query))
    if not isinstance(query, str) or not query.strip():
        return "Error: search needs a 'query' string"
    if not ctx.corpus:
        return "Error: no documents are available to search for this task"
    hits = ctx.index.search(query, ctx.top_k)
    if not hits:
        return f"No results for {query!r}."
    lines = []
    for rank, (i, score) in enumerate(hits, start=1):
        d = ctx.index.docs[i]
        title = d.get("title") or d.get("id") or f"document {i}"
        lines.append(f"[{rank}] {title}\n{str(d.get('text', ''))[:800]}")
    return "\n\n".join(lines)
