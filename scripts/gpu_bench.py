#!/usr/bin/env python
"""rlpost against TRL's GRPOTrainer at the same settings: step time, tokens/s, learner MFU, peak memory.

    scripts/gpu_bench.sh                 # one GPU (sized for ~10 minutes on an H200), vLLM colocated on both sides
    python scripts/gpu_bench.py --dry-run   # CPU, tiny model, transformers generation on both sides (CI)

What runs. A Qwen2.5-0.5B-shaped Qwen2 (24 layers, hidden 896, 14 heads / 2 KV heads, MLP 4864, vocab 151936,
tied embeddings; 494M parameters) is built from its config with random weights (seeded) and saved in bf16, with
a tokenizer built from code: rlpost's character tokenizer padded with filler tokens to the model's vocabulary,
so every id the random model samples decodes. Nothing is downloaded. Prompts are fixed random strings of
``--prompt-len`` characters (= tokens). The reward is a cheap function of the completion text with spread, so
GRPO has non-zero advantages. With random weights the model rarely emits EOS: completions run to
``--max-completion``, which makes the work per step the same for both frameworks.

Both frameworks run in their own subprocess (clean GPU memory; peak memory is per run), one after the other:

- rlpost: ``rollout.engine=vllm`` (colocated), bf16, gradient checkpointing, token-mean (dapo) loss, beta 0,
  ``optim.logprob_chunk_size=2048`` (rlpost's option for large vocabularies: the LM head runs on 2048 completion
  tokens at a time, no [B, W, 151936] logits tensor; ``--logprob-chunk-size 0`` turns it off,
  ``--padding-free`` adds packing).
- TRL: ``GRPOTrainer`` with ``use_vllm=True, vllm_mode="colocate"``, bf16, gradient checkpointing,
  ``loss_type="dapo"``, beta 0, ``vllm_importance_sampling_correction=False`` (rlpost's default; on both
  sides off), one optimizer step per generation batch (gradient_accumulation_steps = batch / micro-batch).

Same prompts, group size, batch, micro-batch, completion cap, temperature, learning rate, vLLM memory share
(``--gpu-memory-utilization``) and CUDA graphs (rlpost ``rollout.enforce_eager=false``; TRL's default).

Metrics, over the steps after ``--warmup``:
  step time      median seconds per RL step (generation + scoring + learner + weight sync)
  tokens/s       (prompt + completion tokens of the step batch) / step time
  learner MFU    6 * params * tokens / (learner time * peak FLOP/s), learner time = step time - time spent in
                 generation and weight sync; the same formula on both sides (extra forward passes a framework
                 makes count against it). Peak: ``--peak-tflops`` (default: 989 for H100/H200 bf16 dense).
  peak memory    device-wide peak (cudaMemGetInfo sampled every 50 ms; includes vLLM's reservation, which is the
                 same share on both sides) and torch's max_memory_allocated. CPU dry run: peak RSS.

Target (issue 7): rlpost faster than TRL at no more memory. The script prints both ratios and PASS/FAIL;
``--strict`` makes a FAIL the exit status.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

QWEN25_05B = dict(vocab_size=151936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32768,
                  rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True)
TINY = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
            intermediate_size=128, max_position_embeddings=512, tie_word_embeddings=True)


# ---------------------------------------------------------------------------------------------- shared pieces


def reward(prompts=None, completions=None, **kwargs) -> list[float]:
    """A cheap reward with spread: the share of digits and vowels in the completion text (in [0, 1])."""
    out = []
    for text in completions:
        text = text if isinstance(text, str) else str(text)
        good = sum(ch.isdigit() or ch in "aeiou" for ch in text)
        out.append(good / max(1, len(text)))
    return out


def build_assets(out: Path, dry_run: bool, seed: int, num_prompts: int, prompt_len: int) -> dict:
    """Random-weight model + padded char tokenizer (save_pretrained) and a prompts file."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    sys.path.insert(0, str(ROOT))
    from rlpost.models.tokenizer import build_char_tokenizer

    model_dir = out / "model"
    spec = TINY if dry_run else QWEN25_05B
    if not (model_dir / "config.json").exists():
        tok = build_char_tokenizer()
        vocab_size = spec["vocab_size"]
        fillers = [f"<f{i}>" for i in range(vocab_size - len(tok))]
        _pad_vocab(tok, fillers)
        assert len(tok) == vocab_size, (len(tok), vocab_size)
        torch.manual_seed(seed)
        config = Qwen2Config(**spec, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                             bos_token_id=None, use_cache=True)
        # built on the CPU: the driver process never opens a CUDA context (it would count in the workers' peaks)
        model = Qwen2ForCausalLM(config).to(torch.float32 if dry_run else torch.bfloat16)
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        del model
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789 +-*="
    prompts = ["".join(rng.choice(alphabet) for _ in range(prompt_len - 1)) + ":" for _ in range(num_prompts)]
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    n_params = sum(_numel(v) for v in _safetensors_shapes(model_dir))
    return {"model": str(model_dir), "prompts": str(path), "params": n_params}


