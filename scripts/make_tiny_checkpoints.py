#!/usr/bin/env python
"""Rebuild the committed tiny checkpoints (what the demo, tests, configs and `rlpost reproduce` start from).

    python scripts/make_tiny_checkpoints.py                 # the base models and the reward models
    python scripts/make_tiny_checkpoints.py --only qwen2-arithmetic

Base models -> rlpost/models/tiny_checkpoints/<arch>-<task>/ (``rlpost make-tiny``: SFT that stops at the first
held-out evaluation inside the task's accuracy band); reward models -> reward_models/tiny/<name>/ (TRL
RewardTrainer on the shipped qwen2-arithmetic model, the constrained-RLHF study's settings). A rebuild lands in
the same accuracy bands on any machine but not on the same bits, so every figure that starts from these models
(README, results/) must be regenerated after one: commit a rebuild only together with those figures.
The APR and A²FM models (minutes to hours) are built by scripts/apr_pretrain.py and scripts/a2fm_pretrain.py.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASE = {"qwen2-arithmetic": ("qwen2", "arithmetic"), "qwen2-countdown": ("qwen2", "countdown"),
        "llama-arithmetic": ("llama", "arithmetic")}
RMS = ("rm_answer", "rm_length")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=[*BASE, *RMS], help="rebuild only these")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import torch

    from rlpost.models.tiny import SHIPPED_DIR, TinySpec, make_tiny
    from rlpost.studies.constrained_rlhf import SHIPPED_RM_DIR, train_rms
    torch.set_num_threads(1)
    wanted = set(args.only or [*BASE, *RMS])
    for name, (arch, task) in BASE.items():
        if name in wanted:
            path = make_tiny(TinySpec(arch=arch, task=task), SHIPPED_DIR / name)
            print(f"{name}: {path} ({(path / 'CARD.md').read_text().splitlines()[5]})")
    if wanted & set(RMS):
        import shutil
        with tempfile.TemporaryDirectory() as tmp:
            built = train_rms(Path(tmp), "tiny:qwen2:arithmetic", pairs=512, steps=150, force=True)
            for name, info in built.items():
                if name in wanted:
                    dest = SHIPPED_RM_DIR / name
                    if dest.exists():
                        shutil.rmtree(dest)
                    shutil.copytree(info["path"], dest, ignore=shutil.ignore_patterns("checkpoint-*", "runs",
                                                                                      "training_args.bin"))
                    (dest / "CARD.md").write_text(
                        f"# {name}\n\nA reward model (tiny Qwen2 body + one-label score head) trained with TRL's "
                        f"RewardTrainer on 512 `{info['kind']}` preference pairs (rlpost.reward_modeling), 150 steps, "
                        f"lr 3e-4, batch 32, seed 0, from the shipped tiny:qwen2:arithmetic checkpoint.\n\n"
                        f"- Pair accuracy: train {info['train_accuracy']:.3f}, held-out (128 test pairs) "
                        f"{info['eval_accuracy']:.3f}.\n- Rebuild: `python scripts/make_tiny_checkpoints.py --only "
                        f"{name}`.\n- Used by recipes/constrained_rlhf/tiny_*.yaml and `rlpost reproduce "
                        f"constrained_rlhf`.\n")
                    print(f"{name}: {dest} (train {info['train_accuracy']:.3f}, held-out {info['eval_accuracy']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
