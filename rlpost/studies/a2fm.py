"""A²FM miniature (Chen et al. 2025): routing and accuracy per mode before and after APO.

    rlpost reproduce a2fm          # or: python -c "from rlpost.studies import a2fm; a2fm.run('results/a2fm')"

1. **Route-then-align warm start**: a tiny LLaMA trained from scratch on synthetic teacher traces of every
   mode (:mod:`.a2fm_data`) for the :mod:`rlpost.tasks.a2fm_mini` questions (no tool needed / reasoning /
   calculator-or-Python / document search). The traces' routes are deliberately over-cautious (costly
   modes on easy questions), like A²FM's SFT model.
2. **APO**: ``rlpost train recipes/a2fm/tiny.yaml`` (``rollout.workflow: a2fm``: rho forced rollouts per mode
   with the route prefix injected and loss-masked, gamma adaptive ones, real tools with masked outputs;
   reward r_acc · r_fmt · (1 − p^α) for adaptive non-instant rollouts; one mixed group per query,
   population-std GRPO).
3. **Evaluation** on held-out questions (4 samples each at temperature 1: a route is a distribution), before
   and after APO: the adaptive policy (its routes per question kind, accuracy, tokens and token-priced cost
   per correct answer) and each forced mode.

Outputs: ``table.md``, ``results.json``, ``routing.png`` and the runs under ``runs/``.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from rlpost.studies.a2fm_data import SFT_ROUTING, SHORT_JUSTIFICATIONS, sft_pairs
from rlpost.studies.common import activity_section, save_model, sft, train_rl, warm_start
from rlpost.studies.phrase_tokenizer import a2fm_tokenizer

log = logging.getLogger("rlpost")

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "a2fm" / "tiny.yaml"
MODEL = {"arch": "llama", "hidden_size": 128, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
         "intermediate_size": 512, "max_position_embeddings": 1024}
KINDS = ("instant", "reasoning", "calc", "search")
MODES = ("instant", "reasoning", "agentic")
PRICES = {"input": 1.0, "output": 4.0}   # token prices per million (cost = in * 1 + out * 4, tools free)


def pretrain(out_dir: str | Path, *, n_examples: int = 6000, seed: int = 0, time_budget_s: float | None = 1200,
             epochs: float = 20.0, lr: float = 3e-3, tokens_per_batch: int = 3000, model: dict | None = None,
             eval_every: int = 400, init_from: str | Path | None = None) -> Path:
    """Warm-start a tiny model from scratch on route-then-align traces; saved to ``out_dir``.
    ``init_from``: continue training a model this function saved (counters are added up)."""
    from rlpost.studies.apr import _add_stages, _init
    torch.manual_seed(seed)
    tok = a2fm_tokenizer()
    pairs, stats = sft_pairs(tok, n_examples, seed=seed)
    net, tok, prev = _init(init_from, tok, seed, {**MODEL, **(model or {})})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cpu = time.process_time()
    result = sft(net, tok, pairs, epochs=epochs, tokens_per_batch=tokens_per_batch, lr=lr, seed=seed,
                 time_budget_s=time_budget_s, metrics_path=out_dir / "sft_metrics.jsonl",
                 callback=_heldout_probe(net, tok), callback_every=eval_every)
    result["cpu_seconds"] = time.process_time() - cpu
    result = _add_stages(prev, result)
    return save_model(net, tok, out_dir, {"data": stats, "sft": result, "routing": SFT_ROUTING})


def _heldout_probe(model, tok, n: int = 32):
    """callback(step) -> greedy held-out accuracy of the adaptive policy and of forced agentic rollouts."""
    from rlpost.data import build_prompts
    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.tasks.a2fm_mini import make_split
    from rlpost.workflows.a2fm import A2FMWorkflow, score_apo_batch
    rows = make_split("test", n, seed=1)
    prompts = build_prompts(rows, tok, source="a2fm_mini test")
    wf = A2FMWorkflow(HFEngine(model, tok), tok, rho=0, max_turns=2, max_context=640, tool_workers=2,
                      justifications=SHORT_JUSTIFICATIONS)

    def probe(step: int) -> dict:
        out = {}
        for mode in (None, "agentic"):
            trajs = wf.run([(p, mode) for p in prompts], SamplingParams(n=1, temperature=0.0, max_tokens=96, seed=0))
            score_apo_batch(trajs)
            out[f"heldout_accuracy/{mode or 'adaptive'}"] = sum(t.reward for t in trajs) / len(trajs)
        return out
    return probe


def _summary(trajs, kinds) -> dict:
    """Accuracy, routes, tokens and cost per correct for a list of scored trajectories."""
    n = len(trajs)
    correct = [t.reward_components["acc"] * t.reward_components["format"] for t in trajs]
    out_tok = sum(t.info["output_tokens"] for t in trajs)
    cost = sum(t.info["input_tokens"] * PRICES["input"] + t.info["output_tokens"] * PRICES["output"] for t in trajs) / 1e6
    s = {"n": n, "accuracy": sum(correct) / n, "answer_accuracy": sum(t.reward_components["acc"] for t in trajs) / n,
         "format_ok": sum(t.reward_components["format"] for t in trajs) / n,
         "output_tokens": out_tok / n, "tool_calls": sum(t.info["tool_calls"] for t in trajs) / n,
         "tokens_per_correct": out_tok / sum(correct) if sum(correct) else None,
         "cost_per_correct": cost / sum(correct) if sum(correct) else None,
         "routes": {m: sum(t.info["mode"] == m for t in trajs) / n for m in MODES},
         "by_kind": {}}
    s["routes"]["invalid"] = sum(t.info["mode"] is None for t in trajs) / n
    s["non_instant_rate"] = s["routes"]["reasoning"] + s["routes"]["agentic"]
    for kind in KINDS:
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if idx:
            s["by_kind"][kind] = {"accuracy": sum(correct[i] for i in idx) / len(idx),
                                  "routes": {m: sum(trajs[i].info["mode"] == m for i in idx) / len(idx) for m in MODES}}
    return s


@torch.no_grad()
def evaluate(model_dir: str | Path, rows: list[dict], samples: int = 4, temperature: float = 1.0,
             max_tokens: int = 96, max_context: int = 640, seed: int = 0) -> dict:
    """The adaptive policy and each forced mode on ``rows`` (a2fm_mini test rows), ``samples`` rollouts per
    question at ``temperature`` (routing is a distribution: greedy decoding would show only its mode)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlpost.data import build_prompts
    from rlpost.engines.base import SamplingParams
    from rlpost.engines.hf import HFEngine
    from rlpost.workflows.a2fm import A2FMWorkflow, score_apo_batch
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompts = build_prompts(rows, tok, source="a2fm_mini test")
    wf = A2FMWorkflow(HFEngine(model, tok), tok, rho=0, max_turns=2, max_context=max_context, tool_workers=2,
                      justifications=SHORT_JUSTIFICATIONS)
    params = SamplingParams(n=1, temperature=temperature, max_tokens=max_tokens, seed=seed)
    kinds = [r["kind"] for r in rows for _ in range(samples)]
    out = {}
    for mode in (None,) + MODES:
        start = time.perf_counter()
        trajs = wf.run([(p, mode) for p in prompts for _ in range(samples)], params)
        score_apo_batch(trajs)
        out[mode or "adaptive"] = {**_summary(trajs, kinds), "seconds": time.perf_counter() - start}
        log.info("a2fm eval %s: accuracy %.3f", mode or "adaptive", out[mode or "adaptive"]["accuracy"])
    out["example"] = trajs[0].info["text"]
    return out


