"""A parsed tool call, a tool call that could not be read, and the reading of JSON call objects.

Every parser of :mod:`rlpost.envs.parsers` returns ``list[ToolCall]`` or a :class:`ToolParseError`; none raises on
model output. JSON call objects (``hermes``, ``llama3_json``, ``harmony``) are read by :func:`json_objects` and
:func:`to_call`: a JSON object, a JSON list of objects, or several objects one after another; Python-literal dicts
(single quotes, as in A²FM's examples) are accepted too, and ``arguments`` (or ``parameters``) may be an object or
a JSON string (OpenAI style).
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


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
    """The model tried to call a tool and the text cannot be read (no block, no closing tag, nothing parseable)."""
    message: str
    raw: str = ""

    def __str__(self) -> str:
        return self.message


BAD = object()   # stands for an object that does not parse, in json_objects' output


def json_objects(body: str) -> list[tuple[Any, str]] | str:
    """The call objects in ``body`` as ``[(object or BAD, its text)]``, or an error message when there is none."""
    if not body:
        return "empty tool call block"
    whole = _load(body)
    if isinstance(whole, list):
        return [(obj, json.dumps(obj)) for obj in whole] or "empty list of tool calls"
    if whole is not None:
        return [(whole, body)]
    found = [((obj if (obj := _load(raw)) is not None else BAD), raw) for raw in _top_level_braces(body)]
    if not found:
        return "no JSON object found in the tool call block"
    if len(found) == 1 and found[0][0] is BAD:
        return f"could not parse {found[0][1][:80]!r} as JSON"
    return found


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


def to_call(obj: Any, raw: str, index: int) -> ToolCall:
    """The ``index``-th (1-based) object of a turn as a :class:`ToolCall` (``error`` set when it is unusable);
    ``id`` is the object's own ``id`` or ``index``."""
    if obj is BAD:
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