def _pad_vocab(tok, fillers: list[str]) -> None:
    """Append filler tokens to the BPE vocabulary (ids continue after the existing ones)."""
    from tokenizers import Tokenizer
    state = json.loads(tok.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    start = max(max(vocab.values()), max(t["id"] for t in state["added_tokens"])) + 1
    for i, f in enumerate(fillers):
        vocab[f] = start + i
    tok._tokenizer = Tokenizer.from_str(json.dumps(state))


def _safetensors_shapes(model_dir: Path):
    import struct
    for f in sorted(model_dir.glob("*.safetensors")):
        with open(f, "rb") as fh:
            n = struct.unpack("<Q", fh.read(8))[0]
            header = json.loads(fh.read(n))
        for key, meta in header.items():
            if key != "__metadata__":
                yield meta["shape"]


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class MemorySampler:
    """Device-wide peak memory (cudaMemGetInfo) sampled in a thread; peak RSS on CPU."""

    def __init__(self, period_s: float = 0.05):
        import torch
        self.cuda = torch.cuda.is_available()
        self.period, self.peak, self._stop = period_s, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import torch
        while not self._stop.is_set():
            if self.cuda:
                free, total = torch.cuda.mem_get_info()
                self.peak = max(self.peak, total - free)
            self._stop.wait(self.period)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()

    def result(self) -> dict:
        import resource

        import torch
        out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        if self.cuda:
            out["peak_device_gib"] = self.peak / 2**30
            out["torch_max_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return out


def _summary(step_times, gen_times, tokens, args, n_params) -> dict:
    w = args.warmup
    steps = list(zip(step_times, gen_times, tokens))[w:]
    if not steps:
        raise RuntimeError(f"no measured steps (steps {len(step_times)}, warmup {w})")
    st = statistics.median(s for s, _, _ in steps)
    learner = statistics.median(max(s - g, 1e-9) for s, g, _ in steps)
    tok = statistics.median(t for _, _, t in steps)
    peak = (args.peak_tflops or default_peak_tflops()) * 1e12
    return {"step_time_s": st, "gen_time_s": statistics.median(g for _, g, _ in steps), "learner_time_s": learner,
            "tokens_per_step": tok, "tokens_per_s": tok / st, "learner_mfu": 6 * n_params * tok / (learner * peak),
            "measured_steps": len(steps)}


# ---------------------------------------------------------------------------------------------- workers


def rlpost_overrides(args, assets, out: Path) -> list[str]:
    """The rlpost run config as dotted overrides (the same settings as the TRL run)."""
    total = args.warmup + args.steps
    return [
        f"model.name_or_path={assets['model']}", f"model.dtype={'float32' if args.dry_run else 'bfloat16'}",
        "model.gradient_checkpointing=true", "data.task=null", f"data.train_path={assets['prompts']}",
        f"data.eval_path={assets['prompts']}", "data.num_eval=4", "data.answer_column=null",
        "data.chat_template=false", f"data.num_train={args.prompts * 4}",
        f"rollout.engine={'hf' if args.dry_run else 'vllm'}", f"rollout.prompts_per_step={args.prompts}",
        f"rollout.num_generations={args.generations}", f"rollout.max_completion_length={args.max_completion}",
        "rollout.temperature=1.0", f"rollout.gpu_memory_utilization={args.gpu_memory_utilization}",
        "rollout.enforce_eager=false", f"rollout.max_model_len={args.prompt_len + args.max_completion + 16}",
        "rewards=[gpu_bench:reward]", "algo.loss=dapo", "algo.beta=0.0", "optim.learning_rate=1e-6",
        f"optim.micro_batch_size={args.micro_batch}", f"optim.logprob_chunk_size={args.logprob_chunk_size}",
        f"optim.padding_free={'true' if args.padding_free else 'false'}",
        f"trainer.max_steps={total}", "trainer.eval_steps=-1", "trainer.save_steps=0", "trainer.report_to=[]",
        "trainer.progress_bar=false", f"trainer.output_dir={out}", f"trainer.seed={args.seed}",
    ]


def run_rlpost(args, assets) -> dict:
    import torch

    from rlpost.config import load_config
    from rlpost.trainer import Trainer
    from rlpost.tracking import read_metrics

    out = Path(args.out) / "rlpost_run"
    overrides = rlpost_overrides(args, assets, out)
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg)
    gen_times: dict[int, float] = {}

    def timed(fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                gen_times[trainer.step] = gen_times.get(trainer.step, 0.0) + time.perf_counter() - t0
        return wrapper

    with MemorySampler() as mem:
        trainer.setup()
        trainer.workflow.rollout = timed(trainer.workflow.rollout)
        sync = trainer.engine.load_weights  # each step's weight sync (the tensors are produced while it reads them)
        trainer.engine.load_weights = lambda named_tensors: _sync_timed(sync, named_tensors, gen_times, trainer)
        trainer.evaluate = lambda: {}  # no held-out evaluation in the benchmark
        try:
            trainer.train()
        finally:
            trainer.close()
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["step"] > 0]
    step_times = [r["step_time"] for r in rows]
    gens = [gen_times.get(r["step"] - 1, 0.0) + gen_times.get(("sync", r["step"]), 0.0) for r in rows]
    tokens = [r["tokens"] + args.prompts * args.generations * args.prompt_len for r in rows]
    result = _summary(step_times, gens, tokens, args, assets["params"])
    result.update(mem.result())
    result["reward_first_last"] = [rows[0]["reward/mean"], rows[-1]["reward/mean"]]
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name()
    return result


def _sync_timed(sync, named_tensors, gen_times, trainer):
    t0 = time.perf_counter()
    try:
        return sync(named_tensors)
    finally:  # the sync of step N happens after trainer.step became N
        key = ("sync", trainer.step)
        gen_times[key] = gen_times.get(key, 0.0) + time.perf_counter() - t0


def run_trl(args, assets) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    total = args.warmup + args.steps
    batch = args.prompts * args.generations
    if batch % args.micro_batch:
        raise ValueError("--micro-batch must divide prompts * generations")
    prompts = [json.loads(line)["prompt"] for line in Path(assets["prompts"]).read_text().splitlines()]
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    tok = AutoTokenizer.from_pretrained(assets["model"])
    tok.padding_side = "left"
    config = GRPOConfig(
        output_dir=str(Path(args.out) / "trl_run"), per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=batch // args.micro_batch, num_generations=args.generations,
        max_completion_length=args.max_completion, temperature=1.0, learning_rate=1e-6, beta=0.0,
        loss_type="dapo", bf16=not args.dry_run, use_cpu=args.dry_run, gradient_checkpointing=True,
        use_vllm=not args.dry_run, vllm_mode="colocate", vllm_gpu_memory_utilization=args.gpu_memory_utilization,
        vllm_max_model_length=args.prompt_len + args.max_completion + 16,
        vllm_importance_sampling_correction=False, max_steps=total, logging_steps=1, report_to=[],
        save_strategy="no", seed=args.seed, shuffle_dataset=True, lr_scheduler_type="constant",
        model_init_kwargs={"dtype": "float32" if args.dry_run else "bfloat16"}, dataloader_num_workers=0,
        disable_tqdm=True)

    step_times: list[float] = []
    gen_times: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            step_times.append(time.perf_counter() - self.t0)

    with MemorySampler() as mem:
        trainer = GRPOTrainer(model=assets["model"], reward_funcs=[reward], args=config, train_dataset=dataset,
                              processing_class=tok, callbacks=[Timer()])
        inner = trainer._generate_single_turn

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                step = trainer.state.global_step
                gen_times[step] = gen_times.get(step, 0.0) + time.perf_counter() - t0
        trainer._generate_single_turn = timed
        trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = [batch * (args.prompt_len + h["completions/mean_length"]) for h in logs]
    gens = [gen_times.get(i, 0.0) for i in range(len(step_times))]
    result = _summary(step_times, gens, tokens[:len(step_times)], args, assets["params"])
    result.update(mem.result())
    rewards = [h.get("reward") for h in logs if "reward" in h]
    result["reward_first_last"] = [rewards[0], rewards[-1]] if rewards else None
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name()
    return result


# ---------------------------------------------------------------------------------------------- driver


def default_peak_tflops() -> float:
    try:
        import torch
        if torch.cuda.is_available():
            name = torch.cuda.get_device_name()
            for key, tflops in (("H200", 989.0), ("H100", 989.0), ("A100", 312.0), ("L40", 181.0), ("A10", 125.0)):
                if key in name:
                    return tflops
            return 989.0
    except Exception:
        pass
    return 1.0  # CPU: a nominal 1 TFLOP/s, so MFU numbers of the dry run only compare the two sides


def default_peak_tflops_of(results) -> float:
    name = next((r.get("device", "") for r in results.values() if r), "")
    return next((t for k, t in (("H200", 989.0), ("H100", 989.0), ("A100", 312.0)) if k in name), 989.0)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, transformers generation on both sides")
    p.add_argument("--out", default=None, help="work folder (default: runs/gpu_bench or runs/gpu_bench_dry)")
    p.add_argument("--steps", type=int, default=None, help="measured RL steps per framework")
    p.add_argument("--warmup", type=int, default=None, help="steps not measured (start-up, CUDA graphs, caches)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step")
    p.add_argument("--generations", type=int, default=None, help="group size")
    p.add_argument("--prompt-len", type=int, default=None, help="prompt tokens")
    p.add_argument("--max-completion", type=int, default=None, help="completion cap (tokens)")
    p.add_argument("--micro-batch", type=int, default=None, help="sequences per forward/backward")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--logprob-chunk-size", type=int, default=None,
                   help="rlpost optim.logprob_chunk_size (GPU default 2048: no [B, W, 151936] logits tensor; 0 = off)")
    p.add_argument("--padding-free", action="store_true", help="rlpost optim.padding_free")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", choices=["rlpost", "trl"], default=None)
    p.add_argument("--worker-timeout", type=float, default=None, help="seconds per framework subprocess")
    p.add_argument("--strict", action="store_true", help="exit 1 unless rlpost is faster at no more memory")
    p.add_argument("--worker", choices=["rlpost", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--assets", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    gpu = dict(steps=6, warmup=2, prompts=32, generations=8, prompt_len=64, max_completion=256, micro_batch=32,
               worker_timeout=270.0, logprob_chunk_size=2048)
    cpu = dict(steps=2, warmup=1, prompts=4, generations=4, prompt_len=12, max_completion=12, micro_batch=8,
               worker_timeout=300.0, logprob_chunk_size=8)
    for key, value in (cpu if args.dry_run else gpu).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.out is None:
        args.out = str(ROOT / "runs" / ("gpu_bench_dry" if args.dry_run else "gpu_bench"))
    if args.peak_tflops is None and args.dry_run:
        args.peak_tflops = 1.0  # GPU runs: resolved from the device name in the workers
    return args


def worker_main(args) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(HERE))
    assets = json.loads(Path(args.assets).read_text())
    fn = run_rlpost if args.worker == "rlpost" else run_trl
    result = fn(args, assets)
    Path(args.out, f"{args.worker}.json").write_text(json.dumps(result, indent=2))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            print("gpu_bench: no CUDA device; use --dry-run on CPU", file=sys.stderr)
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    assets = build_assets(out, args.dry_run, args.seed, args.prompts * 4, args.prompt_len)
    (out / "assets.json").write_text(json.dumps(assets))
    print(f"model: {assets['params'] / 1e6:.1f}M params ({'tiny, CPU dry run' if args.dry_run else 'Qwen2.5-0.5B shape'}), "
          f"built in {time.perf_counter() - t0:.0f} s; {args.prompts} prompts x {args.generations} generations, "
          f"prompt {args.prompt_len} + completion <= {args.max_completion} tokens, micro-batch {args.micro_batch}, "
          f"{args.warmup} warm-up + {args.steps} measured steps", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    if args.dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--strict",)]
    results = {}
    for fw in ([args.only] if args.only else ["rlpost", "trl"]):
        (out / f"{fw}.json").unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--out", str(out), "--worker", fw,
               "--assets", str(out / "assets.json")]
        start = time.perf_counter()
        log_path = out / f"{fw}.log"
        with open(log_path, "w") as log_file:
            try:
                code = subprocess.run(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                      timeout=args.worker_timeout).returncode
            except subprocess.TimeoutExpired:
                code = "timeout"
        took = time.perf_counter() - start
        if code != 0 or not (out / f"{fw}.json").exists():
            tail = log_path.read_text().splitlines()[-25:]
            print(f"{fw}: FAILED ({code}) after {took:.0f} s; last log lines ({log_path}):\n  " + "\n  ".join(tail))
            results[fw] = None
            continue
        results[fw] = json.loads((out / f"{fw}.json").read_text())
        print(f"{fw}: done in {took:.0f} s", flush=True)
    report = format_report(results, args)
    print(report)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    if any(v is None for v in results.values()):
        return 1
    if args.strict and len(results) == 2 and not verdict(results)[0]:
        return 1
    return 0


