"""Miniature reward-model over-optimisation study (Moskovitz et al. 2024), ``rlpost reproduce constrained_rlhf``.

Setting (everything tiny, CPU):
  policy       the warm-started tiny Qwen2 on 2-digit addition (``tiny:qwen2:arithmetic``)
  true score   held-out greedy accuracy (``eval/accuracy``; the ``arithmetic`` checker, weight 0 in training)
  rm_answer    a learned RM, TRL RewardTrainer on pairs chosen = gold answer, rejected = the same answer with
               its last digit changed: a partial-correctness proxy
  rm_length    a learned RM on pairs chosen = the longer of two digit strings: a verbosity proxy
  composite    r = 1.0 * rm_answer + ``length_weight`` * rm_length

Phase 1 (unconstrained, "sum"): GRPO-style group-normalised advantage of the composite reward, every seed.
Proxy points θ: the paper fits an evaluation surface over (RM values, eval) tuples from many runs and takes its
argmax; here (simplified) θ_i = the mean training-batch value of RM i over the ``top_k`` evaluation points with
the highest true score, pooled over the phase-1 runs (an evaluation at step 0 uses step 1's batch means). That
true score is measured on a **selection set**: held-out problems disjoint from every seed's scoring problems
(``eval/accuracy``, the number the table reports), so θ is not chosen on the problems it is judged on.
Phase 2: μ, ξ, All (multipliers) and SAT with those θ, same seeds and budget.
KL: the PPO (sum), SAT and All runs put the KL to the initial policy in the reward (``algo.kl_reward``, the
paper's adaptive controller: initial coefficient 0.2, target 0.5, gain 0.1 per update); μ and ξ have the KL as
their task reward instead (``algo.advantage.kl_coef``).

Writes ``<output_dir>/table.md``, ``<output_dir>/curves.png`` (true score and each component over steps,
mean over seeds with min-max bands), ``<output_dir>/results.json`` and each run's ``metrics.jsonl`` under
``<output_dir>/metrics/``; run folders (models, checkpoints) go to ``work_dir`` and are reused when a run with
the same config already finished (``force=True`` retrains).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from rlpost.studies.common import STD_NOTE, activity_section, mean_std

log = logging.getLogger("rlpost")

VARIANTS = ("sum", "mu", "xi", "all", "sat")
LABELS = {"sum": "PPO-sum (unconstrained)", "mu": "μ-PPO", "xi": "ξ-PPO", "all": "All-PPO", "sat": "PPO-SAT"}
COMPONENTS = ("rm_answer", "rm_length")
KL_REWARD = {"coef": 0.2, "controller": "adaptive", "target": 0.5}   # PPO / SAT / All (App. B); horizon set per run
RM_KINDS = {"rm_answer": "last_digit", "rm_length": "length"}


# --------------------------------------------------------------------------------------------- reward models

# The two RMs the study and recipes/constrained_rlhf/tiny_*.yaml use, committed (built by
# scripts/make_tiny_checkpoints.py with the study's defaults): an RM trained on another machine is another RM.
SHIPPED_RM_DIR = Path(__file__).resolve().parents[2] / "reward_models" / "tiny"


def train_rms(rm_dir: Path, base_model: str, pairs: int, steps: int, seed: int = 0, force: bool = False,
              use_shipped: bool = True) -> dict:
    """The two tiny RMs; returns {name: {path, train_accuracy, eval_accuracy}}. A shipped RM
    (``reward_models/tiny/<name>``) built with the same settings is used as it is unless ``force``; otherwise
    the RM is trained into ``rm_dir`` (or reused from there)."""
    from rlpost.reward_modeling import make_preference_pairs, train_reward_model

    out = {}
    for name, kind in RM_KINDS.items():
        want = {"kind": kind, "pairs": pairs, "steps": steps, "seed": seed, "base_model": base_model}
        path = SHIPPED_RM_DIR / name
        meta_path = path / "rlpost_rm.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if force or not use_shipped or meta.get("study") != want:
            path = rm_dir / name
            meta_path = path / "rlpost_rm.json"
            meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        if force or meta.get("study") != want:
            log.info("training reward model %s (%s pairs, %d steps)", name, kind, steps)
            train = make_preference_pairs("arithmetic", kind, n=pairs, seed=seed)
            held = make_preference_pairs("arithmetic", kind, n=128, seed=seed, split="test")
            train_reward_model(base_model, train, path, max_steps=steps, learning_rate=3e-4, batch_size=32,
                               seed=seed, eval_pairs=held)
            meta = json.loads(meta_path.read_text())
            meta["study"] = want
            meta_path.write_text(json.dumps(meta, indent=2))
        shown = path.relative_to(Path.cwd()) if path.is_absolute() and path.is_relative_to(Path.cwd()) else path
        out[name] = {"path": str(shown), "kind": kind, "train_accuracy": meta["train_accuracy"],
                     "eval_accuracy": meta["eval_accuracy"]}
    return out


def rm_auc_on_policy(rms: dict, base_model: str, n_prompts: int = 64, n: int = 4, seed: int = 0) -> dict:
    """How well each RM ranks the initial policy's own samples by true correctness (ROC AUC), and the
    rank correlation of each RM with completion length: the proxies' quality where RL starts."""
    from rlpost.config import ModelConfig
    from rlpost.data import build_prompts
    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.models.loading import load_model, load_tokenizer, resolve_model_path
    from rlpost.rewards.builtin import arithmetic_reward
    from rlpost.rewards.reward_model import RewardModelReward
    from rlpost.tasks import TASKS
    from rlpost.workflows.single_turn import SingleTurnWorkflow

    mc = ModelConfig(name_or_path=base_model)
    path = resolve_model_path(mc)
    tok, model = load_tokenizer(path, mc), load_model(path, mc, "cpu", frozen=True)
    prompts = build_prompts(TASKS.get("arithmetic")("test", n_prompts, seed=seed), tok)
    trajs = SingleTurnWorkflow(HFEngine(model, tok), tok).rollout(
        prompts, SamplingParams(n=n, temperature=1.0, max_tokens=8, seed=seed))
    texts = [t.final_text for t in trajs]
    correct = arithmetic_reward(None, texts, [t.prompt.columns["answer"] for t in trajs])
    lengths = [len(t) for t in texts]
    out = {"sample_accuracy": float(np.mean(correct))}
    for name, info in rms.items():
        scores = RewardModelReward(info["path"], name=name, batch_size=64)([t.prompt.text for t in trajs], texts)
        out[name] = {"auc_vs_correct": _auc(scores, correct), "spearman_vs_length": _spearman(scores, lengths)}
    return out