def rl(sft_dir: str | Path, out_dir: str | Path, steps: int, seed: int = 0, overrides=()) -> Path:
    """RL with ``recipes/a2fm/tiny.yaml`` from ``sft_dir``; returns the final model folder."""
    return train_rl(RECIPE, sft_dir, out_dir, steps, seed, overrides)


def run(output_dir: str | Path = "results/a2fm", seeds=(0,), steps: int = 30, *, n_eval: int = 96,
        n_sft: int = 6000, sft_time_s: float | None = 1200, sft_stages: int = 2, eval_samples: int = 4,
        sft_seed: int | None = 0, rl_overrides=(), reuse: bool = True) -> dict:
    """The whole miniature (see the module docstring). With ``sft_seed`` set (default 0) every APO seed in
    ``seeds`` starts from that one warm-start model; ``sft_seed=None`` trains one per seed."""
    from rlpost.tasks.a2fm_mini import make_split
    torch.set_num_threads(1)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = make_split("test", n_eval, seed=0)
    results: dict = {"config": {"seeds": list(seeds), "steps": steps, "n_eval": n_eval, "n_sft": n_sft,
                                "eval_samples": eval_samples, "sft_stages": sft_stages, "sft_seed": sft_seed,
                                "sft_time_s": sft_time_s, "model": MODEL, "prices_per_mtok": PRICES,
                                "sft_routing": SFT_ROUTING}, "runs": {}}
    t0, cpu0 = time.perf_counter(), time.process_time()
    before_cache: dict = {}
    for seed in seeds:
        s_seed = seed if sft_seed is None else sft_seed
        default_sft = (n_sft, sft_time_s, sft_stages) == (6000, 1200, 2)    # what the shipped checkpoint used
        sft_dir, info = warm_start(pretrain, out / "runs", s_seed, reuse=reuse, stages=sft_stages, n_examples=n_sft,
                                   time_budget_s=sft_time_s, shipped="llama-a2fm_mini" if default_sft else None)
        if sft_dir not in before_cache:
            before_cache[sft_dir] = evaluate(sft_dir, rows, samples=eval_samples, seed=0)
        before = before_cache[sft_dir]
        rl_dir = rl(sft_dir, out / "runs" / f"apo-s{seed}", steps, seed, rl_overrides)
        after = evaluate(rl_dir, rows, samples=eval_samples, seed=0)
        metrics = [json.loads(line) for line in (rl_dir.parent / "metrics.jsonl").read_text().splitlines()]
        results["runs"][f"s{seed}"] = {"seed": seed, "sft_seed": s_seed, "sft": info["sft"], "before": before,
                                       "after": after,
                                       "rl_curve": [{k: r.get(k) for k in ("step", "reward/mean", "a2fm/non_instant_rate",
                                                                            "a2fm/acc/adaptive", *ACTIVITY_METRICS)}
                                                    for r in metrics]}
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    results["seconds"] = time.perf_counter() - t0
    results["cpu_seconds"] = time.process_time() - cpu0
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    write_table(results, out / "table.md")
    plot(results, out / "routing.png")
    return results


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _get(results, stage, *path):
    vals = []
    for r in results["runs"].values():
        node = r[stage]
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        vals.append(node)
    return _mean(vals)


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f}"


