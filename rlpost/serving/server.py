"""A rollout worker: vLLM's async engine (rlpost/engines/vllm_async.py) behind vLLM's own OpenAI-compatible app,
with rlpost's routes added (generate, weight updates, health with the weights' version and fingerprint, log tail).

    rlpost serve tiny:qwen2:arithmetic --port 8001 --token s3cret --log-file /tmp/w0.log

Endpoints (JSON; with a token configured every request needs ``Authorization: Bearer <token>``, else 401):

    GET  /health              {"status": "ok", "pid", "model", "log_file", "host", "port", "weights_version",
                               "weights_fingerprint", "base_weights", "tensor_parallel_size", "max_lora_rank",
                               "max_loras", "live_adapters", "adapter"}
                              (version 0 / fingerprint null: the weights of `model`; an adapter load counts as an
                              update, its fingerprint is the adapter's; base_weights: "checkpoint" until full
                              weights are loaded, then their fingerprint)
    POST /generate            {"requests": [{"prompt_ids": [...], "seed"?}], "params": {n, temperature, top_p, top_k,
                               min_p, repetition_penalty, max_tokens, stop, seed, return_entropy},
                               "seed_offset": 0}
                              -> {"samples": [{completion_ids, logprobs, text, finish_reason, entropies,
                                  request_index}]}   (request-major, n per request)
    POST /init_communicator   {"host", "port", "rank", "world_size", "backend", "timeout_s"}: join the trainer's
                              weight-broadcast group (rlpost/serving/weights.py)
    POST /update_weights      {"transport": "file", "path"} or {"transport": "dist", "meta": [[name, dtype, shape]]}
    POST /load_adapter        {"name", "transport": "file", "path"} or {"name", "transport": "dist", "meta", "config"}:
                              a LoRA adapter version, then the active one (rlpost/serving/adapters.py)
    POST /use_adapter         {"name"}: activate a live adapter
    POST /close_communicator
    POST /reset_prefix_cache
    POST /shutdown            stop serving, free the engine, exit
    GET  /log_tail?lines=N    the last N lines of this worker's log file
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions, /tokenize, ...
                              vLLM's OpenAI-compatible routes on the same engine (vllm.entrypoints.launchers
                              build_app / init_app_state), on the current policy: a request for the served model
                              runs on the active LoRA adapter, as /generate does (the response's ``model`` is
                              then the adapter's name), a live adapter named as ``model`` runs as named, and
                              /v1/models lists the served name and the live adapters (:class:`OpenAIDefaults`);
                              ``return_token_ids`` defaults to true, so every choice carries its sampled
                              ``token_ids`` and the prompt's ``prompt_token_ids``

Concurrency: every request (rlpost's /generate rows and the OpenAI routes alike) is its own vLLM request, and
vLLM's scheduler batches whatever is running (continuous batching), so an agent's turn never waits for another
caller's batch. Weight loads go to the engine core between scheduler steps (``collective_rpc``); LoRA adapters
(``--max-lora-rank``) load with ``AsyncLLM.add_lora`` and each /generate call runs on the adapter active when it
started (rlpost/serving/adapters.py, rlpost/engines/vllm_async.py); an OpenAI request on the adapter active when
it arrived.
A failing call answers 500 with ``{"error": ...}`` and writes the traceback to the log.

:class:`Worker` serves any synchronous engine instead (one call at a time on one thread) with rlpost's own
OpenAI routes (rlpost/serving/openai_api.py); the tests drive the app over fake engines that way.
"""
import asyncio
import contextlib
import hmac
import inspect
import json
import logging
import math
import os
import signal
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

log = logging.getLogger("rlpost.serve")