def _auc(scores, labels) -> float | None:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    if not pos or not neg:
        return None
    return float(np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg]))


def _spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1]) if np.std(ra) > 0 and np.std(rb) > 0 else 0.0


# --------------------------------------------------------------------------------------------- runs

def run_config(variant: str, seed: int, steps: int, rms: dict, thresholds: dict | None, out_dir: Path, *,
               length_weight: float, eval_every: int, num_eval: int, prompts_per_step: int, num_generations: int,
               learning_rate: float, num_threads: int | None, base_model: str, multiplier_lr: float,
               selection: str | None = None, n_select: int = 0, steps_per_generation: int = 1,
               num_iterations: int = 1) -> dict:
    """The rlpost train config (a plain dict) of one run. ``steps_per_generation`` x ``num_iterations``: policy
    steps per RL update, each followed by one multiplier step (the paper: 20 minibatches x 5 epochs = 100)."""
    weights = {"rm_answer": 1.0, "rm_length": length_weight}
    adv: dict = {"name": "constrained", "mode": variant}
    if variant in ("mu", "xi", "all"):
        adv["multiplier_lr"] = multiplier_lr
    if variant == "sum":
        adv["weights"] = weights
    else:
        adv["thresholds"] = dict(thresholds)
        if variant in ("all", "sat"):
            adv["weights"] = weights
    # KL in the reward for the baselines; horizon = 10 n makes the gain n / horizon RL4LMs' 0.1 per update
    kl_reward = ({"kl_reward": {**KL_REWARD, "horizon": 10.0 * prompts_per_step * num_generations}}
                 if variant in ("sum", "sat", "all") else {})
    return {
        "model": {"name_or_path": base_model},
        "data": {"task": "arithmetic", "num_train": 2000, "num_eval": num_eval},
        "rollout": {"num_generations": num_generations, "prompts_per_step": prompts_per_step,
                    "max_completion_length": 8, "temperature": 1.0},
        "algo": {"advantage": adv, "beta": 0.0, **kl_reward,
                 **({"num_iterations": num_iterations} if num_iterations != 1 else {})},
        "optim": {"learning_rate": learning_rate, "micro_batch_size": 64,
                  **({"steps_per_generation": steps_per_generation} if steps_per_generation != 1 else {})},
        "rewards": [{"name": "arithmetic", "weight": 0.0}]
                   + [{"name": "reward_model", "weight": weights[n],
                       "kwargs": {"path": rms[n]["path"], "name": n, "batch_size": 64, "device": "cpu"}}
                      for n in COMPONENTS],
        "trainer": {"output_dir": str(out_dir), "max_steps": steps, "seed": seed, "eval_steps": eval_every,
                    "save_steps": 0, "report_to": [], "progress_bar": False, "num_threads": num_threads,
                    "device": "cpu",
                    # the unconstrained runs also score the selection set, on which the proxy points are chosen
                    **({"eval_benchmarks": [f"arithmetic_greedy={selection}"], "eval_benchmark_limit": n_select}
                       if selection and variant == "sum" else {})},
        "method": {"constrained": {}},
    }


