"""``rlpost reproduce <recipe>``: the miniature comparison of a recipe's method with GRPO and DAPO."""
from __future__ import annotations

import argparse

EPILOG = """examples:
  rlpost reproduce hapo                                   # arithmetic + countdown, 3 seeds, 40 steps each
  rlpost reproduce gain_rl --tasks arithmetic --seeds 1 --steps 10
  rlpost reproduce adora --seeds 0,1,2,3,4 --threshold 0.5
writes results/<recipe>/table.md, curves.png and runs.json; run folders go to runs/reproduce/tiny/<config hash>
and are reused (GRPO and DAPO are trained once for all recipes; --force retrains).
"""


def _seeds(text: str) -> list[int]:
    """"3" -> seeds 0, 1, 2;  "0,5,7" -> those seeds."""
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        return list(range(int(text)))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes a count (3) or a list (0,1,2), got {text!r}") from None


def run(args) -> int:
    from rlpost.reproduce import Budget, reproduce
    from rlpost.studies import STUDIES, run_study

    if args.recipe in STUDIES:  # paper miniatures with their own protocol (rlpost/studies/)
        out = run_study(args.recipe, output_dir=f"{args.out}/{args.recipe}", seeds=args.seeds, steps=args.steps)
        print(f"table: {out.get('table')}")
        return 0

    args.steps = 40 if args.steps is None else args.steps
    args.seeds = [0, 1, 2] if args.seeds is None else args.seeds
    budget = Budget(steps=args.steps, eval_every=args.eval_every, num_eval=args.num_eval, threads=args.threads)
    out = reproduce(args.recipe, steps=args.steps, seeds=args.seeds, tasks=args.tasks.split(","),
                    out_root=args.out, runs_dir=args.runs_dir, budget=budget, threshold=args.threshold,
                    methods=args.methods.split(",") if args.methods else None, force=args.force)
    print(open(out["table"]).read())
    print(f"table:  {out['table']}\ncurves: {out['curves']}")
    return 0


def register(subparsers) -> None:
    from rlpost.reproduce import RECIPES, TASKS

    p = subparsers.add_parser(
        "reproduce", help="miniature reproduction of a recipe: method vs GRPO vs DAPO on tiny tasks, several seeds",
        description="Train the recipe's tiny config, GRPO and DAPO with the same budget on the tiny arithmetic and "
                    "Countdown tasks for several seeds, then tabulate final held-out accuracy (mean, spread) and "
                    "steps to a threshold, and plot the accuracy curves.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    from rlpost.studies import STUDIES
    p.add_argument("recipe", choices=sorted(set(RECIPES) | set(STUDIES)))
    p.add_argument("--steps", type=int, default=None, help="RL steps per run (default 40; studies: their own)")
    p.add_argument("--seeds", type=_seeds, default=None, help="a count (3) or a list (0,1,2); default 3")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    p.add_argument("--methods", default=None, help="subset of the table's rows, e.g. GRPO,HAPO (default all three)")
    p.add_argument("--eval-every", type=int, default=5, help="held-out evaluation period in steps (default 5)")
    p.add_argument("--num-eval", type=int, default=128, help="held-out prompts (default 128)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (default 1: robust on a shared machine; runs go one after another)")
    p.add_argument("--threshold", type=float, default=None,
                   help="accuracy for 'steps to threshold' (default: half of GRPO's mean gain)")
    p.add_argument("--out", default="results", help="results root (default results/)")
    p.add_argument("--runs-dir", default="runs/reproduce/tiny", help="run folders, reused across recipes")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.set_defaults(func=run)
