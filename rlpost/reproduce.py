"""Miniature reproductions: a paper's method against GRPO and DAPO on CPU-sized tasks, several seeds.

    rlpost reproduce hapo                      # arithmetic + countdown, 3 seeds each
    rlpost reproduce gain_rl --steps 10 --seeds 1 --tasks arithmetic

Every run is ``rlpost train`` on a tiny config with the same budget overrides (RL steps, prompts per
step, group size, learning rate, evaluation set and schedule); only the algorithm differs. A run's
output folder is keyed by a hash of its full config, so the GRPO / DAPO baselines are trained once and
shared by every recipe (``runs/reproduce/tiny/<hash>``). Writes ``results/<recipe>/table.md`` (final
held-out accuracy: mean, std and range over seeds; steps to a threshold; CPU time; the method's own
signals; an activity section: whether each component of the method acted, and how much),
``results/<recipe>/curves.png`` (held-out accuracy against step, mean and min..max band) and
``results/<recipe>/runs.json`` (raw numbers).

Besides the method and the two baselines, a recipe lists ablation rows ("method without component X") and
settings shared by every row (HAPO: two passes over each generation batch, so the ratio moves off 1 and the
clip and redistribution can act); OBLR-PO also gets a GRPO row at the mean learning rate its controller
applied, so the controller is not compared at a different effective LR.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("rlpost")

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Component:
    """One part of a method and the logged metric that shows it acting.

    kind "share": a per-step fraction (of tokens, groups); it fired on a step where it is > 0.
    kind "range": a per-step value; it fired on a step where it differs from ``neutral`` (relative 1e-6), or, with
    neutral None, on a step where it changed from the step before (e.g. a curriculum mean that moves).
    """
    name: str
    metric: str
    kind: str = "share"
    neutral: float | None = None
    what: str = ""                # how to read the number, for the table


@dataclass
class Recipe:
    label: str                    # name in the table
    config: str                   # tiny config, relative to the repository root
    note: str = ""                # what differs from GRPO, for the table's header
    signals: tuple = ()           # the method's own metrics, summarised per run (median over steps) in the table
    components: tuple = ()        # Component: what the activity section reports
    ablations: dict = field(default_factory=dict)   # row label -> overrides on the method's config
    shared: tuple = ()            # overrides applied to every row (method, ablations, baselines)
    match_lr: bool = False        # add a GRPO row at the mean learning rate the method applied


HAPO_COMPONENTS = (
    Component("A adaptive temperature", "hapo/temperature_up_frac", what="share of sampled tokens heated"),
    Component("A adaptive temperature", "hapo/temperature_down_frac", what="share of sampled tokens cooled"),
    Component("B token-level group average", "hapo/token_mean_shift",
              what="mean |token-weighted - plain group mean reward| over groups"),
    Component("C advantage redistribution", "hapo/boost_frac", what="share of tokens boosted"),
    Component("C advantage redistribution", "hapo/damp_frac", what="share of tokens damped"),
    Component("D adaptive clipping", "hapo/eps_high_mean", "range", 0.2,
              what="mean upper clip bound over tokens; 0.2 = fixed (the tiny config's epsilon_high)"),
    Component("D adaptive clipping", "hapo/eps_low_mean", "range", 0.2,
              what="mean lower clip bound over tokens; 0.2 = fixed (the tiny config's epsilon)"),
    Component("D adaptive clipping", "policy/clipfrac", what="share of tokens clipped (at the bounds in use)"),
)

RECIPES = {
    "hapo": Recipe("HAPO", "configs/tiny/arith_hapo.yaml", "DAPO + adaptive temperature, token-level group "
                   "average, advantage redistribution, adaptive clip, with the released code's settings behind "
                   "the paper's Table 1 (h_sign_mode released_code in the loss and the temperature processor, "
                   "tau 0.05, eps_R 0.2, micro-batch entropy statistics, |A| >= 5 group fallback); every row "
                   "makes two passes over each generation batch (algo.num_iterations 2), so the ratio leaves 1 "
                   "and C and D can act",
                   ("hapo/temperature_mean", "hapo/temperature_min", "hapo/temperature_max", "hapo/damp_frac",
                    "hapo/boost_frac", "hapo/fallback_group_frac", "policy/clipfrac", "policy/entropy"),
                   HAPO_COMPONENTS,
                   ablations={"HAPO w/o A": ["rollout.logits_processor=null"],
                              "HAPO w/o B": ["algo.advantage=grpo"],
                              "HAPO w/o C": ["algo.loss.adv_redistribution=false"],
                              "HAPO w/o D": ["algo.loss.adaptive_clip=false"]},
                   shared=("algo.num_iterations=2",)),
    "adora": Recipe("ADORA", "configs/tiny/arith_adora.yaml", "GRPO advantages x 2 for groups with success "
                    "rate <= 0.25 (difficulty criterion; the split is set below the tiny model's typical group "
                    "success rate so that weights differ between groups of one step: a uniform weight is a "
                    "no-op under Adam)",
                    ("adora/tas_frac", "adora/informative_tas_frac", "adora/weight_spread", "adora/success_rate_mean",
                     "adora/weight_mean"),
                    (Component("group weighting", "adora/informative_tas_frac",
                               what="share of informative groups up-weighted"),
                     Component("group weighting", "adora/weight_spread", "range", 0.0,
                               what="max - min weight among a step's informative groups (0: a uniform no-op)")),
                    ablations={"ADORA, tau 0.5 (all groups)": ["algo.advantage.tau=0.5"]}),
    "oblr_po": Recipe("OBLR-PO", "configs/tiny/arith_oblr_po.yaml", "gradient-weighted leave-one-out baseline + "
                      "SNR learning-rate controller (reconstruction)",
                      ("oblr/lr_scale", "oblr/snr", "oblr/weight_group_cv", "oblr/baseline_minus_mean_abs"),
                      (Component("gradient-weighted baseline", "oblr/baseline_minus_mean_abs", "range", 0.0,
                                 what="mean |baseline - group mean reward|"),
                       Component("SNR learning rate", "oblr/lr_scale", "range", 1.0, what="LR multiplier")),
                      ablations={"OBLR-PO w/o SNR LR": ["algo.lr_controller=null"],
                                 "OBLR-PO w/o baseline": ["algo.advantage=grpo", "method={}"]},
                      match_lr=True),
    "gain_rl": Recipe("GAIN-RL", "configs/tiny/arith_gain_rl.yaml", "GRPO + angle-ranked Gaussian curriculum sampler",
                      ("gain_rl/mu", "gain_rl/delta_mu", "gain_rl/accuracy", "gain_rl/angle",
                       "gain_rl/sampled_rank_mean", "gain_rl/sampled_score_mean"),
                      (Component("curriculum mean", "gain_rl/mu", "range", None, what="mu (rank units)"),),
                      ablations={"GAIN-RL w/o mu update": ["data.sampler.step_size=0"],
                                 "GAIN-RL, gamma 0.5": ["data.sampler.angle_gain=0.5"]}),
}

BASELINES = {
    "GRPO": Recipe("GRPO", "configs/tiny/arith_grpo.yaml"),
    # DAPO: token-mean loss, clip-higher 0.28, dynamic sampling (overlong shaping is moot at these lengths)
    "DAPO": Recipe("DAPO", "configs/tiny/arith_grpo.yaml"),
}
BASELINE_OVERRIDES = {
    "GRPO": [],
    "DAPO": ["algo.loss=dapo", "algo.epsilon_high=0.28", "algo.dynamic_sampling=true", "algo.max_refill_rounds=2"],
}

# Task overrides on top of the (arithmetic) tiny configs. Countdown uses its own tiny model and the
# 3-number variant (see recipes/*/README.md: the 4-number warm-start does not reach the 10-50% band on CPU).
TASKS = {
    "arithmetic": [],
    "countdown": ["model.name_or_path=tiny:qwen2:countdown", "data.task=countdown", "data.task_kwargs={count: 3}",
                  "rewards.0.name=countdown", "rollout.max_completion_length=16"],
}


@dataclass
class Budget:
    steps: int = 40               # RL steps per run
    eval_every: int = 5           # held-out evaluation period (steps)
    num_eval: int = 128           # held-out prompts (greedy)
    prompts_per_step: int = 16
    num_generations: int = 8
    learning_rate: float = 1e-4
    threads: int = 1              # torch intra-op threads: on a shared small machine, 2+ threads spin at barriers
                                  # whenever another process holds a core (measured: ~8x slower per step)

    def overrides(self, seed: int) -> list[str]:
        return [f"trainer.max_steps={self.steps}", f"trainer.eval_steps={self.eval_every}",
                f"trainer.num_threads={self.threads}",
                f"data.num_eval={self.num_eval}", f"rollout.prompts_per_step={self.prompts_per_step}",
                f"rollout.num_generations={self.num_generations}", f"optim.learning_rate={self.learning_rate}",
                f"trainer.seed={seed}", "trainer.save_steps=0", "trainer.report_to=[none]",
                "trainer.progress_bar=false", "trainer.resume_from_checkpoint=null"]


@dataclass
class RunResult:
    method: str
    task: str
    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)   # (step, eval/accuracy)
    wall_s: float = 0.0
    cpu_s: float = 0.0            # process CPU time (all threads): comparable across machine load, unlike wall time
    out_dir: str = ""
    signals: dict = field(default_factory=dict)   # metric -> median over the run's training steps
    trace: dict = field(default_factory=dict)     # component metric -> its value at every training step

    @property
    def final(self) -> float:
        return self.curve[-1][1] if self.curve else float("nan")


def _config_path(rel: str) -> Path:
    for base in (ROOT, Path.cwd()):
        if (base / rel).exists():
            return base / rel
    raise FileNotFoundError(f"{rel} not found under {ROOT} or {Path.cwd()}: run from the rlpost repository")


def run_one(config: str, overrides: list[str], runs_dir: Path, force: bool = False) -> tuple[dict, list[dict], Path]:
    """Train one tiny run (or reuse a finished one with the same config); return its timings
    ``{"wall_s", "cpu_s"}``, its metrics.jsonl rows and its folder."""
    from rlpost.config import load_config, to_dict
    from rlpost.studies.common import run_trainer
    from rlpost.tracking import read_metrics

    cfg = load_config(_config_path(config), overrides)
    key_dict = to_dict(cfg)
    key_dict["trainer"].pop("output_dir")
    key = hashlib.sha256(json.dumps(key_dict, sort_keys=True, default=str).encode()).hexdigest()[:16]
    out = runs_dir / key
    cfg.trainer.output_dir = str(out)
    done = out / "summary.json"
    if not done.exists() or force:
        start, cpu_start = time.perf_counter(), time.process_time()
        run_trainer(cfg)
        summary = json.loads(done.read_text())
        summary["reproduce"] = {"wall_s": time.perf_counter() - start, "cpu_s": time.process_time() - cpu_start}
        done.write_text(json.dumps(summary, indent=2))
    timing = json.loads(done.read_text()).get("reproduce", {})
    return timing, read_metrics(out / "metrics.jsonl"), out


def _signal_medians(rows: list[dict], keys) -> dict:
    """Median over a run's training steps of each metric (robust to single-step spikes, e.g. an SNR whose
    noise estimate hit 0)."""
    out = {}
    for key in keys:
        vals = sorted(r[key] for r in rows if r.get("step", 0) > 0 and isinstance(r.get(key), (int, float)))
        n = len(vals)
        out[key] = (vals[n // 2] if n % 2 else 0.5 * (vals[n // 2 - 1] + vals[n // 2])) if n else float("nan")
    return out


def _trace(rows: list[dict], components) -> dict:
    keys = dict.fromkeys(c.metric for c in components)
    return {k: [r[k] for r in rows if r.get("step", 0) > 0 and isinstance(r.get(k), (int, float))] for k in keys}


def activity(values: list[float], comp: Component) -> dict:
    """{"fired": steps where the component acted, "steps": steps with the metric, "mean", "min", "max"}."""
    if not values:
        return {"fired": 0, "steps": 0, "mean": float("nan"), "min": float("nan"), "max": float("nan")}
    if comp.kind == "share":
        fired = sum(v > 0 for v in values)
    elif comp.neutral is not None:   # float32 means of a constant land within ~1e-7 of it
        fired = sum(abs(v - comp.neutral) > 1e-6 * max(1.0, abs(comp.neutral)) for v in values)
    else:   # a level that should move: steps where it changed from the step before
        fired = sum(abs(b - a) > 1e-9 for a, b in zip(values, values[1:]))
    return {"fired": fired, "steps": len(values), "mean": sum(values) / len(values), "min": min(values),
            "max": max(values)}


def reproduce(recipe: str, steps: int = 40, seeds: list[int] | None = None, tasks: list[str] | None = None,
              out_root: str | Path = "results", runs_dir: str | Path = "runs/reproduce/tiny",
              budget: Budget | None = None, methods: list[str] | None = None, threshold: float | None = None,
              force: bool = False) -> dict:
    """Run the comparison for ``recipe`` and write its table and curves; returns the raw results."""
    if recipe not in RECIPES:
        raise KeyError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    budget = budget or Budget(steps=steps)
    budget.steps = steps
    seeds = list(range(3)) if seeds is None else seeds
    tasks = tasks or list(TASKS)
    for t in tasks:
        if t not in TASKS:
            raise KeyError(f"unknown task {t!r}; known: {', '.join(TASKS)}")
    main = RECIPES[recipe]
    shared = list(main.shared)
    entries = {"GRPO": (BASELINES["GRPO"], shared + BASELINE_OVERRIDES["GRPO"]),
               "DAPO": (BASELINES["DAPO"], shared + BASELINE_OVERRIDES["DAPO"]),
               main.label: (main, shared)}
    entries.update({label: (main, shared + list(extra)) for label, extra in main.ablations.items()})
    if methods:
        entries = {k: v for k, v in entries.items() if k in methods}
    runs_dir = Path(runs_dir)
    results: list[RunResult] = []

    def train(label, rec, extra, task, seed, tail=()):
        overrides = extra + TASKS[task] + budget.overrides(seed) + list(tail)
        log.info("reproduce %s: %s on %s, seed %d", recipe, label, task, seed)
        timing, rows, out = run_one(rec.config, overrides, runs_dir, force)
        curve = [(r["step"], r["eval/accuracy"]) for r in rows if r.get("eval/accuracy") is not None]
        results.append(RunResult(label, task, seed, curve, timing.get("wall_s", float("nan")),
                                 timing.get("cpu_s", float("nan")), str(out), _signal_medians(rows, rec.signals),
                                 _trace(rows, main.components)))
        log.info("  final held-out accuracy %.3f (%.0f s)", results[-1].final, results[-1].wall_s)
        return rows

    for task in tasks:                      # one after another: each run uses every core it is given
        applied_lr = []
        for label, (rec, extra) in entries.items():
            for seed in seeds:
                rows = train(label, rec, extra, task, seed)
                if label == main.label:
                    applied_lr += [r["lr"] for r in rows if r.get("step", 0) > 0 and isinstance(r.get("lr"), float)]
        if main.match_lr and applied_lr and (not methods or any("matched" in m for m in methods)):
            # GRPO at the mean LR the method's controller applied: the comparison at a matched effective LR
            lr = float(f"{sum(applied_lr) / len(applied_lr):.3g}")
            for seed in seeds:
                train(f"GRPO, LR {lr:g} (matched)", BASELINES["GRPO"], shared, task, seed, [f"optim.learning_rate={lr}"])
    out_dir = Path(out_root) / recipe
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_table(out_dir / "table.md", recipe, results, budget, seeds, threshold)
    plot_curves(out_dir / "curves.png", recipe, results)
    (out_dir / "runs.json").write_text(json.dumps(
        {"recipe": recipe, "budget": budget.__dict__, "seeds": seeds, "tasks": tasks, "summary": table,
         "provenance": provenance_line(),
         "runs": [{"method": r.method, "task": r.task, "seed": r.seed, "curve": r.curve, "final": r.final,
                   "wall_s": r.wall_s, "cpu_s": r.cpu_s, "signals": r.signals, "trace": r.trace,
                   "out_dir": r.out_dir}
                  for r in results]}, indent=1))
    return {"table": str(out_dir / "table.md"), "curves": str(out_dir / "curves.png"), "summary": table}


def load_runs(path: str | Path) -> tuple[dict, list[RunResult]]:
    """A committed ``runs.json`` and its runs as :class:`RunResult` (curves, timings, signals, traces)."""
    data = json.loads(Path(path).read_text())
    runs = [RunResult(r["method"], r["task"], r["seed"], [tuple(c) for c in r["curve"]], r["wall_s"], r["cpu_s"],
                      r["out_dir"], r["signals"], r["trace"]) for r in data["runs"]]
    return data, runs


def rewrite(recipe: str, out_root: str | Path = "results", threshold: float | None = None) -> dict:
    """Rewrite ``<out_root>/<recipe>/table.md`` and the summary in ``runs.json`` from the committed runs (no
    training; the where-made line is the one stored with the runs)."""
    path = Path(out_root) / recipe / "runs.json"
    data, runs = load_runs(path)
    summary = write_table(path.parent / "table.md", recipe, runs, Budget(**data["budget"]), data["seeds"], threshold,
                          data["provenance"])
    data["summary"] = json.loads(json.dumps(summary))
    path.write_text(json.dumps(data, indent=1))
    return summary


# ---------------------------------------------------------------- summary

STD_NOTE = "std: the sample standard deviation over seeds (ddof 1), as in every rlpost results table."


def _mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof 1; 0 for a single value) of the non-NaN values."""
    xs = [x for x in xs if not math.isnan(x)]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def steps_to(curve: list[tuple[int, float]], threshold: float) -> int | None:
    """First trained step (> 0) whose held-out accuracy is >= threshold (None if never): the start does not count."""
    for step, acc in curve:
        if step > 0 and acc >= threshold - 1e-12:
            return step
    return None


