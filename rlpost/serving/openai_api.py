"""OpenAI-compatible routes of ``rlpost serve``: ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions`` over the worker's own engine (rlpost/serving/server.py), so an agent harness can
roll out against the policy being trained with ``openai.OpenAI(base_url="http://host:port/v1", api_key=token)``.

The responses follow OpenAI's schema (``choices``, ``logprobs``, ``usage``) with vLLM's token-id extensions always
filled in: every choice carries ``token_ids`` (the sampled completion tokens, exactly as sampled) and the prompt's
ids come back as ``prompt_token_ids`` (on the response for chat, on each choice for completions, as vLLM does).
A log-prob is rlpost's sampler log-prob (after temperature and truncation: docs/engines.md), the one the trainer
compares with the learner's. Only the sampled token's log-prob exists, so ``top_logprobs`` / ``logprobs`` above 0
are refused; so are streaming, ``echo``, tools and other fields this server does not implement (422 naming the
field), instead of being silently ignored.

Chat prompts are the model's chat template (``tokenizer.apply_chat_template(messages, add_generation_prompt=True)``
and ``chat_template_kwargs``) tokenized without extra special tokens, as rlpost's own rollouts build them.
"""

import time
import uuid
from typing import Any

from rlpost.engines.base import GenRequest, SamplingParams


class OpenAIError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(self.status, "InternalServerError")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.status}}


def request_models():
    """Pydantic models of the two request bodies (fields OpenAI's and vLLM's clients send; unknown ones: 422)."""
    from pydantic import BaseModel, ConfigDict, Field

    class Common(BaseModel):
        model_config = ConfigDict(extra="forbid")
        model: str
        n: int = Field(1, ge=1)
        temperature: float = Field(1.0, ge=0)
        top_p: float = Field(1.0, gt=0, le=1)
        top_k: int = Field(0, ge=-1)                    # vLLM extension; 0 or -1: off
        min_p: float = Field(0.0, ge=0, le=1)           # vLLM extension
        repetition_penalty: float = Field(1.0, gt=0)    # vLLM extension
        stop: str | list[str] | None = None
        seed: int | None = Field(None, ge=0, lt=1 << 63)
        stream: bool = False
        user: str | None = None
        return_token_ids: bool | None = None            # vLLM extension; the ids are always returned here

    class CompletionBody(Common):
        prompt: str | list[str] | list[int] | list[list[int]]
        max_tokens: int = Field(16, ge=1)               # OpenAI's default for completions
        logprobs: int | None = Field(None, ge=0)
        echo: bool = False

    class ChatBody(Common):
        messages: list[dict[str, Any]] = Field(min_length=1)
        max_tokens: int | None = Field(None, ge=1)
        max_completion_tokens: int | None = Field(None, ge=1)
        logprobs: bool = False
        top_logprobs: int | None = Field(None, ge=0)
        chat_template_kwargs: dict[str, Any] | None = None   # vLLM extension (e.g. enable_thinking)

    return CompletionBody, ChatBody


def sampling_params(body, max_tokens: int) -> SamplingParams:
    """An OpenAI request's sampling fields -> rlpost SamplingParams (one engine call, ``n`` samples per prompt)."""
    if body.stream:
        raise OpenAIError(400, "stream=true is not supported by rlpost serve; send stream=false", "stream")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return SamplingParams(n=body.n, temperature=body.temperature, top_p=body.top_p, top_k=max(body.top_k, 0),
                          min_p=body.min_p, repetition_penalty=body.repetition_penalty, max_tokens=max_tokens,
                          stop=stop, seed=body.seed)


def completion_prompts(prompt, tokenizer) -> list[list[int]]:
    """``prompt`` (a string, a list of strings, a list of ids or a list of id lists) -> one id list per prompt."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if prompt and all(isinstance(p, int) for p in prompt):
        prompt = [prompt]
    ids = [p if isinstance(p, list) else tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompt]
    if not ids or any(len(p) == 0 for p in ids):
        raise OpenAIError(400, "prompt: every prompt needs at least one token", "prompt")
    return [list(p) for p in ids]


def message_text(content) -> str:
    """A message's ``content``: a string, or OpenAI's list of parts (only ``{"type": "text"}`` parts)."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise OpenAIError(400, f"messages: only text content parts are supported, got {part!r}", "messages")
        parts.append(part.get("text", ""))
    return "".join(parts)


def chat_prompt(messages: list[dict], tokenizer, template_kwargs: dict | None) -> list[int]:
    """The chat template's rendering of ``messages`` with the assistant's generation prompt, as token ids."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise OpenAIError(400, "this model's tokenizer has no chat template: use /v1/completions", "messages")
    for i, m in enumerate(messages):
        if "role" not in m:
            raise OpenAIError(400, f"messages[{i}] has no role", "messages")
    msgs = [{**m, "content": message_text(m.get("content"))} for m in messages]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, **(template_kwargs or {}))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_length(prompts: list[list[int]], max_tokens: int, max_model_len: int | None) -> None:
    longest = max(len(p) for p in prompts)
    if max_model_len is not None and longest + max_tokens > max_model_len:
        raise OpenAIError(400, f"a prompt of {longest} tokens + max_tokens {max_tokens} exceeds the worker's "
                               f"max_model_len {max_model_len} (rlpost serve --max-model-len)", "max_tokens")


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def usage(prompts: list[list[int]], samples) -> dict:
    """Prompt tokens are counted once per prompt (its ``n`` samples share it), completion tokens per sample."""
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(s.completion_ids) for s in samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_logprobs(tokenizer, sample) -> dict:
    """OpenAI's legacy completion logprobs: tokens, token_logprobs, text_offset, top_logprobs (none asked)."""
    tokens = token_strings(tokenizer, sample.completion_ids)
    offsets, at = [], 0
    for t in tokens:
        offsets.append(at)
        at += len(t)
    return {"tokens": tokens, "token_logprobs": list(sample.logprobs), "text_offset": offsets,
            "top_logprobs": None}


