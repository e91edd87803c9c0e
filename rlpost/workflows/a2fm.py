"""A²FM: routed instant / reasoning / agentic modes with APO (Chen et al., arXiv 2510.12838).

One policy first routes (a one-sentence reason, then the route tag) and then writes a trajectory in
that mode's format. APO samples, per query, ``rho`` forced rollouts per mode (the route prefix is
injected) and ``gamma`` adaptive rollouts (the model routes itself), and normalises all of them as
one group.

Route tag (exact strings of ``infer/prompts.py`` / ``infer/infer_main.py``)::

    <classification>\\ndefault_agent\\n</classification>\\n        instant
    <classification>\\nreasoning_agent\\n</classification>\\n      reasoning
    <classification>\\ntoolcalling_agent\\n</classification>\\n    agentic

Mode formats after the tag (checked by :func:`check_format`):

* instant:   ``<answer>...</answer>`` and nothing else
* reasoning: ``<reasoning>...</reasoning>`` then ``<answer>...</answer>``
* agentic:   ``<plan>...</plan>``, then steps of free text, ``<tool_call>...</tool_call>`` (each
  followed by the harness's ``<tool_response>...</tool_response>``) and ``<summary>...</summary>``,
  ending with one ``<answer>...</answer>``. Tools and tool calls are those of multi-turn environments
  (:func:`agent_tools`, :func:`tool_response`).

A rollout is ONE :class:`Sample` whose completion is the whole assistant turn: injected route
prefix (forced rollouts) and tool responses are in the completion with ``loss_mask`` 0 (and
logprob 0.0); every sampled token has mask 1. Each engine call continues from the token ids so
far, so the learner sees exactly the sampled tokens. ``final_text`` is the content of the last
``<answer>`` (empty if none); ``info["text"]`` is the whole turn.

Rewards: :func:`apo_reward` (R = r_acc · r_fmt · r_adaptive), :func:`score_apo_group` for one
query's mixed group, :func:`apo_advantages` for the mixed-group normalisation.
"""
from __future__ import annotations

import dataclasses
import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Callable

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.envs.base import parse_error_message, plan_calls, run_jobs, tool_messages
from rlpost.envs.calls import CALL_CLOSE, CALL_OPEN, ToolParseError
from rlpost.envs.parsers import EXAMPLES, parse_hermes
from rlpost.envs.tools import PythonSandbox, Search, calculator
from rlpost.types import Prompt, Sample, Trajectory

MODES = ("instant", "reasoning", "agentic")
ROUTE_LABELS = {"instant": "default_agent", "reasoning": "reasoning_agent", "agentic": "toolcalling_agent"}
LABEL_MODES = {v: k for k, v in ROUTE_LABELS.items()}
ROUTE_OPEN, ROUTE_CLOSE = "<classification>", "</classification>"
ANSWER_CLOSE = "</answer>"

# One-sentence routing reasons pre-filled before the tag in forced rollouts. Paraphrased from
# infer_main.py; to match the released checkpoint exactly, pass its strings as ``justifications``.
JUSTIFICATIONS = {
    "instant": "This task needs no real-world information, code or complex reasoning, only basic knowledge "
               "or a brief response, so I will select default_agent.",
    "reasoning": "This task requires complex logical reasoning and multi-step problem solving, "
                 "so I will select reasoning_agent.",
    "agentic": "This task requires acquiring real-world information or executing code, "
               "so I will select toolcalling_agent.",
}

TOOL_NAMES = ("python", "calculator", "search")
TOOL_ALIASES = {"code_execute": "python", "web_search": "search", "calc": "calculator"}   # A²FM's own names
RESPONSE_OPEN, RESPONSE_CLOSE = "<tool_response>", "</tool_response>"
TOOL_GRACE_S = 5.0   # the runner waits this long past the sandbox's timeout, so the sandbox's own kill is reported

TOOL_DOCS = {
    "python": "python(code): run Python (standard library only) and return what it prints",
    "calculator": "calculator(expression): evaluate + - * / ** % and parentheses on numbers",
    "search": "search(query): search the documents provided with the task",
}


def route_tag(mode: str) -> str:
    return f"{ROUTE_OPEN}\n{ROUTE_LABELS[mode]}\n{ROUTE_CLOSE}\n"


