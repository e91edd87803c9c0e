"""Tool-call parsers: assistant text -> tool calls, chosen by ``rollout.workflow.parser``.

A parser returns ``[]`` when the turn calls no tool, a list of :class:`~rlpost.envs.calls.ToolCall` (a call whose
object was unusable has ``error`` set), or a :class:`~rlpost.envs.calls.ToolParseError` when the model clearly
tried to call a tool and the text cannot be read. Neither raises on model output.

* ``hermes`` (Qwen2.5, Hermes, Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one or more
  blocks per turn, each holding one or more objects.
* ``llama3_json`` (LLaMA-3.1/3.2/3.3 JSON tool calling): the whole turn is a JSON object
  ``{"name": ..., "parameters": {...}}`` (optionally after ``<|python_tag|>``; several separated by ``;``).
  A turn that does not start with ``{`` or ``[`` calls no tool.
* ``qwen3_xml`` (Qwen3.5, Qwen3-Coder): ``<tool_call>\n<function=NAME>\n<parameter=KEY>\nVALUE\n</parameter>
  ...</function>\n</tool_call>``.
* ``glm4`` (GLM-4.5 / 4.6): ``<tool_call>NAME\n<arg_key>KEY</arg_key>\n<arg_value>VALUE</arg_value>...</tool_call>``.
* ``harmony`` (GPT-OSS): ``<|start|>assistant to=functions.NAME<|channel|>commentary json<|message|>{...}<|call|>``.

In the XML formats a value is read as JSON when it parses (``3`` -> 3, ``[1, 2]``) and kept as text otherwise.
Parsers marked ``raw`` (the three above) read the turn decoded with its special tokens (harmony's channel
markers are special tokens); ``hermes`` and ``llama3_json`` read the turn's text without them.
"""
from __future__ import annotations

import json
import re

from rlpost.envs.calls import CALL_CLOSE, CALL_OPEN, ToolCall, ToolParseError, json_objects, to_call
from rlpost.registry import Registry

TOOL_CALL_PARSERS = Registry("tool-call parser")

# How each format is written, quoted back to the model when its call cannot be parsed.
EXAMPLES = {"hermes": '<tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>.',
            "llama3_json": '{"name": "<tool>", "parameters": {...}} as the whole message.',
            "qwen3_xml": "<tool_call>\n<function=<tool>>\n<parameter=<name>>\n<value>\n</parameter>\n</function>\n</tool_call>.",
            "glm4": "<tool_call><tool>\n<arg_key><name></arg_key>\n<arg_value><value></arg_value>\n</tool_call>.",
            "harmony": "<|channel|>commentary to=functions.<tool> <|constrain|>json<|message|>{...}<|call|>."}


@TOOL_CALL_PARSERS.register("hermes")
def parse_hermes(text: str) -> list[ToolCall] | ToolParseError:
    """Every ``<tool_call>...</tool_call>`` block of the turn, each holding one or more JSON call objects
    (:func:`~rlpost.envs.calls.json_objects`); ``[]`` without a block."""
    blocks = _blocks(text)
    if isinstance(blocks, ToolParseError):
        return blocks
    calls: list[ToolCall] = []
    for body in blocks:
        objects = json_objects(body.strip())
        if isinstance(objects, str):
            return ToolParseError(objects, body.strip()[:200])
        calls += [to_call(obj, raw, len(calls) + i + 1) for i, (obj, raw) in enumerate(objects)]
    return calls


@TOOL_CALL_PARSERS.register("llama3_json")
def parse_llama3_json(text: str) -> list[ToolCall] | ToolParseError:
    """The turn as JSON call objects (``name`` and ``parameters`` or ``arguments``); ``[]`` for plain text."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith(("{", "[")):
        return []
    objects = json_objects(body)
    if isinstance(objects, str):
        return ToolParseError(objects, body[:200])
    return [to_call(obj, raw, i + 1) for i, (obj, raw) in enumerate(objects)]


def _value(text: str):
    """An XML-format argument: JSON when it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _blocks(text: str) -> list[str] | ToolParseError:
    """The bodies of the ``<tool_call>...</tool_call>`` blocks; an unclosed block is a parse error."""
    out, pos = [], 0
    while (start := text.find(CALL_OPEN, pos)) != -1:
        end = text.find(CALL_CLOSE, start)
        if end == -1:
            return ToolParseError(f"{CALL_OPEN} is not closed with {CALL_CLOSE}", text[start:start + 200])
        out.append(text[start + len(CALL_OPEN):end])
        pos = end + len(CALL_CLOSE)
    return out


