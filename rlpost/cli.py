"""``rlpost`` command line: train, eval, make-tiny (and more as subcommands register)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from rlpost.errors import bad_input_errors, error_boundary

TRAIN_EPILOG = """examples:
  rlpost train configs/tiny/arith_grpo.yaml
  rlpost train configs/tiny/arith_grpo.yaml algo.loss=dapo rollout.num_generations=8
  rlpost train configs/tiny/arith_grpo.yaml beta=0.04 learning_rate=1e-5      # TRL names work too
  rlpost train configs/tiny/arith_grpo.yaml trainer.resume_from_checkpoint=latest
"""

MAKE_TINY_EPILOG = """examples:
  rlpost make-tiny                         # rebuild qwen2 on arithmetic, into the cache
  rlpost make-tiny --arch llama --out models/tiny-llama
  python scripts/make_tiny_checkpoints.py  # rebuild every shipped checkpoint in place

tiny:<arch>:<task> in a config loads the shipped checkpoint (rlpost/models/tiny_checkpoints/), not a rebuild:
a rebuild lands in the same accuracy band but not on the same bits (float arithmetic differs between machines).
"""


def cmd_train(args) -> int:
    from rlpost.engines.base import EngineError
    from rlpost.learner import NonFiniteGradientError
    from rlpost.resolve import load_resolved
    from rlpost.trainer import Trainer

    trainer = None
    try:
        cfg, resolved = load_resolved(args.config, args.overrides)   # resolved once, before anything loads
        trainer = Trainer(cfg, resolved)
        trainer.setup()
        summary = trainer.train()
    except bad_input_errors():   # bad input, found before or during step 0; later a KeyError or OSError is a failure
        args.running = trainer is not None and trainer.step > 0
        raise
    except NonFiniteGradientError as err:
        print(f"\ntraining stopped: {err}", file=sys.stderr)
        return 4
    except EngineError as err:
        saved = getattr(err, "checkpoint", None)
        print(f"\nengine error: {err}\n" + (f"\ncheckpoint of the last finished step: {saved}\nresume with "
              "trainer.resume_from_checkpoint=latest" if saved else ""), file=sys.stderr)
        return 3
    finally:
        if trainer is not None:
            trainer.close()
    last = summary["last"]
    print(f"\nfinished {last.get('step')} steps: reward/mean {last.get('reward/mean', float('nan')):.3f}, "
          f"eval/accuracy {last.get('eval/accuracy', float('nan')):.3f}")
    print(f"metrics:     {summary['metrics']}\nplot:        {summary['plot']}\nfinal model: {summary['final_model']}")
    return 0


def cmd_make_tiny(args) -> int:
    from rlpost.models.tiny import TinySpec, cache_root, make_tiny

    spec = TinySpec(arch=args.arch, task=args.task, seed=args.seed)
    path = make_tiny(spec, args.out or cache_root() / "tiny" / spec.key())
    info = json.loads((path / "rlpost_tiny.json").read_text())
    print(f"tiny {args.arch} model for {args.task}: {path} (warm-start {info['sft_steps']} SFT steps, "
          f"held-out accuracy {info['held_out_accuracy']:.3f}, band [{spec.acc_low:.2f}, {spec.acc_high:.2f}])")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlpost", description="RL post-training for Hugging Face language models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a bad-input (exit 2) or engine (exit 3) error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run RL training from a YAML config",
                       description="Train a policy with a GRPO-family algorithm. Overrides are dotted key=value "
                                   "pairs applied on top of the YAML file; TRL GRPOConfig names are accepted.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="YAML config file (configs/...)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. algo.loss=dapo")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("make-tiny", help="build a tiny Qwen2/LLaMA model + char tokenizer, warm-started on a task",
                       description="Build a tiny model from code (head_dim >= 32), warm-start it with a short SFT "
                                   "that stops at the first held-out evaluation (every 5 steps) inside the task's "
                                   "accuracy band (arithmetic 20-30%, countdown 10-20%), and save it with "
                                   "save_pretrained.",
                       epilog=MAKE_TINY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="qwen2", choices=["qwen2", "llama"])
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default: the rlpost cache)")
    p.set_defaults(func=cmd_make_tiny)

    from rlpost.eval.cli import EVAL_DESCRIPTION, add_eval_args, eval_epilog, run_eval
    p = sub.add_parser("eval", help="evaluate checkpoints on benchmarks (mean@k, pass@k, maj@k)",
                       description=EVAL_DESCRIPTION, epilog=eval_epilog(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_eval_args(p)
    p.set_defaults(func=run_eval)
    import importlib
    import pkgutil

    import rlpost.commands
    for mod in sorted(pkgutil.iter_modules(rlpost.commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"rlpost.commands.{mod.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return error_boundary(args.func)(args) or 0


if __name__ == "__main__":
    sys.exit(main())
