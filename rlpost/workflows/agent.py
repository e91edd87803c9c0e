"""Agent rollouts: the user's own agent code drives each episode through an OpenAI client pointed at the policy.

YAML::

    rollout:
      workflow:
        name: agent
        rollout: my_package.agents:rollout   # async def rollout(client, row) -> reward | (messages, reward) | dict
        max_requests: 8                       # model requests per episode (one more is answered 400)
        chat_template_kwargs: {}              # e.g. {enable_thinking: false}
        merge_prefix: true                    # a request that extends the previous one joins its row
        tool_parser: null                     # hermes | llama3_json | qwen3_xml | glm4 | harmony: OpenAI tool calling
        max_concurrent_episodes: 0            # episodes in flight at once (0: all of the step's)
    rewards:
      - name: agent_reward                    # what the user's rollout returned

The user writes the episode as any agent is written (docs/environments.md, "Agent workflow")::

    async def rollout(client: openai.AsyncOpenAI, row: dict) -> float:
        out = await client.chat.completions.create(model="policy", messages=row["messages"])
        ...                                   # tools, more requests, any control flow
        return reward

Mechanics:

* Each episode (prompts x ``params.n``) gets its own ``openai.AsyncOpenAI`` whose HTTP client talks to an
  in-process ASGI app (:func:`agent_app`, ``httpx.ASGITransport``: no socket) serving ``/v1/chat/completions``,
  ``/v1/completions`` and ``/v1/models`` over the rollout engine (hf, vllm or vllm_server); a header names the
  episode. Episodes run concurrently on one event loop (at most ``max_concurrent_episodes`` at once when > 0: the
  next starts the moment one ends); :class:`Batcher` sends each request as its own engine call to an engine that
  batches continuously (``vllm``, ``vllm_server``) and, on ``hf``, gathers the requests waiting at the same time
  into one ``engine.generate`` call (on one worker thread).
* Recorded per request, on the serving side: the prompt ids (the chat template's rendering of the request's
  messages, rlpost/serving/openai_api.py ``chat_prompt``), the sampled completion ids and the sampler's log-probs.
  Training uses those ids, never a re-tokenisation of the agent's messages (token-in/token-out).
* Rows (:func:`episode_rows`): each request is a row of the episode's trajectory (all rows share its reward and
  advantage, weight 1 each: with ``token-mean`` aggregation this equals one row holding every sampled token; a
  ``seq-mean-*`` one counts each row as a sequence); with ``merge_prefix`` a request whose prompt ids start with
  the previous row's prompt + completion extends that row instead (the new prompt tokens in between: loss mask 0,
  log-prob 0), as multi_turn lays out a conversation. Loss masks are 1 on sampled tokens only.
* Sampling settings: the step's (``rollout.temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty``;
  evaluation's greedy ones) win over what the agent sends, since the learner's log-probs assume them; a request
  asking for other values is served with the rollout's and the difference is logged once. ``max_tokens`` /
  ``max_completion_tokens`` are capped at ``rollout.max_completion_length``; ``stop`` is honoured; ``n`` must be 1;
  the seed of request j of episode e is ``stable_seed(step seed, e, j)`` (independent of batching). The ``model``
  field is not checked (the policy answers every name); streaming and the other fields the serving helpers refuse
  are answered 400 naming the field.
* Tools: without ``tool_parser`` a request with ``tools`` is answered 400 (tool calls stay in the sampled
  ``content``, for the rollout to parse). With it, ``tools`` go to the chat template, a reply's calls come back as
  OpenAI ``tool_calls`` (``finish_reason: tool_calls``; ``content`` the text before the call, or the whole text
  when the template does not write ``tool_calls``, so that a re-render holds the call as sampled), and the
  arguments of ``tool_calls`` sent back are handed to the template as dicts. The trained ids stay the served
  ones either way.
* Returns: a reward (a number), ``(messages, reward)`` (``reward`` None: the configured reward functions score
  ``messages``), or ``{"reward": R, "turn_rewards": [r_0, r_1, ...], "messages": [...]}`` (the last two
  optional): per-turn rewards, one per request, or ``{request index: r}`` with the others 0.
* Per-turn credit (``algo.advantage: turn_return | gigpo``, rlpost/algos/turn_credit.py): turn j = request j in the
  order recorded. Every sampled token carries j (``Sample.turn_index``; the prompt tokens between merged requests
  -1); the trajectory carries ``turn_rewards`` (0 per turn when not returned: R counts at the last turn) and
  ``turn_states`` = ``hash(tuple(prompt ids of request j))``: turns share a state when the policy saw exactly the
  same context. An episode of several rows counts once in the statistics, each row gets its own turns'
  advantages (``per_trajectory_turns``).
* Errors: anything the user's rollout raises (an OpenAI error of a refused request included) becomes an
  :class:`AgentError` naming the function, the episode and the dataset row.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field

from rlpost.engines.base import GenRequest, SamplingParams, stable_seed
from rlpost.envs.aio import EnvLoop
from rlpost.types import Prompt, Sample, Trajectory

log = logging.getLogger(__name__)
EPISODE_HEADER = "x-rlpost-episode"
BASE_URL = "http://rlpost-agent/v1"        # never resolved: the transport hands requests to the app in process
SERVED_MODEL = "rlpost-policy"
CHECKED = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")   # the rollout's values win
_NOTED: set[str] = set()


class AgentError(RuntimeError):
    """The user's agent rollout raised or returned something unusable; names the function, episode and row."""