def forced_prefix(mode: str, justifications: dict[str, str] | None = None) -> str:
    """What a forced rollout's assistant turn is pre-filled with (loss-masked)."""
    return (justifications or JUSTIFICATIONS)[mode] + "\n" + route_tag(mode)


def system_prompt(tools=TOOL_NAMES) -> str:
    """The mode specification the A²FM policy always sees (a condensed version of ``afm_sys_prompt``)."""
    tool_lines = "\n".join(f"  - {TOOL_DOCS.get(t, t)}" for t in tools)
    return (
        "Solve the task with exactly one of three agents: toolcalling_agent, reasoning_agent or default_agent.\n"
        "- toolcalling_agent: the task needs facts you must look up or code you must run.\n"
        "- reasoning_agent: the task needs careful multi-step reasoning (mathematics, logic).\n"
        "- default_agent: a simple task that needs neither; answer briefly.\n"
        "First give a one-sentence reason and your choice as <classification>\nAGENT\n</classification>.\n"
        "Then follow the chosen agent's format:\n"
        "- default_agent: only <answer>...</answer>.\n"
        "- reasoning_agent: <reasoning>your step-by-step reasoning</reasoning> then <answer>...</answer>.\n"
        "- toolcalling_agent: <plan>goals and the paths to try</plan>; then steps: think briefly and call tools in one "
        "<tool_call>...</tool_call> block with one JSON object per call, e.g. "
        '{"name": "python", "arguments": {"code": "print(1 + 1)"}}; results come back in '
        "<tool_response>...</tool_response>. Recap progress in <summary>...</summary> when useful and finish "
        "with <answer>...</answer>.\n"
        f"Tools:\n{tool_lines}\n"
        "Keep the final answer short, e.g. <answer>Paris</answer>."
    )


def a2fm_messages(question: str, tools=TOOL_NAMES) -> list[dict]:
    """Chat messages for one query (apply the tokenizer's chat template to get ``Prompt.text``)."""
    return [{"role": "system", "content": system_prompt(tools)}, {"role": "user", "content": question}]


# ------------------------------------------------------------------------------------ tools

def agent_tools(names=TOOL_NAMES, corpus: list | None = None, timeout_s: float = 5.0, memory_mb: int = 256,
                max_output_chars: int = 2000) -> dict[str, Callable]:
    """The agentic mode's tools (rlpost/envs/tools.py) as name -> tool, in ``names`` order: ``python`` (sandboxed
    with these limits), ``calculator``, and ``search`` over ``corpus`` (the task row's documents)."""
    unknown = [n for n in names if n not in TOOL_NAMES]
    if unknown:
        raise ValueError(f"tools: unknown tool {unknown[0]!r}; available: {', '.join(TOOL_NAMES)}")
    made = {"python": lambda: PythonSandbox(timeout_s, memory_mb, max_output_chars).python,
            "calculator": lambda: calculator, "search": lambda: Search(corpus).search}
    return {n: made[n]() for n in names}


def render_tool_response(body: str) -> str:
    """The observation appended after ``</tool_call>`` (loss-masked in the rollout)."""
    return f"\n{RESPONSE_OPEN}\n{body}\n{RESPONSE_CLOSE}\n"


def tool_response(text: str, tools: dict[str, Callable], timeout_s: float = 5.0,
                  max_output_chars: int = 2000) -> tuple[str, int]:
    """Run the tool calls of ``text`` (an agentic step ending with ``</tool_call>``); return the observation and the
    number of calls (an unreadable block counts as one). The observation, with a newline before and after it::

        <tool_response>
        Results for tool call 1 (NAME):
        OUTPUT

        Results for tool call 2 (NAME):
        OUTPUT
        </tool_response>

    Parsing (``hermes``), error strings (an unreadable block is answered with the error alone), truncation to
    ``max_output_chars`` and concurrent calls are those of multi-turn environments (rlpost/envs/base.py); A²FM's
    tool names (:data:`TOOL_ALIASES`) are read as ours. A call still running ``timeout_s`` + :data:`TOOL_GRACE_S`
    after its start is answered with a timeout error.
    """
    calls = parse_hermes(text) or ToolParseError(f"no {CALL_OPEN} block found", text[-200:])
    if isinstance(calls, ToolParseError):
        return render_tool_response(parse_error_message(calls, EXAMPLES["hermes"])["content"]), 1
    calls = [dataclasses.replace(c, name=TOOL_ALIASES.get(c.name, c.name)) for c in calls]
    jobs = plan_calls(calls, tools)
    run_jobs(jobs, timeout_s + TOOL_GRACE_S)
    results = [f"Results for tool call {i} ({m['name']}):\n{m['content']}"
               for i, m in enumerate(tool_messages(jobs, max_output_chars), start=1)]
    return render_tool_response("\n\n".join(results)), len(calls)