def _pct_range(results, stage, *path) -> str:
    """Mean in %, with ``(min-max)`` over seeds when they differ."""
    vals = []
    for r in results["runs"].values():
        node = r[stage]
        for p in path:
            node = node.get(p) if isinstance(node, dict) else None
        if node is not None:
            vals.append(100 * node)
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    return f"{mean:.1f}" if max(vals) - min(vals) < 1e-9 else f"{mean:.1f} ({min(vals):.1f}-{max(vals):.1f})"


def _window_mean(curve, key, first: bool, k: int = 10):
    vals = [c[key] for c in curve if c.get(key) is not None]
    vals = vals[:k] if first else vals[-k:]
    return sum(vals) / len(vals) if vals else None


def _num(v, fmt="{:.0f}"):
    return "-" if v is None else fmt.format(v)


ACTIVITY_METRICS = ("a2fm/share/instant", "a2fm/share/reasoning", "a2fm/share/agentic", "a2fm/tool_calls",
                    "a2fm/apo_cost_factor", "a2fm/apo_cost_factor_partial")


def activity_components():
    from rlpost.reproduce import Component
    return (Component("instant route", "a2fm/share/instant", what="share of rollouts"),
            Component("reasoning route", "a2fm/share/reasoning", what="share of rollouts"),
            Component("agentic route", "a2fm/share/agentic", what="share of rollouts"),
            Component("tools", "a2fm/tool_calls", what="tool calls per rollout"),
            Component("APO cost factor", "a2fm/apo_cost_factor", "range", 1.0,
                      what="mean 1 − p^α over adaptive reasoning/agentic rollouts; 1 = no cost"),
            Component("APO cost exponent α", "a2fm/apo_cost_factor_partial",
                      what="share of those rollouts with 0 < 1 − p^α < 1, the only case where α changes the reward"))