@dataclass
class AgentParams:
    rollout: str = ""                  # package.module:function, ``async def rollout(client, row)`` (required)
    max_requests: int = 8              # model requests per episode; one more is answered 400
    chat_template_kwargs: dict = field(default_factory=dict)   # extra template variables for every request
    merge_prefix: bool = True          # a request extending the previous row's prompt + completion joins the row
    tool_parser: str | None = None     # hermes | llama3_json | qwen3_xml | glm4 | harmony: OpenAI tool calling; None: off
    max_concurrent_episodes: int = 0   # episodes in flight at once; 0: all of the step's

    def __post_init__(self):
        from rlpost.envs.parsers import TOOL_CALL_PARSERS
        if self.max_requests < 1:
            raise ValueError("max_requests must be >= 1")
        if self.max_concurrent_episodes < 0:
            raise ValueError(f"max_concurrent_episodes must be >= 0 (0: no cap), got {self.max_concurrent_episodes}")
        if self.tool_parser is not None and self.tool_parser not in TOOL_CALL_PARSERS:
            raise ValueError(f"tool_parser: {TOOL_CALL_PARSERS.unknown_message(self.tool_parser)}")
        import_rollout(self.rollout)


def import_rollout(spec: str, where: str = "rollout.workflow.rollout"):
    """``"package.module:function"`` -> the user's ``async def rollout(client, row)`` (the working directory is
    importable, as for environments); a ConfigError names ``where``."""
    import inspect

    from rlpost.config import ConfigError
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{where}: expected 'package.module:function' (async def rollout(client, row)), got {spec!r}")
    module_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{where}: cannot import {spec!r}: {err}") from None
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(f"{where}: {spec!r} must be an 'async def rollout(client, row)' function")
    return fn


@dataclass
class Request:
    """One model request of an episode as served: exactly the ids the engine saw and sampled."""
    prompt_ids: list[int]
    sample: Sample


@dataclass
class AgentEpisode:
    index: int
    prompt: Prompt
    requests: list[Request] = field(default_factory=list)
    reward: float | None = None
    messages: list[dict] | None = None
    turn_rewards: list[float] | None = None     # one per request, as the rollout returned them (None: not returned)
    engine_error: BaseException | None = None   # what the engine raised serving one of its requests