def summarize(results: list[RunResult], threshold: float | None = None) -> dict:
    """Per task: the threshold and, per method, final accuracy stats and steps to the threshold.

    Default threshold: half of GRPO's mean gain, initial + 0.5 * (GRPO final - initial), where initial is
    the mean step-0 accuracy of all runs of the task (the same model: it differs only by eval noise = 0).
    Also the steps to GRPO's final mean accuracy (the GAIN-RL paper's metric: steps to vanilla GRPO's accuracy).
    """
    out: dict = {}
    for task in dict.fromkeys(r.task for r in results):
        runs = [r for r in results if r.task == task]
        init = _mean_std([r.curve[0][1] for r in runs if r.curve and r.curve[0][0] == 0])[0]
        grpo_final = _mean_std([r.final for r in runs if r.method == "GRPO"])[0]
        thr = threshold
        if thr is None:
            thr = init + 0.5 * (grpo_final - init) if not math.isnan(grpo_final) and grpo_final > init else None
        methods = {}
        for method in dict.fromkeys(r.method for r in runs):
            mr = [r for r in runs if r.method == method]
            finals = [r.final for r in mr]
            mean, sd = _mean_std(finals)
            reach = [steps_to(r.curve, thr) for r in mr] if thr is not None else []
            reached = [s for s in reach if s is not None]
            # the GAIN-RL paper's metric: training steps until held-out accuracy reaches GRPO's final (mean) accuracy
            to_grpo = [steps_to(r.curve, grpo_final) for r in mr] if not math.isnan(grpo_final) else []
            grpo_reached = [s for s in to_grpo if s is not None]
            methods[method] = {"final_mean": mean, "final_std": sd, "final_min": min(finals), "final_max": max(finals),
                               "best_mean": _mean_std([max(a for _, a in r.curve) for r in mr if r.curve])[0],
                               "steps_to_threshold": reach, "reached": len(reached), "n": len(mr),
                               "steps_to_threshold_mean": sum(reached) / len(reached) if reached else None,
                               "steps_to_grpo_final": to_grpo, "grpo_final_reached": len(grpo_reached),
                               "steps_to_grpo_final_mean": (sum(grpo_reached) / len(grpo_reached)
                                                            if grpo_reached else None),
                               "wall_s_mean": _mean_std([r.wall_s for r in mr])[0],
                               "cpu_s_mean": _mean_std([r.cpu_s for r in mr])[0],
                               "signals": {k: _mean_std([r.signals.get(k, float("nan")) for r in mr])[0]
                                           for k in dict.fromkeys(k for r in mr for k in r.signals)}}
        out[task] = {"initial_accuracy": init, "threshold": thr, "grpo_final": grpo_final, "methods": methods}
    return out


