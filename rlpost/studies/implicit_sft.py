"""Miniature SFT → DPO study (Wang et al. 2025, implicit reward), ``rlpost reproduce implicit_sft``.

Setting (everything tiny, CPU): the warm-started tiny Qwen2 on 2-digit addition (held-out greedy accuracy
≈ 0.2–0.3) is fine-tuned with ``rlpost sft`` on a small demonstration set (``sft_examples`` prompt → gold
answer, several epochs), then ``rlpost dpo`` starts from each SFT checkpoint on preference pairs
(chosen = gold answer, rejected = a near miss). Compared by the held-out score (greedy accuracy on
``num_eval`` test problems disjoint from training) after SFT and after DPO:

  learning-rate sweep   plain NLL at base_lr × each of ``lr_scales`` (the paper's remedy 1)
  objectives            every ``objectives`` entry (SFT_LOSSES: nll and the f-divergence reconstructions)
                        at base_lr × ``objective_lr_scale``

Also recorded per SFT run: the KL to the initial model and the implicit reward (per-sequence Σ_t log π/π_ref,
i.e. β = 1) at the end of SFT (the last logged training batch).
Defaults: base_lr 1e-3 (the rate the tiny model was warm-started with, its "standard" SFT rate), 128 SFT
steps × 16 (8 epochs of 256 demonstrations), f-divergence β 0.5, DPO β 0.1, lr 3e-5, 48 steps.
Writes ``<output_dir>/table.md``, ``<output_dir>/curves.png``, ``<output_dir>/results.json``; run folders
go to ``work_dir`` (reused when a run with the same config finished; ``force=True`` retrains).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from rlpost.studies.common import STD_NOTE, mean_std

log = logging.getLogger("rlpost")

OBJECTIVES = ("nll", "f_pearson", "f_hellinger", "f_js", "f_kl", "f_tv")
LR_SCALES = (1.0, 0.5, 0.25, 0.1)


def sft_raw(seed: int, loss: str, lr_scale: float, *, base_lr: float, steps: int, sft_examples: int, num_eval: int,
            batch_size: int, beta: float, base_model: str, num_threads: int | None) -> dict:
    loss_node = {"name": loss} if loss == "nll" else {"name": loss, "beta": beta}
    return {"model": {"name_or_path": base_model},
            "data": {"task": "arithmetic", "num_train": sft_examples, "num_eval": num_eval},
            "sft": {"loss": loss_node, "lr": {"base_lr": base_lr, "lr_scale": lr_scale, "warmup_ratio": 0.1,
                                              "schedule": "cosine"}, "log_reference": True},
            "trainer": {"output_dir": "", "max_steps": steps, "per_device_train_batch_size": batch_size,
                        "logging_steps": max(1, steps // 8), "max_length": 64, "device": "cpu", "seed": seed,
                        "num_threads": num_threads}}


def dpo_raw(seed: int, sft_model: str, *, steps: int, pairs: int, num_eval: int, batch_size: int, lr: float,
            beta: float, num_threads: int | None) -> dict:
    return {"model": {"name_or_path": sft_model},
            "data": {"task": "arithmetic", "preference_kind": "correct", "num_train": pairs, "num_eval": num_eval},
            "dpo": {"beta": beta, "learning_rate": lr, "lr_scheduler_type": "linear", "warmup_ratio": 0.1},
            "trainer": {"output_dir": "", "max_steps": steps, "per_device_train_batch_size": batch_size,
                        "logging_steps": max(1, steps // 8), "max_length": 64, "device": "cpu", "seed": seed,
                        "num_threads": num_threads}}


def _run_stage(kind: str, raw: dict, out_dir: Path, force: bool) -> dict:
    """Run ``rlpost sft`` / ``rlpost dpo`` in-process on ``raw`` (reused if finished); returns its summary."""
    from rlpost.config import from_dict
    from rlpost.dpo import DPORunConfig, run_dpo
    from rlpost.sft import SFTRunConfig, run_sft, validate_stage

    raw = json.loads(json.dumps(raw))
    raw["trainer"]["output_dir"] = str(out_dir)
    stamp = out_dir / "study_config.json"
    if not force and (out_dir / "summary.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == raw:
        return json.loads((out_dir / "summary.json").read_text())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    cls, fn = (SFTRunConfig, run_sft) if kind == "sft" else (DPORunConfig, run_dpo)
    cfg = from_dict(cls, raw, "")
    validate_stage(cfg)
    summary = fn(cfg)
    stamp.write_text(json.dumps(raw))
    return summary


def _scaled(value, beta: float):
    return None if value is None else value / beta


def _tag(raw: dict) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:8]


def _last_logged(metrics_path: str, key: str):
    rows = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return vals[-1] if vals else None


def run(output_dir: str | Path = "results/implicit_sft", seeds=(0, 1, 2), steps: int = 128, *,
        dpo_steps: int = 48, lr_scales=LR_SCALES, objectives=OBJECTIVES, objective_lr_scale: float = 1.0,
        base_lr: float = 1e-3, sft_examples: int = 256, dpo_pairs: int = 256, num_eval: int = 128,
        batch_size: int = 16, fdiv_beta: float = 0.5, dpo_lr: float = 3e-5, dpo_beta: float = 0.1,
        base_model: str = "tiny:qwen2:arithmetic", work_dir: str | Path = "runs/reproduce/implicit_sft",
        num_threads: int | None = 1, force: bool = False) -> dict:
    """Run the study; returns ``{"table", "plot", "results", "rows"}``. ``steps`` = SFT optimizer steps;
    ``num_threads`` (default 1) torch threads (one per process is fastest for tiny models on a shared CPU)."""
    start = time.perf_counter()
    out, work = Path(output_dir), Path(work_dir)
    (out / "metrics").mkdir(parents=True, exist_ok=True)
    configs = [("nll", s) for s in lr_scales] + [(o, objective_lr_scale) for o in objectives if o != "nll"]
    if "nll" in objectives and objective_lr_scale not in lr_scales:
        configs.append(("nll", objective_lr_scale))
    common = dict(base_lr=base_lr, steps=steps, sft_examples=sft_examples, num_eval=num_eval, batch_size=batch_size,
                  beta=fdiv_beta, base_model=base_model, num_threads=num_threads)
    rows, traces = [], {}
    for seed in seeds:
        for loss, scale in configs:
            raw = sft_raw(seed, loss, scale, **common)
            sft_dir = work / f"sft_{loss}_x{scale:g}_s{seed}_{_tag(raw)}"
            log.info("implicit_sft study: SFT %s lr x%g seed %d", loss, scale, seed)
            sft = _run_stage("sft", raw, sft_dir, force)
            draw = dpo_raw(seed, sft["final_model"], steps=dpo_steps, pairs=dpo_pairs, num_eval=num_eval,
                           batch_size=batch_size, lr=dpo_lr, beta=dpo_beta, num_threads=num_threads)
            log.info("implicit_sft study: DPO from %s", sft_dir.name)
            dpo = _run_stage("dpo", draw, work / f"dpo_{sft_dir.name}_{_tag(draw)}", force)
            rows.append({"seed": seed, "loss": loss, "lr_scale": scale, "lr": base_lr * scale,
                         "initial": sft["heldout_score_initial"], "after_sft": sft["heldout_score"],
                         "after_dpo": dpo["heldout_score"],
                         "kl_to_initial": _last_logged(sft["metrics"], "sft/kl_to_initial"),
                         # logged as beta * sum_t log(pi/pi_ref); divided by the loss's beta (nll: 1) to compare
                         "implicit_reward": _scaled(_last_logged(sft["metrics"], "sft/implicit_reward"),
                                                    1.0 if loss == "nll" else fdiv_beta),
                         "sft_last_loss": sft["last_loss"], "dpo_margin": _last_logged(dpo["metrics"], "rewards/margins"),
                         "dpo_reward_accuracy": _last_logged(dpo["metrics"], "rewards/accuracies")})
            from rlpost.tracking import read_metrics
            traces.setdefault(f"{loss} ×{scale:g}", []).append(read_metrics(Path(sft["metrics"])))
            shutil.copy(sft["metrics"], out / "metrics" / f"sft_{loss}_x{scale:g}_s{seed}.jsonl")
            shutil.copy(dpo["metrics"], out / "metrics" / f"dpo_{loss}_x{scale:g}_s{seed}.jsonl")
    info = {"seeds": list(seeds), "sft_steps": steps, "dpo_steps": dpo_steps, "base_lr": base_lr,
            "sft_examples": sft_examples, "dpo_pairs": dpo_pairs, "num_eval": num_eval, "batch_size": batch_size,
            "fdiv_beta": fdiv_beta, "dpo_lr": dpo_lr, "dpo_beta": dpo_beta, "objective_lr_scale": objective_lr_scale,
            "seconds": time.perf_counter() - start}
    groups = aggregate(rows)
    write_table(out / "table.md", groups, info, traces)
    plot(out / "curves.png", groups, lr_scales, objectives, objective_lr_scale)
    (out / "results.json").write_text(json.dumps({"info": info, "rows": rows, "groups": groups}, indent=2))
    return {"table": str(out / "table.md"), "plot": str(out / "curves.png"), "results": str(out / "results.json"),
            "rows": rows, "groups": groups}


def rewrite(output_dir: str | Path = "results/implicit_sft") -> dict:
    """Rebuild ``table.md``, ``curves.png`` and the aggregates in ``results.json`` from the committed per-seed rows
    and ``metrics/sft_*.jsonl`` (no training): the table follows the current aggregation and formatting."""
    from rlpost.tracking import read_metrics
    out = Path(output_dir)
    data = json.loads((out / "results.json").read_text())
    info, rows = data["info"], data["rows"]
    traces: dict = {}
    for r in sorted(rows, key=lambda r: r["seed"]):
        key = f"{r['loss']} ×{r['lr_scale']:g}"
        traces.setdefault(key, []).append(read_metrics(out / "metrics" / f"sft_{r['loss']}_x{r['lr_scale']:g}_s{r['seed']}.jsonl"))
    groups = aggregate(rows)
    write_table(out / "table.md", groups, info, traces)
    scales = list(dict.fromkeys(r["lr_scale"] for r in rows if r["loss"] == "nll"))
    objectives = list(dict.fromkeys(r["loss"] for r in rows))
    plot(out / "curves.png", groups, scales, objectives, info["objective_lr_scale"])
    (out / "results.json").write_text(json.dumps({"info": info, "rows": rows, "groups": groups}, indent=2))
    return {"table": str(out / "table.md"), "groups": groups}


def aggregate(rows: list[dict]) -> list[dict]:
    keys = ("initial", "after_sft", "after_dpo", "kl_to_initial", "implicit_reward", "dpo_margin")
    out = []
    for loss, scale in dict.fromkeys((r["loss"], r["lr_scale"]) for r in rows):
        sel = [r for r in rows if r["loss"] == loss and r["lr_scale"] == scale]
        g = {"loss": loss, "lr_scale": scale, "lr": sel[0]["lr"], "n": len(sel)}
        for k in keys:
            vals = [r[k] for r in sel if r[k] is not None]
            g[k] = {**mean_std(vals), "values": vals} if vals else None
        out.append(g)
    return out


def _fmt(cell, d=3):
    return "–" if cell is None else f"{cell['mean']:.{d}f} ± {cell['std']:.{d}f}"


def activity_components():
    from rlpost.reproduce import Component
    return (Component("f-divergence token weights", "sft/phi_weight_mean", "range", 1.0,
                      what="mean weight on the NLL gradient; 1 = plain NLL"),
            Component("ratio clamp", "sft/frac_clamped", what="share of tokens whose log-ratio was clamped"),
            Component("drift from the initial model", "sft/kl_to_initial", "range", 0.0, what="KL to the initial model"))


def best_after_dpo(groups: list[dict]) -> str:
    """The highest mean after DPO, claimed as best only when no other row's seed range reaches its lowest seed."""
    scored = [g for g in groups if g["after_dpo"]]
    if not scored:
        return "No run reached DPO."
    top = max(scored, key=lambda g: g["after_dpo"]["mean"])
    name = lambda g: f"{g['loss']} at lr ×{g['lr_scale']:g}"   # noqa: E731
    ties = [g for g in scored if g is not top and max(g["after_dpo"]["values"]) >= min(top["after_dpo"]["values"])]
    if not ties:
        return f"Best after DPO: {name(top)} ({top['after_dpo']['mean']:.3f}; above every other row on every seed)."
    return (f"Highest mean after DPO: {name(top)} ({top['after_dpo']['mean']:.3f}), not a clear best: the seed ranges "
            f"of {', '.join(name(g) for g in ties)} reach its lowest seed.")


