"""``rlpost serve``: a rollout worker serving vLLM's async engine over HTTP (rlpost/serving/server.py)."""
from __future__ import annotations

import argparse
import os

EPILOG = """examples:
  rlpost serve tiny:qwen2:arithmetic --port 8001 --dtype float32
  rlpost serve Qwen/Qwen2.5-32B-Instruct --port 8001 --tensor-parallel-size 4 --dtype bfloat16
  RLPOST_SERVE_TOKEN=s3cret rlpost serve Qwen/Qwen2.5-0.5B-Instruct --port 8001 --log-file logs/w0.log
  rlpost train configs/tiny/arith_grpo.yaml rollout.engine=vllm_server \\
      'rollout.server_urls=[http://127.0.0.1:8001,http://127.0.0.1:8002]' rollout.server_token=s3cret
  rlpost serve tiny:qwen2:arithmetic --port 8001 --max-lora-rank 16 --max-loras 2   # LoRA adapter sync, async_level 1

The worker binds 127.0.0.1 unless --host says otherwise. With a token (--token or RLPOST_SERVE_TOKEN) every
request must carry 'Authorization: Bearer <token>'; without it, it answers 401. A --host beyond loopback
without a token is refused (anyone reaching the port could replace the weights) unless --allow-unauthenticated.
"""


def check_parallel(tensor_parallel_size: int, data_parallel_size: int) -> None:
    """Refuse, before anything loads, parallel sizes below 1 (ConfigError: one line, exit 2). Data parallelism runs
    ``data_parallel_size`` vLLM engine cores in this worker, each with ``tensor_parallel_size`` ranks; vLLM balances
    the requests over the cores (rlpost/engines/vllm_async.py)."""
    from rlpost.config import ConfigError
    for flag, size in (("--tensor-parallel-size", tensor_parallel_size), ("--data-parallel-size", data_parallel_size)):
        if size < 1:
            raise ConfigError(f"rlpost serve {flag} must be >= 1, got {size}")


def cmd_serve(args) -> int:
    from rlpost.serving.server import serve

    check_parallel(args.tensor_parallel_size, args.data_parallel_size)

    engine_kwargs = dict(dtype=args.dtype, gpu_memory_utilization=args.gpu_memory_utilization,
                         max_model_len=args.max_model_len, max_completion_length=args.max_completion_length,
                         enable_prefix_caching=not args.no_prefix_caching, enforce_eager=not args.no_enforce_eager,
                         enable_sleep_mode=args.enable_sleep_mode, seed=args.seed,
                         trust_remote_code=args.trust_remote_code, tensor_parallel_size=args.tensor_parallel_size,
                         data_parallel_size=args.data_parallel_size, max_lora_rank=args.max_lora_rank,
                         max_loras=args.max_loras)
    return serve(args.model, host=args.host, port=args.port, token=args.token or os.environ.get("RLPOST_SERVE_TOKEN"),
                 log_file=args.log_file, engine_kwargs=engine_kwargs,
                 allow_unauthenticated=args.allow_unauthenticated, served_model_name=args.served_model_name)


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve one vLLM engine over HTTP as a rollout worker",
                              description="A rollout worker for rollout.engine=vllm_server on vLLM's async engine "
                                          "(continuous batching): generate, update weights, health, reset prefix "
                                          "cache, shutdown; and vLLM's OpenAI-compatible server (/v1/models, "
                                          "/v1/completions, /v1/chat/completions, ...) on the same engine.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="HF hub id, local folder, or tiny:<arch>:<task>")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", default=None, help="shared secret (default: $RLPOST_SERVE_TOKEN; none: no check)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve a --host beyond loopback without a token (refused otherwise)")
    p.add_argument("--served-model-name", default=None,
                   help="the model name of the OpenAI routes /v1/... (default: MODEL as given)")
    p.add_argument("--log-file", default=None, help="write all output here; GET /log_tail serves its last lines")
    p.add_argument("--dtype", default="auto", help="float32 | bfloat16 | float16 | auto (match the learner)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                   help="vLLM memory share (of one NUMA node's CPU memory on CPU builds)")
    p.add_argument("--max-model-len", type=int, default=None, help="context length (default: 1024 + completion cap)")
    p.add_argument("--max-completion-length", type=int, default=1024, help="used for the default max-model-len")
    p.add_argument("--no-prefix-caching", action="store_true")
    p.add_argument("--no-enforce-eager", action="store_true", help="allow vLLM's graph compilation / CUDA graphs")
    p.add_argument("--enable-sleep-mode", action="store_true",
                   help="vLLM sleep mode on (GPU only); the async worker serves continuously and does not sleep")
    p.add_argument("--tensor-parallel-size", type=int, default=1,
                   help="shard the model over this many devices (vLLM TP: one worker process per rank)")
    p.add_argument("--data-parallel-size", type=int, default=1,
                   help="vLLM data parallelism: this many engine cores (each with --tensor-parallel-size ranks), "
                        "requests balanced over them by vLLM; weight updates reach every core")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-lora-rank", type=int, default=None, choices=[1, 8, 16, 32, 64, 128, 256, 320, 512],
                   help="serve LoRA adapters up to this rank (model.lora.sync=adapter; default: LoRA off)")
    p.add_argument("--max-loras", type=int, default=2,
                   help="adapters kept live with --max-lora-rank (>= rollout.async_level + 1)")
    p.add_argument("--trust-remote-code", action="store_true")
    p.set_defaults(func=cmd_serve)