def activity_by_method(results: list[RunResult], components, task: str) -> dict:
    """{method: [(component, activity over all its seeds' training steps)]} for one task."""
    out = {}
    for method in dict.fromkeys(r.method for r in results if r.task == task):
        runs = [r for r in results if r.task == task and r.method == method]
        out[method] = [(c, activity([v for r in runs for v in r.trace.get(c.metric, [])], c)) for c in components]
    return out


def never_fired(results: list[RunResult], components, method: str) -> list[str]:
    """Components of ``method`` that did not act on any training step of any task and seed."""
    names = {}
    for task in dict.fromkeys(r.task for r in results):
        for comp, act in activity_by_method(results, components, task).get(method, []):
            names[comp.name] = names.get(comp.name, 0) + act["fired"]
    return [name for name, fired in names.items() if fired == 0]


RARELY = 0.1   # a component that acted on fewer than this share of a task's training steps is called out at the top


def rarely_fired(results: list[RunResult], components, method: str) -> list[str]:
    """"<component> (`metric`) on <task>: k of n steps" for each component of ``method`` that acted on some but
    fewer than :data:`RARELY` of a task's training steps (all seeds): a near no-op there."""
    out = []
    for task in dict.fromkeys(r.task for r in results):
        for comp, act in activity_by_method(results, components, task).get(method, []):
            if act["steps"] and 0 < act["fired"] < RARELY * act["steps"]:
                out.append(f"{comp.name} (`{comp.metric}`) on {task}: {act['fired']} of {act['steps']} steps")
    return out