def tail_lines(path: str | None, lines: int = 50, max_bytes: int = 256 << 10) -> list[str]:
    """The last ``lines`` lines of a text file (reads at most ``max_bytes`` from its end)."""
    if not path or not Path(path).is_file():
        return []
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        text = f.read().decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1); any other name or address reaches beyond."""
    import ipaddress
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, allow_unauthenticated: bool = False) -> None:
    """Refuse to serve beyond loopback without a token: whoever reaches the port could replace the weights.

    Raises PermissionError naming the flags (the CLI prints it as one line and exits 2)."""
    if is_loopback(host) or token or allow_unauthenticated:
        return
    raise PermissionError(
        f"rlpost serve: refusing to bind --host {host} without a token: anyone who can reach the port could "
        "generate and replace the weights. Set --token (or $RLPOST_SERVE_TOKEN), bind --host 127.0.0.1, or pass "
        "--allow-unauthenticated to serve without a token anyway.")


def _finite(values: list[float] | None) -> list[float | None] | None:
    return None if values is None else [v if math.isfinite(v) else None for v in values]


class Worker:
    """The engine, the thread it lives on, the weight-broadcast group and the server settings."""

    def __init__(self, engine_factory, *, model: str, token: str | None, log_file: str | None, host: str, port: int,
                 tokenizer=None, served_model_name: str | None = None):
        self.model, self.token, self.log_file, self.host, self.port = model, token, log_file, host, port
        self.tokenizer = tokenizer                                # for the OpenAI routes (text in, text out)
        self.served_model_name = served_model_name or model      # the name /v1/models lists
        self.started = int(time.time())
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlpost-engine")
        self.engine = self.pool.submit(engine_factory).result()   # built on the thread that will use it
        self.comm = None
        self.server = None  # the uvicorn.Server, set by serve()
        self.weights_version = 0          # weight updates received since start (0: the weights of `model`)
        self.weights_fingerprint = None   # rlpost.serving.weights.weights_fingerprint of the last update
        self.base_weights = "checkpoint"  # full weights loaded since start: their fingerprint (adapters go on top)

    async def call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---- engine-thread functions
    def generate(self, body: dict) -> dict:
        from rlpost.engines.base import GenRequest, SamplingParams
        params = SamplingParams(**body.get("params", {}))
        requests = [GenRequest(list(r["prompt_ids"]), seed=r.get("seed")) for r in body["requests"]]
        samples = self.engine.generate(requests, params, seed_offset=int(body.get("seed_offset", 0)))
        return {"samples": [{"completion_ids": s.completion_ids, "logprobs": _finite(s.logprobs), "text": s.text,
                             "finish_reason": s.finish_reason, "entropies": _finite(s.entropies),
                             "request_index": s.request_index} for s in samples]}

    def init_communicator(self, body: dict) -> dict:
        import torch

        from rlpost.serving.weights import Communicator
        self.close_communicator()
        device = "cuda" if body["backend"] == "nccl" else "cpu"
        if device == "cuda":
            torch.cuda.set_device(0)
        self.comm = Communicator(body["host"], int(body["port"]), int(body["rank"]), int(body["world_size"]),
                                 body["backend"], float(body.get("timeout_s", 600)), device)
        return {"ok": True}

    def update_weights(self, body: dict) -> dict:
        from rlpost.serving.weights import load_weights_file
        start = time.perf_counter()
        if body["transport"] == "file":
            weights = load_weights_file(body["path"])
        elif body["transport"] == "dist":
            if self.comm is None:
                raise RuntimeError("update_weights with transport=dist before init_communicator")
            weights = self.comm.recv(body["meta"])
        else:
            raise ValueError(f"unknown weight transport {body['transport']!r} (file or dist)")
        from rlpost.serving.weights import weights_fingerprint
        self.engine.load_weights(weights)
        self.weights_version += 1
        self.weights_fingerprint = self.base_weights = weights_fingerprint(weights)
        return {"ok": True, "tensors": len(weights), "seconds": time.perf_counter() - start,
                "weights_version": self.weights_version, "weights_fingerprint": self.weights_fingerprint}

    def close_communicator(self) -> dict:
        if self.comm is not None:
            self.comm.close()
            self.comm = None
        return {"ok": True}

    def close(self) -> None:
        try:
            self.pool.submit(self.close_communicator).result(timeout=60)
            self.pool.submit(self.engine.close).result(timeout=120)
        finally:
            self.pool.shutdown(wait=False)


class AsyncWorker:
    """:class:`Worker`'s interface over :class:`rlpost.engines.vllm_async.AsyncVLLMEngine`: its calls are
    coroutines on the server's event loop, served concurrently."""

    def __init__(self, engine, *, model: str, token: str | None, log_file: str | None, host: str, port: int,
                 tokenizer=None, served_model_name: str | None = None):
        self.model, self.token, self.log_file, self.host, self.port = model, token, log_file, host, port
        self.tokenizer, self.served_model_name = tokenizer, served_model_name or model
        self.started = int(time.time())
        self.engine, self.server = engine, None
        self.weights_version, self.weights_fingerprint = 0, None
        self.weights_lock = asyncio.Lock()   # one weight (or adapter) update at a time
        self.base_weights = "checkpoint"     # full weights loaded since start: their fingerprint (adapters go on top)
        self.openai_models = None   # vLLM's OpenAIServingModels (set by serve): live adapters are listed there

    async def call(self, fn, *args):
        """Await a coroutine function; run a plain one in the default thread pool."""
        if inspect.iscoroutinefunction(fn):
            return await fn(*args)
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def generate(self, body: dict) -> dict:
        from rlpost.engines.base import GenRequest, SamplingParams
        params = SamplingParams(**body.get("params", {}))
        requests = [GenRequest(list(r["prompt_ids"]), seed=r.get("seed")) for r in body["requests"]]
        samples = await self.engine.generate(requests, params, seed_offset=int(body.get("seed_offset", 0)))
        return {"samples": [{"completion_ids": s.completion_ids, "logprobs": _finite(s.logprobs), "text": s.text,
                             "finish_reason": s.finish_reason, "entropies": _finite(s.entropies),
                             "request_index": s.request_index} for s in samples]}

    async def init_communicator(self, body: dict) -> dict:
        await self.engine.init_communicator(body["host"], int(body["port"]), int(body["rank"]),
                                            int(body["world_size"]), body["backend"], float(body.get("timeout_s", 600)))
        return {"ok": True}

    async def update_weights(self, body: dict) -> dict:
        start = time.perf_counter()
        async with self.weights_lock:
            if body["transport"] == "file":
                n, fingerprint = await self.engine.load_weights_file(body["path"])
            elif body["transport"] == "dist":
                n, fingerprint = await self.engine.recv_weights(body["meta"])
            else:
                raise ValueError(f"unknown weight transport {body['transport']!r} (file or dist)")
            self.weights_version += 1
            self.weights_fingerprint = self.base_weights = fingerprint
        return {"ok": True, "tensors": n, "seconds": time.perf_counter() - start,
                "weights_version": self.weights_version, "weights_fingerprint": fingerprint}

    async def close_communicator(self) -> dict:
        await self.engine.close_communicator()
        return {"ok": True}

    def close(self) -> None:
        self.engine.close()