def train_run(raw: dict, force: bool = False) -> list[dict]:
    """Train one config (reused when finished with the same config); returns its metrics rows."""
    from rlpost.config import Config, from_dict, normalise_aliases, validate
    from rlpost.studies.common import run_trainer
    from rlpost.tracking import read_metrics

    out = Path(raw["trainer"]["output_dir"])
    stamp = out / "study_config.json"
    if not force and (out / "summary.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == raw:
        return read_metrics(out / "metrics.jsonl")
    if out.exists():
        shutil.rmtree(out)
    cfg = from_dict(Config, normalise_aliases(json.loads(json.dumps(raw))), "")
    validate(cfg)
    run_trainer(cfg)
    stamp.write_text(json.dumps(raw))
    return read_metrics(out / "metrics.jsonl")


SELECT_KEY = "eval/arithmetic_greedy/mean@1"   # true score on the selection set (greedy, as eval/accuracy)


def selection_rows(n: int, seeds, num_eval: int) -> list[dict]:
    """``n`` held-out (test-split) arithmetic problems, none of them among any seed's ``num_eval`` scoring problems
    (the trainer's eval set for seed s is ``make_split("test", num_eval, seed=s)``)."""
    from rlpost.tasks.arithmetic import make_split
    scored = {r["prompt"] for s in seeds for r in make_split("test", num_eval, seed=s)}
    pool = make_split("test", n + len(scored), seed=10_007)
    rows = [r for r in pool if r["prompt"] not in scored][:n]
    if len(rows) < n:
        raise ValueError(f"constrained_rlhf: only {len(rows)} held-out problems left for proxy-point selection")
    return rows


def proxy_points(runs: list[list[dict]], top_k: int = 3, key: str = SELECT_KEY) -> tuple[dict, list[dict]]:
    """θ_i: mean batch value of RM i at the ``top_k`` evaluations with the highest true score ``key`` (pooled;
    the selection set's accuracy, not the scoring set's)."""
    points = []
    for rows in runs:
        by_step = {r["step"]: r for r in rows}
        for r in rows:
            if r.get(key) is None:
                continue
            src = by_step.get(max(r["step"], 1), {})
            if all(f"reward/{c}/mean" in src for c in COMPONENTS):
                points.append({"step": r["step"], "true": r[key],
                               **{c: src[f"reward/{c}/mean"] for c in COMPONENTS}})
    if not points:
        raise RuntimeError(f"no evaluation points ({key}) in the unconstrained runs")
    best = sorted(points, key=lambda p: (-p["true"], p["step"]))[:top_k]
    return {c: float(np.mean([p[c] for p in best])) for c in COMPONENTS}, best


# --------------------------------------------------------------------------------------------- report

def _series(rows: list[dict], key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))}


