"""Route-then-align warm-start data for the A²FM miniature (synthetic teacher traces for every mode).

Each trace is ``justification + route tag + mode body``, exactly the text an adaptive rollout writes
(a forced rollout gets ``justification + route tag`` injected and writes the body). The teacher:

* instant:   ``<answer>{gold}</answer>``
* reasoning: ``<reasoning>{partial sums, one per line}</reasoning>\\n<answer>{gold}</answer>`` for sums;
             for products and look-ups the reasoning is a one-line restatement (the answer cannot be
             derived: a tiny model that routes these to reasoning guesses)
* agentic:   ``<plan>..</plan>`` + one ``<tool_call>`` (calculator or Python for arithmetic, search for
             places) + the harness's ``<tool_response>`` (not trained on) + ``<answer>{tool result}</answer>``

The route of a training trace is drawn from :data:`SFT_ROUTING` per question kind: deliberately
imperfect, over-using the costly modes on easy questions (as A²FM's SFT model does: NITR 84.9 %), so
APO has something to fix. Tool responses are rendered by the real tools (calculator, search) or, for
Python, by the same observation format the sandbox produces (``print(expr)`` -> its value).
"""
from __future__ import annotations

import json
import random

from rlpost.envs.parsers import parse_hermes
from rlpost.tasks.a2fm_mini import make_split
from rlpost.workflows.a2fm import agent_tools, render_tool_response, route_tag, tool_response

SHORT_JUSTIFICATIONS = {"instant": "Easy.", "reasoning": "Needs steps.", "agentic": "Needs a tool."}

# P(route | question kind) of the warm-start traces
SFT_ROUTING = {
    "instant": {"instant": 0.35, "reasoning": 0.4, "agentic": 0.25},
    "reasoning": {"instant": 0.1, "reasoning": 0.6, "agentic": 0.3},
    "calc": {"instant": 0.05, "reasoning": 0.25, "agentic": 0.7},
    "search": {"instant": 0.05, "reasoning": 0.25, "agentic": 0.7},
}


def tool_call_text(row: dict, rng: random.Random) -> tuple[str, str]:
    """(the agentic body up to and including ``</tool_call>``, the tool's name)."""
    if row["kind"] == "search":
        call = {"name": "search", "arguments": {"query": f"code of {row['place']}"}}
        plan = "Look it up."
    else:
        expr = "+".join(map(str, row["terms"])) if row["terms"] else row["expression"]
        call = ({"name": "python", "arguments": {"code": f"print({expr})"}} if rng.random() < 0.5 else
                {"name": "calculator", "arguments": {"expression": expr}})
        plan = "Compute it."
    return f"<plan>{plan}</plan>\n<tool_call>\n{json.dumps(call)}\n</tool_call>", call["name"]


def observation(call_text: str, name: str, row: dict) -> str:
    """The tool response block the harness appends (Python's is rendered without starting a sandbox)."""
    if name == "python":
        expr = parse_hermes(call_text)[0].arguments["code"][len("print("):-1]
        return render_tool_response(f"Results for tool call 1 (python):\n{eval(expr, {'__builtins__': {}})}")
    return tool_response(call_text, agent_tools(corpus=row.get("corpus")))[0]


def answer_of(text: str) -> str:
    """The value an agentic trace answers with: the number in the tool response (first hit's code)."""
    body = text.split("<tool_response>", 1)[1]
    if "code of" in body:
        return body.split("The code of", 1)[1].split(" is ", 1)[1].split(".", 1)[0]
    return body.split("):\n", 1)[1].split("\n", 1)[0].strip()


def mode_trace(row: dict, mode: str, rng: random.Random, justifications: dict | None = None) -> list[tuple[str, bool]]:
    """One teacher trace as ``(text, trained)`` segments (the tool response is not trained on)."""
    head = (justifications or SHORT_JUSTIFICATIONS)[mode] + "\n" + route_tag(mode)
    gold = row["answer"]
    if mode == "instant":
        return [(head + f"<answer>{gold}</answer>", True)]
    if mode == "reasoning":
        if row["kind"] in ("instant", "reasoning"):
            lines, total = [], row["terms"][0]
            for t in row["terms"][1:]:
                lines.append(f"{total}+{t}={total + t}")
                total += t
            steps = "\n".join(lines)
        elif row["kind"] == "calc":
            steps = f"{row['expression']} is a large product."
        else:
            steps = f"I recall the code of {row['place']}."
        return [(head + f"<reasoning>{steps}</reasoning>\n<answer>{gold}</answer>", True)]
    call, name = tool_call_text(row, rng)
    obs = observation(call, name, row)
    return [(head + call, True), (obs, False), (f"<answer>{answer_of(obs)}</answer>", True)]


def sft_pairs(tokenizer, n: int, seed: int = 0, routing: dict | None = None, justifications: dict | None = None,
              system: str = "short") -> tuple[list, dict]:
    """``n`` (prompt text, segments) pairs from the train split, routes drawn from ``routing``."""
    routing = routing or SFT_ROUTING
    rng = random.Random(f"a2fm-sft-{seed}")
    rows = make_split("train", n, seed=seed, system=system)
    pairs, routes = [], {}
    for row in rows:
        modes, weights = zip(*routing[row["kind"]].items())
        mode = rng.choices(modes, weights)[0]
        prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        pairs.append((prompt, mode_trace(row, mode, rng, justifications)))
        routes.setdefault(row["kind"], {}).setdefault(mode, 0)
        routes[row["kind"]][mode] += 1
    return pairs, {"examples": len(pairs), "routes": routes}