def write_table(path: Path, groups: list[dict], info: dict, traces: dict | None = None) -> None:
    lines = [
        "# Implicit-reward SFT → DPO: miniature study",
        "",
        f"Tiny Qwen2 (warm-started) on 2-digit addition. SFT: {info['sft_steps']} steps × batch {info['batch_size']} "
        f"on {info['sft_examples']} demonstrations (TRL SFTTrainer, cosine, warmup 10 %, base lr {info['base_lr']:g}); "
        f"DPO: {info['dpo_steps']} steps on {info['dpo_pairs']} pairs (chosen = gold, rejected = near miss; β "
        f"{info['dpo_beta']}, lr {info['dpo_lr']:g}), reference = the SFT model. Held-out score = greedy accuracy on "
        f"{info['num_eval']} test problems. f-divergence objectives (RECONSTRUCTIONS) use β = {info['fdiv_beta']} at "
        f"lr × {info['objective_lr_scale']:g}. Seeds {info['seeds']}; mean ± std over seeds.", "", STD_NOTE,
        "",
        "| SFT objective | SFT lr | held-out: start | after SFT | after DPO | DPO gain | KL to initial (end of SFT) "
        "| Σ_t log π/π_ref (end of SFT) | DPO margin |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in groups:
        gain = None
        if g["after_dpo"] and g["after_sft"]:
            diffs = np.array(g["after_dpo"]["values"]) - np.array(g["after_sft"]["values"])
            gain = mean_std(diffs.tolist())
        lines.append(f"| {g['loss']} | {g['lr']:.2g} (×{g['lr_scale']:g}) | {_fmt(g['initial'])} | {_fmt(g['after_sft'])} "
                     f"| {_fmt(g['after_dpo'])} | {_fmt(gain)} | {_fmt(g['kl_to_initial'])} "
                     f"| {_fmt(g['implicit_reward'], 2)} | {_fmt(g['dpo_margin'], 2)} |")
    lines += ["", best_after_dpo(groups), "",
              f"Plot: curves.png. Wall time of this invocation {info['seconds'] / 60:.1f} min on CPU (runs that already "
              "finished in the work folder are reused, not retrained).", ""]
    if traces:
        from rlpost.studies.common import activity_section
        fdiv = {k: v for k, v in traces.items() if not k.startswith("nll ")}
        lines[2:2] = activity_section(fdiv or traces, activity_components())[2:4]
        lines += activity_section(traces, activity_components())
    path.write_text("\n".join(lines))


def plot(path: Path, groups: list[dict], lr_scales, objectives, objective_lr_scale) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    nll = sorted([g for g in groups if g["loss"] == "nll" and g["lr_scale"] in lr_scales], key=lambda g: g["lr_scale"])
    x = [g["lr_scale"] for g in nll]
    for key, label in (("after_sft", "after SFT"), ("after_dpo", "after DPO")):
        ys = [g[key]["mean"] if g[key] else np.nan for g in nll]
        es = [g[key]["std"] if g[key] else 0 for g in nll]
        axes[0].errorbar(x, ys, yerr=es, marker="o", capsize=3, label=label)
    if nll and nll[0]["initial"]:
        axes[0].axhline(nll[0]["initial"]["mean"], ls="--", color="gray", label="initial model")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("SFT learning-rate scale (× base lr)")
    axes[0].set_title("NLL SFT: held-out score vs learning rate")
    axes[0].legend(fontsize=8)
    objs = [g for g in groups if g["lr_scale"] == objective_lr_scale and g["loss"] in objectives]
    idx = np.arange(len(objs))
    for off, (key, label) in zip((-0.2, 0.2), (("after_sft", "after SFT"), ("after_dpo", "after DPO"))):
        axes[1].bar(idx + off, [g[key]["mean"] if g[key] else 0 for g in objs], 0.4,
                    yerr=[g[key]["std"] if g[key] else 0 for g in objs], capsize=3, label=label)
    axes[1].set_xticks(idx, [g["loss"] for g in objs], rotation=20)
    axes[1].set_title(f"SFT objective (lr × {objective_lr_scale:g}): held-out score")
    axes[1].legend(fontsize=8)
    for g in groups:
        if g["kl_to_initial"] and g["after_dpo"]:
            axes[2].scatter(g["kl_to_initial"]["mean"], g["after_dpo"]["mean"])
            axes[2].annotate(f"{g['loss']} ×{g['lr_scale']:g}", (g["kl_to_initial"]["mean"], g["after_dpo"]["mean"]),
                             fontsize=7)
    axes[2].set_xlabel("KL to the initial model at the end of SFT")
    axes[2].set_ylabel("held-out score after DPO")
    axes[2].set_title("drift from the initial model vs post-DPO score")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