def episode_rows(requests: list[Request], merge_prefix: bool) -> list[Sample]:
    """An episode's requests -> the trajectory's rows. Each request starts a row with its prompt ids and sampled
    completion (loss mask 1, sampler log-probs); with ``merge_prefix`` a request whose prompt ids start with the
    current row's prompt + completion extends it: ``completion += new_prompt[len(row):]`` (mask 0, log-prob 0)
    ``+ sampled`` (mask 1). ``turn_index``: request j's sampled tokens j, the prompt tokens in between -1."""
    rows: list[Sample] = []
    for j, req in enumerate(requests):
        s = req.sample
        last = rows[-1] if rows else None
        if merge_prefix and last is not None:
            seen = last.prompt_ids + last.completion_ids
            if req.prompt_ids[:len(seen)] == seen and len(req.prompt_ids) >= len(seen):
                gap = req.prompt_ids[len(seen):]
                last.completion_ids += gap + list(s.completion_ids)
                last.logprobs += [0.0] * len(gap) + list(s.logprobs)
                last.loss_mask += [0] * len(gap) + [1] * len(s.completion_ids)
                last.turn_index += [-1] * len(gap) + [j] * len(s.completion_ids)
                last.entropies = None if last.entropies is None or s.entropies is None else (
                    last.entropies + [0.0] * len(gap) + list(s.entropies))
                last.finish_reason = s.finish_reason
                continue
        rows.append(Sample(prompt_ids=list(req.prompt_ids), completion_ids=list(s.completion_ids),
                           logprobs=list(s.logprobs), finish_reason=s.finish_reason,
                           entropies=list(s.entropies) if s.entropies is not None else None,
                           loss_mask=[1] * len(s.completion_ids), turn_index=[j] * len(s.completion_ids)))
    return rows


def template_messages(messages: list[dict]) -> list[dict]:
    """OpenAI messages as chat templates read them: an assistant's ``tool_calls[].function.arguments`` (a JSON
    string on the wire) becomes a dict, as vLLM passes it."""
    out = []
    for m in messages:
        calls = m.get("tool_calls") if isinstance(m, dict) else None
        if calls:
            fixed = []
            for c in calls:
                fn = dict(c.get("function") or {})
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"] or "{}")
                    except json.JSONDecodeError:
                        pass   # the template gets the string as sent
                fixed.append({**c, "function": fn})
            m = {**m, "tool_calls": fixed}
        out.append(m)
    return out


def renders_tool_calls(tokenizer) -> bool:
    """Whether the chat template writes an assistant message's ``tool_calls`` (probed once with a dummy call)."""
    probe = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "rlpost_probe_tool", "arguments": {}}}]}]
    try:
        return "rlpost_probe_tool" in tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:
        return False