_FUNCTION = re.compile(r"<function=([^>\n]+)>(.*?)</function>", re.S)
_PARAMETER = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


@TOOL_CALL_PARSERS.register("qwen3_xml")
def parse_qwen3_xml(text: str) -> list[ToolCall] | ToolParseError:
    """Every ``<tool_call><function=NAME><parameter=KEY>VALUE</parameter>...</function></tool_call>`` block."""
    blocks = _blocks(text)
    if isinstance(blocks, ToolParseError):
        return blocks
    calls = []
    for i, body in enumerate(blocks, start=1):
        fn = _FUNCTION.search(body)
        if fn is None:
            calls.append(ToolCall("", {}, i, body, error=f"tool call {i} has no <function=...>...</function>"))
            continue
        args = {k.strip(): _value(v) for k, v in _PARAMETER.findall(fn.group(2))}
        calls.append(ToolCall(fn.group(1).strip(), args, i, body))
    return calls


_ARG = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.S)


@TOOL_CALL_PARSERS.register("glm4")
def parse_glm4(text: str) -> list[ToolCall] | ToolParseError:
    """Every ``<tool_call>NAME<arg_key>KEY</arg_key><arg_value>VALUE</arg_value>...</tool_call>`` block."""
    blocks = _blocks(text)
    if isinstance(blocks, ToolParseError):
        return blocks
    calls = []
    for i, body in enumerate(blocks, start=1):
        name = body.split("<arg_key>", 1)[0].strip()
        if not name:
            calls.append(ToolCall("", {}, i, body, error=f"tool call {i} has no function name"))
            continue
        calls.append(ToolCall(name, {k.strip(): _value(v) for k, v in _ARG.findall(body)}, i, body))
    return calls


_HARMONY_CALL = re.compile(r"to=functions\.([^\s<]+)[^<]*"                  # the recipient, then the header:
                           r"(?:<\|channel\|>[^<]*)?(?:<\|constrain\|>[^<]*)?"   # channel, content type
                           r"<\|message\|>(.*?)<\|call\|>", re.S)               # the arguments


@TOOL_CALL_PARSERS.register("harmony")
def parse_harmony(text: str) -> list[ToolCall] | ToolParseError:
    """Every ``to=functions.NAME ... <|message|>{json}<|call|>`` message of the turn (the arguments are JSON)."""
    calls = []
    for i, (name, body) in enumerate(_HARMONY_CALL.findall(text), start=1):
        objects = json_objects(body.strip())
        obj = objects[0][0] if isinstance(objects, list) and len(objects) == 1 else None
        if not isinstance(obj, dict):
            calls.append(ToolCall(name, {}, i, body, error=f"tool call {i} ({name}): the arguments are not one JSON object"))
        else:
            calls.append(ToolCall(name, obj, i, body))
    if not calls and "to=functions." in text:
        return ToolParseError("a message to=functions.<tool> is not closed with <|message|>{...}<|call|>", text[-200:])
    return calls


def harmony_final(text: str) -> str:
    """GPT-OSS: the text of the turn's ``final`` channel (the last message's text when it has none)."""
    finals = re.findall(r"<\|channel\|>final<\|message\|>(.*?)(?:<\|return\|>|<\|end\|>|$)", text, re.S)
    if finals:
        return finals[-1]
    parts = re.split(r"<\|message\|>", text)
    return re.split(r"<\|(?:end|return|call)\|>", parts[-1])[0]


for _name in ("qwen3_xml", "glm4", "harmony"):
    TOOL_CALL_PARSERS.get(_name).raw = True