def summarise(results: dict[str, list[list[dict]]]) -> dict:
    out = {}
    for variant, runs in results.items():
        per_seed = []
        for rows in runs:
            true = _series(rows, "eval/accuracy")
            steps = sorted(true)
            last = rows[-1]
            per_seed.append({
                "initial": true[steps[0]], "final": true[steps[-1]], "best": max(true.values()),
                "last3": float(np.mean([true[s] for s in steps[-3:]])),
                **{f"final_{c}": float(np.mean([r[f"reward/{c}/mean"] for r in rows[-5:]
                                                 if f"reward/{c}/mean" in r])) for c in COMPONENTS},
                "final_length": float(np.mean([r["completion/mean_length"] for r in rows[-5:]
                                               if "completion/mean_length" in r])),
                **{f"multiplier_{c}": last.get(f"constrained/multiplier/{c}") for c in COMPONENTS},
                "violation": (sum(last.get(f"constrained/violation/{c}", 0.0) for c in COMPONENTS)
                              if any(f"constrained/violation/{c}" in last for c in COMPONENTS) else None),
            })
        agg = {}
        for key in per_seed[0]:
            vals = [p[key] for p in per_seed if p[key] is not None]
            agg[key] = mean_std(vals) if vals else None
        out[variant] = {"per_seed": per_seed, "mean": agg}
    return out


def _fmt(cell, digits=3) -> str:
    if cell is None:
        return "–"
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def activity_components():
    from rlpost.reproduce import Component
    return tuple(Component(f"multiplier g(μ) {c}", f"constrained/multiplier/{c}", "range", None,
                           what="the Lagrange weight; acted = moved from the step before") for c in COMPONENTS) + \
        tuple(Component(f"constraint {c}", f"constrained/violation/{c}", "range", 0.0,
                        what="violation of the proxy point; acted = nonzero") for c in COMPONENTS) + \
        (Component("KL in the reward: β", "kl_reward/coef", "range", None,
                   what="the adaptive coefficient; acted = moved from the step before"),
         Component("KL in the reward: KL", "kl_reward/kl_mean", "range", 0.0,
                   what="mean Σ_t KL_t to the initial policy that the reward is penalised by; acted = nonzero"))


def _steps_text(info: dict) -> str:
    """Policy and multiplier steps per RL update (results made before these keys existed: 1 x 1)."""
    s, e = info.get("steps_per_generation", 1), info.get("num_iterations", 1)
    return (f"policy and multiplier steps per RL update: {s} mini-batch(es) × {e} pass(es) = {s * e} "
            "(paper: 20 × 5 = 100)")


