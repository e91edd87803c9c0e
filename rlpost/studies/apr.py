"""APR miniature (Pan et al. 2025): APR against SoS+ on held-out Countdown, before and after RL.

    rlpost reproduce apr           # or: python -c "from rlpost.studies import apr; apr.run('results/apr')"

1. **From scratch**: one tiny LLaMA (:func:`rlpost.studies.common.scratch_model`, the phrase tokenizer of
   :mod:`rlpost.studies.phrase_tokenizer`) is trained on the solver's traces of both methods (:mod:`.apr_data`):
   every call of an APR tree is its own sequence; SoS+ traces carry a ``Token Budget`` prefix, which is how
   a root prompt selects SoS+ (APR roots have none). Two stages, each on fresh traces.
2. **RL**, per method (``sos`` = SoS+ serial search, ``apr`` = spawn/join trees) and seed: ``rlpost train
   recipes/apr/tiny.yaml`` from that model (``rollout.workflow: apr``, reward ``apr_countdown``, tree-level
   GRPO with population std, each call weighted 1/S). SoS+ goes through the same workflow (a serial trace is a
   one-call tree), conditioned on the largest budget bin.
3. **Evaluation** on held-out problems, greedy, before and after RL:
   * context windows W: every call is capped at W tokens (prompt + completion; ``AprWorkflow(max_context=W)``);
     SoS+ is conditioned on ``Token Budget: W`` (nearest bin) and capped at W;
   * total-token budgets B: cumulative accuracy, the share solved with at most B generated tokens in
     total (from the largest-window run), plus mean total and sequential tokens.

Outputs: ``table.md``, ``results.json``, ``accuracy_vs_window.png``, ``accuracy_vs_budget.png`` and the
runs under ``runs/`` (SFT models, RL runs with ``metrics.jsonl``).

Scale: 3 numbers in 1..9, targets 10..25, + and - only (the paper: 4 numbers, targets up to 100, + - * /),
a 0.5M-parameter model trained for minutes on CPU (the paper: 228M, 19k steps on TPUs).
"""
from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path

import torch

from rlpost.studies.apr_data import BUDGET_BIN, BUDGET_CAP, TASK, trace_pairs
from rlpost.studies.common import activity_section, save_model, scratch_model, sft, train_rl, warm_start
from rlpost.studies.phrase_tokenizer import apr_tokenizer

log = logging.getLogger("rlpost")

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "apr" / "tiny.yaml"
WINDOWS = (192, 256, 384, 768)            # context windows (tokens per call)
BUDGETS = (128, 256, 384, 512, 768, 1024)  # total generated tokens per problem
METHODS = {"sos": "SoS+", "apr": "APR"}
MODEL = {"arch": "llama", "hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
         "intermediate_size": 512, "max_position_embeddings": 2048}


