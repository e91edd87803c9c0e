"""Tool-call parsers: assistant text -> tool calls, chosen by ``rollout.workflow.parser``.

A parser returns ``[]`` when the turn calls no tool, a list of :class:`~rlpost.tools.ToolCall` (a call whose
object was unusable has ``error`` set), or a :class:`~rlpost.tools.ToolParseError` when the model clearly tried
to call a tool and the text cannot be read. Neither raises on model output.

* ``hermes`` (Qwen2.5, Hermes, Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one or more
  blocks per turn, each holding one or more objects.
* ``llama3_json`` (LLaMA-3.1/3.2/3.3 JSON tool calling): the whole turn is a JSON object
  ``{"name": ..., "parameters": {...}}`` (optionally after ``<|python_tag|>``; several separated by ``;``).
  A turn that does not start with ``{`` or ``[`` calls no tool.
"""
from __future__ import annotations

from rlpost.registry import Registry
from rlpost.tools import CALL_OPEN, ToolCall, ToolParseError, _objects, _to_call, parse_tool_calls

TOOL_CALL_PARSERS = Registry("tool-call parser")

# How each format is written, quoted back to the model when its call cannot be parsed.
EXAMPLES = {"hermes": '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>.',
            "llama3_json": '{"name": "<tool>", "parameters": {...}} as the whole message.'}


@TOOL_CALL_PARSERS.register("hermes")
def parse_hermes(text: str) -> list[ToolCall] | ToolParseError:
    """Every ``<tool_call>...</tool_call>`` block of the turn; ``[]`` without one."""
    if CALL_OPEN not in text:
        return []
    return parse_tool_calls(text)


@TOOL_CALL_PARSERS.register("llama3_json")
def parse_llama3_json(text: str) -> list[ToolCall] | ToolParseError:
    """The turn as JSON call objects (``name`` and ``parameters`` or ``arguments``); ``[]`` for plain text."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith(("{", "[")):
        return []
    objects = _objects(body)
    if isinstance(objects, str):
        return ToolParseError(objects, body[:200])
    return [_to_call(obj, raw, i + 1) for i, (obj, raw) in enumerate(objects)]
