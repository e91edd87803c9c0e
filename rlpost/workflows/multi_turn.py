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
        parser: hermes                            # hermes (<tool_call> JSON) | llama3_json
    rewards:
      - name: env_reward                          # the environment's rewards (sum over turns) ...
      - name: arithmetic                          # ... and/or reward functions on the last assistant message

Mechanics (docs/environments.md):

* Episodes = prompts x ``params.n``; all running episodes advance together, one ``engine.generate`` call per
  turn (each sample then cut to its episode's own token budget, which leaves earlier tokens' distribution as is).
* Token-in/token-out: an episode is one :class:`Sample`; its completion is every sampled token (loss mask 1,
  the engine's log-probs) and every observation token (mask 0, log-prob 0). Sampled ids are never re-tokenised.
  Observation ids are the chat template's delta: the template rendered over a fixed dummy conversation with and
  without the new messages, so any template that renders a conversation as a prefix of its extension works.
* After a turn: tool calls (``parser``) run the environment's tools and answer with ``tool`` messages (a
  malformed call is answered with an error); a turn without tool calls goes to ``env.step``. Limits end an
  episode cleanly: ``max_turns``, ``max_total_tokens``, a turn cut at ``rollout.max_completion_length``.
* Rewards: ``info["reward_columns"]`` gives reward functions ``conversation`` (the whole chat) and
  ``env_reward`` (the sum of the environment's rewards, None if it gave none); ``final_text`` is the last
  assistant message. Metrics ``env/...`` (:meth:`MultiTurnWorkflow.metrics`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.envs.base import (EnvError, StepResult, check_env, parse_error_message, plan_calls, run_jobs, tool_messages,
                              tool_schemas, tool_table)
from rlpost.envs.parsers import EXAMPLES, TOOL_CALL_PARSERS
from rlpost.tools import ToolParseError
from rlpost.types import Prompt, Sample, Trajectory

LIMITS = ("max_turns", "max_total_tokens", "turn_length")   # ended_by values that count as "ended by a limit"


@dataclass
class MultiTurnParams:
    env: str = ""                       # package.module:Class of the environment (required)
    env_kwargs: dict = field(default_factory=dict)   # constructor kwargs, one instance per episode
    max_turns: int = 4                  # assistant turns per episode
    max_total_tokens: int = 1024        # prompt + all turns and observations of an episode
    tool_timeout_s: float = 5.0         # per tool call; past it the model is told the tool timed out
    max_tool_output_chars: int = 2000   # per tool result, before it enters the context
    parser: str = "hermes"              # tool-call format: hermes | llama3_json

    def __post_init__(self):
        if not self.env:
            raise ValueError("env is required: package.module:Class of your environment (docs/environments.md)")
        if self.max_turns < 1 or self.max_total_tokens < 2 or self.tool_timeout_s <= 0:
            raise ValueError("max_turns >= 1, max_total_tokens >= 2 and tool_timeout_s > 0 are required")
        if self.parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"parser: {TOOL_CALL_PARSERS.unknown_message(self.parser)}")
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
    tool_calls: int = 0
    tool_errors: int = 0
    ended_by: str | None = None
    finish: str = "stop"

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.ids)

    def append(self, ids, trained: bool, logprobs=None, entropies=None) -> None:
        self.ids += list(ids)
        self.mask += [int(trained)] * len(ids)
        self.logprobs += list(logprobs) if logprobs is not None else [0.0] * len(ids)
        if self.entropies is not None:
            self.entropies = None if trained and entropies is None else self.entropies + (
                list(entropies) if entropies is not None else [0.0] * len(ids))


