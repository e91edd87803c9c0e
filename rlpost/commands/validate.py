"""``rlpost validate CONFIG [key=value ...]``: resolve a config completely and print it, loading no weights.

Runs every check that a run would make before its first step (registry names, component params and their types,
method combinations, the distributed rules for ``--world-size``, a known model's context window) and prints the
resolved YAML with each component expanded to its name and all its params. Exit 0 when the config is valid,
2 with one line naming the key otherwise. Works for every config an rlpost command takes: ``rlpost train`` and
``rlpost reproduce`` run configs, ``rlpost sft`` and ``rlpost dpo`` stage configs (told apart by their ``sft:`` /
``dpo:`` section, or ``--kind``).
"""
from __future__ import annotations

import argparse
import sys

VALIDATE_EPILOG = """examples:
  rlpost validate configs/tiny/arith_grpo.yaml
  rlpost validate configs/tiny/arith_grpo.yaml algo.loss=gspo algo.epsilon=0.2
  rlpost validate recipes/hapo/qwen2.5-math-1.5b.yaml --world-size 32
  rlpost validate recipes/implicit_sft/tiny_sft.yaml -q          # exit code only
"""


def cmd_validate(args) -> int:
    from rlpost.resolve import dump, resolve_file
    kind, resolved = resolve_file(args.config, args.overrides, args.kind, args.world_size)   # errors: exit 2 (cli.py)
    if not args.quiet:
        print(f"# {args.config}: a valid {kind} config (rlpost {kind}), resolved\n{dump(resolved)}", end="")
    else:
        print(f"{args.config}: valid {kind} config", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="check a config completely and print it resolved (loads no weights)",
                              description=__doc__.split("\n\n")[1].replace("\n", " "), epilog=VALIDATE_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML config (train, reproduce, sft or dpo)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as the command that runs it takes them")
    p.add_argument("--kind", choices=["train", "sft", "dpo"], help="the config's kind (default: from its sections)")
    p.add_argument("--world-size", type=int, default=None,
                   help="learner processes the run will have (default: $WORLD_SIZE or 1), for the distributed rules")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing but the verdict")
    p.set_defaults(func=cmd_validate)