def tool_call_message(text: str, raw: str, parser: str, keep_text: bool, call_id: str) -> dict | None:
    """The assistant message of a reply that calls tools, in OpenAI's shape (``tool_calls`` with JSON-string
    arguments; ``content`` the text before the first call, or the whole text when ``keep_text``: a template that
    does not write ``tool_calls`` then re-renders the call as sampled; ids ``{call_id}_{k}``); None when it calls
    none or the calls cannot be read (the reply then comes back as text)."""
    from rlpost.envs.parsers import TOOL_CALL_PARSERS, harmony_final
    parse = TOOL_CALL_PARSERS.get(parser)
    raw_parser = getattr(parse, "raw", False)
    calls = parse(raw if raw_parser else text)
    if not isinstance(calls, list) or not calls or any(c.error for c in calls):
        return None
    if keep_text:
        content = text
    elif parser in ("hermes", "qwen3_xml", "glm4"):
        content = text.split("<tool_call>")[0].rstrip()
    else:   # llama3_json: the whole turn is the call; harmony: its final channel
        content = harmony_final(raw) if parser == "harmony" else ""
    return {"role": "assistant", "content": content or None,
            "tool_calls": [{"id": f"{call_id}_{k}", "type": "function",
                            "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                           for k, c in enumerate(calls)]}


class Batcher:
    """Requests wait (``await generate(request, params)``) for the engine.

    * An engine that batches continuously itself (``engine.continuous_batching``: ``vllm``, ``vllm_server``) gets
      each request as its own call the moment it is made, from a thread pool (one call in flight per waiting
      request); its seed is the request's own (``stable_seed``), so the samples do not depend on timing.
    * Any other engine (hf): whenever it is free, one ``engine.generate`` call on one worker thread takes every
      waiting request with the same stop strings, sampled up to the largest ``max_tokens`` among them and each cut
      to its own (which leaves the earlier tokens' distribution as is)."""

    def __init__(self, engine, tokenizer):
        from concurrent.futures import ThreadPoolExecutor
        self.engine, self.tokenizer = engine, tokenizer
        self.waiting: list[tuple[GenRequest, SamplingParams, asyncio.Future]] = []
        self.busy = False
        self.continuous = bool(getattr(engine, "continuous_batching", False))
        self.thread = ThreadPoolExecutor(64 if self.continuous else 1, thread_name_prefix="rlpost-agent-engine")

    def close(self) -> None:
        self.thread.shutdown(wait=False)

    async def generate(self, request: GenRequest, params: SamplingParams) -> Sample:
        if self.continuous:   # its own call, scheduled with whatever the engine runs
            out = await asyncio.get_running_loop().run_in_executor(
                self.thread, lambda: self.engine.generate([request], params))
            return out[0]
        future = asyncio.get_running_loop().create_future()
        self.waiting.append((request, params, future))
        self._kick()
        return await future

    def _kick(self) -> None:
        if not self.busy and self.waiting:
            self.busy = True
            asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        stop = self.waiting[0][1].stop
        batch = [w for w in self.waiting if w[1].stop == stop]
        self.waiting = [w for w in self.waiting if w[1].stop != stop]
        params = dataclasses.replace(batch[0][1], max_tokens=max(p.max_tokens for _, p, _ in batch))
        try:
            samples = await asyncio.get_running_loop().run_in_executor(
                self.thread, lambda: self.engine.generate([r for r, _, _ in batch], params))
            for (_, p, future), s in zip(batch, samples):
                future.set_result(self._cut(s, p.max_tokens))
        except Exception as err:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(err)
        finally:
            self.busy = False
            self._kick()

    def _cut(self, s: Sample, cap: int) -> Sample:
        if len(s.completion_ids) > cap:
            s.completion_ids, s.logprobs = s.completion_ids[:cap], s.logprobs[:cap]
            s.entropies = s.entropies[:cap] if s.entropies is not None else None
            s.text, s.finish_reason = self.tokenizer.decode(s.completion_ids, skip_special_tokens=True), "length"
        return s


class AgentServer:
    """What :func:`agent_app` serves for one ``rollout`` call: the episodes, the step's sampling settings and the
    batcher. ``sample`` applies the rollout's settings to a request, generates it and records it."""

    def __init__(self, episodes: list[AgentEpisode], sampling: SamplingParams, batcher: Batcher, tokenizer,
                 max_requests: int, template_kwargs: dict, max_model_len: int | None, tool_parser: str | None = None,
                 keep_call_text: bool = True):
        self.episodes, self.sampling, self.batcher, self.tokenizer = episodes, sampling, batcher, tokenizer
        self.max_requests, self.template_kwargs, self.max_model_len = max_requests, template_kwargs, max_model_len
        self.tool_parser, self.keep_call_text = tool_parser, keep_call_text

    def episode(self, headers) -> AgentEpisode:
        from rlpost.serving.openai_api import OpenAIError
        try:
            return self.episodes[int(headers.get(EPISODE_HEADER, ""))]
        except (ValueError, IndexError):
            raise OpenAIError(400, f"the {EPISODE_HEADER} header names no episode of this rollout") from None

    def params(self, body, max_tokens: int) -> SamplingParams:
        """The rollout's sampling settings, the request's ``stop`` strings added, its ``max_tokens`` capped at the
        step's."""
        from rlpost.serving.openai_api import OpenAIError, sampling_params
        asked = sampling_params(body, max_tokens)
        if asked.n != 1:
            raise OpenAIError(400, "n: the agent workflow samples one completion per request (rollout.num_generations "
                                   "sets the episodes per prompt)", "n")
        for name in CHECKED:
            sent, used = getattr(asked, name), getattr(self.sampling, name)
            if name in body.model_fields_set and sent != used and name not in _NOTED:
                _NOTED.add(name)
                log.warning("agent workflow: the rollout's %s=%s is used, not the %s the agent sent (the learner's "
                            "log-probs assume the rollout's settings)", name, used, sent)
        stop = list(self.sampling.stop or []) + [x for x in asked.stop if x not in (self.sampling.stop or [])]
        return dataclasses.replace(self.sampling, max_tokens=min(max_tokens, self.sampling.max_tokens), stop=stop)

    async def sample(self, episode: AgentEpisode, prompt: list[int], body, max_tokens: int | None) -> Sample:
        from rlpost.serving.openai_api import OpenAIError, check_length
        j = len(episode.requests)
        if j >= self.max_requests:
            raise OpenAIError(400, f"episode {episode.index} made more than rollout.workflow.max_requests="
                                   f"{self.max_requests} requests")
        params = self.params(body, max_tokens or self.sampling.max_tokens)
        check_length([prompt], params.max_tokens, self.max_model_len)
        seed = None if self.sampling.seed is None else stable_seed(self.sampling.seed, episode.index, j)
        try:
            sample = await self.batcher.generate(GenRequest(list(prompt), {"episode": episode.index, "request": j},
                                                            seed=seed), params)
        except Exception as err:   # the client sees a failed request; the episode's error names the engine's
            episode.engine_error = err
            raise
        episode.requests.append(Request(list(prompt), sample))
        return sample


def agent_app(server: AgentServer):
    """A Starlette app with OpenAI's ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models`` over
    ``server``; bodies are checked by the serving helpers' models (unknown fields: 400 naming the field)."""
    from pydantic import ValidationError
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from rlpost.serving.openai_api import (OpenAIError, chat_prompt, chat_response, completion_prompts,
                                           completion_response, request_models)
    CompletionBody, ChatBody = request_models()
    if server.tool_parser is not None:   # OpenAI tool calling: the tools go to the chat template
        class ChatBody(ChatBody):   # noqa: F811
            tools: list[dict] | None = None
            tool_choice: str | dict | None = None
            parallel_tool_calls: bool | None = None
    tok = server.tokenizer

    async def parse(request, model):
        try:
            return model(**json.loads(await request.body()))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise OpenAIError(400, "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()),
                              where) from None

    async def chat(request):
        ep = server.episode(request.headers)
        body = await parse(request, ChatBody)
        if body.top_logprobs:
            raise OpenAIError(400, "top_logprobs: only the sampled token's log-prob is available", "top_logprobs")
        kwargs = {**server.template_kwargs, **(body.chat_template_kwargs or {})}
        tools = getattr(body, "tools", None)
        if tools:
            if body.tool_choice not in (None, "auto"):
                raise OpenAIError(400, "tool_choice: only 'auto' is supported (the policy's own choice is trained)",
                                  "tool_choice")
            kwargs["tools"] = tools
        prompt = chat_prompt(template_messages(body.messages), tok, kwargs)
        sample = await server.sample(ep, prompt, body, body.max_completion_tokens or body.max_tokens)
        out = chat_response(body, body.model, prompt, [sample], tok)
        if tools:
            raw = tok.decode(sample.completion_ids, skip_special_tokens=False)
            message = tool_call_message(sample.text, raw, server.tool_parser, server.keep_call_text,
                                        f"call_{ep.index}_{len(ep.requests) - 1}")
            if message is not None:
                out["choices"][0].update(message=message, finish_reason="tool_calls")
        return JSONResponse(out)

    async def completions(request):
        ep = server.episode(request.headers)
        body = await parse(request, CompletionBody)
        if body.echo or body.logprobs:
            raise OpenAIError(400, "echo and logprobs > 0 are not supported (logprobs=0 returns the sampled "
                                   "tokens' log-probs)", "echo" if body.echo else "logprobs")
        prompts = completion_prompts(body.prompt, tok)
        if len(prompts) != 1:
            raise OpenAIError(400, "prompt: the agent workflow takes one prompt per request", "prompt")
        sample = await server.sample(ep, prompts[0], body, body.max_tokens)
        return JSONResponse(completion_response(body, body.model, prompts, [sample], tok))

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": SERVED_MODEL, "object": "model", "owned_by": "rlpost"}]})

    async def on_error(request, err: OpenAIError):
        return JSONResponse(err.body(), status_code=err.status)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"]),
                             Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/models", models, methods=["GET"])],
                     exception_handlers={OpenAIError: on_error})


class AgentWorkflow:
    """Roll out episodes of a user's agent function (see the module docstring for YAML and mechanics).

        wf = AgentWorkflow(engine, tokenizer, rollout="my_package.agents:rollout")
        trajs = wf.rollout(prompts, SamplingParams(n=4, max_tokens=64))   # one Trajectory per episode
    """
    records_turns = True   # turn k = request k: algo.advantage turn_return | gigpo (rlpost/algos/turn_credit.py)

    def __init__(self, engine, tokenizer, rollout: str, max_requests: int = 8, chat_template_kwargs: dict | None = None,
                 merge_prefix: bool = True, tool_parser: str | None = None, max_concurrent_episodes: int = 0):
        if max_concurrent_episodes < 0:
            raise ValueError(f"agent: max_concurrent_episodes must be >= 0 (0: no cap), got {max_concurrent_episodes}")
        self.engine, self.tokenizer = engine, tokenizer
        self.max_concurrent = max_concurrent_episodes
        self.spec, self.fn = rollout, import_rollout(rollout)
        self.max_requests, self.merge_prefix = max_requests, merge_prefix
        self.template_kwargs = dict(chat_template_kwargs or {})
        self.tool_parser = tool_parser
        self.keep_call_text = tool_parser is not None and not renders_tool_calls(tokenizer)
        if self.keep_call_text:
            log.warning("agent workflow: the chat template does not write tool_calls, so a reply that calls tools "
                        "keeps its whole text (the call included) in content")
        self.loop = EnvLoop()

    def rollout(self, prompts: list[Prompt], params: SamplingParams) -> list[Trajectory]:
        """``params.n`` episodes per prompt (prompt-major), running concurrently (at most ``max_concurrent_episodes``
        at once when > 0)."""
        episodes = [AgentEpisode(k, p) for k, p in enumerate(p for p in prompts for _ in range(params.n))]
        batcher = Batcher(self.engine, self.tokenizer)
        server = AgentServer(episodes, dataclasses.replace(params, n=1), batcher, self.tokenizer, self.max_requests,
                             self.template_kwargs, getattr(self.engine, "max_model_len", None), self.tool_parser,
                             self.keep_call_text)
        app = agent_app(server)
        slots = asyncio.Semaphore(self.max_concurrent or len(episodes) or 1)

        async def capped(ep: AgentEpisode) -> None:
            async with slots:
                await self.play(ep, app)
        try:
            self.loop.run(self._all([capped(ep) for ep in episodes]))
        finally:
            batcher.close()
        return [self.trajectory(ep) for ep in episodes]

    @staticmethod
    async def _all(coros):
        """Every episode to its end; then the first error in episode order is raised."""
        for item in await asyncio.gather(*coros, return_exceptions=True):
            if isinstance(item, BaseException):
                raise item

    def row(self, prompt: Prompt) -> dict:
        """What the rollout receives: every dataset column, ``messages`` and ``prompt_id``."""
        messages = list(prompt.messages or [{"role": "user", "content": prompt.text}])
        return {**(prompt.row or {}), **prompt.columns, "messages": messages, "prompt_id": prompt.id}

    def where(self, ep: AgentEpisode) -> str:
        return f"agent rollout {self.spec} (episode {ep.index}, dataset row {ep.prompt.id})"

    async def play(self, ep: AgentEpisode, app) -> None:
        """Run the user's ``rollout(client, row)`` for one episode and check what it returns."""
        import httpx
        import openai
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE_URL, timeout=None)
        client = openai.AsyncOpenAI(base_url=BASE_URL, api_key="rlpost", http_client=http, max_retries=0,
                                    default_headers={EPISODE_HEADER: str(ep.index)})
        try:
            out = await self.fn(client, self.row(ep.prompt))
        except Exception as err:
            cause = ep.engine_error
            note = f" (serving its request, the engine raised {type(cause).__name__}: {cause})" if cause else ""
            raise AgentError(f"{self.where(ep)} raised {type(err).__name__}: {err}{note}") from (cause or err)
        finally:
            await client.close()
        self.take_return(ep, out)

    def take_return(self, ep: AgentEpisode, out) -> None:
        """What the rollout returned -> ``ep.reward``, ``ep.messages``, ``ep.turn_rewards``: a reward, ``(messages,
        reward)`` or ``{"reward": R, "turn_rewards": ..., "messages": ...}`` (turn_rewards and messages optional)."""
        turns = None
        if isinstance(out, dict):
            unknown = sorted(set(out) - {"reward", "turn_rewards", "messages"})
            if unknown or "reward" not in out:
                raise AgentError(f"{self.where(ep)}: a returned dict has the keys reward (required), turn_rewards and "
                                 f"messages, got {sorted(out)}")
            ep.messages, turns, out = out.get("messages"), out.get("turn_rewards"), out["reward"]
        elif isinstance(out, tuple) and len(out) == 2:
            ep.messages, out = out
        if ep.messages is not None and (not isinstance(ep.messages, list) or
                                        not all(isinstance(m, dict) and "role" in m for m in ep.messages)):
            raise AgentError(f"{self.where(ep)}: messages must be a list of chat messages, got {ep.messages!r:.200}")
        if out is not None and not isinstance(out, (int, float)):   # a bool is a number here (True = 1.0)
            raise AgentError(f"{self.where(ep)}: expected a reward (a number), (messages, reward) or a dict "
                             f"{{'reward': ..., 'turn_rewards': [...]}}, got {out!r:.200}")
        if out is None and ep.messages is None:
            raise AgentError(f"{self.where(ep)}: returned no reward (None is allowed only with messages, for the "
                             "configured reward functions to score)")
        if not ep.requests:
            raise AgentError(f"{self.where(ep)}: made no request to the model, so there is nothing to train on")
        ep.reward = None if out is None else float(out)
        ep.turn_rewards = None if turns is None else self.turn_rewards(ep, turns)

    def turn_rewards(self, ep: AgentEpisode, turns) -> list[float]:
        """``turn_rewards`` as returned -> one float per model request (request j = turn j): a list with one number
        per request, or a dict {request index: number} (requests it leaves out: 0)."""
        n = len(ep.requests)
        if isinstance(turns, dict):
            if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < n for k in turns):
                raise AgentError(f"{self.where(ep)}: turn_rewards keys must be request indices 0..{n - 1} (the "
                                 f"episode made {n} requests), got {sorted(turns, key=str)}")
            turns = [turns.get(k, 0.0) for k in range(n)]
        elif not isinstance(turns, (list, tuple)) or len(turns) != n:
            raise AgentError(f"{self.where(ep)}: turn_rewards must hold one reward per model request (the episode "
                             f"made {n}) or be a dict {{request index: reward}}, got {turns!r:.200}")
        if not all(isinstance(r, (int, float)) and math.isfinite(r) for r in turns):
            raise AgentError(f"{self.where(ep)}: turn_rewards must be finite numbers, got {list(turns)!r:.200}")
        return [float(r) for r in turns]

    def trajectory(self, ep: AgentEpisode) -> Trajectory:
        rows = episode_rows(ep.requests, self.merge_prefix)
        for s in rows:
            s.text = self.tokenizer.decode(s.completion_ids, skip_special_tokens=False)
        assistant = [m for m in ep.messages or [] if m.get("role") == "assistant"]
        final = str(assistant[-1].get("content") or "") if assistant else ep.requests[-1].sample.text
        info = {"requests": len(ep.requests), "rows": len(rows), "agent_reward": ep.reward,
                "reward_columns": {"agent_reward": ep.reward, "conversation": ep.messages}}
        turns = ep.turn_rewards or [0.0] * len(ep.requests)
        return Trajectory(prompt=ep.prompt, group_id=ep.prompt.id, samples=rows, final_text=final,
                          sample_weights=[1.0] * len(rows), info=info, turn_rewards=turns,
                          turn_states=[hash(tuple(r.prompt_ids)) for r in ep.requests])

    def metrics(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """``agent/requests_per_episode`` and ``agent/rows_per_episode`` (rows after ``merge_prefix``)."""
        infos = [t.info for t in trajectories if "requests" in (t.info or {})]
        if not infos:
            return {}
        return {"agent/requests_per_episode": sum(i["requests"] for i in infos) / len(infos),
                "agent/rows_per_episode": sum(i["rows"] for i in infos) / len(infos)}
