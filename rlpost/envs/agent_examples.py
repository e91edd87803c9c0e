"""A shipped agent for the ``agent`` workflow (rlpost/workflows/agent.py, docs/environments.md "Agent workflow").

:func:`calculator_agent` is the calculator task (rlpost/envs/examples.py ``CalculatorEnv``) written as ordinary
agent code against an OpenAI client: it asks the model, runs the ``calculator`` tool when the reply holds a Hermes
``<tool_call>``, sends the result back as a ``tool`` message, and scores the first reply without a tool call.
Nothing in it knows about training: the same function runs against any OpenAI-compatible server.
"""
from __future__ import annotations

from rlpost.envs.examples import calculator, last_int
from rlpost.envs.parsers import parse_hermes
from rlpost.envs.calls import ToolParseError

SYSTEM = "Use the calculator."      # the warm start's system prompt (tiny:qwen2:calculator_tool, its CARD.md)


def run_calls(text: str) -> list[dict] | None:
    """The ``tool`` messages answering the reply's tool calls; None when it calls no tool."""
    calls = parse_hermes(text)
    if not calls:
        return None
    if isinstance(calls, ToolParseError):
        return [{"role": "tool", "name": "error", "content": f"Error: the tool call could not be parsed ({calls.message})"}]
    out = []
    for call in calls:
        try:
            if call.error or call.name != "calculator":
                raise ValueError(call.error or f"unknown tool {call.name!r}; available: calculator")
            result = calculator(**call.arguments)
        except Exception as err:   # the model's mistake is answered, as a tool server would
            result = f"Error: {err}"
        out.append({"role": "tool", "name": call.name or "?", "content": result})
    return out


async def calculator_agent(client, row: dict, max_turns: int = 3, max_tokens: int = 96):
    """One episode: up to ``max_turns`` model replies; returns (messages, reward), reward 1.0 when the first reply
    without a tool call ends in ``row["answer"]``."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": row["messages"][-1]["content"]}]
    for _ in range(max_turns):
        reply = await client.chat.completions.create(model="policy", messages=messages, max_tokens=max_tokens)
        text = reply.choices[0].message.content or ""
        messages.append({"role": "assistant", "content": text})
        results = run_calls(text)
        if results is None:
            return messages, float(last_int(text) == int(row["answer"]))
        messages += results
    return messages, 0.0