# ------------------------------------------------------------------------ parsing and format

_ROUTE = re.compile(r"<classification>\s*([A-Za-z_]+)\s*</classification>")
_TAG = re.compile(r"<(/?)(classification|reasoning|plan|summary|tool_call|tool_response|answer)>")
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def parse_route(text: str) -> str | None:
    """The mode named by the first route tag, or None (no tag, unknown label)."""
    m = _ROUTE.search(text)
    return LABEL_MODES.get(m.group(1)) if m else None


def extract_answer(text: str) -> str | None:
    found = _ANSWER.findall(text)
    return found[-1].strip() if found else None


def _blocks(body: str) -> list[tuple[str, str]] | None:
    """``body`` as [(tag, inner)] with free text as ("", text); None if tags nest or do not pair."""
    out, pos, open_tag, open_at = [], 0, None, 0
    for m in _TAG.finditer(body):
        closing, name = m.group(1) == "/", m.group(2)
        if open_tag is None:
            if closing:
                return None
            if body[pos:m.start()].strip():
                out.append(("", body[pos:m.start()]))
            open_tag, open_at = name, m.end()
        else:
            if not closing or name != open_tag:
                return None
            out.append((name, body[open_at:m.start()]))
            open_tag = None
        pos = m.end()
    if open_tag is not None:
        return None
    if body[pos:].strip():
        out.append(("", body[pos:]))
    return out


def check_format(mode: str | None, text: str) -> bool:
    """r_fmt: the assistant turn has one route tag naming ``mode`` and then that mode's format."""
    if mode not in MODES or text.count(ROUTE_OPEN) != 1 or parse_route(text) != mode:
        return False
    head, body = text.split(ROUTE_CLOSE, 1)
    if _TAG.search(head.split(ROUTE_OPEN)[0]):
        return False
    blocks = _blocks(body)
    if not blocks:
        return False
    tags = [t for t, _ in blocks]
    if mode == "instant":
        return tags == ["answer"]
    if mode == "reasoning":
        return tags == ["reasoning", "answer"]
    # agentic: plan first, answer last and once; every tool_call answered by a tool_response
    named = [t for t in tags if t]
    if not named or named[0] != "plan" or tags[-1] != "answer" or named.count("answer") != 1 or "reasoning" in named:
        return False
    for i, t in enumerate(named):
        if t == "tool_call" and (i + 1 == len(named) or named[i + 1] != "tool_response"):
            return False
        if t == "tool_response" and named[i - 1] != "tool_call":
            return False
    return True


def _number(s: str) -> Fraction | None:
    try:
        return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def exact_match(prediction: str | None, gold) -> float:
    """A simple r_acc: equal after normalisation (case, spaces, ``\\boxed{}``, $, final period),
    or equal as numbers. A²FM uses an LLM judge; pass your own ``judge`` to :func:`score_apo_group`."""
    if prediction is None:
        return 0.0

    def norm(s) -> str:
        s = str(s).strip()
        s = re.sub(r"^\\boxed\{(.*)\}$", r"\1", s).strip("$ ").rstrip(".")
        return " ".join(s.lower().split())

    p, g = norm(prediction), norm(gold)
    if p == g:
        return 1.0
    pn, gn = _number(p), _number(g)
    return float(pn is not None and pn == gn)


# ------------------------------------------------------------------------------- APO math

def apo_reward(acc: float, fmt: float, mode: str | None, adaptive: bool, p: float, alpha: float = 2.0) -> float:
    """APO reward of one rollout (A²FM Fig. 3):

        R = r_acc · r_fmt · r_adaptive
        r_adaptive = 1 − p^α   if the rollout is adaptive and routed itself to reasoning or agentic
                   = 1         otherwise (forced rollouts, and adaptive rollouts routed to instant)

    p is the query's easiness, the accuracy of its forced instant rollouts (:func:`apo_easiness`);
    α = 2 (secondary source). Note the paper's figure draws 0.8 where p = 1/2, α = 2 give 0.75.
    """
    r_adaptive = 1.0 - p ** alpha if adaptive and mode in ("reasoning", "agentic") else 1.0
    return float(acc) * float(fmt) * r_adaptive