def budget_prefix(window: int) -> int:
    """The SoS+ budget bin a window conditions on (largest bin <= window)."""
    return max(BUDGET_BIN, min(BUDGET_CAP, window // BUDGET_BIN * BUDGET_BIN))


# ------------------------------------------------------------------------------------ pretraining

def pretrain(kind: str, out_dir: str | Path, *, n_traces: int = 6000, seed: int = 0, time_budget_s: float | None = 1200,
             epochs: float = 20.0, lr: float = 3e-3, tokens_per_batch: int = 3000, model: dict | None = None,
             eval_every: int = 400, init_from: str | Path | None = None) -> Path:
    """Train a tiny model from scratch on solver traces and save it to ``out_dir``.

    ``kind``: ``apr`` (spawn/join trees), ``sos`` (SoS+ serial traces) or ``both``: one model on the union
    of the two corpora (``n_traces`` solver runs each). Their prompts differ (SoS+ roots carry a
    ``Token Budget`` prefix, APR roots none), so the prompt selects the behaviour, and the two methods
    share what both must learn (the protocol, the arithmetic, copying states).
    ``init_from``: continue training a model this function saved (fresh traces from ``seed``, a new
    warm-up and schedule); its step and time counters are added up.
    """
    torch.manual_seed(seed)
    model_cfg = {**MODEL, **(model or {})}
    tok = apr_tokenizer()
    count = lambda s: len(tok(s, add_special_tokens=False)["input_ids"])  # noqa: E731
    pairs, stats = [], {}
    for k in (("apr", "sos") if kind == "both" else (kind,)):
        p, stats[k] = trace_pairs(k, n_traces, seed=seed, count_tokens=count)
        pairs += p
        log.info("apr pretrain: %d %s sequences from %d solver traces (solver accuracy %.2f)", stats[k]["sequences"], k,
                 stats[k]["traces"], stats[k]["solver_accuracy"])
    net, tok, prev = _init(init_from, tok, seed, model_cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu = time.process_time()
    result = sft(net, tok, pairs, epochs=epochs, tokens_per_batch=tokens_per_batch, lr=lr, seed=seed,
                 time_budget_s=time_budget_s, metrics_path=out_dir / "sft_metrics.jsonl",
                 callback=_heldout_probe(net, tok, kind), callback_every=eval_every)
    result["cpu_seconds"] = time.process_time() - cpu
    result = _add_stages(prev, result)
    return save_model(net, tok, out_dir, {"kind": kind, "data": stats, "sft": result, "model": model_cfg,
                                          "task": {k: list(v) if isinstance(v, tuple) else v for k, v in TASK.items()}})


def _init(init_from, tok, seed: int, model_cfg: dict):
    """(model, tokenizer, previous SFT record or None): from scratch, or a model a pretrain() saved."""
    if init_from is None:
        return (*scratch_model(seed=seed, tokenizer=tok, **model_cfg), None)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    info = json.loads((Path(init_from) / "rlpost_study.json").read_text())
    return (AutoModelForCausalLM.from_pretrained(str(init_from)), AutoTokenizer.from_pretrained(str(init_from)),
            info["sft"])


def _add_stages(prev: dict | None, result: dict) -> dict:
    if prev is None:
        return result
    stages = prev.get("stages", [prev]) + [result]
    total = {k: sum(s.get(k, 0) for s in stages) for k in ("sft_steps", "seconds", "cpu_seconds")}
    return {**result, **total, "stages": stages}


def _heldout_probe(model, tok, kind: str, n: int = 30, window: int = 768):
    """callback(step) -> greedy held-out accuracy of the methods being trained (logged during SFT)."""
    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.tasks.apr_countdown import problems
    from rlpost.workflows.apr import AprWorkflow, countdown_reward
    probs = problems("test", n, seed=1, count=TASK["count"], max_num=TASK["max_num"],
                     target_range=TASK["target_range"], ops=TASK["ops"])
    engine = HFEngine(model, tok)

    def probe(step: int) -> dict:
        out = {}
        for k in (("apr", "sos") if kind == "both" else (kind,)):
            trajs = AprWorkflow(engine, tok, max_context=window).rollout(
                _prompts(k, probs, window), SamplingParams(n=1, temperature=0.0, max_tokens=window, seed=0))
            out[f"heldout_accuracy/{k}"] = sum(countdown_reward(t.final_text, t.prompt.text) for t in trajs) / len(trajs)
        return out
    return probe


# ------------------------------------------------------------------------------------ evaluation

def _prompts(kind: str, problems, window: int):
    from rlpost.types import Prompt
    from rlpost.workflows.apr import countdown_prompt
    budget = budget_prefix(window) if kind == "sos" else None
    return [Prompt(i, countdown_prompt(t, n, token_budget=budget), columns={"target": t, "nums": n})
            for i, (t, n) in enumerate(problems)]


@torch.no_grad()
def evaluate(model_dir: str | Path, kind: str, problems, windows=WINDOWS, budgets=BUDGETS) -> dict:
    """Greedy accuracy per context window, cumulative accuracy per total-token budget, token counts."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.workflows.apr import AprWorkflow, countdown_reward
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    engine = HFEngine(model, tok)
    out: dict = {"windows": {}, "budgets": {}}
    last = None
    for w in sorted(windows):
        start = time.perf_counter()
        wf = AprWorkflow(engine, tok, max_depth=1, max_context=w)
        trajs = wf.rollout(_prompts(kind, problems, w), SamplingParams(n=1, temperature=0.0, max_tokens=w, seed=0))
        solved = [countdown_reward(t.final_text, t.prompt.text) for t in trajs]
        n = len(trajs)
        out["windows"][w] = {
            "accuracy": sum(solved) / n,
            "total_tokens": sum(t.info["total_tokens"] for t in trajs) / n,
            "sequential_tokens": sum(t.info["sequential_tokens"] for t in trajs) / n,
            "calls": sum(t.info["calls"] for t in trajs) / n,
            "children": sum(t.info["threads"] - 1 for t in trajs) / n,
            "error_rate": sum(bool(t.info["errors"]) for t in trajs) / n,
            "seconds": time.perf_counter() - start}
        last = (trajs, solved)
        log.info("apr eval %s W=%d: accuracy %.3f, total tokens %.0f", kind, w, out["windows"][w]["accuracy"],
                 out["windows"][w]["total_tokens"])
    trajs, solved = last
    for b in budgets:
        out["budgets"][b] = sum(s and t.info["total_tokens"] <= b for t, s in zip(trajs, solved)) / len(trajs)
    out["example"] = trajs[0].final_text
    return out


# ------------------------------------------------------------------------------------ RL

def rl(kind: str, sft_dir: str | Path, out_dir: str | Path, steps: int, seed: int = 0, overrides=()) -> Path:
    """RL with ``recipes/apr/tiny.yaml`` from ``sft_dir``; returns the final model folder."""
    window = max(WINDOWS)
    extra = [f"rollout.max_completion_length={window}", f"rollout.workflow.max_context={window}"]
    if kind == "sos":
        extra.append(f"data.task_kwargs.token_budget={budget_prefix(window)}")
    return train_rl(RECIPE, sft_dir, out_dir, steps, seed, extra + list(overrides))


# ------------------------------------------------------------------------------------ the study

def run(output_dir: str | Path = "results/apr", seeds=(0,), steps: int = 40, *, n_eval: int = 100,
        n_traces: int = 6000, sft_time_s: float | None = 1500, sft_stages: int = 2, sft_seed: int | None = 0,
        windows=WINDOWS, budgets=BUDGETS, methods=("sos", "apr"), rl_overrides=(), reuse: bool = True) -> dict:
    """The whole miniature; returns the results dict (also written to ``results.json``).

    One model is trained from scratch on APR and SoS+ traces together (:func:`pretrain` with ``kind="both"``,
    ``sft_stages`` stages of ``sft_time_s`` seconds, each on fresh traces; reused from ``runs/sft-s<seed>``
    when present), then each method is RL-trained from it once per seed in ``seeds``. With ``sft_seed``
    set (default 0: the SFT costs most of the CPU budget) every RL seed starts from that one model;
    ``sft_seed=None`` trains one model per seed.
    """
    from rlpost.tasks.apr_countdown import problems
    torch.set_num_threads(1)  # small models on shared CPUs: one thread is fastest (no OpenMP contention)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    test = problems("test", n_eval, seed=0, count=TASK["count"], max_num=TASK["max_num"],
                    target_range=TASK["target_range"], ops=TASK["ops"])
    results: dict = {"config": {"seeds": list(seeds), "steps": steps, "n_eval": len(test), "n_traces": n_traces,
                                "sft_time_s": sft_time_s, "sft_stages": sft_stages, "sft_seed": sft_seed,
                                "windows": list(windows), "budgets": list(budgets),
                                "task": {k: list(v) if isinstance(v, tuple) else v for k, v in TASK.items()},
                                "model": MODEL, "rl_overrides": list(rl_overrides)}, "runs": {}}
    t0, cpu0 = time.perf_counter(), time.process_time()
    before_cache: dict = {}
    for seed in seeds:
        s_seed = seed if sft_seed is None else sft_seed
        default_sft = (n_traces, sft_time_s, sft_stages) == (6000, 1500, 2)  # what the shipped checkpoint used
        sft_dir, info = warm_start(partial(pretrain, "both"), out / "runs", s_seed, reuse=reuse, stages=sft_stages,
                                   n_traces=n_traces, time_budget_s=sft_time_s,
                                   shipped="llama-apr_countdown" if default_sft else None)
        for kind in methods:
            key = f"{kind}-s{seed}"
            if (sft_dir, kind) not in before_cache:  # greedy: the same model gives the same numbers
                before_cache[sft_dir, kind] = evaluate(sft_dir, kind, test, windows, budgets)
            start = time.perf_counter()
            rl_dir = rl(kind, sft_dir, out / "runs" / f"{kind}-rl-s{seed}", steps, seed, rl_overrides)
            rl_seconds = time.perf_counter() - start
            after = evaluate(rl_dir, kind, test, windows, budgets)
            rl_metrics = [json.loads(line) for line in (rl_dir.parent / "metrics.jsonl").read_text().splitlines()]
            results["runs"][key] = {"kind": kind, "seed": seed, "sft_seed": s_seed, "sft": info["sft"],
                                    "data": info["data"][kind], "before": before_cache[sft_dir, kind], "after": after,
                                    "rl_seconds": rl_seconds,
                                    "rl_reward": [r.get("reward/mean") for r in rl_metrics if "reward/mean" in r],
                                    "rl_children": [r.get("apr/children") for r in rl_metrics if "apr/children" in r],
                                    "rl_trace": [{k: r[k] for k in ("step", "apr/children", "apr/calls") if k in r}
                                                 for r in rl_metrics]}
            (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    results["seconds"] = time.perf_counter() - t0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_table(results, out / "table.md")
    plot(results, out)
    return results


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _vals(results, kind, stage, *path) -> list:
    vals = []
    for r in results["runs"].values():
        if r["kind"] == kind:
            node = r[stage]
            for p in path:
                node = node.get(p, node.get(str(p))) if isinstance(node, dict) else None
            vals.append(node)
    return [v for v in vals if v is not None]


def _pct_cell(results, kind, stage, *path) -> str:
    """``mean`` in %, with ``(min-max)`` over seeds when they differ."""
    vals = [100 * v for v in _vals(results, kind, stage, *path)]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    return f"{mean:.1f}" if max(vals) - min(vals) < 1e-9 else f"{mean:.1f} ({min(vals):.0f}-{max(vals):.0f})"


def _agg(results, kind, stage, *path):
    return _mean(_vals(results, kind, stage, *path))


def write_table(results: dict, path: Path) -> None:
    from rlpost.studies.common import sft_budget_text
    cfg = results["config"]
    kinds = [k for k in METHODS if any(r["kind"] == k for r in results["runs"].values())]
    lines = [f"# APR miniature: APR vs SoS+ on held-out Countdown ({cfg['n_eval']} problems, greedy)", "",
             f"Task: {cfg['task']['count']} numbers in 1..{cfg['task']['max_num']}, targets "
             f"{cfg['task']['target_range'][0]}..{cfg['task']['target_range'][1]}, operations {cfg['task']['ops']} "
             f"(held-out problems: {cfg['n_eval']} prompts); tiny LLaMA "
             f"({cfg['model']['num_layers']} layers, d={cfg['model']['hidden_size']}) trained from scratch on "
             f"{cfg['n_traces']} APR and {cfg['n_traces']} SoS+ solver traces (one model; the root prompt's budget "
             f"prefix selects SoS+; {sft_budget_text(results)}), then "
             f"{cfg['steps']} RL steps per method "
             f"from it. RL seeds: {cfg['seeds']} (all from the SFT model of seed {cfg.get('sft_seed')}; cells show the mean "
             f"and, when seeds differ, the range). Tokens: phrase tokenizer (protocol phrases = 1 token). "
             f"SoS+ at window W is conditioned on the largest budget bin <= W.", "",
             "## Accuracy (%) by context window (tokens per call)", "",
             "| method | stage | " + " | ".join(f"W={w}" for w in cfg["windows"]) + " |",
             "|---|---|" + "---|" * len(cfg["windows"])]
    for kind in kinds:
        for stage, name in (("before", "SFT"), ("after", "+RL")):
            lines.append(f"| {METHODS[kind]} | {name} | " + " | ".join(
                _pct_cell(results, kind, stage, "windows", w, "accuracy") for w in cfg["windows"]) + " |")
    lines += ["", f"## Cumulative accuracy (%) by total-token budget: solved with at most B generated tokens in total "
              f"(from the W={max(cfg['windows'])} run; SoS+ conditioned on Token Budget {budget_prefix(max(cfg['windows']))})", "",
              "| method | stage | " + " | ".join(f"B={b}" for b in cfg["budgets"]) + " |",
              "|---|---|" + "---|" * len(cfg["budgets"])]
    for kind in kinds:
        for stage, name in (("before", "SFT"), ("after", "+RL")):
            lines.append(f"| {METHODS[kind]} | {name} | " + " | ".join(
                _pct_cell(results, kind, stage, "budgets", b) for b in cfg["budgets"]) + " |")
    w = max(cfg["windows"])
    lines += ["", f"## Compute at W={w} (means per problem)", "",
              "| method | stage | accuracy % | total tokens | sequential tokens | calls | child threads | error rate |",
              "|---|---|---|---|---|---|---|---|"]
    for kind in kinds:
        for stage, name in (("before", "SFT"), ("after", "+RL")):
            g = lambda k: _agg(results, kind, stage, "windows", w, k)  # noqa: E731
            lines.append(f"| {METHODS[kind]} | {name} | {100 * g('accuracy'):.1f} | {g('total_tokens'):.0f} | "
                         f"{g('sequential_tokens'):.0f} | {g('calls'):.2f} | {g('children'):.2f} | {g('error_rate'):.2f} |")
    lines += ["", "## Training", "", "| run | SFT steps | SFT loss | solver accuracy of its traces | RL reward (first -> last step) "
              "| child threads in RL (first -> last) | RL wall time |", "|---|---|---|---|---|---|---|"]
    for key, r in results["runs"].items():
        rew, kids = r["rl_reward"], r.get("rl_children") or []
        lines.append(f"| {key} | {r['sft']['sft_steps']} | {r['sft']['final_loss']:.3f} | "
                     f"{100 * r['data']['solver_accuracy']:.1f}% | "
                     + (f"{rew[0]:.3f} -> {rew[-1]:.3f} | " if rew else "- | ")
                     + (f"{kids[0]:.2f} -> {kids[-1]:.2f} | " if kids else "- | ")
                     + f"{r.get('rl_seconds', 0) / 60:.1f} min |")
    traced = {f"{METHODS[r['kind']]} RL s{r['seed']}": [r["rl_trace"]] for r in results["runs"].values()
              if r.get("rl_trace")}
    if traced:
        from rlpost.reproduce import Component
        comps = (Component("spawn() child threads", "apr/children", what="child threads per tree"),
                 Component("spawn()/join() calls", "apr/calls", "range", 1.0, what="engine calls per tree; 1 = no spawn"))
        apr_rows = [k for k in traced if k.startswith(METHODS["apr"])]
        section = activity_section({k: traced[k] for k in apr_rows} if apr_rows else traced, comps)
        lines[2:2] = section[2:4]
        lines += [""] + activity_section(traced, comps)
    lines += ["", "Paper (228M model, 4 numbers): at a 4k context APR 83.4 vs SoS+ 60.0 after RL; supervised APR 75.5 vs "
              "SoS+ 57.3 (greedy); RL raises APR's child threads 6.1 -> 8.2. See recipes/apr/README.md.", ""]
    if "seconds" in results:
        sft_cpu = _mean([r["sft"].get("cpu_seconds") for r in results["runs"].values()])
        lines.append(f"Wall time of this run of the study: {results['seconds'] / 60:.1f} min; CPU time of its process "
                     f"{results['cpu_seconds'] / 60:.1f} min (the machine's 2 cores were shared with other jobs). "
                     f"SFT (shipped for the default settings, else cached in runs/sft-s*/): {sft_cpu / 60:.1f} min CPU."
                     if sft_cpu == sft_cpu else f"Wall time of this run of the study: {results['seconds'] / 60:.1f} min.")
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cfg = results["config"]
    kinds = [k for k in METHODS if any(r["kind"] == k for r in results["runs"].values())]
    for fname, key, xs, xlabel in (("accuracy_vs_window.png", "windows", cfg["windows"], "context window (tokens per call)"),
                                   ("accuracy_vs_budget.png", "budgets", cfg["budgets"], "total-token budget")):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for kind in kinds:
            for stage, style in (("before", "--"), ("after", "-")):
                ys = [100 * _agg(results, kind, stage, key, x) if key == "budgets"
                      else 100 * _agg(results, kind, stage, key, x, "accuracy") for x in xs]
                ax.plot(xs, ys, style, marker="o", label=f"{METHODS[kind]} {'SFT' if stage == 'before' else '+RL'}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy (%)")
        ax.set_title("APR vs SoS+ (held-out Countdown, greedy)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / fname, dpi=100)
        plt.close(fig)