def _activity_lines(results: list[RunResult], components, task: str) -> list[str]:
    lines = ["Activity (all seeds, all training steps): whether each component acted, and how much.", "",
             "| method | component | metric | acted on steps | mean | min..max |", "|---|---|---|---|---|---|"]
    silent = []
    for method, acts in activity_by_method(results, components, task).items():
        if not any(a["steps"] for _, a in acts):
            silent.append(method)
            continue
        for comp, a in acts:
            if not a["steps"]:
                lines.append(f"| {method} | {comp.name} | `{comp.metric}` ({comp.what}) | not logged | – | – |")
                continue
            lines.append(f"| {method} | {comp.name} | `{comp.metric}` ({comp.what}) | {a['fired']}/{a['steps']} "
                         f"| {a['mean']:.3g} | {a['min']:.3g}..{a['max']:.3g} |")
    if silent:
        lines += ["", f"{', '.join(silent)}: none of these components (their metrics are not logged)."]
    return lines + [""]


def write_table(path: Path, recipe: str, results: list[RunResult], budget: Budget, seeds: list[int],
                threshold: float | None = None, provenance: str | None = None) -> dict:
    """Write the recipe's table.md from ``results``; ``provenance``: the where-made line (default: this machine)."""
    summary = summarize(results, threshold)
    rec = RECIPES[recipe]
    rows = list(dict.fromkeys(r.method for r in results))
    idle = never_fired(results, rec.components, rec.label) if rec.label in rows else []
    if not rec.components or rec.label not in rows:
        fired_line = ""
    elif idle:
        fired_line = (f"**Never fired in any {rec.label} run: {', '.join(idle)}.** The rows below do not test "
                      "what those components do (see the activity section).")
    else:
        fired_line = f"Every component of {rec.label} acted in its runs (activity section of each task)."
    rare = rarely_fired(results, rec.components, rec.label) if rec.components and rec.label in rows else []
    if rare:
        fired_line += (f" **Acted on fewer than {RARELY:.0%} of the training steps** (close to a no-op there): "
                       + "; ".join(rare) + ".")
    lines = [f"# {rec.label} in miniature: {rec.label} vs GRPO vs DAPO", "",
             *([fired_line, ""] if fired_line else []),
             f"{rec.label}: {rec.note}.", "",
             *([f"Ablation rows: {', '.join(rec.ablations)} (the method with one component removed)."
                + (" The matched-LR GRPO row trains at the mean learning rate the method's controller applied."
                   if rec.match_lr else ""), ""] if rec.ablations else []),
             f"Budget per run: {budget.steps} RL steps x {budget.prompts_per_step} prompts x {budget.num_generations} "
             f"completions, learning rate {budget.learning_rate:g}, {budget.threads} torch thread(s); held-out "
             f"greedy accuracy on {budget.num_eval} "
             f"prompts every {budget.eval_every} steps; seeds {', '.join(map(str, seeds))}. "
             "DAPO (and HAPO, built on it) refill filtered groups with dynamic sampling, so they generate more "
             "completions per step; their CPU time per run is reported (CPU seconds of the training process, "
             "all threads: unlike wall time it does not depend on what else the shared machine runs).", "",
             "Generated by `rlpost reproduce " + recipe + f" --steps {budget.steps} --seeds {len(seeds)}`"
             " (rlpost/reproduce.py). Tiny models and tasks: differences of a few points are within seed noise; "
             "read the spread column before the mean.", "", STD_NOTE, "",
             provenance or provenance_line(), ""]
    for task, s in summary.items():
        thr = s["threshold"]
        thr_text = f"{thr:.3f}" if thr is not None else "n/a (GRPO did not improve)"
        lines += [f"## {task}", "", f"Initial held-out accuracy (step 0): {s['initial_accuracy']:.3f}. "
                  f"Threshold for 'steps to threshold': {thr_text} (half of GRPO's mean gain unless --threshold). "
                  f"'Steps to GRPO's final': the first evaluated step at or above GRPO's final mean accuracy "
                  f"({s['grpo_final']:.3f}; the GAIN-RL paper's metric), mean over the seeds that reached it.", "",
                  "| method | final acc. mean ± std | min..max | best acc. (mean) "
                  "| steps to threshold (mean, reached) | steps to GRPO's final (mean, reached) | CPU s/run |",
                  "|---|---|---|---|---|---|---|"]
        for method, m in s["methods"].items():
            st = (f"{m['steps_to_threshold_mean']:.1f} ({m['reached']}/{m['n']})"
                  if m["steps_to_threshold_mean"] is not None else f"- (0/{m['n']})")
            sg = (f"{m['steps_to_grpo_final_mean']:.1f} ({m['grpo_final_reached']}/{m['n']})"
                  if m.get("steps_to_grpo_final_mean") is not None else f"- (0/{m['n']})")
            lines.append(f"| {method} | {m['final_mean']:.3f} ± {m['final_std']:.3f} "
                         f"| {m['final_min']:.3f}..{m['final_max']:.3f} | {m['best_mean']:.3f} | {st} | {sg} "
                         f"| {m['cpu_s_mean']:.0f} |")
        lines.append("")
        if rec.components:
            lines += _activity_lines(results, rec.components, task)
        signals = {method: m["signals"] for method, m in s["methods"].items() if m["signals"]}
        for method, sig in signals.items():
            lines += [f"{method}'s own signals (median over training steps, mean over seeds): " + ", ".join(
                f"`{k}` {v:.3g}" for k, v in sig.items()) + ".", ""]
    path.write_text("\n".join(lines))
    return summary