def apo_easiness(forced_instant_scores: list[float]) -> float:
    """p = mean r_acc·r_fmt of the query's forced instant rollouts; 0 (no penalty) when there are none."""
    return sum(forced_instant_scores) / len(forced_instant_scores) if forced_instant_scores else 0.0


def apo_advantages(rewards: list[float], eps: float = 1e-6) -> list[float]:
    """A_j = (R_j − mean_g R) / (std_g R + eps), population std, g = ALL rollouts of one query,
    forced and adaptive together (never normalised separately). A constant group gives zeros."""
    n = len(rewards)
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return [(r - mean) / (std + eps) for r in rewards]


def score_apo_group(trajectories: list[Trajectory], judge: Callable = exact_match, alpha: float = 2.0,
                    answer_key: str = "answer", accuracies: list[float] | None = None) -> list[float]:
    """Score one query's mixed group in place (``reward``, ``reward_components``) and return R.

    r_acc = ``accuracies[j]`` when given (the trainer passes the configured reward functions' totals),
    else judge(final_text, prompt.columns[answer_key]); r_fmt = info["format_ok"];
    p = :func:`apo_easiness` of the forced instant rollouts; R = :func:`apo_reward`.
    """
    accs = ([float(a) for a in accuracies] if accuracies is not None else
            [float(judge(t.final_text, t.prompt.columns.get(answer_key))) for t in trajectories])
    fmts = [float(bool(t.info.get("format_ok"))) for t in trajectories]
    p = apo_easiness([a * f for a, f, t in zip(accs, fmts, trajectories)
                      if t.info.get("forced") and t.info.get("mode") == "instant"])
    out = []
    for t, a, f in zip(trajectories, accs, fmts):
        adaptive = not t.info.get("forced")
        t.reward = apo_reward(a, f, t.info.get("mode"), adaptive, p, alpha)
        t.reward_components = {**t.reward_components, "acc": a, "format": f, "easiness": p,
                               "adaptive_factor": apo_reward(1, 1, t.info.get("mode"), adaptive, p, alpha)}
        out.append(t.reward)
    return out


def score_apo_batch(trajectories: list[Trajectory], judge: Callable = exact_match, alpha: float = 2.0,
                    accuracies: list[float] | None = None) -> list[float]:
    """:func:`score_apo_group` for every group_id of a batch; rewards in batch order."""
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(trajectories):
        groups.setdefault(t.group_id, []).append(i)
    for idx in groups.values():
        score_apo_group([trajectories[i] for i in idx], judge, alpha,
                        accuracies=None if accuracies is None else [accuracies[i] for i in idx])
    return [t.reward for t in trajectories]


# ------------------------------------------------------------------------------- workflow

@dataclass
class A2FMParams:
    rho: int = 3                       # forced rollouts per mode (secondary source; the figure draws 2)
    gamma: int | None = None           # adaptive rollouts per query; None: rollout.num_generations (params.n)
    alpha: float = 2.0                 # APO cost exponent: adaptive non-instant rewards x (1 - p^alpha)
    max_turns: int = 8                 # tool rounds per agentic rollout (A²FM inference default: 60 steps)
    tools: tuple = TOOL_NAMES          # of TOOL_NAMES; A²FM's names (TOOL_ALIASES) are read as these
    tool_timeout_s: float = 5.0        # per python call (A²FM's nsjail: 5 s CPU)
    tool_memory_mb: int = 256
    max_tool_output_chars: int = 2000  # per call, before it is appended to the context
    max_context: int | None = None     # prompt + turn tokens; each call's max_tokens is clamped
    tool_workers: int = 4              # rollouts whose tool calls run at once (a rollout's calls run concurrently)
    justifications: dict | None = None  # mode -> routing sentence of forced prefixes (None: JUSTIFICATIONS)

    def __post_init__(self):
        agent_tools(self.tools)   # an unknown tool name is refused here, naming it


