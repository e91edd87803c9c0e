"""Client of ``rlpost serve`` workers (``rollout.engine: vllm_server``): data-parallel rollout over HTTP.

- generate: the requests are cut into contiguous slices, sized so that the least-loaded workers (tokens in
  flight from every thread of this client) get the most (rlpost/engines/dispatch.py), sent concurrently, and the
  samples put back in request order. Each slice carries its ``seed_offset``, so a sample's seed depends on its
  place in the whole batch, not on which or how many workers served it; a request with a seed of its own
  (``GenRequest.seed``) sends it. The client may be called from many threads at once (``continuous_batching``:
  per-episode rollouts send each episode's turn as a call of its own); a one-request call goes to the
  least-loaded worker from its caller's thread, and the worker's async engine batches whatever it holds.
- load_weights: to every worker, by ``rollout.weight_sync`` (rlpost/serving/weights.py): ``file`` (one
  torch.save file in shared memory, loaded by each worker) or ``dist`` (a torch.distributed broadcast group:
  gloo on CPU, NCCL when the learner's weights are on a GPU).
- load_adapter / use_adapter (``model.lora.sync: adapter``): the LoRA adapter alone, by the same transports
  (file: a peft-layout directory; dist: the broadcast group), to workers started with ``--max-lora-rank``
  (rlpost/serving/adapters.py); /generate then runs with it. The workers' LoRA settings are checked at start.
- No hangs: every HTTP call and the start-up health polling are bounded by ``rollout.timeout_s``; the broadcast
  group has the same timeout. A worker that dies, times out or answers with an error raises
  :class:`~rlpost.engines.base.EngineError` whose message ends with the worker's last log lines (read from its
  log file, which /health names, or through GET /log_tail while it still answers).

:func:`start_workers` launches ``rlpost serve`` subprocesses and waits until they are healthy (tests, scripts).
"""
from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

import torch

from rlpost.engines.base import ENGINES, EngineError, GenRequest, SamplingParams
from rlpost.engines.dispatch import LoadTracker, request_weight
from rlpost.types import Sample

