"""Metrics to ``metrics.jsonl`` (always), TensorBoard, wandb or trackio (on request), and PNG plots."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)


class Tracker:
    def __init__(self, output_dir: str | Path, report_to: list[str], run_name: str | None, config: dict, resume_step: int = 0):
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "metrics.jsonl"
        self.completions_path = self.dir / "completions.jsonl"   # trainer.log_completions
        for path in (self.path, self.completions_path):
            _truncate_after(path, resume_step)
        self.tb = self.wandb = self.trackio = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(self.dir / "tensorboard"))
        if "wandb" in report_to:
            import wandb
            self.wandb = wandb.init(name=run_name, config=config, dir=str(self.dir), resume="allow")
        if "trackio" in report_to:
            import trackio
            self.trackio = trackio.init(project="rlpost", name=run_name, config=config)

    def log(self, metrics: dict) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        step = metrics["step"]
        for key, value in clean.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                if self.tb:
                    self.tb.add_scalar(key, value, step)
        if self.wandb:
            self.wandb.log(clean, step=step)
        if self.trackio:
            self.trackio.log(clean, step=step)

    def log_completions(self, rows: list[dict], print_count: int = 0) -> None:
        """Append one JSON line per completion to ``completions.jsonl``; log the first ``print_count`` of them."""
        with self.completions_path.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        for row in rows[:print_count]:
            log.info("step %d | reward %.3f | advantage %+.3f | %r -> %r", row["step"], row["reward"],
                     row["advantage"], row["prompt"][-60:], row["completion"][:200])

    def close(self) -> None:
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def _truncate_after(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint so the file equals an uninterrupted run's; a line cut
    short by a kill (not JSON) is dropped too. A run that starts from step 0 where a file is already there keeps
    it aside as ``<name>.old`` (and says so) instead of deleting it."""
    if not path.exists():
        return
    if step == 0:
        aside = path.with_name(path.name + ".old")
        os.replace(path, aside)
        log.warning("%s existed from an earlier run and this run starts at step 0: kept aside as %s", path, aside)
        return
    kept = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            log.warning("%s line %d is not JSON (cut short by an interrupted run?): dropped", path, number)
            continue
        if row is not None and row["step"] <= step:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: str | Path, out_png: str | Path, keys=("reward/mean", "eval/accuracy")) -> Path | None:
    """One panel per key that has numeric values: value against step. None when no key has any."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in keys}
    series = {k: pts for k, pts in series.items() if pts}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5))
    for ax, (key, pts) in zip(axes if len(series) > 1 else [axes], series.items()):
        ax.plot(*zip(*pts), marker="o" if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


def completion_rows(step: int, trajectories, batch, advantages: torch.Tensor) -> list[dict]:
    """One row per trajectory for completions.jsonl: prompt, completion, reward (and its components), the
    trajectory's advantage (mean over its trained tokens), completion tokens and whether it was truncated."""
    mask = batch.response_mask
    traj_index = batch.traj_index if batch.traj_index is not None else torch.arange(len(batch))
    adv_sum = torch.zeros(len(trajectories)).index_add_(0, traj_index, (advantages * mask).sum(-1))
    tokens = torch.zeros(len(trajectories)).index_add_(0, traj_index, mask.sum(-1))
    rows = []
    for j, t in enumerate(trajectories):
        rows.append({"step": step, "group": t.group_id, "prompt": t.prompt.text, "completion": t.final_text,
                     "reward": t.reward, **{f"reward/{k}": v for k, v in t.reward_components.items()},
                     "advantage": float(adv_sum[j] / tokens[j].clamp(min=1)),
                     "tokens": int(sum(len(s.completion_ids) for s in t.samples)), "truncated": t.truncated,
                     **({"conversation": t.info["conversation"]} if "conversation" in t.info else {})})
    return rows