@dataclass(eq=False)
class _Rollout:
    prompt: Prompt
    forced: str | None
    prompt_ids: list[int]
    tools: dict                        # name -> tool (agent_tools), shared by the rollouts of one prompt
    mode: str | None = None
    ids: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    mask: list = field(default_factory=list)
    entropies: list | None = field(default_factory=list)
    text: str = ""
    finish: str = "stop"
    turns: int = 0
    tool_calls: int = 0
    engine_calls: int = 0
    input_tokens: int = 0              # summed over engine calls (no prefix caching assumed)

    def append(self, ids, text, trained: bool, logprobs=None, entropies=None) -> None:
        self.ids += list(ids)
        self.text += text
        self.mask += [int(trained)] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        if self.entropies is not None:
            if entropies is None and trained:
                self.entropies = None
            else:
                self.entropies += list(entropies) if entropies is not None else [0.0] * len(ids)


class A2FMWorkflow:
    """Roll out A²FM groups: ``rho`` forced rollouts per mode + ``gamma`` (default ``params.n``) adaptive.

        wf = A2FMWorkflow(engine, tokenizer, rho=3)                 # as the trainer builds it (A2FMParams)
        trajs = wf.rollout(prompts, SamplingParams(n=3, temperature=1.0, max_tokens=2048))
        score_apo_batch(trajs)              # fills t.reward (needs prompt.columns["answer"]); or wf.score(trajs)
        # group_id = prompt.id for all of them: GRPO's group normalisation IS the mixed group

    ``Prompt.text`` must already contain the mode specification (see :func:`a2fm_messages`) and end
    where the assistant turn starts. ``prompt.columns["corpus"]`` (list of documents) feeds ``search``.

    Each engine call samples once (``n=1``) with ``params`` plus the stop strings ``</tool_call>`` and
    ``</answer>``; a per-step ``params.seed`` is offset per round. Each call continues from the token ids
    so far, so engines must keep a matched stop string at the end of ``Sample.text`` and its tokens in
    ``completion_ids``.

    Trainer hooks (all optional for a workflow, used by :class:`rlpost.trainer.Trainer`):

    * :meth:`score`: APO. The configured reward functions give r_acc per rollout (``traj.reward``, e.g.
      ``rewards: [a2fm_exact_match]``); ``score`` turns it into R = r_acc · r_fmt · r_adaptive with the
      group's easiness p, and returns the extra components.
    * :meth:`metrics`: ``a2fm/...`` (routing share, accuracy per mode, tokens and cost per correct).
    * :meth:`eval_rollout`: evaluation rolls out adaptive rollouts only (the deployed policy).
    """

    def __init__(self, engine, tokenizer, rho: int = 3, gamma: int | None = None, alpha: float = 2.0,
                 max_turns: int = 8, tools=TOOL_NAMES, tool_timeout_s: float = 5.0,
                 tool_memory_mb: int = 256, max_tool_output_chars: int = 2000, max_context: int | None = None,
                 tool_workers: int = 4, justifications: dict[str, str] | None = None):
        self.engine, self.tokenizer = engine, tokenizer
        self.rho, self.gamma, self.alpha, self.max_turns, self.tools = rho, gamma, alpha, max_turns, tuple(tools)
        self.tool_timeout_s, self.tool_memory_mb = tool_timeout_s, tool_memory_mb
        self.max_tool_output_chars, self.max_context, self.tool_workers = max_tool_output_chars, max_context, tool_workers
        self.justifications = justifications
        agent_tools(self.tools)   # refuses an unknown tool name now rather than at the first tool call

    def rollout(self, prompts: list[Prompt], params: SamplingParams, forced_per_mode: int | None = None) -> list[Trajectory]:
        """Per prompt (prompt-major): ``forced_per_mode`` (default rho) forced rollouts of each mode in
        MODES order, then ``gamma`` (default ``params.n``) adaptive ones. ``forced_per_mode=0``: adaptive only."""
        rho = self.rho if forced_per_mode is None else forced_per_mode
        gamma = self.gamma if self.gamma is not None else params.n
        plan = [m for m in MODES for _ in range(rho)] + [None] * gamma
        return self.run([(p, m) for p in prompts for m in plan], params)

    def eval_rollout(self, prompts: list[Prompt], params: SamplingParams) -> list[Trajectory]:
        """Trainer hook for evaluation: ``params.n`` adaptive rollouts per prompt, no forced ones."""
        plan = [None] * params.n
        return self.run([(p, m) for p in prompts for m in plan], params)

    def score(self, trajectories: list[Trajectory]) -> dict[str, list[float]]:
        """Trainer hook: APO rewards from the reward functions' r_acc (``traj.reward`` on entry), per group."""
        score_apo_batch(trajectories, alpha=self.alpha, accuracies=[t.reward for t in trajectories])
        keys = ("acc", "format", "easiness", "adaptive_factor")
        return {f"apo/{k}": [t.reward_components[k] for t in trajectories] for k in keys}

    def metrics(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """Trainer hook: :func:`a2fm_metrics` of a scored batch."""
        return a2fm_metrics(trajectories)

    def run(self, jobs: list[tuple[Prompt, str | None]], params: SamplingParams | None = None) -> list[Trajectory]:
        """One rollout per (prompt, forced mode or None for adaptive)."""
        params = params or SamplingParams()
        self.sampling = dataclasses.replace(params, n=1, stop=list(params.stop) + [CALL_CLOSE, ANSWER_CLOSE])
        self._round = 0
        tool_sets: dict[int, dict] = {}
        states = []
        for prompt, forced in jobs:
            tools = tool_sets.setdefault(id(prompt), agent_tools(
                self.tools, prompt.columns.get("corpus"), self.tool_timeout_s, self.tool_memory_mb,
                self.max_tool_output_chars))
            st = _Rollout(prompt, forced, self._encode(prompt.text), tools, mode=forced)  # text is chat-templated
            if forced:
                text = forced_prefix(forced, self.justifications)
                st.append(self._encode(text), text, trained=False)
            states.append(st)
        active = list(states)
        with ThreadPoolExecutor(max_workers=max(1, self.tool_workers)) as pool:
            while active:
                needs_tools = []
                for st, sample in zip(active, self._generate(active)):
                    if sample is None:
                        st.finish = "length"
                        continue
                    st.engine_calls += 1
                    st.finish = sample.finish_reason
                    st.append(sample.completion_ids, sample.text, True, sample.logprobs, sample.entropies)
                    if st.mode is None:
                        st.mode = parse_route(st.text)
                    if (sample.finish_reason == "stop" and sample.text.rstrip().endswith(CALL_CLOSE)
                            and st.mode == "agentic" and st.turns < self.max_turns):
                        needs_tools.append((st, sample.text))
                observations = list(pool.map(lambda job: tool_response(
                    job[1], job[0].tools, self.tool_timeout_s, self.max_tool_output_chars), needs_tools))
                for (st, _), (text, n_calls) in zip(needs_tools, observations):
                    st.append(self._encode(text), text, trained=False)
                    st.turns += 1
                    st.tool_calls += n_calls
                active = [st for st, _ in needs_tools]
                self._round += 1
        return [self._trajectory(st) for st in states]

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _generate(self, active: list[_Rollout]) -> list[Sample | None]:
        """One engine call per distinct max_tokens (one unless ``max_context`` clamps)."""
        contexts = [st.prompt_ids + st.ids for st in active]
        caps = [self.sampling.max_tokens if self.max_context is None
                else min(self.sampling.max_tokens, self.max_context - len(c)) for c in contexts]
        out: list[Sample | None] = [None] * len(active)
        for cap in sorted({c for c in caps if c > 0}):
            idx = [i for i, c in enumerate(caps) if c == cap]
            for i in idx:
                active[i].input_tokens += len(contexts[i])
            seed = None if self.sampling.seed is None else self.sampling.seed + 1_000_003 * self._round + cap
            samples = self.engine.generate([GenRequest(contexts[i], {"mode": active[i].mode}) for i in idx],
                                           dataclasses.replace(self.sampling, max_tokens=cap, seed=seed))
            for i, s in zip(idx, samples):
                out[i] = s
        return out

    def _trajectory(self, st: _Rollout) -> Trajectory:
        sample = Sample(prompt_ids=st.prompt_ids, completion_ids=st.ids, logprobs=st.logprobs, text=st.text,
                        finish_reason=st.finish, entropies=st.entropies, loss_mask=st.mask)
        answer = extract_answer(st.text)
        info = {"mode": st.mode, "forced": st.forced is not None, "text": st.text,
                "format_ok": check_format(st.mode, st.text), "answer": answer, "turns": st.turns,
                "tool_calls": st.tool_calls, "engine_calls": st.engine_calls, "input_tokens": st.input_tokens,
                "output_tokens": sum(st.mask)}
        return Trajectory(prompt=st.prompt, group_id=st.prompt.id, samples=[sample], final_text=answer or "",
                          sample_weights=[1.0], info=info)


def apo_cost_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """The APO cost factor r_adaptive = 1 − p^α where it applies (adaptive rollouts routed to reasoning or agentic),
    from scored trajectories (``reward_components`` "adaptive_factor", "easiness"):

    ``a2fm/apo_cost_factor``: its mean over those rollouts; ``a2fm/apo_cost_factor_partial``: the share of them
    with 0 < factor < 1, the only case in which α changes the reward (with ρ = 1 forced instant rollout per query
    p is 0 or 1, so the factor is 1 or 0 whatever α); ``a2fm/apo_easiness``: mean p over the queries (groups).
    No cost-factor keys when no adaptive rollout took a costly route."""
    out: dict[str, float] = {}
    groups = {t.group_id: t.reward_components["easiness"] for t in trajectories if "easiness" in t.reward_components}
    if groups:
        out["a2fm/apo_easiness"] = sum(groups.values()) / len(groups)
    costly = [t.reward_components["adaptive_factor"] for t in trajectories
              if not t.info.get("forced") and t.info.get("mode") in ("reasoning", "agentic")
              and "adaptive_factor" in t.reward_components]
    if costly:
        out["a2fm/apo_cost_factor"] = sum(costly) / len(costly)
        out["a2fm/apo_cost_factor_partial"] = sum(0.0 < f < 1.0 for f in costly) / len(costly)
    return out


def a2fm_metrics(trajectories: list[Trajectory], price_input_per_mtok: float = 1.0,
                 price_output_per_mtok: float = 1.0) -> dict[str, float]:
    """Routing and efficiency metrics (``a2fm/...``); accuracies need scored trajectories.

    non_instant_rate (NITR): share of adaptive rollouts routed to reasoning or agentic.
    acc/<mode>: mean r_acc of all rollouts in that mode (forced and adaptive); acc/adaptive.
    tokens_per_correct, cost_per_correct (Cost-of-Pass): generated tokens, and token-priced cost
    (input tokens of every engine call + output tokens, prices per million tokens; the defaults
    of 1.0 make cost a token count in millions), divided by the number of correct answers;
    computed over the adaptive rollouts (the deployed policy), and over all as ``.../all``.
    """
    out: dict[str, float] = {}
    adaptive = [t for t in trajectories if not t.info.get("forced")]
    if adaptive:
        out["a2fm/non_instant_rate"] = sum(t.info.get("mode") in ("reasoning", "agentic") for t in adaptive) / len(adaptive)
        out["a2fm/invalid_route_rate"] = sum(t.info.get("mode") is None for t in adaptive) / len(adaptive)
    scored = all("acc" in t.reward_components for t in trajectories) and trajectories
    for mode in MODES:
        ts = [t for t in trajectories if t.info.get("mode") == mode]
        if ts:
            out[f"a2fm/share/{mode}"] = len(ts) / len(trajectories)
            if scored:
                out[f"a2fm/acc/{mode}"] = sum(t.reward_components["acc"] for t in ts) / len(ts)
    if scored:
        out.update(apo_cost_metrics(trajectories))
    out["a2fm/format_ok"] = sum(bool(t.info.get("format_ok")) for t in trajectories) / max(len(trajectories), 1)
    out["a2fm/tool_calls"] = sum(t.info.get("tool_calls", 0) for t in trajectories) / max(len(trajectories), 1)
    if scored:
        for suffix, ts in (("", adaptive), ("/all", trajectories)):
            if not ts:
                continue
            correct = sum(t.reward_components["acc"] * t.reward_components["format"] for t in ts)
            tokens = sum(t.info.get("output_tokens", 0) for t in ts)
            cost = sum(t.info.get("input_tokens", 0) * price_input_per_mtok
                       + t.info.get("output_tokens", 0) * price_output_per_mtok for t in ts) / 1e6
            if suffix == "":
                out["a2fm/acc/adaptive"] = sum(t.reward_components["acc"] for t in ts) / len(ts)
            out[f"a2fm/tokens_per_correct{suffix}"] = tokens / correct if correct else float("nan")
            out[f"a2fm/cost_per_correct{suffix}"] = cost / correct if correct else float("nan")
    return out