class ChatDelta:
    """Token ids the chat template puts around observation messages, computed on a fixed dummy conversation.

    ``observation_ids(last_id, messages)`` = the rest of the assistant turn's closing (e.g. ``"\\n"`` after the
    sampled ``<|im_end|>``, or all of ``<|im_end|>\\n`` when the turn stopped on a stop string or length), then
    the template's rendering of ``messages`` and the next generation prompt.
    """
    MARK = "@@rlpost-assistant@@"

    def __init__(self, tokenizer, tools: list[dict] | None):
        self.tokenizer, self.tools = tokenizer, tools or None
        self.base = self.render([{"role": "user", "content": "@@rlpost-user@@"},
                                 {"role": "assistant", "content": self.MARK}], add_generation_prompt=False)
        self.close = self.base[self.base.rindex(self.MARK) + len(self.MARK):]
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])

    def render(self, messages, add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(self.render(messages, add_generation_prompt=True))

    def observation_ids(self, last_id: int | None, messages: list[dict]) -> list[int]:
        full = self.render([{"role": "user", "content": "@@rlpost-user@@"},
                            {"role": "assistant", "content": self.MARK}] + messages, add_generation_prompt=True)
        if not full.startswith(self.base):
            raise ValueError("the chat template does not render a conversation as a prefix of its extension, so "
                             "observation tokens cannot be appended token-in/token-out")
        close = self.close
        if last_id in self.special:   # the sampled end-of-turn token is the start of the template's closing
            last = self.tokenizer.decode([last_id], skip_special_tokens=False)
            close = close[len(last):] if close.startswith(last) else close
        return self.encode(close + full[len(self.base):])


class MultiTurnWorkflow:
    """Roll out episodes of a user environment (see the module docstring for YAML and mechanics).

        wf = MultiTurnWorkflow(engine, tokenizer, env="rlpost.envs.examples:GuessNumberEnv", max_turns=6)
        trajs = wf.rollout(prompts, SamplingParams(n=4, max_tokens=16))   # one Trajectory per episode
    """

    def __init__(self, engine, tokenizer, env: str, env_kwargs: dict | None = None, max_turns: int = 4,
                 max_total_tokens: int = 1024, tool_timeout_s: float = 5.0, max_tool_output_chars: int = 2000,
                 parser: str = "hermes"):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("multi_turn: the tokenizer has no chat template (observations are rendered with it)")
        self.engine, self.tokenizer = engine, tokenizer
        self.env_spec, self.env_cls = env, check_env(env, env_kwargs or {})
        self.env_kwargs = dict(env_kwargs or {})
        self.max_turns, self.max_total_tokens = max_turns, max_total_tokens
        self.tool_timeout_s, self.max_tool_output_chars = tool_timeout_s, max_tool_output_chars
        self.parser_name, self.parse = parser, TOOL_CALL_PARSERS.get(parser)
        self._deltas: dict[tuple, ChatDelta] = {}

    # ------------------------------------------------------------------ the loop
    def rollout(self, prompts: list[Prompt], params: SamplingParams) -> list[Trajectory]:
        """``params.n`` episodes per prompt (prompt-major); each turn is one engine call over running episodes."""
        episodes = [self.start(k, p) for k, p in enumerate(p for p in prompts for _ in range(params.n))]
        sampling = dataclasses.replace(params, n=1)
        turn = 0
        running = [e for e in episodes if e.ended_by is None]
        while running:
            for ep, (sample, limit) in zip(running, self.generate(running, sampling, turn)):
                self.take(ep, sample, limit)
            self.observe([e for e in running if e.ended_by is None], turn)
            running = [e for e in running if e.ended_by is None]
            turn += 1
        return [self.trajectory(e) for e in episodes]

    def start(self, index: int, prompt: Prompt) -> Episode:
        """A fresh environment instance, its first messages and their prompt ids."""
        env = self._call(index, 0, "__init__", lambda: self.env_cls(**self.env_kwargs))
        row = {**prompt.columns, "messages": list(prompt.messages or [{"role": "user", "content": prompt.text}]),
               "prompt_id": prompt.id}
        messages = self._call(index, 0, "reset", lambda: env.reset(row))
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise EnvError(f"{self._where('reset', index, 0)}: expected a non-empty list of chat messages, got {messages!r:.200}")
        tools = self._call(index, 0, "tools", lambda: tool_table(getattr(env, "tools", None)))
        ep = Episode(index, prompt, env, tools, [dict(m) for m in messages], [])
        ep.prompt_ids = self.delta(ep).prompt_ids(ep.messages)
        if ep.length >= self.max_total_tokens:
            ep.ended_by, ep.finish = "max_total_tokens", "length"
        return ep

    def generate(self, running: list[Episode], sampling: SamplingParams, turn: int) -> list[tuple[Sample, str]]:
        """One engine call; each sample is then cut to its episode's room. Returns (sample, the limit that a
        length finish means: ``turn_length`` for the per-turn cap, ``max_total_tokens`` for the budget)."""
        caps = [min(sampling.max_tokens, self.max_total_tokens - e.length) for e in running]
        seed = None if sampling.seed is None else sampling.seed + 1_000_003 * turn
        samples = self.engine.generate([GenRequest(e.prompt_ids + e.ids, {"episode": e.index, "turn": turn})
                                        for e in running], dataclasses.replace(sampling, max_tokens=max(caps), seed=seed))
        for ep, s, cap in zip(running, samples, caps):
            if len(s.completion_ids) > cap:   # the total budget binds before the per-turn cap
                s.completion_ids, s.logprobs = s.completion_ids[:cap], s.logprobs[:cap]
                s.entropies = s.entropies[:cap] if s.entropies is not None else None
                s.text, s.finish_reason = self.tokenizer.decode(s.completion_ids, skip_special_tokens=True), "length"
        return [(s, "turn_length" if cap == sampling.max_tokens else "max_total_tokens") for s, cap in zip(samples, caps)]

    def take(self, ep: Episode, sample: Sample, limit: str) -> None:
        """Append a sampled turn (trained) and its assistant message; a turn cut by a token cap ends the episode."""
        ep.append(sample.completion_ids, True, sample.logprobs, sample.entropies)
        ep.turn_tokens.append(len(sample.completion_ids))
        ep.messages.append({"role": "assistant", "content": sample.text})
        if sample.finish_reason == "length":
            ep.finish = "length"
            ep.ended_by = limit

    def observe(self, episodes: list[Episode], turn: int) -> None:
        """Answer each episode's last turn: its tool calls (all episodes' calls run concurrently) or env.step."""
        results: dict[int, StepResult] = {}
        pending = []
        for ep in episodes:
            calls = self.parse(ep.messages[-1]["content"]) if ep.tools else []
            if isinstance(calls, ToolParseError):
                ep.tool_calls, ep.tool_errors = ep.tool_calls + 1, ep.tool_errors + 1
                results[ep.index] = StepResult([parse_error_message(calls, EXAMPLES[self.parser_name])])
            elif calls:
                ep.messages[-1]["tool_calls"] = [{"type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                                                 for c in calls if not c.error]
                pending.append((ep, plan_calls(calls, ep.tools)))
            else:
                results[ep.index] = self.step(ep, turn)
        run_jobs([j for _, jobs in pending for j in jobs], self.tool_timeout_s)
        for ep, jobs in pending:
            ep.tool_calls += len(jobs)
            ep.tool_errors += sum(j.error for j in jobs)
            results[ep.index] = StepResult(tool_messages(jobs, self.max_tool_output_chars))
        for ep in episodes:
            self.advance(ep, results[ep.index], turn)

    def step(self, ep: Episode, turn: int) -> StepResult:
        """``env.step(message)`` checked; an environment without ``step`` ends the episode here."""
        if not callable(getattr(ep.env, "step", None)):
            return StepResult(done=True)
        out = self._call(ep.index, turn, "step", lambda: ep.env.step(dict(ep.messages[-1])))
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

    def trajectory(self, ep: Episode) -> Trajectory:
        assistant = [m for m in ep.messages if m["role"] == "assistant"]
        sample = Sample(prompt_ids=ep.prompt_ids, completion_ids=ep.ids, logprobs=ep.logprobs,
                        text=self.tokenizer.decode(ep.ids, skip_special_tokens=False), finish_reason=ep.finish,
                        entropies=ep.entropies, loss_mask=ep.mask)
        env_reward = sum(ep.rewards) if ep.rewards else None
        info = {"conversation": ep.messages, "turns": len(ep.turn_tokens), "tool_calls": ep.tool_calls,
                "tool_errors": ep.tool_errors, "ended_by": ep.ended_by, "turn_tokens": ep.turn_tokens,
                "turn_rewards": ep.rewards, "env_reward": env_reward,
                "reward_columns": {"conversation": ep.messages, "env_reward": env_reward}}
        return Trajectory(prompt=ep.prompt, group_id=ep.prompt.id, samples=[sample],
                          final_text=assistant[-1]["content"] if assistant else "", sample_weights=[1.0], info=info)

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
            self._deltas[key] = ChatDelta(self.tokenizer, schemas)
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