class OpenAIDefaults:
    """ASGI middleware on vLLM's generation routes (POST /v1/completions, /v1/chat/completions, /v1/responses,
    /v1/messages): rlpost's defaults, written into the JSON body before vLLM reads it.

    - ``model``: a request for the served model (its name, the checkpoint path, or none) runs on the current policy,
      as /generate does: it is rewritten to the active LoRA adapter's name (rlpost.serving.adapters.openai_model),
      so vLLM serves that adapter and names it in the response's ``model``; with no adapter active it stays the
      served name (the engine's weights, full-weight updates included). A live adapter named explicitly
      (``policy-v3``) is served as named.
    - ``return_token_ids`` (completions, chat) defaults to true, so the sampled ids (and the prompt's) come back
      unless the caller says no: an agent harness that trains on the exact tokens needs them, and they cost
      nothing."""

    PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/responses", "/v1/messages")
    TOKEN_ID_PATHS = ("/v1/completions", "/v1/chat/completions")

    def __init__(self, app, worker):
        self.app, self.worker = app, worker

    def rewrite(self, path: str, data: dict) -> dict:
        from rlpost.serving.adapters import openai_model
        out = {**data, "model": openai_model(self.worker, data.get("model"))}
        if path in self.TOKEN_ID_PATHS:
            out.setdefault("return_token_ids", True)
        return out

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in self.PATHS:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            body = json.dumps(self.rewrite(scope["path"], data)).encode()
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
        await self.app({**scope, "headers": headers + [(b"content-length", str(len(body)).encode())]}, replay, send)


async def vllm_openai_app(engine, model_path: str, served_model_names: list[str]):
    """vLLM's OpenAI-compatible FastAPI app (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``,
    ``/tokenize``, ...) over ``engine.llm`` (an ``AsyncLLM``), built as ``vllm serve`` builds it with its default
    front-end settings."""
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.app import build_app
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    args = make_arg_parser(FlexibleArgumentParser()).parse_args([])
    args.model, args.served_model_name, args.disable_fastapi_docs = model_path, served_model_names, True
    args.disable_log_stats = True
    supported = await engine.llm.get_supported_tasks()
    app = build_app(args, supported, engine.llm.model_config)
    await init_app_state(engine.llm, app.state, args, supported)
    return app


RLPOST_ROUTES = ("/health", "/log_tail", "/generate", "/init_communicator", "/update_weights", "/close_communicator",
                 "/reset_prefix_cache", "/shutdown")


