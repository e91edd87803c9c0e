"""User agents for tests/workflows/test_agent.py (imported by the agent workflow as ``agent_helpers:<name>``)."""
import openai

from rlpost.envs.examples import calculator

SEEN: list[dict] = []   # what each episode's agent saw: its client and the parsed replies


async def tool_agent(client, row):
    """Three requests: a chat turn, a tool step (the agent runs the calculator), a chat turn that extends the
    first, and a completions request on another prompt (a row of its own). Sends its own sampling settings."""
    messages = [{"role": "system", "content": "Use the calculator."}, {"role": "user", "content": row["messages"][-1]["content"]}]
    first = await client.chat.completions.create(model="my-agent-model", messages=messages, max_tokens=500,
                                                 temperature=0.3)
    messages.append({"role": "assistant", "content": first.choices[0].message.content})
    messages.append({"role": "tool", "name": "calculator", "content": calculator(row["messages"][-1]["content"].rstrip("="))})
    second = await client.chat.completions.create(model="my-agent-model", messages=messages)
    messages.append({"role": "assistant", "content": second.choices[0].message.content})
    third = await client.completions.create(model="my-agent-model", prompt="12+34=", max_tokens=12)
    SEEN.append({"row": row, "client": client, "replies": [first, second, third]})
    return messages, float(row["answer"] in (second.choices[0].message.content or ""))


async def failing_agent(client, row):
    await client.chat.completions.create(model="m", messages=row["messages"])
    if row["prompt_id"] == 7:
        raise ValueError("boom in my agent")
    return 1.0


async def greedy_n_agent(client, row):
    await client.chat.completions.create(model="m", messages=row["messages"], n=2)
    return 0.0


async def tools_agent(client, row):
    await client.chat.completions.create(model="m", messages=row["messages"],
                                         tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    return 0.0


async def no_request_agent(client, row):
    return 1.0


def not_async(client, row):
    return 1.0


assert openai.AsyncOpenAI   # the agents above use the real client the workflow hands them


CALC_TOOL = {"type": "function", "function": {"name": "calculator", "description": "Evaluate an expression.",
                                              "parameters": {"type": "object", "properties": {
                                                  "expression": {"type": "string"}}, "required": ["expression"]}}}


async def openai_tools_agent(client, row):
    """Agent code as written for OpenAI tool calling: tools=[...], message.tool_calls, tool messages by id."""
    import json
    messages = [{"role": "user", "content": row["messages"][-1]["content"]}]
    for _ in range(3):
        reply = await client.chat.completions.create(model="gpt-x", messages=messages, tools=[CALC_TOOL])
        msg = reply.choices[0].message
        SEEN.append({"row": row, "reply": reply})
        if not msg.tool_calls:
            return messages + [{"role": "assistant", "content": msg.content}], 1.0
        messages.append(msg.model_dump(exclude_none=True))
        for call in msg.tool_calls:
            args = json.loads(call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": calculator(**args)})
    return messages, 0.0


async def turn_agent(client, row):
    """Three chat requests, each extending the conversation so far (the second adds a user message naming the row's
    ``tag``, the third "Done?"); returns the row's ``returns`` column as is (a reward, or a dict with turn_rewards)."""
    messages = list(row["messages"])
    for text in (f"Check {row['tag']}.", "Done?", None):
        reply = await client.chat.completions.create(model="m", messages=messages, max_tokens=8)
        if text is not None:
            messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": text}]
    return row["returns"]


IN_FLIGHT = {"now": 0, "most": 0, "done": 0}   # episodes of counting_agent running now / at most / finished


async def counting_agent(client, row):
    """One request, then a 50 ms wait; counts the episodes in flight."""
    import asyncio
    IN_FLIGHT["now"] += 1
    IN_FLIGHT["most"] = max(IN_FLIGHT["most"], IN_FLIGHT["now"])
    try:
        await client.chat.completions.create(model="m", messages=row["messages"], max_tokens=2)
        await asyncio.sleep(0.05)
    finally:
        IN_FLIGHT["now"] -= 1
        IN_FLIGHT["done"] += 1
    return 1.0