log = logging.getLogger("rlpost")
LOG_LINES = 40  # worker log lines quoted in an EngineError
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _headers(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _read_tail(path: str | None, lines: int = LOG_LINES) -> list[str]:
    from rlpost.serving.server import tail_lines
    return tail_lines(path, lines)


def _format_tail(where: str | None, lines: list[str]) -> str:
    if not lines:
        return "\n(no worker log available: start workers with --log-file, or with start_workers)"
    return f"\n--- last {len(lines)} lines of the worker log ({where}) ---\n" + "\n".join(lines)


# ---------------------------------------------------------------------------------------------- workers
@dataclass
class WorkerHandle:
    """An ``rlpost serve`` subprocess started by :func:`start_workers`."""
    url: str
    port: int
    process: subprocess.Popen
    log_path: str
    token: str | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = LOG_LINES) -> list[str]:
        return _read_tail(self.log_path, lines)

    def kill_group(self) -> None:
        """SIGKILL the worker's process group: the worker and vLLM's engine-core processes, which outlive a worker
        killed by SIGKILL (each worker is started in a session of its own)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, timeout_s: float = 30.0) -> None:
        """POST /shutdown, then SIGTERM, then SIGKILL; each bounded. Whatever of its process group is left
        afterwards (an engine core of a worker that was killed) is killed too."""
        try:
            self._stop(timeout_s)
        finally:
            self.kill_group()

    def _stop(self, timeout_s: float) -> None:
        if not self.alive():
            return
        import requests
        try:
            requests.post(f"{self.url}/shutdown", headers=_headers(self.token), timeout=5)
            self.process.wait(timeout=timeout_s)
            return
        except Exception:
            pass
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def stop_workers(handles: list[WorkerHandle], timeout_s: float = 30.0) -> None:
    """Stop several workers at once (each shuts its engine down in parallel with the others)."""
    with ThreadPoolExecutor(max_workers=max(1, len(handles))) as pool:
        list(pool.map(lambda h: h.stop(timeout_s), handles))


_STARTED: list[WorkerHandle] = []


@atexit.register
def _kill_leftover_workers() -> None:  # never leave vLLM processes behind
    for handle in _STARTED:
        handle.kill_group()


def start_workers(model_path: str, n: int = 1, ports: list[int] | None = None, *, host: str = "127.0.0.1",
                  token: str | None = None, log_dir: str | None = None, timeout_s: float = 600.0,
                  engine_args: Iterable[str] = (), env: dict | None = None,
                  tensor_parallel_size: int = 1) -> list[WorkerHandle]:
    """Launch ``n`` ``rlpost serve`` workers and wait (at most ``timeout_s``) until all answer /health.

    ``engine_args`` are extra ``rlpost serve`` flags (e.g. ``["--dtype", "float32"]``); ``tensor_parallel_size``
    shards each worker's model over that many devices (``--tensor-parallel-size``; on a GPU machine give each
    worker its own devices through ``env`` / CUDA_VISIBLE_DEVICES). The token travels in the environment, not on
    the command line. On failure every started worker is killed and EngineError is raised
    with the failing worker's log tail."""
    ports = list(ports) if ports else [free_port(host) for _ in range(n)]
    if len(ports) != n:
        raise ValueError(f"start_workers: {n} workers but {len(ports)} ports")
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="rlpost-workers-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    if token:
        child_env["RLPOST_SERVE_TOKEN"] = token
    handles = []
    for i, port in enumerate(ports):
        log_path = str(log_dir / f"worker-{i}-port{port}.log")
        cmd = [sys.executable, "-m", "rlpost.cli", "serve", str(model_path), "--host", host, "--port", str(port),
               "--log-file", log_path, "--tensor-parallel-size", str(tensor_parallel_size), *engine_args]
        with open(log_path, "ab") as out:  # also catches crashes before the server redirects its own output
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=child_env, start_new_session=True)
        handle = WorkerHandle(f"http://{host}:{port}", port, proc, log_path, token)
        handles.append(handle)
        _STARTED.append(handle)
    try:
        wait_healthy([h.url for h in handles], token, timeout_s, handles)
    except BaseException:
        for h in handles:
            h.kill_group()
        raise
    return handles


