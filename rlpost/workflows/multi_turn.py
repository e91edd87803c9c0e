"""Multi-turn rollouts over any engine: an environment (rlpost/envs/base.py) answers each assistant turn.

YAML (the environment is a workflow parameter, so it is checked like every other component)::

    rollout:
      workflow:
        name: multi_turn
        env: rlpost.envs.examples:CalculatorEnv   # package.module:Class, one instance per episode
        env_kwargs: {}                            # passed to the class; checked against its __init__
        max_turns: 4                              # assistant turns per episode
        max_total_tokens: 512                     # prompt + every turn + observations
        tool_timeout_s: 5.0                       # per tool call
        parser: hermes                            # hermes (<tool_call> JSON) | llama3_json | qwen3_xml | glm4 | harmony
        chat_template_kwargs: {}                  # e.g. {enable_thinking: false}
        schedule: lockstep                        # lockstep | per_episode
        max_concurrent_episodes: 0                # episodes in flight at once (0: all of the step's)
    rewards:
      - name: env_reward                          # the environment's rewards (sum over turns) ...
      - name: arithmetic                          # ... and/or reward functions on the last assistant message

Mechanics (docs/environments.md):

* Episodes = prompts x ``params.n``; ``lockstep``: all running episodes advance together, one ``engine.generate``
  call per turn (each sample then cut to its episode's own token budget, which leaves earlier tokens' distribution
  as is); ``per_episode``: each episode advances on its own; :class:`Batcher` sends each turn as its own request
  to an engine that batches continuously (``vllm_server``) and batches the waiting episodes for any other.
* ``max_concurrent_episodes`` C > 0 caps the episodes in flight (sandboxes, tool rate limits, KV memory):
  ``lockstep`` plays the step's episodes in consecutive chunks of C, each to its end; ``per_episode`` keeps C
  slots and starts the next episode (``reset`` included) the moment one ends. 0 (the default): all at once.
* Token-in/token-out: an episode is one :class:`Sample`; its completion is every sampled token (loss mask 1,
  the engine's log-probs) and every observation token (mask 0, log-prob 0). Sampled ids are never re-tokenised.
  Observation ids are the chat template's rendering of the new messages alone (:class:`ChatDelta`): rendered
  after a fixed dummy ``[user, assistant]`` and cut after the dummy assistant's text, so templates that
  re-render earlier turns (Qwen3, Qwen3.5, GPT-OSS, GLM-4, DeepSeek-R1 drop earlier reasoning) work too.
* Environment methods and tools may be ``async def`` (rlpost/envs/aio.py): the episodes' ``reset`` and
  ``step`` calls of a turn run concurrently on the workflow's event loop, plain ones in its thread pool.
* Per-turn credit: each sampled token carries its turn index (``Sample.turn_index``) and the trajectory its
  per-turn rewards (``Trajectory.turn_rewards``, from ``step``) and state keys, which ``algo.advantage:
  turn_return`` / ``gigpo`` read (rlpost/algos/turn_credit.py).
* After a turn: tool calls (``parser``) run the environment's tools and answer with ``tool`` messages (a
  malformed call is answered with an error); a turn without tool calls goes to ``env.step``. Limits end an
  episode cleanly: ``max_turns``, ``max_total_tokens``, a turn cut at ``rollout.max_completion_length``.
* Rewards: ``info["reward_columns"]`` gives reward functions ``conversation`` (the whole chat) and
  ``env_reward`` (the sum of the environment's rewards, None if it gave none); ``final_text`` is the last
  assistant message. Metrics ``env/...`` (:meth:`MultiTurnWorkflow.metrics`).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.envs.aio import EnvLoop, call
from rlpost.envs.base import (EnvError, StepResult, check_env, parse_error_message, plan_calls, run_jobs, tool_messages,
                              tool_schemas, tool_table)
from rlpost.envs.calls import ToolParseError
from rlpost.envs.parsers import EXAMPLES, TOOL_CALL_PARSERS, harmony_final
from rlpost.types import Prompt, Sample, Trajectory

LIMITS = ("max_turns", "max_total_tokens", "turn_length")   # ended_by values that count as "ended by a limit"
SCHEDULES = ("lockstep", "per_episode")
log = logging.getLogger(__name__)
_NOTED: set[tuple[int, str]] = set()   # (template hash, note): each difference to a template is logged once


@dataclass
class MultiTurnParams:
    env: str = ""                       # package.module:Class of the environment (required)
    env_kwargs: dict = field(default_factory=dict)   # constructor kwargs, one instance per episode
    max_turns: int = 4                  # assistant turns per episode
    max_total_tokens: int = 1024        # prompt + all turns and observations of an episode
    tool_timeout_s: float = 5.0         # per tool call; past it the model is told the tool timed out
    max_tool_output_chars: int = 2000   # per tool result, before it enters the context
    parser: str = "hermes"              # tool-call format: hermes | llama3_json | qwen3_xml | glm4 | harmony
    chat_template_kwargs: dict = field(default_factory=dict)   # extra template variables, e.g. {enable_thinking: false}
    schedule: str = "lockstep"          # lockstep: one engine call per turn over all episodes | per_episode
    max_concurrent_episodes: int = 0    # episodes in flight at once; 0: all of the step's

    def __post_init__(self):
        if not self.env:
            raise ValueError("env is required: package.module:Class of your environment (docs/environments.md)")
        if self.max_turns < 1 or self.max_total_tokens < 2 or self.tool_timeout_s <= 0:
            raise ValueError("max_turns >= 1, max_total_tokens >= 2 and tool_timeout_s > 0 are required")
        if self.parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"parser: {TOOL_CALL_PARSERS.unknown_message(self.parser)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.max_concurrent_episodes < 0:
            raise ValueError(f"max_concurrent_episodes must be >= 0 (0: no cap), got {self.max_concurrent_episodes}")
        check_env(self.env, self.env_kwargs)


@dataclass(eq=False)
class Episode:
    """One running episode: the conversation as messages and as tokens (sampled and observation)."""
    index: int
    prompt: Prompt
    env: Any
    tools: dict
    messages: list[dict]
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    entropies: list[float] | None = field(default_factory=list)
    turn_tokens: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    turn_index: list[int] = field(default_factory=list)      # per completion token: its turn, -1 for observations
    turn_rewards: list[float] = field(default_factory=list)  # per turn: the reward of the step answering it (0 if None)
    turn_states: list[int] = field(default_factory=list)     # per turn: a key of the observation it started from
    tool_calls: int = 0
    tool_errors: int = 0
    raw: str = ""                       # the last turn decoded with its special tokens (raw parsers)
    ended_by: str | None = None
    finish: str = "stop"

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.ids)

    def append(self, ids, trained: bool, logprobs=None, entropies=None) -> None:
        self.turn_index += [len(self.turn_tokens) if trained else -1] * len(ids)
        self.ids += list(ids)
        self.mask += [int(trained)] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        if self.entropies is not None:
            self.entropies = None if trained and entropies is None else self.entropies + (
                list(entropies) if entropies is not None else [0.0] * len(ids))


def assistant_message(text: str) -> dict:
    """The assistant message of a sampled turn; reasoning before ``</think>`` (Qwen3, DeepSeek-R1, GLM) goes to
    ``reasoning_content`` and ``content`` is the rest, as the templates of these families read it back."""
    if "</think>" not in text:
        return {"role": "assistant", "content": text}
    thought, _, answer = text.partition("</think>")
    return {"role": "assistant", "content": answer.lstrip("\n"),
            "reasoning_content": thought.split("<think>")[-1].strip("\n")}


class ChatDelta:
    """Token ids the chat template puts after an assistant turn when ``messages`` follow it (verl's approach:
    the template's rendering of the new messages alone, sampled ids never re-rendered).

    The template is rendered over a fixed dummy context ``[user, assistant(MARK)]`` twice: alone (no generation
    prompt) and followed by the new messages (with the generation prompt). What follows MARK is the assistant
    turn's closing, ``closing`` (alone: as the template ends a last turn) and ``tail`` (followed: the closing in
    context, the new messages, the generation prompt). Only text after MARK is used, so a template that renders
    the dummy turn differently once more messages follow (Qwen3 drops the empty ``<think>`` block, GPT-OSS and
    DeepSeek-R1 earlier reasoning) still gives the right observation. Where the template needs the tool call
    before tool results (GPT-OSS), the dummy assistant carries calls named as the tool messages.

    ``observation_ids(last_id, messages)`` then takes the sampled turn's last token into account:

    * it is a special token that ends ``closing`` (ChatML ``<|im_end|>``, Llama ``<|eot_id|>``, GPT-OSS
      ``<|call|>``, DeepSeek ``<｜end▁of▁sentence｜>``): the observation is ``tail`` after it (``"\\n<|im_start|>..."``);
    * it opens ``tail`` (GLM-4 samples ``<|observation|>`` / ``<|user|>``, which start the next message): ``tail``
      after it;
    * the template writes another special token in its place once messages follow (GPT-OSS ends a last answer
      with the sampled ``<|return|>``, an earlier one with ``<|end|>``): the sampled token is kept, the observation
      starts after the template's one, and the difference is logged once;
    * otherwise (a stop string, or an end token the template does not write): the whole ``tail``, closing included.
    """
    USER, MARK = "@@rlpost-user@@", "@@rlpost-assistant@@"

    def __init__(self, tokenizer, tools: list[dict] | None, template_kwargs: dict | None = None):
        self.tokenizer, self.tools, self.kwargs = tokenizer, tools or None, dict(template_kwargs or {})
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.special = set(getattr(tokenizer, "all_special_ids", []) or []) | {
            i for i, t in added.items() if getattr(t, "special", False)}
        self.key = hash(getattr(tokenizer, "chat_template", None) or "")
        self._alone: dict[str, str] = {}

    def render(self, messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **self.kwargs)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(self.render(messages, add_generation_prompt=True))

    def note(self, text: str) -> None:
        """Log a difference to the official template once per template."""
        if (self.key, text) not in _NOTED:
            _NOTED.add((self.key, text))
            log.warning("multi_turn: %s", text)

    def contexts(self, messages: list[dict]):
        user = {"role": "user", "content": self.USER}
        yield [user, {"role": "assistant", "content": self.MARK}], False
        names = [m.get("name") or "tool" for m in messages if m.get("role") == "tool"]
        if names:
            calls = [{"type": "function", "function": {"name": n, "arguments": {}}} for n in names]
            yield [user, {"role": "assistant", "content": self.MARK, "tool_calls": calls}], True

    def split(self, messages: list[dict]) -> tuple[str, str, bool]:
        """(closing, tail, whether the dummy turn carries tool calls); see the class docstring."""
        error = None
        for context, with_calls in self.contexts(messages):
            try:
                key = repr(context)
                if key not in self._alone:   # the context alone is the same for every observation
                    self._alone[key] = self.render(context, add_generation_prompt=False)
                alone = self._alone[key]
                full = self.render(context + messages, add_generation_prompt=True)
            except Exception as err:   # e.g. GPT-OSS: tool results need a previous tool call
                error = err
                continue
            if self.MARK in alone and self.MARK in full:
                if not full.startswith(alone):
                    self.note("the chat template renders an assistant turn differently once more messages follow "
                              "(it drops or rewrites earlier turns, e.g. their reasoning); every turn is kept as "
                              "sampled, so later turns see the turns before them as they were sampled, not as the "
                              "template would re-render the whole conversation")
                cut = lambda text: text[text.rindex(self.MARK) + len(self.MARK):]   # noqa: E731
                return cut(alone), cut(full), with_calls
        raise ValueError(f"the chat template cannot render {[m.get('role') for m in messages]} after an assistant "
                         f"turn ({type(error).__name__ + ': ' + str(error) if error else 'the assistant text is not rendered'})")

    def observation_ids(self, last_id: int | None, messages: list[dict]) -> list[int]:
        closing, tail, with_calls = self.split(messages)
        last = self.tokenizer.decode([last_id], skip_special_tokens=False) if last_id in self.special else None
        if last:
            k = closing.rfind(last)
            if k >= 0 and tail.startswith(closing[:k] + last):
                return self.encode(tail[k + len(last):])
            if tail.startswith(last):
                return self.encode(tail[len(last):])
            if k >= 0 and tail.startswith(closing[:k]):
                ids = self.encode(tail[k:])
                if ids and ids[0] in self.special:
                    written = self.tokenizer.decode(ids[:1], skip_special_tokens=False)
                    self.note(f"the chat template ends an assistant turn that more messages follow with {written!r} "
                              f"where the model sampled {last!r}; the sampled token is kept")
                    return ids[1:]
        if with_calls:
            raise ValueError("the turn did not end with the chat template's end-of-turn token, and this template "
                             "renders tool results only after a tool call: the observation cannot be appended")
        return self.encode(tail)


class Batcher:
    """``schedule: per_episode``'s scheduler: episodes ask for their next turn (``await generate(ep)``).

    * An engine that batches continuously itself (``engine.continuous_batching``: ``vllm``, whose driver steps the
      in-process engine core, and ``vllm_server``, whose workers run vLLM's async engine) gets each episode's turn
      as its own call the moment it is ready, from a thread
      pool (one call in flight per running episode); the seed is a function of (episode, its turn), so the samples
      do not depend on timing.
    * Any other engine: whenever it is free, one ``engine.generate`` call (on one worker thread) takes every
      episode waiting then; the seed offset is the call's number, so sampling depends on which episodes were
      batched together."""

    def __init__(self, workflow: "MultiTurnWorkflow", sampling: SamplingParams):
        self.wf, self.sampling = workflow, sampling
        self.waiting: list[tuple[Episode, asyncio.Future]] = []
        self.busy, self.calls = False, 0
        self.engine_thread = None
        self.continuous = bool(getattr(workflow.engine, "continuous_batching", False))

    def close(self) -> None:
        if self.engine_thread is not None:
            self.engine_thread.shutdown(wait=False)

    async def generate(self, ep: Episode) -> tuple[Sample, str]:
        if self.continuous:
            return await self._own_call(ep)
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((ep, future))
        self._kick()
        return await future

    async def _own_call(self, ep: Episode) -> tuple[Sample, str]:
        """One engine call for this episode alone; seed offset ``episode * max_turns + turn`` (unique, fixed)."""
        from concurrent.futures import ThreadPoolExecutor
        if self.engine_thread is None:
            self.engine_thread = ThreadPoolExecutor(64, thread_name_prefix="rlpost-episode")
        key = ep.index * self.wf.max_turns + len(ep.turn_tokens)
        out = await asyncio.get_running_loop().run_in_executor(
            self.engine_thread, lambda: self.wf.generate([ep], self.sampling, key))
        return out[0]

    def _kick(self) -> None:
        if not self.busy and self.waiting:
            self.busy = True
            asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        from concurrent.futures import ThreadPoolExecutor
        batch, self.waiting = self.waiting, []
        if self.engine_thread is None:   # every engine call from the same thread
            self.engine_thread = ThreadPoolExecutor(1, thread_name_prefix="rlpost-engine")
        call, self.calls = self.calls, self.calls + 1
        try:
            out = await asyncio.get_running_loop().run_in_executor(
                self.engine_thread, lambda: self.wf.generate([ep for ep, _ in batch], self.sampling, call))
            for (_, future), result in zip(batch, out):
                future.set_result(result)
        except Exception as err:
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
        finally:
            self.busy = False
            self._kick()


class MultiTurnWorkflow:
    """Roll out episodes of a user environment (see the module docstring for YAML and mechanics).

        wf = MultiTurnWorkflow(engine, tokenizer, env="rlpost.envs.examples:GuessNumberEnv", max_turns=6)
        trajs = wf.rollout(prompts, SamplingParams(n=4, max_tokens=16))   # one Trajectory per episode
    """
    records_turns = True   # turn_index, turn_rewards, turn_states: algo.advantage turn_return | gigpo

    def __init__(self, engine, tokenizer, env: str, env_kwargs: dict | None = None, max_turns: int = 4,
                 max_total_tokens: int = 1024, tool_timeout_s: float = 5.0, max_tool_output_chars: int = 2000,
                 parser: str = "hermes", chat_template_kwargs: dict | None = None, schedule: str = "lockstep",
                 max_concurrent_episodes: int = 0):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("multi_turn: the tokenizer has no chat template (observations are rendered with it)")
        self.engine, self.tokenizer = engine, tokenizer
        self.env_spec, self.env_cls = env, check_env(env, env_kwargs or {})
        self.env_kwargs = dict(env_kwargs or {})
        self.max_turns, self.max_total_tokens = max_turns, max_total_tokens
        self.tool_timeout_s, self.max_tool_output_chars = tool_timeout_s, max_tool_output_chars
        self.parser_name, self.parse = parser, TOOL_CALL_PARSERS.get(parser)
        self.template_kwargs = dict(chat_template_kwargs or {})
        if schedule not in SCHEDULES:
            raise ValueError(f"multi_turn: schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if max_concurrent_episodes < 0:
            raise ValueError(f"multi_turn: max_concurrent_episodes must be >= 0 (0: no cap), got {max_concurrent_episodes}")
        self.schedule, self.max_concurrent = schedule, max_concurrent_episodes
        self.loop = EnvLoop()
        self._deltas: dict[tuple, ChatDelta] = {}

    # ------------------------------------------------------------------ the loop
    def rollout(self, prompts: list[Prompt], params: SamplingParams) -> list[Trajectory]:
        """``params.n`` episodes per prompt (prompt-major). ``lockstep``: each turn is one engine call over the
        running episodes (:meth:`lockstep`); ``per_episode``: each episode advances on its own (:meth:`play`,
        :class:`Batcher`). At most ``max_concurrent_episodes`` are in flight (module docstring)."""
        rows = [p for p in prompts for _ in range(params.n)]
        sampling = dataclasses.replace(params, n=1)
        cap = self.max_concurrent or len(rows) or 1
        if self.schedule == "per_episode":
            batcher = Batcher(self, sampling)
            try:
                episodes = self.loop.run(self.play_all(rows, batcher, cap))
            finally:
                batcher.close()
            return [self.trajectory(e) for e in episodes]
        episodes = []
        for chunk, first in enumerate(range(0, len(rows), cap)):
            started = self.loop.run(self._gather([self.start(first + k, p)
                                                  for k, p in enumerate(rows[first:first + cap])]))
            self.lockstep(started, sampling, chunk)
            episodes += started
        return [self.trajectory(e) for e in episodes]

    def lockstep(self, episodes: list[Episode], sampling: SamplingParams, chunk: int = 0) -> None:
        """Play ``episodes`` to their ends, every running episode's turn in one engine call; the call of turn t
        of chunk c offsets the seed by ``c * max_turns + t`` (no two calls of a rollout share seeds)."""
        turn = 0
        running = [e for e in episodes if e.ended_by is None]
        while running:
            key = chunk * self.max_turns + turn
            for ep, (sample, limit) in zip(running, self.generate(running, sampling, key)):
                self.take(ep, sample, limit)
            self.observe([e for e in running if e.ended_by is None], turn)
            running = [e for e in running if e.ended_by is None]
            turn += 1

    async def play_all(self, rows: list[Prompt], batcher: "Batcher", cap: int) -> list[Episode]:
        """``per_episode``: every row's episode, at most ``cap`` in flight. The first ``cap`` are started
        (``reset``) together; each then plays (:meth:`play`) in its own lane, which starts the next row's episode
        the moment its episode ends. Returns the episodes in row order."""
        first = await self._gather([self.start(k, p) for k, p in enumerate(rows[:cap])])
        queue = iter(enumerate(rows[cap:], start=cap))

        async def lane(ep: Episode | None) -> list[Episode]:
            played = []
            while ep is not None:
                if ep.ended_by is None:
                    await self.play(ep, batcher)
                played.append(ep)
                row = next(queue, None)
                ep = await self.start(*row) if row is not None else None
            return played
        lanes = await self._gather([lane(ep) for ep in first])
        return sorted((ep for played in lanes for ep in played), key=lambda ep: ep.index)

    @staticmethod
    async def _gather(coros):
        """All coroutines concurrently; once all have finished (none is left running), the error of the first
        one that failed in argument order is raised."""
        out = await asyncio.gather(*coros, return_exceptions=True)
        for item in out:
            if isinstance(item, BaseException):
                raise item
        return out

    def row(self, prompt: Prompt) -> dict:
        """What ``reset`` receives: every dataset column (the prompt's too), ``messages`` and ``prompt_id``."""
        messages = list(prompt.messages or [{"role": "user", "content": prompt.text}])
        return {**(prompt.row or {}), **prompt.columns, "messages": messages, "prompt_id": prompt.id}

    async def start(self, index: int, prompt: Prompt) -> Episode:
        """A fresh environment instance, its first messages and their prompt ids."""
        env = self._call(index, 0, "__init__", lambda: self.env_cls(**self.env_kwargs))
        messages = await self._acall(index, 0, "reset", env.reset, self.row(prompt))
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise EnvError(f"{self._where('reset', index, 0)}: expected a non-empty list of chat messages, got {messages!r:.200}")
        tools = self._call(index, 0, "tools", lambda: tool_table(getattr(env, "tools", None)))
        ep = Episode(index, prompt, env, tools, [dict(m) for m in messages], [])
        ep.prompt_ids = self._call(index, 0, "chat template", lambda: self.delta(ep).prompt_ids(ep.messages))
        ep.turn_states.append(hash(tuple(ep.prompt_ids)))
        if ep.length >= self.max_total_tokens:
            ep.ended_by, ep.finish = "max_total_tokens", "length"
        return ep

    def generate(self, running: list[Episode], sampling: SamplingParams, turn: int) -> list[tuple[Sample, str]]:
        """One engine call; each sample is then cut to its episode's room. Returns (sample, the limit that a
        length finish means: ``turn_length`` for the per-turn cap, ``max_total_tokens`` for the budget). ``turn``
        offsets the seed (lockstep: the turn; per_episode: the engine call's number); each request's info
        carries its episode's own turn."""
        caps = [min(sampling.max_tokens, self.max_total_tokens - e.length) for e in running]
        seed = None if sampling.seed is None else sampling.seed + 1_000_003 * turn
        samples = self.engine.generate([GenRequest(e.prompt_ids + e.ids, {"episode": e.index, "turn": len(e.turn_tokens)})
                                        for e in running], dataclasses.replace(sampling, max_tokens=max(caps), seed=seed))
        for ep, s, cap in zip(running, samples, caps):
            if len(s.completion_ids) > cap:   # the total budget binds before the per-turn cap
                s.completion_ids, s.logprobs = s.completion_ids[:cap], s.logprobs[:cap]
                s.entropies = s.entropies[:cap] if s.entropies is not None else None
                s.text, s.finish_reason = self.tokenizer.decode(s.completion_ids, skip_special_tokens=True), "length"
        return [(s, "turn_length" if cap == sampling.max_tokens else "max_total_tokens") for s, cap in zip(samples, caps)]

    def take(self, ep: Episode, sample: Sample, limit: str) -> None:
        """Append a sampled turn (trained) and its assistant message; a turn cut by a token cap ends the episode.
        Parsers marked ``raw`` read the turn with its special tokens (``ep.raw``); with ``harmony`` the message's
        content is the turn's final channel."""
        ep.append(sample.completion_ids, True, sample.logprobs, sample.entropies)
        ep.turn_tokens.append(len(sample.completion_ids))
        ep.turn_rewards.append(0.0)
        text = sample.text
        if getattr(self.parse, "raw", False):
            ep.raw = self.tokenizer.decode(sample.completion_ids, skip_special_tokens=False)
            text = harmony_final(ep.raw) if self.parser_name == "harmony" else text
        ep.messages.append(assistant_message(text))
        if sample.finish_reason == "length":
            ep.finish = "length"
            ep.ended_by = limit

    def observe(self, episodes: list[Episode], turn: int) -> None:
        """Answer each episode's last turn: its tool calls (all episodes' calls run concurrently) or env.step
        (all episodes' steps run concurrently on the event loop)."""
        results: dict[int, StepResult] = {}
        pending, stepping = [], []
        for ep in episodes:
            plan = self.plan(ep)
            if isinstance(plan, StepResult):
                results[ep.index] = plan
            elif plan:
                pending.append((ep, plan))
            else:
                stepping.append(ep)
        steps = self.loop.submit(self._gather([self.step(ep, turn) for ep in stepping]))
        run_jobs([j for _, jobs in pending for j in jobs], self.tool_timeout_s, self.loop)
        results.update({ep.index: out for ep, out in zip(stepping, steps.result())})
        for ep, jobs in pending:
            results[ep.index] = self.tool_result(ep, jobs)
        for ep in episodes:
            self.advance(ep, results[ep.index], turn)

    def plan(self, ep: Episode) -> StepResult | list | None:
        """What answers the episode's last turn: a StepResult now (an unreadable tool call), its tool jobs, or
        None (``env.step``)."""
        text = ep.raw if getattr(self.parse, "raw", False) else ep.messages[-1]["content"]
        calls = self.parse(text) if ep.tools else []
        if isinstance(calls, ToolParseError):
            ep.tool_calls, ep.tool_errors = ep.tool_calls + 1, ep.tool_errors + 1
            return StepResult([parse_error_message(calls, EXAMPLES[self.parser_name])])
        if not calls:
            return None
        ep.messages[-1]["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                         for c in calls if not c.error]
        return plan_calls(calls, ep.tools)

    def tool_result(self, ep: Episode, jobs: list) -> StepResult:
        ep.tool_calls += len(jobs)
        ep.tool_errors += sum(j.error for j in jobs)
        return StepResult(tool_messages(jobs, self.max_tool_output_chars))

    async def play(self, ep: Episode, batcher: "Batcher") -> None:
        """``schedule: per_episode``: the episode advances on its own (generate -> parse -> tools or step ->
        generate); its generations are batched with whichever episodes wait at the same time."""
        while ep.ended_by is None:
            turn = len(ep.turn_tokens)
            sample, limit = await batcher.generate(ep)
            self.take(ep, sample, limit)
            if ep.ended_by is not None:
                return
            plan = self.plan(ep)
            if plan is None:
                result = await self.step(ep, turn)
            elif isinstance(plan, StepResult):
                result = plan
            else:   # tools: plain ones on their threads, async ones on this loop; this episode waits, others go on
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: run_jobs(plan, self.tool_timeout_s, self.loop))
                result = self.tool_result(ep, plan)
            self.advance(ep, result, turn)

    async def step(self, ep: Episode, turn: int) -> StepResult:
        """``env.step(message)`` checked; an environment without ``step`` ends the episode here."""
        if not callable(getattr(ep.env, "step", None)):
            return StepResult(done=True)
        out = await self._acall(ep.index, turn, "step", ep.env.step, dict(ep.messages[-1]))
        if isinstance(out, tuple) and len(out) == 3:
            out = StepResult(*out)
        where = self._where("step", ep.index, turn)
        if not isinstance(out, StepResult):
            raise EnvError(f"{where}: expected a StepResult or (messages, reward, done), got {out!r:.200}")
        if not isinstance(out.messages, list) or not all(isinstance(m, dict) and "role" in m for m in out.messages):
            raise EnvError(f"{where}: messages must be a list of chat messages, got {out.messages!r:.200}")
        if out.reward is not None and not isinstance(out.reward, (int, float)):
            raise EnvError(f"{where}: reward must be a number or None, got {out.reward!r}")
        return out

    def advance(self, ep: Episode, result: StepResult, turn: int) -> None:
        """Record the answer; append its tokens (masked) unless the episode ends here."""
        if result.reward is not None:
            ep.rewards.append(float(result.reward))
            ep.turn_rewards[-1] = float(result.reward)
        ep.messages += [dict(m) for m in result.messages]
        if result.done:
            ep.ended_by = "env"
        elif turn + 1 >= self.max_turns:
            ep.ended_by = "max_turns"
        if ep.ended_by is not None:
            return
        obs = self._call(ep.index, turn, "chat template", lambda: self.delta(ep).observation_ids(
            ep.ids[-1] if ep.ids else None, result.messages))
        if ep.length + len(obs) >= self.max_total_tokens:   # no room left to sample a token after it
            ep.ended_by, ep.finish = "max_total_tokens", "length"
            return
        ep.append(obs, False)
        ep.turn_states.append(hash(tuple(obs)))

    def trajectory(self, ep: Episode) -> Trajectory:
        assistant = [m for m in ep.messages if m["role"] == "assistant"]
        sample = Sample(prompt_ids=ep.prompt_ids, completion_ids=ep.ids, logprobs=ep.logprobs,
                        text=self.tokenizer.decode(ep.ids, skip_special_tokens=False), finish_reason=ep.finish,
                        entropies=ep.entropies, loss_mask=ep.mask, turn_index=ep.turn_index)
        env_reward = sum(ep.rewards) if ep.rewards else None
        info = {"conversation": ep.messages, "turns": len(ep.turn_tokens), "tool_calls": ep.tool_calls,
                "tool_errors": ep.tool_errors, "ended_by": ep.ended_by, "turn_tokens": ep.turn_tokens,
                "turn_rewards": ep.rewards, "env_reward": env_reward,
                "reward_columns": {"conversation": ep.messages, "env_reward": env_reward}}
        return Trajectory(prompt=ep.prompt, group_id=ep.prompt.id, samples=[sample],
                          final_text=assistant[-1]["content"] if assistant else "", sample_weights=[1.0], info=info,
                          turn_rewards=list(ep.turn_rewards), turn_states=ep.turn_states[:len(ep.turn_tokens)])

    # ------------------------------------------------------------------ trainer hook
    def metrics(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """``env/turns_per_episode``, ``env/tool_calls_per_episode``, ``env/tool_error_rate`` (errors / calls),
        ``env/ended_by_limit`` (share of episodes ended by max_turns, max_total_tokens or a cut turn),
        ``env/ended_by/<reason>`` and ``env/tokens_per_turn`` (sampled tokens per assistant turn)."""
        infos = [getattr(t, "info", None) or {} for t in trajectories]
        infos = [i for i in infos if "turns" in i]
        if not infos:
            return {}
        n = len(infos)
        calls, errors = sum(i["tool_calls"] for i in infos), sum(i["tool_errors"] for i in infos)
        turns = sum(i["turns"] for i in infos)
        out = {"env/turns_per_episode": turns / n, "env/tool_calls_per_episode": calls / n,
               "env/tool_error_rate": errors / calls if calls else 0.0,
               "env/ended_by_limit": sum(i["ended_by"] in LIMITS for i in infos) / n,
               "env/tokens_per_turn": sum(sum(i["turn_tokens"]) for i in infos) / max(turns, 1)}
        for reason in sorted({i["ended_by"] for i in infos}):
            out[f"env/ended_by/{reason}"] = sum(i["ended_by"] == reason for i in infos) / n
        return out

    # ------------------------------------------------------------------ helpers
    def delta(self, ep: Episode) -> ChatDelta:
        """The episode's :class:`ChatDelta` (one per distinct tool set)."""
        key = tuple(sorted(ep.tools))
        if key not in self._deltas:
            schemas = self._call(ep.index, 0, "tool schemas", lambda: tool_schemas(ep.tools))
            self._deltas[key] = ChatDelta(self.tokenizer, schemas, self.template_kwargs)
        return self._deltas[key]

    def _where(self, what: str, episode: int, turn: int) -> str:
        return f"environment {self.env_spec} ({what}, episode {episode}, turn {turn})"

    def _call(self, episode: int, turn: int, what: str, fn):
        """``fn()``; any exception becomes an :class:`EnvError` naming the environment, episode and turn."""
        try:
            return fn()
        except EnvError:
            raise
        except Exception as err:
            raise EnvError(f"{self._where(what, episode, turn)} raised {type(err).__name__}: {err}") from err

    async def _acall(self, episode: int, turn: int, what: str, fn, *args):
        """``await call(fn, *args)`` (``async def`` or plain, rlpost/envs/aio.py), errors named as in :meth:`_call`."""
        try:
            return await call(fn, *args)
        except EnvError:
            raise
        except Exception as err:
            raise EnvError(f"{self._where(what, episode, turn)} raised {type(err).__name__}: {err}") from err