def write_table(path: Path, summary: dict, info: dict, results: dict | None = None) -> None:
    th = info["thresholds"]
    lines = [
        "# Constrained RLHF: miniature over-optimisation study",
        "",
        f"Tiny Qwen2 on 2-digit addition; composite reward = rm_answer + {info['length_weight']} × rm_length "
        f"(two learned RMs, TRL RewardTrainer); true score = held-out greedy accuracy on {info['num_eval']} problems. "
        f"{info['steps']} RL steps × {info['prompts_per_step']} prompts × {info['num_generations']} samples, "
        f"lr {info['learning_rate']}, seeds {info['seeds']}; μ/ξ/All: multiplier SGD lr {info['multiplier_lr']} "
        f"(momentum 0.1), {_steps_text(info)}, ξ/μ task = −0.2·KL to the initial policy; sum/All/SAT: KL to the initial policy in the reward "
        f"(algo.kl_reward: β 0.2, adaptive controller, target 0.5 nats per sequence). "
        f"Mean ± std over seeds; true score = eval/accuracy (SE ≈ 0.04 per evaluation at 128 problems).", "", STD_NOTE,
        "",
        f"Proxy points from the unconstrained runs (RM batch means at the {len(info['proxy_points'])} best "
        f"evaluations on a selection set of {info.get('n_select', '?')} held-out problems disjoint from the scoring "
        f"problems): θ_answer = {th['rm_answer']:.3f}, θ_length = {th['rm_length']:.3f}.",
        "",
        "| variant | true score: start | final | mean of last 3 evals | best | rm_answer (final) | rm_length (final) "
        "| completion length | Σ violation | g(μ) answer / length |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, s in summary.items():
        m = s["mean"]
        mult = "–"
        if m.get("multiplier_rm_answer"):
            mult = f"{m['multiplier_rm_answer']['mean']:.2f} / {m['multiplier_rm_length']['mean']:.2f}"
        lines.append(f"| {LABELS.get(variant, variant)} | {_fmt(m['initial'])} | {_fmt(m['final'])} | {_fmt(m['last3'])} "
                     f"| {_fmt(m['best'])} | {_fmt(m['final_rm_answer'], 2)} | {_fmt(m['final_rm_length'], 2)} "
                     f"| {_fmt(m['final_length'], 2)} | {_fmt(m['violation'], 2)} | {mult} |")
    rm = info["reward_models"]
    auc = info.get("rm_quality", {})
    lines += ["", "Reward models (pair accuracy on training / held-out pairs; on the initial policy's own samples: "
                  "ROC AUC against true correctness, Spearman ρ with completion length):", ""]
    for name in COMPONENTS:
        q = auc.get(name, {})
        a = q.get("auc_vs_correct")
        lines.append(f"- `{name}` ({rm[name]['kind']} pairs): {rm[name]['train_accuracy']:.2f} / "
                     f"{rm[name]['eval_accuracy']:.2f}; AUC {a if a is None else round(a, 3)}, "
                     f"ρ(length) {q.get('spearman_vs_length', float('nan')):.2f}")
    lines += ["", "Per-seed final true scores: " + "; ".join(
        f"{LABELS.get(v, v)} {[round(p['final'], 3) for p in s['per_seed']]}" for v, s in summary.items()),
        "", f"Plot: curves.png. Wall time of this invocation {info['seconds'] / 60:.1f} min on CPU (runs that already "
        "finished in the work folder are reused, not retrained).", ""]
    if results:
        labelled = {LABELS.get(v, v): runs for v, runs in results.items()}
        lines[2:2] = activity_section(labelled, activity_components())[2:4]   # the never-acted line, at the top
        lines += activity_section(labelled, activity_components())
    path.write_text("\n".join(lines))


def plot(path: Path, results: dict[str, list[list[dict]]], thresholds: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("eval/accuracy", "true score (held-out accuracy)"), ("reward/rm_answer/mean", "rm_answer (batch mean)"),
              ("reward/rm_length/mean", "rm_length (batch mean)"), ("completion/mean_length", "completion length")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels):
        for variant, runs in results.items():
            series = [_series(rows, key) for rows in runs]
            steps = sorted(set.intersection(*[set(s) for s in series])) if series else []
            if not steps:
                continue
            vals = np.array([[s[t] for t in steps] for s in series])
            if key != "eval/accuracy" and len(steps) > 5:   # smooth the noisy batch means (window 5)
                kernel = np.ones(5) / 5
                vals = np.array([np.convolve(np.pad(v, 2, mode="edge"), kernel, mode="valid") for v in vals])
            line, = ax.plot(steps, vals.mean(0), label=LABELS.get(variant, variant))
            ax.fill_between(steps, vals.min(0), vals.max(0), alpha=0.15, color=line.get_color())
        comp = key.split("/")[1] if key.startswith("reward/") else None
        if comp in thresholds:
            ax.axhline(thresholds[comp], ls="--", color="k", lw=0.8, label="θ (proxy point)")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7) if thresholds else None
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rewrite(output_dir: str | Path = "results/constrained_rlhf") -> dict:
    """Rebuild ``table.md``, ``curves.png`` and the summary in ``results.json`` from the committed
    ``metrics/<variant>_s<seed>.jsonl`` and ``info`` (no training): the table follows the current aggregation."""
    from rlpost.tracking import read_metrics
    out = Path(output_dir)
    data = json.loads((out / "results.json").read_text())
    info = data["info"]
    variants = [v for v in VARIANTS if (out / "metrics" / f"{v}_s{info['seeds'][0]}.jsonl").exists()]
    results = {v: [read_metrics(out / "metrics" / f"{v}_s{s}.jsonl") for s in info["seeds"]] for v in variants}
    summary = summarise(results)
    write_table(out / "table.md", summary, info, results)
    plot(out / "curves.png", results, info["thresholds"])
    (out / "results.json").write_text(json.dumps({"info": info, "summary": summary}, indent=2))
    return {"table": str(out / "table.md"), "summary": summary}


# --------------------------------------------------------------------------------------------- entry point