def wait_healthy(urls: list[str], token: str | None, timeout_s: float,
                 handles: list[WorkerHandle] | None = None) -> list[dict]:
    """Poll GET /health of every worker until all answer, a started worker exits, or ``timeout_s`` passes."""
    import requests
    deadline = time.monotonic() + timeout_s
    infos: list[dict | None] = [None] * len(urls)
    while True:
        for i, url in enumerate(urls):
            if infos[i] is not None:
                continue
            handle = handles[i] if handles else None
            if handle is not None and not handle.alive():
                raise EngineError(f"rlpost serve worker {url} exited with code {handle.process.returncode} during "
                                  f"start-up" + _format_tail(handle.log_path, handle.log_tail()))
            try:
                resp = requests.get(f"{url}/health", headers=_headers(token), timeout=5)
            except requests.RequestException:
                continue
            if resp.status_code == 401:
                raise EngineError(f"rlpost serve worker {url} refused the token (401): set rollout.server_token "
                                  "(or RLPOST_SERVE_TOKEN) to the worker's --token")
            if resp.status_code == 200:
                infos[i] = resp.json()
        if all(info is not None for info in infos):
            return infos
        if time.monotonic() > deadline:
            waiting = [u for u, info in zip(urls, infos) if info is None]
            tails = "".join(_format_tail(h.log_path, h.log_tail()) for h in (handles or []) if h.url in waiting)
            raise EngineError(f"rlpost serve workers not healthy after {timeout_s:.0f} s (rollout.timeout_s): "
                              f"{', '.join(waiting)}" + tails)
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------- client
@ENGINES.register("vllm_server")
class VLLMServerEngine:
    """Client of one or many ``rlpost serve`` workers; see the module docstring."""

    # The workers batch concurrent requests themselves (vLLM's async engine): per-episode rollouts send each
    # episode's turn as its own call, from many threads (rlpost/workflows/multi_turn.py Batcher).
    continuous_batching = True
    MAX_CONCURRENT = 64   # connections kept per worker

    def __init__(self, urls: list[str], tokenizer, *, token: str | None = None, timeout_s: float = 600.0,
                 weight_sync: str = "file", weight_sync_dir: str | None = None,
                 workers: list[WorkerHandle] | None = None, max_lora_rank: int | None = None, max_loras: int = 1,
                 model_path: str | None = None):
        if not urls:
            raise ValueError("rollout.engine=vllm_server needs rollout.server_urls (start workers with rlpost serve)")
        if weight_sync not in ("file", "dist"):
            raise ValueError(f"rollout.weight_sync must be file or dist, got {weight_sync!r}")
        self.urls = [u.rstrip("/") for u in urls]
        self.tokenizer = tokenizer
        self.token, self.timeout_s = token, timeout_s
        self.weight_sync, self.weight_sync_dir = weight_sync, weight_sync_dir
        self.weights_fingerprint = None   # of the weights last sent and confirmed by every worker
        self.workers = workers or []                      # handles of workers this engine owns (stopped on close)
        self.sessions = [self._session() for _ in self.urls]
        self.load = LoadTracker(len(self.urls))           # tokens in flight per worker, shared by all threads
        # calls of concurrent generate()s queue per worker on the worker itself, not for a pool thread here
        self.pool = ThreadPoolExecutor(max_workers=4 * len(self.urls) + 1, thread_name_prefix="rlpost-client")
        self.comm = None
        infos = wait_healthy(self.urls, token, timeout_s, self.workers if len(self.workers) == len(urls) else None)
        self.log_files = [info.get("log_file") for info in infos]
        self.closed = False
        self.model_path = model_path       # the learner's checkpoint (adapter sync: the workers' base must be it)
        self.sent_adapters: set[str] = set()   # adapter names this client loaded (a reused worker may hold others)
        self.lora_problem = self._check_lora(infos, max_lora_rank, max_loras) if max_lora_rank else None

    def _check_lora(self, infos: list[dict], rank: int, loras: int) -> str | None:
        """Why the workers cannot serve adapter sync (None: they can): every worker must be started with
        --max-lora-rank >= the adapter's rank and --max-loras >= ``loras``. The pipeline falls back to merged sync
        with this reason, or stops with it when model.lora.sync=adapter was set explicitly."""
        for url, info in zip(self.urls, infos):
            have, slots = info.get("max_lora_rank"), info.get("max_loras") or 0
            if not have or have < rank or slots < loras:
                return (f"vllm_server worker {url} serves LoRA up to rank {have} with {slots} adapters live; "
                                  f"model.lora.sync=adapter needs rank {rank} and {loras}: start it with rlpost serve "
                                  f"--max-lora-rank {rank} --max-loras {loras} (async_level + 1), or set "
                        "model.lora.sync=merged")
        return None

    @classmethod
    def _session(cls):
        """A requests session with room for MAX_CONCURRENT concurrent calls (per-episode rollouts)."""
        import requests
        from requests.adapters import HTTPAdapter
        session = requests.Session()
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=cls.MAX_CONCURRENT))
        session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=cls.MAX_CONCURRENT))
        return session

    @classmethod
    def from_config(cls, cfg, model_path: str, tokenizer) -> "VLLMServerEngine":
        from rlpost.models.lora_sync import lora_engine_args
        r = cfg.rollout
        return cls(list(r.server_urls), tokenizer, token=r.server_token or os.environ.get("RLPOST_SERVE_TOKEN"),
                   timeout_s=r.timeout_s, weight_sync=r.weight_sync, weight_sync_dir=r.weight_sync_dir,
                   model_path=str(model_path), **lora_engine_args(cfg))

    # ------------------------------------------------------------------ HTTP with errors that explain themselves
    def _post(self, i: int, path: str, body: dict | None = None, what: str | None = None) -> dict:
        import requests
        url = f"{self.urls[i]}{path}"
        try:
            resp = self.sessions[i].post(url, json=body or {}, headers=_headers(self.token), timeout=self.timeout_s)
        except requests.Timeout as err:
            raise self._error(i, what or path, f"no answer within rollout.timeout_s={self.timeout_s:.0f} s ({err})")
        except requests.RequestException as err:
            raise self._error(i, what or path, f"worker unreachable, it may have died ({type(err).__name__}: {err})")
        if resp.status_code == 401:
            raise self._error(i, what or path, "401: the worker refused the token (rollout.server_token)")
        if resp.status_code != 200:
            try:
                detail = resp.json().get("error", resp.text)
            except ValueError:
                detail = resp.text
            raise self._error(i, what or path, f"HTTP {resp.status_code}: {detail}")
        return resp.json()

    def _error(self, i: int, what: str, detail: str) -> EngineError:
        where, lines = self.log_tail(i)
        return EngineError(f"vllm_server worker {self.urls[i]} failed during {what}: {detail}" +
                           _format_tail(where, lines))

    def log_tail(self, i: int, lines: int = LOG_LINES) -> tuple[str | None, list[str]]:
        """The worker's last log lines: from its log file when this machine can read it (it also works after the
        worker died), else through GET /log_tail."""
        path = self.log_files[i] if i < len(self.log_files) else None
        if path and Path(path).is_file():
            return path, _read_tail(path, lines)
        try:
            resp = self.sessions[i].get(f"{self.urls[i]}/log_tail", params={"lines": lines},
                                        headers=_headers(self.token), timeout=5)
            body = resp.json()
            return body.get("log_file"), body.get("lines", [])
        except Exception:
            return path, []

    def _on_all(self, calls: list[tuple[int, str, dict, str]]) -> list[dict]:
        """Run (worker, path, body, what) calls concurrently; raise the first failure after all returned. A single
        call runs on the calling thread (per-episode rollouts make many of them at once)."""
        if len(calls) == 1:
            return [self._post(*calls[0])]
        futures = [self.pool.submit(self._post, *c) for c in calls]
        results, first_error = [], None
        for f in futures:
            try:
                results.append(f.result())
            except EngineError as err:
                first_error = first_error or err
                results.append(None)
        if first_error is not None:
            raise first_error
        return results

    # ------------------------------------------------------------------ engine API
    def generate(self, requests: list[GenRequest], params: SamplingParams) -> list[Sample]:
        if params.logits_processors:
            raise NotImplementedError(
                "rollout.engine=vllm_server cannot run Python logits processors (e.g. HAPO's adaptive temperature): "
                "they would have to run inside the workers. Use rollout.engine=vllm (colocated) or hf.")
        self._check_open()
        wire = {"n": params.n, "temperature": params.temperature, "top_p": params.top_p, "top_k": params.top_k,
                "min_p": params.min_p, "repetition_penalty": params.repetition_penalty,
                "max_tokens": params.max_tokens, "stop": list(params.stop), "seed": params.seed,
                "return_entropy": params.return_entropy}
        wire_requests = [{"prompt_ids": list(r.prompt_ids)} | ({"seed": r.seed} if r.seed is not None else {})
                         for r in requests]
        results = self._dispatch([request_weight(len(r.prompt_ids), params.n, params.max_tokens) for r in requests],
                                 lambda lo, hi: {"requests": wire_requests[lo:hi], "params": wire, "seed_offset": lo})
        samples: list[Sample] = []
        for lo, result in results:
            for s in result["samples"]:
                idx = lo + s["request_index"]
                samples.append(Sample(prompt_ids=list(requests[idx].prompt_ids), completion_ids=s["completion_ids"],
                                      logprobs=[float("nan") if v is None else v for v in s["logprobs"]],
                                      text=s["text"], finish_reason=s["finish_reason"], request_index=idx,
                                      entropies=None if s["entropies"] is None else
                                      [float("nan") if v is None else v for v in s["entropies"]]))
        return samples

    def _dispatch(self, weights: list[float], body) -> list[tuple[int, dict]]:
        """POST /generate slices of a batch to the least-loaded workers (rlpost/engines/dispatch.py), concurrently;
        ``body(lo, hi)`` is a slice's request body. Each slice's load is released as soon as its worker answers.
        Returns (lo, reply) per slice in request order; raises the first failure after all answered."""
        slices = self.load.reserve(weights)
        if len(slices) == 1:   # one worker (e.g. a per-episode turn): post from this thread, so concurrent calls
            k, lo, hi, w = slices[0]   # are not capped by the pool's size (the worker batches them continuously)
            try:
                return [(lo, self._post(k, "/generate", body(lo, hi), f"generate ({hi - lo} prompts)"))]
            finally:
                self.load.release(k, w)
        futures = []
        for k, lo, hi, w in slices:
            f = self.pool.submit(self._post, k, "/generate", body(lo, hi), f"generate ({hi - lo} prompts)")
            f.add_done_callback(lambda _f, k=k, w=w: self.load.release(k, w))
            futures.append((lo, f))
        results, first_error = [], None
        for lo, f in futures:
            try:
                results.append((lo, f.result()))
            except EngineError as err:
                first_error = first_error or err
        if first_error is not None:
            raise first_error
        return results

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Send the weights to every worker and check that each now holds exactly them: every worker answers
        with the fingerprint of what it loaded (rlpost.serving.weights.weights_fingerprint), which must equal
        the fingerprint of what was sent."""
        from rlpost.serving.weights import weights_fingerprint
        self._check_open()
        named = [(name, t.detach()) for name, t in named_tensors]
        expected = weights_fingerprint(named)
        if self.weight_sync == "file":
            replies = self._load_weights_file(named)
        else:
            replies = self._load_weights_dist(named)
        self._check_fingerprints(replies, expected)

    def _check_fingerprints(self, replies: list[dict], expected: str) -> None:
        for url, reply in zip(self.urls, replies):
            if reply.get("weights_fingerprint") != expected:
                raise EngineError(f"vllm_server: worker {url} reports weights {reply.get('weights_fingerprint')} "
                                  f"after the sync, not the {expected} that were sent")
        self.weights_fingerprint = expected

    def load_adapter(self, adapter) -> None:
        """Send one LoRA adapter version (rlpost.models.lora_sync.AdapterWeights) to every worker, where it becomes
        the active adapter; each worker answers with the fingerprint of the adapter tensors it loaded."""
        from rlpost.serving.weights import weights_fingerprint
        self._check_open()
        if self.lora_problem:
            raise EngineError(self.lora_problem)
        expected = weights_fingerprint(adapter.tensors)
        if self.weight_sync == "file":
            replies = self._load_adapter_file(adapter)
        else:
            replies = self._load_weights_dist(adapter.tensors, "/load_adapter",
                                              {"name": adapter.name, "config": adapter.config})
        self._check_fingerprints(replies, expected)
        self.sent_adapters.add(adapter.name)

    def _load_adapter_file(self, adapter) -> list[dict]:
        import shutil
        import uuid

        from rlpost.models.lora_sync import write_adapter
        from rlpost.serving.weights import default_sync_dir
        path = write_adapter(adapter, Path(self.weight_sync_dir or default_sync_dir()) / f"rlpost-adapter-{uuid.uuid4().hex}")
        try:
            return self._on_all([(i, "/load_adapter", {"name": adapter.name, "transport": "file", "path": path},
                                  "load_adapter (file)") for i in range(len(self.urls))])
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def needs_base_weights(self, fingerprint: str) -> bool:
        """Whether a worker may hold other base weights than the learner's (whose fingerprint is ``fingerprint``):
        it loaded other full weights since it started (health ``base_weights``: their fingerprint, ``checkpoint``
        before), or it serves another model path than the learner's."""
        learner = getattr(self, "model_path", None)

        def same(info: dict) -> bool:
            if info.get("base_weights") == fingerprint:
                return True
            return info.get("base_weights") == "checkpoint" and (
                learner is None or str(Path(info.get("model", ""))) == str(Path(learner)))
        return not all(same(info) for info in wait_healthy(self.urls, self.token, self.timeout_s))

    def use_adapter(self, name: str) -> bool:
        """Activate the live adapter ``name`` on every worker; False when one of them does not hold it, or when this
        client did not load it (a worker reused from another run may hold an adapter of the same name)."""
        self._check_open()
        if name not in self.sent_adapters:
            return False
        replies = self._on_all([(i, "/use_adapter", {"name": name}, "use_adapter") for i in range(len(self.urls))])
        return all(r.get("ok") for r in replies)

    def _load_weights_file(self, named_tensors) -> list[dict]:
        from rlpost.serving.weights import save_weights_file
        path = save_weights_file(named_tensors, self.weight_sync_dir)
        try:
            return self._on_all([(i, "/update_weights", {"transport": "file", "path": path}, "update_weights (file)")
                                 for i in range(len(self.urls))])
        finally:
            Path(path).unlink(missing_ok=True)

    def _load_weights_dist(self, named_tensors, route: str = "/update_weights", extra: dict | None = None) -> list[dict]:
        from rlpost.serving.weights import tensor_meta
        tensors, meta = tensor_meta(named_tensors)
        if self.comm is None:
            self._init_communicator(device=tensors[0][1].device)
        futures = [self.pool.submit(self._post, i, route, {**(extra or {}), "transport": "dist", "meta": meta},
                                    f"{route.lstrip('/')} (dist)") for i in range(len(self.urls))]
        send_error = None
        try:
            self.comm.send(tensors, meta)
        except Exception as err:  # a worker left the group (died) or the broadcast timed out
            send_error = err
        errors, replies = [], []
        for f in futures:
            try:
                replies.append(f.result())
            except EngineError as err:
                errors.append(err)
        if errors:
            raise errors[0]
        if send_error is not None:
            raise EngineError(f"vllm_server: weight broadcast failed: {send_error}" +
                              "".join(_format_tail(*self.log_tail(i)) for i in range(len(self.urls))))
        return replies

    def _init_communicator(self, device: torch.device) -> None:
        from rlpost.serving.weights import Communicator
        hosts = {urlparse(u).hostname for u in self.urls}
        master = "127.0.0.1" if hosts <= set(_LOOPBACK) else socket.gethostbyname(socket.gethostname())
        port = free_port(master if master != "127.0.0.1" else "127.0.0.1")
        backend = "nccl" if device.type == "cuda" else "gloo"
        body = {"host": master, "port": port, "world_size": len(self.urls) + 1, "backend": backend,
                "timeout_s": self.timeout_s}
        futures = [self.pool.submit(self._post, i, "/init_communicator", {**body, "rank": i + 1}, "init_communicator")
                   for i in range(len(self.urls))]
        try:
            self.comm = Communicator(master, port, 0, len(self.urls) + 1, backend, self.timeout_s, device)
        except Exception as err:
            for f in futures:
                f.exception()   # wait (bounded by the HTTP timeout) so worker errors surface first
            errors = [f.exception() for f in futures if f.exception() is not None]
            raise errors[0] if errors else EngineError(f"vllm_server: could not form the weight group: {err}")
        for f in futures:
            f.result()
        log.info("vllm_server: weight broadcast group ready (%s, %d workers)", backend, len(self.urls))

    def reset_prefix_cache(self) -> None:
        self._on_all([(i, "/reset_prefix_cache", {}, "reset_prefix_cache") for i in range(len(self.urls))])

    def _check_open(self) -> None:
        if self.closed:
            raise EngineError("vllm_server engine: used after close()")

    def close(self) -> None:
        """Leave the weight group and stop the workers this engine started; never raises."""
        if getattr(self, "closed", True):
            return
        self.closed = True
        if self.comm is not None:
            for i in range(len(self.urls)):
                try:
                    self.sessions[i].post(f"{self.urls[i]}/close_communicator", headers=_headers(self.token),
                                          timeout=5)
                except Exception:
                    pass
            self.comm.close()
            self.comm = None
        try:
            stop_workers(self.workers)
        except Exception:  # pragma: no cover
            pass
        self.pool.shutdown(wait=False)
        for s in self.sessions:
            s.close()