def request_models():
    """Pydantic models of the request bodies: a malformed body is answered 422 with the reason (FastAPI), never
    500. Unknown keys are refused, so a misspelt sampling parameter is not silently ignored."""
    from pydantic import BaseModel, ConfigDict, Field

    class Strict(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class WireParams(Strict):   # rlpost.engines.base.SamplingParams without logits processors
        n: int = Field(1, ge=1)
        temperature: float = Field(1.0, ge=0)
        top_p: float = Field(1.0, gt=0, le=1)
        top_k: int = Field(0, ge=0)
        min_p: float = Field(0.0, ge=0, le=1)
        repetition_penalty: float = Field(1.0, gt=0)
        max_tokens: int = Field(64, ge=1)
        stop: list[str] = []
        seed: int | None = None
        return_entropy: bool = False

    class WireRequest(Strict):
        prompt_ids: list[int] = Field(min_length=1)
        seed: int | None = Field(None, ge=0, lt=1 << 63)   # its own seed (GenRequest.seed)

    class GenerateBody(Strict):
        requests: list[WireRequest]
        params: WireParams = WireParams()
        seed_offset: int = 0

    class UpdateWeightsBody(Strict):
        transport: str = Field(pattern="^(file|dist)$")
        path: str | None = None
        meta: list | None = None

    return GenerateBody, UpdateWeightsBody


def create_app(worker, app=None):
    """rlpost's routes and bearer-token check on ``app`` (vLLM's OpenAI app, whose routes of the same paths they
    replace), or on a new app with rlpost's own OpenAI routes (rlpost/serving/openai_api.py) when ``app`` is None."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from rlpost.serving.openai_api import add_openai_routes

    from rlpost.serving import adapters
    GenerateBody, UpdateWeightsBody = request_models()
    LoadAdapterBody, UseAdapterBody = adapters.adapter_bodies()

    own_openai = app is None
    if own_openai:
        app = FastAPI(title="rlpost rollout worker", docs_url=None, redoc_url=None, openapi_url=None)
    else:
        app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) not in RLPOST_ROUTES]
        app.middleware_stack = None   # vLLM's app builds its stack early; it is rebuilt with ours on first use
    expected = f"Bearer {worker.token}".encode() if worker.token else None

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return JSONResponse({"error": "missing or wrong bearer token (Authorization: Bearer <token>)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    if own_openai:
        @app.exception_handler(Exception)
        async def on_error(request: Request, err: Exception):
            log.error("%s %s failed:\n%s", request.method, request.url.path, traceback.format_exc())
            return JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=500)
    else:
        add_error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok", "pid": os.getpid(), "model": worker.model, "log_file": worker.log_file,
                "host": worker.host, "port": worker.port, "weights_version": worker.weights_version,
                "weights_fingerprint": worker.weights_fingerprint,
                "base_weights": getattr(worker, "base_weights", "checkpoint"),
                "tensor_parallel_size": getattr(worker.engine, "tensor_parallel_size", 1),
                **adapters.adapter_health(worker.engine)}

    @app.get("/log_tail")
    async def log_tail(lines: int = 50):
        return {"log_file": worker.log_file, "lines": tail_lines(worker.log_file, lines)}

    @app.post("/generate")
    async def generate(body: GenerateBody):
        return await worker.call(worker.generate, body.model_dump())

    @app.post("/init_communicator")
    async def init_communicator(request: Request):
        return await worker.call(worker.init_communicator, await request.json())

    @app.post("/update_weights")
    async def update_weights(body: UpdateWeightsBody):
        return await worker.call(worker.update_weights, body.model_dump())

    @app.post("/load_adapter")
    async def load_adapter(body: LoadAdapterBody):
        if isinstance(worker, AsyncWorker):
            return await adapters.load_adapter_async(worker, body.model_dump())
        return await worker.call(adapters.load_adapter, worker, body.model_dump())

    @app.post("/use_adapter")
    async def use_adapter(body: UseAdapterBody):
        if isinstance(worker, AsyncWorker):   # bookkeeping only: on the event loop, beside the generate calls
            return adapters.use_adapter(worker, body.model_dump())
        return await worker.call(adapters.use_adapter, worker, body.model_dump())

    @app.post("/close_communicator")
    async def close_communicator():
        return await worker.call(worker.close_communicator)

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache():
        await worker.call(worker.engine.reset_prefix_cache)
        return {"ok": True}

    @app.post("/shutdown")
    async def shutdown():
        log.info("shutdown requested")
        if worker.server is not None:
            worker.server.should_exit = True
        return {"ok": True}

    if own_openai:
        add_openai_routes(app, worker)
    else:
        app.add_middleware(OpenAIDefaults, worker=worker)
    return app


def add_error_handlers(app) -> None:
    """On vLLM's app: rlpost's routes answer errors as rlpost's client reads them (``{"error": "..."}``, 500;
    a malformed body 422 with FastAPI's reasons); the OpenAI routes keep vLLM's handlers."""
    from fastapi.exception_handlers import request_validation_exception_handler
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    async def rlpost_error(request, err):
        if isinstance(err, RequestValidationError):
            return await request_validation_exception_handler(request, err)
        log.error("%s %s failed:\n%s", request.method, request.url.path, "".join(traceback.format_exception(err)))
        return JSONResponse({"error": f"{type(err).__name__}: {err}"}, status_code=500)

    def route_by_path(theirs):
        async def handler(request, err):
            if request.url.path in RLPOST_ROUTES:
                return await rlpost_error(request, err)
            out = theirs(request, err)
            return await out if inspect.isawaitable(out) else out
        return handler

    for kind, theirs in list(app.exception_handlers.items()):
        app.exception_handlers[kind] = route_by_path(theirs)
    app.exception_handlers.setdefault(Exception, rlpost_error)


def redirect_output(log_file: str) -> None:
    """Send this process's stdout and stderr (vLLM's logs, uvicorn's, tracebacks) to ``log_file``."""
    Path(log_file).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)