def chat_logprobs(tokenizer, sample) -> dict:
    """OpenAI's chat logprobs: one ``{token, logprob, bytes, top_logprobs: []}`` per sampled token."""
    return {"content": [{"token": t, "logprob": lp, "bytes": list(t.encode("utf-8")), "top_logprobs": []}
                        for t, lp in zip(token_strings(tokenizer, sample.completion_ids), sample.logprobs)]}


def completion_response(body, model: str, prompts: list[list[int]], samples, tokenizer) -> dict:
    choices = [{"index": k, "text": s.text, "finish_reason": s.finish_reason, "stop_reason": None,
                "logprobs": completion_logprobs(tokenizer, s) if body.logprobs is not None else None,
                "token_ids": list(s.completion_ids), "prompt_token_ids": list(s.prompt_ids)}
               for k, s in enumerate(samples)]
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(prompts, samples)}


def chat_response(body, model: str, prompt: list[int], samples, tokenizer) -> dict:
    choices = [{"index": k, "message": {"role": "assistant", "content": s.text}, "finish_reason": s.finish_reason,
                "stop_reason": None, "logprobs": chat_logprobs(tokenizer, s) if body.logprobs else None,
                "token_ids": list(s.completion_ids)} for k, s in enumerate(samples)]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage([prompt], samples), "prompt_token_ids": prompt}


def add_openai_routes(app, worker) -> None:
    """Mount /v1/models, /v1/completions and /v1/chat/completions on ``app`` (the worker's FastAPI app; its
    bearer-token middleware guards them like every other route). Engine calls go through ``worker.call`` onto
    the engine thread, so they queue with /generate."""
    from fastapi import Request
    from fastapi.exception_handlers import request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    CompletionBody, ChatBody = request_models()

    @app.exception_handler(OpenAIError)
    async def on_openai_error(request: Request, err: OpenAIError):
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def on_bad_body(request: Request, err: RequestValidationError):
        """A malformed /v1 body: 400 in OpenAI's shape naming the field (as vLLM answers); other routes: 422."""
        if not request.url.path.startswith("/v1/"):
            return await request_validation_exception_handler(request, err)
        problems = [f"{'.'.join(str(x) for x in e['loc'][1:])}: {e['msg']}" for e in err.errors()]
        first = err.errors()[0]["loc"][1:] if err.errors() else ()
        return JSONResponse(OpenAIError(400, "; ".join(problems), ".".join(map(str, first)) or None).body(),
                            status_code=400)

    def names() -> list[str]:
        return [worker.served_model_name] + ([worker.model] if worker.model != worker.served_model_name else [])

    def check_model(name: str) -> None:
        if name not in names():
            raise OpenAIError(404, f"model {name!r} is not served here; this worker serves {names()[0]!r} "
                                   "(GET /v1/models)", "model")

    async def run(prompts: list[list[int]], params: SamplingParams):
        check_length(prompts, params.max_tokens, getattr(worker.engine, "max_model_len", None))
        requests = [GenRequest(p) for p in prompts]
        return await worker.call(worker.engine.generate, requests, params)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": worker.served_model_name, "object": "model",
                                            "created": worker.started, "owned_by": "rlpost",
                                            "root": worker.served_model_name, "parent": None,
                                            "max_model_len": getattr(worker.engine, "max_model_len", None)}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        check_model(body.model)
        if body.echo:
            raise OpenAIError(400, "echo=true is not supported by rlpost serve", "echo")
        if body.logprobs:
            raise OpenAIError(400, "logprobs: only the sampled token's log-prob is available; send logprobs=0",
                              "logprobs")
        prompts = completion_prompts(body.prompt, worker.tokenizer)
        samples = await run(prompts, sampling_params(body, body.max_tokens))
        return completion_response(body, body.model, prompts, samples, worker.tokenizer)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatBody):
        check_model(body.model)
        if body.top_logprobs:
            raise OpenAIError(400, "top_logprobs: only the sampled token's log-prob is available; send "
                                   "logprobs=true without top_logprobs", "top_logprobs")
        prompt = chat_prompt(body.messages, worker.tokenizer, body.chat_template_kwargs)
        max_len = getattr(worker.engine, "max_model_len", None)
        max_tokens = body.max_completion_tokens or body.max_tokens or (max(1, max_len - len(prompt)) if max_len else 16)
        samples = await run([prompt], sampling_params(body, max_tokens))
        return chat_response(body, body.model, prompt, samples, worker.tokenizer)