def run(output_dir: str | Path = "results/constrained_rlhf", seeds=(0, 1, 2), steps: int = 40, *,
        variants=VARIANTS, work_dir: str | Path = "runs/reproduce/constrained_rlhf", base_model: str = "tiny:qwen2:arithmetic",
        rm_pairs: int = 512, rm_steps: int = 150, length_weight: float = 1.0, eval_every: int = 5, num_eval: int = 128,
        prompts_per_step: int = 16, num_generations: int = 4, learning_rate: float = 1e-4, top_k: int = 3,
        multiplier_lr: float = 1.0, num_threads: int | None = 1, n_select: int = 128, steps_per_generation: int = 1,
        num_iterations: int = 1, force: bool = False) -> dict:
    """Run the study; returns ``{"table", "plot", "results", "summary", "thresholds"}`` (paths and numbers).

    ``multiplier_lr`` (default 1.0, the paper's 0.1 × 10): the paper takes ~100 multiplier steps per rollout
    (5 epochs × 20 minibatches) and 10k in a run; this miniature by default takes one per step, 40 in a run.
    ``steps_per_generation`` × ``num_iterations`` (default 1 × 1): policy steps per RL update, each followed by a
    multiplier step; 20 × 5 with ``multiplier_lr=0.1`` is the paper's setting.
    ``num_threads`` (default 1): torch threads; on a shared CPU one thread per process is much faster for
    these tiny models than an oversubscribed OpenMP pool.
    """
    start = time.perf_counter()
    if num_threads:
        import torch
        torch.set_num_threads(num_threads)
    out, work = Path(output_dir), Path(work_dir)
    (out / "metrics").mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    variants = list(variants)
    if "sum" not in variants:
        variants = ["sum"] + variants   # the proxy points come from the unconstrained runs
    rms = train_rms(work / "rms", base_model, rm_pairs, rm_steps, force=force)
    quality = rm_auc_on_policy(rms, base_model)
    select_path = work / f"selection_{n_select}.jsonl"     # proxy-point selection set, disjoint from the scoring sets
    select_path.parent.mkdir(parents=True, exist_ok=True)
    select_path.write_text("".join(json.dumps(r) + "\n" for r in selection_rows(n_select, seeds, num_eval)))
    common = dict(length_weight=length_weight, eval_every=eval_every, num_eval=num_eval,
                  prompts_per_step=prompts_per_step, num_generations=num_generations, learning_rate=learning_rate,
                  num_threads=num_threads, base_model=base_model, multiplier_lr=multiplier_lr,
                  selection=str(select_path), n_select=n_select, steps_per_generation=steps_per_generation,
                  num_iterations=num_iterations)

    def one(variant, seed, thresholds):
        raw = run_config(variant, seed, steps, rms, thresholds, Path("."), **common)
        tag = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:8]
        raw["trainer"]["output_dir"] = str(work / f"{variant}_s{seed}_{tag}")
        log.info("constrained_rlhf study: %s seed %d", variant, seed)
        rows = train_run(raw, force=force)
        shutil.copy(Path(raw["trainer"]["output_dir"]) / "metrics.jsonl", out / "metrics" / f"{variant}_s{seed}.jsonl")
        return rows

    results = {"sum": [one("sum", s, None) for s in seeds]}
    thresholds, best_points = proxy_points(results["sum"], top_k)
    log.info("proxy points: %s", thresholds)
    for variant in variants:
        if variant != "sum":
            results[variant] = [one(variant, s, thresholds) for s in seeds]
    summary = summarise(results)
    info = {"thresholds": thresholds, "proxy_points": best_points, "reward_models": rms, "rm_quality": quality,
            "seeds": seeds, "steps": steps, "length_weight": length_weight, "num_eval": num_eval,
            "prompts_per_step": prompts_per_step, "num_generations": num_generations, "learning_rate": learning_rate,
            "multiplier_lr": multiplier_lr, "n_select": n_select, "steps_per_generation": steps_per_generation,
            "num_iterations": num_iterations, "seconds": time.perf_counter() - start}
    write_table(out / "table.md", summary, info, results)
    plot(out / "curves.png", results, thresholds)
    (out / "results.json").write_text(json.dumps({"info": info, "summary": summary}, indent=2))
    return {"table": str(out / "table.md"), "plot": str(out / "curves.png"), "results": str(out / "results.json"),
            "summary": summary, "thresholds": thresholds}