def serve(model: str, *, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          log_file: str | None = None, engine_kwargs: dict[str, Any] | None = None,
          allow_unauthenticated: bool = False, served_model_name: str | None = None) -> int:
    """Build the engine, serve until /shutdown (or SIGINT/SIGTERM), free the engine. Returns an exit code.
    A bind beyond loopback without a token is refused unless ``allow_unauthenticated`` (:func:`check_bind`).
    ``served_model_name``: the model name of the OpenAI routes (default: ``model`` as given)."""
    check_bind(host, token, allow_unauthenticated)
    from rlpost.config import ModelConfig
    from rlpost.models.loading import load_tokenizer, resolve_model_path

    if log_file:
        redirect_output(log_file)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", force=True)
    if not is_loopback(host) and not token:
        log.warning("serving on %s without a token (--allow-unauthenticated): anyone who can reach this port can "
                    "generate and replace the weights", host)
    kwargs = dict(engine_kwargs or {})
    model_cfg = ModelConfig(name_or_path=model, trust_remote_code=kwargs.get("trust_remote_code", False))
    path = resolve_model_path(model_cfg)
    tokenizer = load_tokenizer(path, model_cfg)
    config = dict(host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=5)
    # uvicorn shuts down on SIGTERM, then raises the signal again: with Python's default handler that would end
    # the process before the engine processes are stopped (they would keep their memory); this handler turns it
    # into SystemExit, so the cleanup below runs (SIGINT already raises KeyboardInterrupt)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    return asyncio.run(_serve_async(path, tokenizer, kwargs, config, model=model, token=token, log_file=log_file,
                                    served_model_name=served_model_name or model))


async def _serve_async(path: str, tokenizer, engine_kwargs: dict, config: dict, *, model: str, token: str | None,
                       log_file: str | None, served_model_name: str) -> int:
    """The async engine, vLLM's OpenAI app with rlpost's routes, uvicorn: all on this event loop."""
    import uvicorn

    from rlpost.engines.vllm_async import AsyncVLLMEngine
    log.info("rlpost serve: building the vLLM async engine for %s", path)
    engine = AsyncVLLMEngine(path, tokenizer, **engine_kwargs)
    worker = AsyncWorker(engine, model=path, token=token, log_file=log_file, host=config["host"], port=config["port"],
                         tokenizer=tokenizer, served_model_name=served_model_name)
    try:
        app = create_app(worker, await vllm_openai_app(engine, path, [served_model_name]))
        worker.openai_models = getattr(app.state, "openai_serving_models", None)
        server = uvicorn.Server(uvicorn.Config(app, **config))
        worker.server = server
        log.info("rlpost serve: listening on http://%s:%d (pid %d)", config["host"], config["port"], os.getpid())
        await server.serve()
    finally:
        try:
            worker.close()
        finally:
            reap_children()
        log.info("rlpost serve: stopped")
    return 0 if server.started else 1


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def reap_children(grace_s: float = 5.0) -> None:
    """End every process this one started (vLLM's engine cores and their model workers): AsyncLLM.shutdown asks
    them to stop but does not wait, and a core left behind keeps its reserved memory and polls a CPU core. SIGTERM,
    then SIGKILL after ``grace_s`` for those still alive."""
    import psutil
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()
    if alive:
        log.warning("rlpost serve: %d engine process(es) did not stop within %.0f s and were killed", len(alive), grace_s)