def provenance_line() -> str:
    """Where the table was made and which shipped checkpoints its runs start from (rlpost.provenance)."""
    from rlpost.models.tiny import ensure_tiny
    from rlpost.provenance import checkpoint_digest, describe
    starts = ", ".join(f"`tiny:qwen2:{task}` (sha256 {checkpoint_digest(ensure_tiny(f'tiny:qwen2:{task}'))})"
                       for task in TASKS)
    return (f"Made {describe()}; every run starts from the shipped checkpoints {starts}. On another float path "
            "(CPU vector units, GPU) a run's curve differs in detail; `python scripts/check_table_cell.py` reruns "
            "one cell on a capped float path and compares it with this table's spread.")


def plot_curves(path: Path, recipe: str, results: list[RunResult]) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r.task for r in results))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 3.8), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in dict.fromkeys(r.method for r in results if r.task == task):
            runs = [r for r in results if r.task == task and r.method == method and r.curve]
            steps = sorted({s for r in runs for s, _ in r.curve})
            by_step = [[dict(r.curve)[s] for r in runs if s in dict(r.curve)] for s in steps]
            mean = [sum(v) / len(v) for v in by_step]
            line, = ax.plot(steps, mean, marker="o", markersize=3, label=f"{method} (n={len(runs)})")
            ax.fill_between(steps, [min(v) for v in by_step], [max(v) for v in by_step], color=line.get_color(),
                            alpha=0.15)
        ax.set_title(f"{RECIPES[recipe].label} vs baselines: {task}")
        ax.set_xlabel("RL step")
        ax.set_ylabel("held-out accuracy (greedy)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