def write_table(results: dict, path: Path) -> None:
    from rlpost.studies.common import sft_budget_text
    cfg = results["config"]
    lines = [f"# A²FM miniature: routing and accuracy before and after APO ({cfg['n_eval']} held-out questions "
             f"x {cfg.get('eval_samples', 4)} samples at temperature 1)", "",
             f"Tiny LLaMA (d={cfg['model']['hidden_size']}, {cfg['model']['num_layers']} layers) warm-started from scratch "
             f"on {cfg['n_sft']} route-then-align traces per stage ({sft_budget_text(results)}), then {cfg['steps']} "
             f"APO steps per seed from it. APO seeds: {cfg['seeds']} (cells: mean, and the range over seeds where shown). "
             "Question kinds (equal shares): instant = one single-digit sum, "
             "reasoning = four-term sum, calc = 3-digit x 2-digit product, search = code of a fictional town "
             "(held-out towns: only the corpus knows). Cost: token-priced, input 1 and output 4 per million tokens.", "",
             "## Adaptive policy", "",
             "| stage | accuracy % | non-instant routes % | instant % | reasoning % | agentic % | invalid % | "
             "tokens / correct | cost / correct (1e-6) | tool calls |", "|---|---|---|---|---|---|---|---|---|---|"]
    for stage, name in (("before", "SFT"), ("after", "APO")):
        g = lambda *p: _get(results, stage, "adaptive", *p)  # noqa: E731
        cost = g("cost_per_correct")
        lines.append(f"| {name} | {_pct_range(results, stage, 'adaptive', 'accuracy')} | "
                     f"{_pct_range(results, stage, 'adaptive', 'non_instant_rate')} | {_pct(g('routes', 'instant'))} | "
                     f"{_pct(g('routes', 'reasoning'))} | {_pct(g('routes', 'agentic'))} | {_pct(g('routes', 'invalid'))} | "
                     f"{_num(g('tokens_per_correct'))} | {_num(None if cost is None else cost * 1e6, '{:.0f}')} | "
                     f"{_num(g('tool_calls'), '{:.2f}')} |")
    lines += ["", "## Routes of the adaptive policy per question kind (% instant / reasoning / agentic) and its accuracy", "",
              "| question kind | SFT routes | SFT acc % | APO routes | APO acc % |", "|---|---|---|---|---|"]
    for kind in KINDS:
        cells = []
        for stage in ("before", "after"):
            routes = "/".join(_pct(_get(results, stage, "adaptive", "by_kind", kind, "routes", m)) for m in MODES)
            cells += [routes, _pct(_get(results, stage, "adaptive", "by_kind", kind, "accuracy"))]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines += ["", "## Accuracy % per mode (forced: route prefix injected), by question kind", "",
              "| mode | stage | all | " + " | ".join(KINDS) + " | tokens / correct |", "|---|---|---|" + "---|" * len(KINDS) + "---|"]
    for mode in MODES + ("adaptive",):
        for stage, name in (("before", "SFT"), ("after", "APO")):
            lines.append(f"| {mode} | {name} | {_pct(_get(results, stage, mode, 'accuracy'))} | " + " | ".join(
                _pct(_get(results, stage, mode, "by_kind", k, "accuracy")) for k in KINDS)
                + f" | {_num(_get(results, stage, mode, 'tokens_per_correct'))} |")
    lines += ["", "## APO training (means over the first and the last 10 steps; 24 adaptive rollouts per step)", "",
              "| run | SFT steps | SFT loss | reward first -> last | NITR of adaptive rollouts (train) first -> last |",
              "|---|---|---|---|---|"]
    for key, r in results["runs"].items():
        curve = [c for c in r["rl_curve"] if c.get("reward/mean") is not None]
        rew = [_window_mean(curve, "reward/mean", f) for f in (True, False)]
        nitr = [_window_mean(curve, "a2fm/non_instant_rate", f) for f in (True, False)]
        lines.append(f"| {key} | {r['sft']['sft_steps']} | {r['sft']['final_loss']:.3f} | "
                     f"{rew[0]:.3f} -> {rew[1]:.3f} | "
                     + (f"{100 * nitr[0]:.0f} -> {100 * nitr[1]:.0f} |" if None not in nitr else "- |"))
    traced = {f"APO {key}": [r["rl_curve"]] for key, r in results["runs"].items()
              if any(c.get(m) is not None for c in r["rl_curve"] for m in ACTIVITY_METRICS)}
    if traced:
        section = activity_section(traced, activity_components())
        lines[2:2] = section[2:4]
        lines += [""] + section
    lines += ["", "Paper (32B; Fig. 3 right, all benchmarks but AIME): A²FM-SFT NITR 84.9 %, accuracy 46.9 % -> A²FM-RL NITR "
              "77.1 %, accuracy 53.8 %; cost per correct answer −45.2 % vs reasoning-only and −33.5 % vs agentic-only. "
              "See recipes/a2fm/README.md.", ""]
    if "seconds" in results:
        sft_cpu = _mean([r["sft"].get("cpu_seconds") for r in results["runs"].values()])
        lines.append(f"Wall time of this run of the study: {results['seconds'] / 60:.1f} min; CPU time of its process "
                     f"{results.get('cpu_seconds', 0) / 60:.1f} min (2 cores shared with other jobs)."
                     + (f" The warm start (shipped for the default settings, else cached in runs/sft-s*/) took {sft_cpu / 60:.1f} min CPU." if sft_cpu else ""))
    path.write_text("\n".join(lines) + "\n")


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    labels, bottoms = [], []
    xs = []
    for k, kind in enumerate(KINDS):
        for j, (stage, name) in enumerate((("before", "SFT"), ("after", "APO"))):
            xs.append(k * 3 + j)
            labels.append(f"{kind}\n{name}")
    colors = {"instant": "tab:green", "reasoning": "tab:orange", "agentic": "tab:blue"}
    bottoms = [0.0] * len(xs)
    for mode in MODES:
        vals = []
        for kind in KINDS:
            for stage in ("before", "after"):
                vals.append(100 * (_get(results, stage, "adaptive", "by_kind", kind, "routes", mode) or 0.0))
        ax1.bar(xs, vals, bottom=bottoms, color=colors[mode], label=mode)
        bottoms = [b + v for b, v in zip(bottoms, vals)]
    ax1.set_xticks(xs)
    ax1.set_xticklabels(labels, fontsize=7)
    ax1.set_ylabel("adaptive routes (%)")
    ax1.set_title("Routing per question kind, before/after APO")
    ax1.legend(fontsize=8)
    for stage, marker in (("before", "o"), ("after", "s")):
        for mode, color in (("adaptive", "black"), *colors.items()):
            acc = _get(results, stage, mode, "accuracy")
            nitr = {"instant": 0.0, "reasoning": 1.0, "agentic": 1.0}.get(mode, _get(results, stage, "adaptive", "non_instant_rate"))
            if acc is not None:
                ax2.scatter([100 * nitr], [100 * acc], marker=marker, color=color,
                            label=f"{mode} ({'SFT' if stage == 'before' else 'APO'})")
    ax2.set_xlabel("non-instant routes (%)")
    ax2.set_ylabel("accuracy (%)")
    ax2.set_title("Accuracy vs non-instant rate (forced modes at 0/100)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
