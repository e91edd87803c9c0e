"""Recompute every number quoted in the miniature-results text of the recipe READMEs (and README.md's recipe
section) from the committed results JSON; print each number that nothing recomputed matches and exit 1.

    python scripts/check_readme_numbers.py            # from the repository root; run by tests/test_readme_numbers.py

What counts as recomputed, per results folder (``results/<recipe>/``):
  * every number of the table rebuilt from the folder's JSON by the code that writes it (rlpost.reproduce.write_table,
    rlpost.studies.<study>.write_table); the committed table.md must equal that rebuild;
  * the per-seed values in the JSON (final accuracies, per-run evaluations);
  * the claims a table does not print, computed here from the JSON (:data:`DERIVED`): Welch t and p between rows,
    how often a component sat at a bound, seed counts.
A README number matches a recomputed value when the value, rounded to the number's decimals (also as a percentage),
is the number. Numbers that are not results (the paper's values, settings, dates) are skipped only where
:data:`NOT_RESULTS` lists them, each with its reason. Fenced code blocks and `inline code` are not read.
"""
from __future__ import annotations

import json
import math
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (README, the heading that opens the checked section (it runs to the next heading of the same or a higher level),
#  the results folders its numbers may come from)
SECTIONS = [
    ("recipes/hapo/README.md", "## Miniature results", ["hapo"]),
    ("recipes/adora/README.md", "## Miniature results", ["adora"]),
    ("recipes/oblr_po/README.md", "## Miniature (CPU)", ["oblr_po"]),
    ("recipes/oblr_po/README.md", "## Miniature results", ["oblr_po"]),
    ("recipes/gain_rl/README.md", "## Miniature results", ["gain_rl"]),
    ("recipes/constrained_rlhf/README.md", "## Miniature over-optimisation study",
     ["constrained_rlhf", "constrained_rlhf/paper_steps"]),
    ("recipes/implicit_sft/README.md", "## Miniature study", ["implicit_sft"]),
    ("recipes/apr/README.md", "### Results of the miniature", ["apr"]),
    ("recipes/a2fm/README.md", "### Results of the miniature", ["a2fm"]),
    ("README.md", "## Recipes and miniature reproductions",
     ["hapo", "adora", "oblr_po", "gain_rl", "constrained_rlhf", "implicit_sft", "apr", "a2fm"]),
]

# numbers in a checked section that are not results: (README, number as written, why)
NOT_RESULTS = [
    ("recipes/hapo/README.md", "2", "algo.num_iterations 2 (a setting)"),
    ("recipes/oblr_po/README.md", "32", "micro-batch size (a setting)"),
    ("recipes/oblr_po/README.md", "4", "micro-batches per optimizer step (a setting)"),
    ("recipes/oblr_po/README.md", "1", "the multiplier's upper bound (the method's definition)"),
    ("recipes/gain_rl/README.md", "200", "sigma of the tiny config (a setting)"),
    ("recipes/gain_rl/README.md", "2000", "training rows of the tiny task (a setting)"),
    ("recipes/gain_rl/README.md", "3.3", "the paper's GSM8K speed-up (paper)"),
    ("recipes/gain_rl/README.md", "0.5", "the gamma of the ablation row (a setting)"),
    ("recipes/constrained_rlhf/README.md", "0.2", "initial KL coefficient (a setting)"),
    ("recipes/constrained_rlhf/README.md", "1e-4", "the policy lr (a setting)"),
    ("recipes/constrained_rlhf/README.md", "15", "prompts per step of the paper-steps run (a setting)"),
    ("recipes/constrained_rlhf/README.md", "0.107", "an earlier k1-KL-loss run, quoted as history (no JSON)"),
    ("recipes/constrained_rlhf/README.md", "0.1", "the paper's multiplier lr (paper)"),
    ("recipes/constrained_rlhf/README.md", "20", "the paper's mini-batches per epoch (paper; a setting here)"),
    ("recipes/constrained_rlhf/README.md", "100", "the paper's steps per rollout (paper)"),
    ("recipes/constrained_rlhf/README.md", "5", "epochs per rollout (paper; a setting here)"),
    ("recipes/implicit_sft/README.md", "1e-3", "base lr (a setting)"),
    ("recipes/implicit_sft/README.md", "3e-5", "DPO lr (a setting)"),
    ("recipes/implicit_sft/README.md", "9.4", "wall time of the committed run, as reported by the run (log)"),
    ("recipes/implicit_sft/README.md", "−", "a typographic minus"),
    ("recipes/apr/README.md", "83.4", "the paper's APR accuracy at 4k (paper)"),
    ("recipes/apr/README.md", "60.0", "the paper's SoS+ accuracy at 4k (paper)"),
    ("recipes/apr/README.md", "6.1", "the paper's children per tree before RL (paper)"),
    ("recipes/apr/README.md", "8.2", "the paper's children per tree after RL (paper)"),
    ("recipes/apr/README.md", "4", "4-number Countdown (the paper's task)"),
    ("recipes/a2fm/README.md", "0.75", "1 − (1/2)^2: the cost factor at p = 1/2, α = 2 (the formula)"),
    ("recipes/a2fm/README.md", "84.9", "the paper's NITR before RL (paper)"),
    ("recipes/a2fm/README.md", "77.1", "the paper's NITR after RL (paper)"),
    ("recipes/a2fm/README.md", "46.9", "the paper's accuracy before RL (paper)"),
    ("recipes/a2fm/README.md", "53.8", "the paper's accuracy after RL (paper)"),
    ("README.md", "0.266", "a check_table_cell rerun's output, quoted as printed (not committed)"),
    ("README.md", "0.328", "a check_table_cell rerun's output, quoted as printed (not committed)"),
    ("README.md", "0.315", "a check_table_cell rerun's output, quoted as printed (not committed)"),
]

NUMBER = re.compile(r"(?<![\w.\-−])[−-]?\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?(?![\w])")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}\b")