def verdict(results) -> tuple[bool, str]:
    r, t = results["rlpost"], results["trl"]
    mem_key = "peak_device_gib" if "peak_device_gib" in r else "peak_rss_gib"
    faster = r["step_time_s"] < t["step_time_s"]
    no_more_memory = r[mem_key] <= t[mem_key] * 1.01
    return faster and no_more_memory, (f"step-time ratio TRL/rlpost {t['step_time_s'] / r['step_time_s']:.2f}x, "
                                       f"memory ratio rlpost/TRL {r[mem_key] / t[mem_key]:.2f} ({mem_key})")


def format_report(results, args) -> str:
    rows = [("step time (s)", "step_time_s", "{:.3f}"), ("  generation + sync (s)", "gen_time_s", "{:.3f}"),
            ("  learner (s)", "learner_time_s", "{:.3f}"), ("tokens / step", "tokens_per_step", "{:.0f}"),
            ("tokens / s", "tokens_per_s", "{:.0f}"), ("learner MFU", "learner_mfu", "{:.1%}"),
            ("peak device memory (GiB)", "peak_device_gib", "{:.2f}"),
            ("torch max allocated (GiB)", "torch_max_allocated_gib", "{:.2f}"),
            ("peak RSS (GiB)", "peak_rss_gib", "{:.2f}")]
    names = [k for k in ("rlpost", "trl") if k in results]
    lines = [f"\n{'':28s}" + "".join(f"{n:>12s}" for n in names) + ("   ratio" if len(names) == 2 else "")]
    for label, key, fmt in rows:
        vals = [results[n].get(key) if results[n] else None for n in names]
        if all(v is None for v in vals):
            continue
        cells = "".join(f"{(fmt.format(v) if v is not None else '-'):>12s}" for v in vals)
        ratio = (f"   {vals[0] / vals[1]:.2f}" if len(vals) == 2 and None not in vals and vals[1] else "")
        lines.append(f"{label:28s}{cells}{ratio}")
    if args.dry_run:
        lines.append("(dry run: CPU, tiny model, transformers generation; MFU against a nominal 1 TFLOP/s)")
    else:
        lines.append(f"(MFU against {args.peak_tflops or default_peak_tflops_of(results):.0f} TFLOP/s bf16 dense)")
    if len(names) == 2 and all(results[n] for n in names):
        ok, text = verdict(results)
        lines.append(f"target (rlpost faster at no more memory): {'PASS' if ok else 'FAIL'}: {text}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