# ------------------------------------------------------------------------------------------------ README side

def section(text: str, heading: str) -> list[tuple[int, str]]:
    """(line number, line) of the section that ``heading`` opens, without fenced code blocks."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(heading)]
    if not starts:
        raise KeyError(f"heading {heading!r} not found")
    level = len(heading) - len(heading.lstrip("#"))
    out, fenced = [], False
    for i in range(starts[0], len(lines)):
        line = lines[i]
        if i > starts[0] and re.match(r"#{1,%d} " % level, line) and not fenced:
            break
        if line.startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i + 1, line))
    return out


def quoted_numbers(line: str) -> list[str]:
    """Numbers in one README line, outside `code` spans and dates, as written (thousands commas dropped)."""
    line = DATE.sub(" ", re.sub(r"`[^`]*`", " ", line))
    return [m.group(0).replace(",", "") for m in NUMBER.finditer(line)]


# ------------------------------------------------------------------------------------------------ results side

def _table_numbers(text: str) -> set[str]:
    return {n for line in text.splitlines() for n in quoted_numbers(line)}


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Welch's t = (mean a - mean b) / sqrt(s_a^2/n_a + s_b^2/n_b) (sample variances) and its two-sided p, with
    Welch-Satterthwaite degrees of freedom; p from the Student t density integrated numerically."""
    def mv(x):
        m = sum(x) / len(x)
        return m, sum((v - m) ** 2 for v in x) / (len(x) - 1)
    (ma, va), (mb, vb) = mv(a), mv(b)
    se2 = va / len(a) + vb / len(b)
    if se2 == 0:
        return float("inf") if ma != mb else 0.0, 0.0 if ma != mb else 1.0
    t = (ma - mb) / math.sqrt(se2)
    df = se2 ** 2 / ((va / len(a)) ** 2 / (len(a) - 1) + (vb / len(b)) ** 2 / (len(b) - 1))
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    n = 4000
    h = abs(t) / n
    area = sum(c * (1 + ((i + 0.5) * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n)) * h
    return t, max(0.0, 1.0 - 2.0 * area)


def _pairwise(groups: dict[str, list[float]]) -> list[float]:
    out = []
    for i, (_, a) in enumerate(groups.items()):
        for _, b in list(groups.items())[i + 1:]:
            if len(a) > 1 and len(b) > 1:
                t, p = _welch(a, b)
                out += [abs(t), p, abs(sum(a) / len(a) - sum(b) / len(b))]
    return out


def _reproduce_values(folder: Path, tmp: Path) -> tuple[set[str], list[float], str]:
    """Table numbers, derived values and the rebuilt table of a ``rlpost reproduce`` folder (runs.json)."""
    from rlpost.reproduce import Budget, load_runs, write_table
    data, runs = load_runs(folder / "runs.json")
    out = tmp / f"{folder.name}.md"
    write_table(out, folder.name, runs, Budget(**data["budget"]), data["seeds"], None, data["provenance"])
    text = out.read_text()
    values: list[float] = [r.final for r in runs]
    for task in dict.fromkeys(r.task for r in runs):
        finals = {m: [r.final for r in runs if r.task == task and r.method == m]
                  for m in dict.fromkeys(r.method for r in runs)}
        values += _pairwise(finals)
        for m in finals:   # how often each traced metric sat at its minimum / maximum, and its step count
            traces: dict[str, list[float]] = {}
            for r in runs:
                if r.task == task and r.method == m:
                    for k, v in r.trace.items():
                        traces.setdefault(k, []).extend(v)
            for k, v in traces.items():
                if v:
                    values += [sum(x <= min(v) + 1e-9 for x in v), sum(x >= max(v) - 1e-9 for x in v), len(v)]
    for m in dict.fromkeys(r.method for r in runs):   # all tasks together (e.g. "on 5 of 240 steps")
        traces = {}
        for r in runs:
            if r.method == m:
                for k, v in r.trace.items():
                    traces.setdefault(k, []).extend(v)
        for k, v in traces.items():
            if v:
                values += [sum(x <= min(v) + 1e-9 for x in v), len(v)]
    values += _gain_rl_values(runs) if folder.name == "gain_rl" else []
    values += [len(data["seeds"]), data["budget"]["steps"]]
    return _table_numbers(text), values, text


def _gain_rl_values(runs) -> list[float]:
    """Mean sampled rank of the Gaussian over 2000 ranks (sigma 200, the tiny config) at mu = 0 and at each task's
    largest mu: how far the curriculum moved the draws."""
    def mean_rank(mu, sigma=200.0, n=2000):
        w = [math.exp(-0.5 * ((k - mu) / sigma) ** 2) for k in range(n)]
        return sum(k * x for k, x in enumerate(w)) / sum(w)
    out = [mean_rank(0.0)]
    for task in dict.fromkeys(r.task for r in runs):
        mus = [v for r in runs if r.task == task and r.method == "GAIN-RL" for v in r.trace.get("gain_rl/mu", [])]
        if mus:
            out += [mean_rank(max(mus)), max(mus)]
    return out


def _study_values(folder: Path, study: str, tmp: Path) -> tuple[set[str], list[float], str]:
    """Table numbers, per-seed values and the rebuilt table of a study folder (results.json); ``study``: the
    rlpost.studies module that wrote it."""
    from rlpost.tracking import read_metrics
    data = json.loads((folder / "results.json").read_text())
    out = tmp / f"{folder.name}.md"
    values: list[float] = []
    if study == "constrained_rlhf":
        from rlpost.studies import constrained_rlhf as st
        info = data["info"]
        variants = [v for v in st.VARIANTS if (folder / "metrics" / f"{v}_s{info['seeds'][0]}.jsonl").exists()]
        results = {v: [read_metrics(folder / "metrics" / f"{v}_s{s}.jsonl") for s in info["seeds"]] for v in variants}
        summary = st.summarise(results)
        st.write_table(out, summary, info, results)
        values += [p["final"] for s in summary.values() for p in s["per_seed"]]
        values += [info["thresholds"][k] for k in info["thresholds"]] + [info["seconds"] / 60]
    elif study == "implicit_sft":
        from rlpost.studies import implicit_sft as st
        traces: dict = {}
        for r in sorted(data["rows"], key=lambda r: r["seed"]):
            traces.setdefault(f"{r['loss']} ×{r['lr_scale']:g}", []).append(read_metrics(
                folder / "metrics" / f"sft_{r['loss']}_x{r['lr_scale']:g}_s{r['seed']}.jsonl"))
        groups = st.aggregate(data["rows"])
        st.write_table(out, groups, data["info"], traces)
        values += [r[k] for r in data["rows"] for k in ("after_sft", "after_dpo") if r[k] is not None]
        values += [r["after_dpo"] - r["after_sft"] for r in data["rows"]]
    elif study in ("apr", "a2fm"):
        import importlib
        st = importlib.import_module(f"rlpost.studies.{study}")
        st.write_table(json.loads(json.dumps(data)), out)
        key = "windows" if study == "apr" else None
        for run in data["runs"].values():
            after = run.get("after", {})
            for w in (after.get(key, {}) if key else {}).values():
                values.append(w["accuracy"])
        if study == "apr":   # APR vs SoS+ after RL at the largest window: Welch over the RL seeds
            by_kind = {k: [r["after"]["windows"]["768"]["accuracy"] * 100 for r in data["runs"].values()
                           if r["kind"] == k] for k in ("apr", "sos")}
            values += _pairwise(by_kind)
            acc = sum(by_kind["apr"]) / len(by_kind["apr"]) / 100
            values.append(100 * math.sqrt(acc * (1 - acc) / data["config"].get("n_eval", 100)))   # binomial SE
        values += [data.get("seconds", 0) / 60]
    else:
        raise KeyError(f"no recomputation for {folder}")
    text = out.read_text()
    return _table_numbers(text), values, text


def recomputed(root: Path, name: str, tmp: Path) -> tuple[set[str], list[float], str]:
    """``name``: a results folder, ``<recipe>`` or ``<recipe>/<variant>`` (e.g. constrained_rlhf/paper_steps)."""
    folder = root / "results" / name
    if (folder / "runs.json").exists():
        return _reproduce_values(folder, tmp)
    return _study_values(folder, name.split("/")[0], tmp)


def matches(token: str, strings: set[str], values: list[float]) -> bool:
    """``token`` is one of the rebuilt tables' numbers, or a value rounded to the token's decimals (also x 100)."""
    t = token.replace("−", "-")
    if t in strings or t.lstrip("-") in strings:
        return True
    if "e" in t and t.split("e")[0] in strings:     # "472e-6" quotes a table column in units of 1e-6
        return True
    try:
        x = float(t)
    except ValueError:
        return False
    decimals = len(t.split(".")[1]) if "." in t and "e" not in t else 0
    for v in values:
        for scaled in (v, 100 * v):
            if isinstance(scaled, (int, float)) and math.isfinite(scaled) and \
                    (f"{abs(scaled):.{decimals}f}" == f"{abs(x):.{decimals}f}"):
                return True
    return False


# ------------------------------------------------------------------------------------------------ the check

def check(root: Path = ROOT) -> list[str]:
    """Problems found: README numbers that nothing recomputed matches, and committed tables that differ from the
    tables rebuilt from their JSON. Empty when every number recomputes."""
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        cache: dict[str, tuple[set[str], list[float], str]] = {}
        for name in dict.fromkeys(n for _, _, names in SECTIONS for n in names):
            (Path(tmp) / name.replace("/", "_")).mkdir()
            cache[name] = recomputed(root, name, Path(tmp) / name.replace("/", "_"))
            committed = (root / "results" / name / "table.md").read_text()
            if committed != cache[name][2]:
                problems.append(f"results/{name}/table.md differs from the table rebuilt from its JSON")
        for readme, heading, names in SECTIONS:
            allowed = {n for f, n, _ in NOT_RESULTS if f == readme}
            strings = set().union(*(cache[n][0] for n in names))
            values = [v for n in names for v in cache[n][1]] + [float(x.replace("−", "-")) for x in strings]
            for lineno, line in section((root / readme).read_text(), heading):
                for token in quoted_numbers(line):
                    if token in allowed or matches(token, strings, values):
                        continue
                    problems.append(f"{readme}:{lineno}: {token} is not recomputed from results/"
                                    f"{{{','.join(names)}}} ({line.strip()[:100]}...)")
    return problems


def main() -> int:
    sys.path.insert(0, str(ROOT))
    problems = check(ROOT)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s)" if problems else "every README number recomputes from the committed results")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
