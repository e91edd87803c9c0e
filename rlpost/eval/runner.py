"""Run a benchmark through any engine, record every sample, compute metrics, write tables.

Files for one (checkpoint, benchmark) run with output stem ``OUT``:

    OUT.samples.jsonl   line 1: {"_meta": settings}; then one line per sample, written (and flushed) as
                        each batch of problems finishes:
                        {"row", "sample", "prompt", "gold", "completion", "extracted", "correct",
                         "finish_reason", "completion_tokens"}
    OUT.json            the summary: settings, metrics, bootstrap CIs, counts

Resume: with ``resume=True`` an existing samples file is read back, problems that have all their n
samples are kept and skipped, and the rest (a half-written batch, a truncated last line) are generated
again; the file is first rewritten with the complete problems only, so no problem is ever recorded twice.
The settings in the ``_meta`` line must match the new run's, or :func:`evaluate` refuses to mix them.

Seeds: sample j of problem i is drawn with its own seed, ``stable_seed(stable_seed(seed, benchmark, i), j)``
(``GenRequest.seed``; the hf, vllm and vllm_server engines honour it), so which problems share a batch
(``batch_size``, a resume) does not choose the random numbers. What can still differ is the model's logits in the
last bits, when prompts of different lengths are padded differently in another batch, and then a draw that lands
on a boundary can flip (rates measured by scripts/eval_batch_size_check.py: docs/eval.md "Seeds and batch size").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from rlpost.data import DataError
from rlpost.engines.base import GenRequest, SamplingParams, stable_seed
from rlpost.eval.benchmarks import BenchmarkSpec, gold_answer, load_rows, question, render_prompt, resolve_benchmark
from rlpost.eval.check import CHECKERS, normalize_answer
from rlpost.eval.extract import EXTRACTORS
from rlpost.eval.metrics import summarize

# settings that must agree between an interrupted run and its resume
_META_KEYS = ("benchmark", "checkpoint", "n", "temperature", "top_p", "max_tokens", "num_rows", "rows_hash",
              "chat_template")

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """One benchmark's outcome.

    metrics:  {"mean@n", "pass@k"..., "maj@k"..., "answered", "truncated", "mean_completion_tokens"};
              accuracies are fractions in [0, 1]
    ci:       {metric: (low, high)} percentile-bootstrap interval over problems
    primary:  the metric tables show (the spec's mean@n)
    """
    benchmark: str
    checkpoint: str | None
    metrics: dict[str, float]
    ci: dict[str, tuple[float, float]]
    primary: str
    num_problems: int
    num_samples: int
    settings: dict[str, Any] = field(default_factory=dict)
    samples_path: str | None = None
    summary_path: str | None = None
    elapsed_s: float = 0.0


def format_prompt(tokenizer, text: str, chat_template: bool = True) -> str:
    """The user message through the tokenizer's chat template (with the generation prompt), if it has one."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    return text


def encode_prompt(tokenizer, text: str, templated: bool) -> list[int]:
    # A chat template already wrote the special tokens (BOS etc.) into the text; don't add them twice.
    ids = tokenizer(text, add_special_tokens=not templated)["input_ids"]
    return list(ids)


def _paths(out_path: str | os.PathLike | None) -> tuple[Path | None, Path | None]:
    if out_path is None:
        return None, None
    stem = str(out_path)
    stem = stem.removesuffix(".json")
    return Path(stem + ".samples.jsonl"), Path(stem + ".json")


def _read_done(samples_path: Path, meta: dict, n: int, num_rows: int) -> dict[int, list[dict]]:
    """Complete problems already in the samples file: {row: [n records sorted by sample]}."""
    by_row: dict[int, dict[int, dict]] = defaultdict(dict)
    old_meta = None
    with samples_path.open() as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut off by the interruption
            if "_meta" in rec:
                old_meta = rec["_meta"]
                continue
            if isinstance(rec, dict) and "row" in rec and "sample" in rec:
                by_row[int(rec["row"])][int(rec["sample"])] = rec
    if old_meta is not None:
        diff = {k: (old_meta.get(k), meta.get(k)) for k in _META_KEYS if old_meta.get(k) != meta.get(k)}
        if diff:
            raise DataError(f"{samples_path} was written with other settings {diff} (old, new); "
                             f"pass resume=False / --no-resume or another output path")
    return {r: [recs[j] for j in range(n)] for r, recs in by_row.items()
            if r < num_rows and all(j in recs for j in range(n))}


def _write_lines(f, records: Iterable[dict]) -> None:
    for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")
    f.flush()
    os.fsync(f.fileno())


def score_sample(spec: BenchmarkSpec, completion: str, gold: Any, row: dict) -> tuple[str | None, bool]:
    """(extracted answer, correct) for one completion."""
    extracted = EXTRACTORS.get(spec.extractor)(completion)
    correct = bool(CHECKERS.get(spec.checker)(extracted, gold, row)) if extracted is not None else False
    return extracted, correct


def evaluate(engine, tokenizer, spec: BenchmarkSpec | str, rows: Sequence[dict] | None = None, n: int | None = None,
             temperature: float | None = None, top_p: float | None = None, max_tokens: int | None = None,
             out_path: str | os.PathLike | None = None, resume: bool = True, batch_size: int = 16,
             progress: bool = True, chat_template: bool = True, seed: int | None = 0,
             checkpoint: str | None = None, n_boot: int = 1000, prompt_fn=None) -> EvalResult:
    """Evaluate ``engine`` on ``rows`` of a benchmark; None settings take the spec's defaults.

    engine:     anything with ``generate(list[GenRequest], SamplingParams) -> list[Sample]`` (request-major)
    rows:       the problems (default: all of :func:`~rlpost.eval.benchmarks.load_rows`)
    out_path:   file stem (``runs/eval/ckpt/aime24``) for ``.samples.jsonl`` and ``.json``; None = no files,
                no resume
    batch_size: problems per engine call (each yields n samples)
    seed:       sampling seed (each problem's samples get their own seeds from it: see the module docstring) and
                bootstrap seed; None: unseeded
    prompt_fn:  question -> the engine's prompt text, replacing the spec's template and the user-turn chat format
                (the trainer's ``eval_prompt_format: training``: the benchmark worded as the training prompts are)
    """
    spec = resolve_benchmark(spec)
    rows = list(load_rows(spec, seed=seed or 0) if rows is None else rows)
    n = spec.n if n is None else n
    temperature = spec.temperature if temperature is None else temperature
    top_p = spec.top_p if top_p is None else top_p
    max_tokens = spec.max_tokens if max_tokens is None else max_tokens
    if prompt_fn is None:
        user_prompts = [render_prompt(spec, row) for row in rows]
        templated = chat_template and bool(getattr(tokenizer, "chat_template", None))
    else:   # the finished engine text; its rows_hash below then covers the training format too
        user_prompts = [prompt_fn(question(spec, row)) for row in rows]
        templated = chat_template and bool(getattr(tokenizer, "chat_template", None))
    rows_hash = hashlib.sha256(json.dumps(user_prompts).encode()).hexdigest()[:16]  # same problems, same order
    meta = {"benchmark": spec.name, "checkpoint": checkpoint, "n": n, "temperature": temperature, "top_p": top_p,
            "max_tokens": max_tokens, "num_rows": len(rows), "rows_hash": rows_hash, "chat_template": chat_template,
            "seed": seed, "extractor": spec.extractor, "checker": spec.checker}
    samples_path, summary_path = _paths(out_path)
    t0 = time.time()

    done: dict[int, list[dict]] = {}
    if samples_path is not None:
        samples_path.parent.mkdir(parents=True, exist_ok=True)
        if resume and samples_path.exists():
            done = _read_done(samples_path, meta, n, len(rows))
            if done:
                log.info("eval %s: resuming from %s, %d of %d problems already done", spec.name, samples_path,
                         len(done), len(rows))
        # Rewrite with the complete problems only: drops half-written batches and cut-off lines.
        tmp = samples_path.with_suffix(".tmp")
        with tmp.open("w") as f:
            _write_lines(f, [{"_meta": meta}] + [rec for r in sorted(done) for rec in done[r]])
        tmp.replace(samples_path)

    todo = [i for i in range(len(rows)) if i not in done]
    bar = _progress(progress, total=len(rows), initial=len(rows) - len(todo), desc=f"eval {spec.name}")
    out = samples_path.open("a") if samples_path is not None else None
    try:
        for b in range(0, len(todo), batch_size):
            idx = todo[b:b + batch_size]
            prompts = [user_prompts[i] if prompt_fn is not None else format_prompt(tokenizer, user_prompts[i], chat_template)
                       for i in idx]
            requests = [GenRequest(prompt_ids=encode_prompt(tokenizer, p, templated), info={"row": i},
                                   seed=None if seed is None else stable_seed(seed, spec.name, i))
                        for p, i in zip(prompts, idx)]
            params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                    stop=list(spec.stop), seed=None if seed is None else seed + idx[0])
            samples = engine.generate(requests, params)
            if len(samples) != len(idx) * n:
                raise RuntimeError(f"engine returned {len(samples)} samples for {len(idx)} requests x n={n}")
            records = []
            for q, (i, prompt) in enumerate(zip(idx, prompts)):
                gold = gold_answer(spec, rows[i])
                recs = []
                for j in range(n):
                    s = samples[q * n + j]  # request-major: all n samples of request q are adjacent
                    extracted, correct = score_sample(spec, s.text, gold, rows[i])
                    recs.append({"row": i, "sample": j, "prompt": prompt, "gold": gold, "completion": s.text,
                                 "extracted": extracted, "correct": correct, "finish_reason": s.finish_reason,
                                 "completion_tokens": len(s.completion_ids)})
                done[i] = recs
                records.extend(recs)
            if out is not None:
                _write_lines(out, records)
            bar.update(len(idx))
    finally:
        bar.close()
        if out is not None:
            out.close()

    result = _result(spec, rows, done, n, meta, checkpoint, seed, n_boot)
    result.elapsed_s = time.time() - t0
    result.samples_path = str(samples_path) if samples_path else None
    if summary_path is not None:
        result.summary_path = str(summary_path)
        summary = asdict(result) | {"label": spec.label, "paper": list(spec.paper)}
        summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return result


def _result(spec, rows, done, n, meta, checkpoint, seed, n_boot) -> EvalResult:
    order = sorted(done)
    correct = [[rec["correct"] for rec in done[r]] for r in order]
    keys = [[normalize_answer(rec["extracted"]) if rec["extracted"] is not None else None for rec in done[r]]
            for r in order]
    metrics, ci = summarize(correct, keys, n_boot=n_boot, seed=seed or 0)
    recs = [rec for r in order for rec in done[r]]
    if recs:
        metrics["answered"] = sum(rec["extracted"] is not None for rec in recs) / len(recs)
        metrics["truncated"] = sum(rec["finish_reason"] == "length" for rec in recs) / len(recs)
        metrics["mean_completion_tokens"] = sum(rec["completion_tokens"] for rec in recs) / len(recs)
    return EvalResult(benchmark=spec.name, checkpoint=checkpoint, metrics=metrics, ci=ci,
                      primary=f"mean@{n}", num_problems=len(order), num_samples=len(recs), settings=meta)


class _NoBar:
    def update(self, k: int) -> None: ...
    def close(self) -> None: ...


def _progress(enabled: bool, **kw):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(unit="problem", **kw)


# ---------------------------------------------------------------------------------------------------
# results tables
# ---------------------------------------------------------------------------------------------------

def _cell(value: float | None, ci: Sequence[float] | None = None, with_ci: bool = False, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{100 * value:.{digits}f}"
    if with_ci and ci:
        text += f" ({100 * ci[0]:.{digits}f}–{100 * ci[1]:.{digits}f})"
    return text


def _pick_metric(metrics: dict, metric: str | None) -> str | None:
    if metric and metric in metrics:
        return metric
    if "primary" in metrics and metrics["primary"] in metrics:
        return metrics["primary"]
    return next((k for k in metrics if k.startswith("mean@")), None)


def format_table(results: dict[str, dict[str, dict]], paper_rows: dict[str, dict[str, float]] | None = None,
                 metric: str | None = None, labels: dict[str, str] | None = None, with_ci: bool = False,
                 digits: int = 1, average: bool = True) -> str:
    """A markdown table laid out like the papers': one row per checkpoint, one column per benchmark.

    results:    {checkpoint: {benchmark: metrics}}; a metrics dict may carry ``"primary"`` (the metric to
                show) and ``"ci"`` ({metric: (lo, hi)}); otherwise ``metric`` or the first ``mean@`` is shown
    paper_rows: {row label: {benchmark: number}}, the paper's numbers in percent, printed first and
                marked "(paper)" so ours can be read against them
    labels:     {benchmark: column header}; default: the registered spec's label, else the name
    Values are percentages; "Avg" is the mean over all benchmark columns (the papers' "Avg" column), shown
    only for rows that have every column.
    """
    from rlpost.eval.benchmarks import BENCHMARKS

    benches: list[str] = []
    for rows in list((paper_rows or {}).values()) + list(results.values()):
        benches += [b for b in rows if b not in benches]
    labels = dict(labels or {})
    for b in benches:
        labels.setdefault(b, BENCHMARKS.get(b).label if b in BENCHMARKS else b)
    shown_metrics = {b: next((_pick_metric(r[b], metric) for r in results.values() if b in r), None)
                     for b in benches}
    header = ["Model"] + (["Avg"] if average else []) + [
        labels[b] + (f" ({shown_metrics[b]})" if shown_metrics.get(b) else "") for b in benches]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row_line(name: str, values: dict[str, float | None], cis: dict[str, Any]) -> str:
        complete = all(values.get(b) is not None for b in benches)  # an Avg over fewer columns misleads
        avg = [_cell(sum(values[b] for b in benches) / len(benches), digits=digits) if complete else "–"
               ] if average else []
        cells = [_cell(values.get(b), cis.get(b), with_ci, digits) for b in benches]
        return "| " + " | ".join([name] + avg + cells) + " |"

    for name, nums in (paper_rows or {}).items():
        values = {b: (None if nums.get(b) is None else float(nums[b]) / 100) for b in benches}
        lines.append(row_line(f"{name} (paper)", {b: v for b, v in values.items() if v is not None}, {}))
    for ckpt, per_bench in results.items():
        values, cis = {}, {}
        for b in benches:
            m = per_bench.get(b)
            key = _pick_metric(m, metric) if m else None
            if key is not None:
                values[b] = float(m[key])
                cis[b] = (m.get("ci") or {}).get(key)
        lines.append(row_line(ckpt, values, cis))
    return "\n".join(lines) + "\n"


def write_table(results: dict[str, dict[str, dict]], path: str | os.PathLike,
                paper_rows: dict[str, dict[str, float]] | None = None, **kw) -> str:
    """Write :func:`format_table` to ``path`` (markdown) and return the text."""
    text = format_table(results, paper_rows, **kw)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text


def table_entry(result: EvalResult) -> dict:
    """The metrics dict :func:`write_table` expects for one result (metrics + primary + ci)."""
    return dict(result.metrics) | {"primary": result.primary, "ci": result.ci}


def load_results(output_dir: str | os.PathLike) -> dict[str, dict[str, dict]]:
    """{checkpoint: {benchmark: table entry}} from every summary ``*.json`` under ``output_dir``
    (for ``rlpost reproduce`` and recipe READMEs)."""
    results: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(output_dir).rglob("*.json")):
        try:
            summary = json.loads(path.read_text())
        except (json.JSONDecodeError, OSError):
            continue
        if not isinstance(summary, dict) or "metrics" not in summary or "benchmark" not in summary:
            continue
        ckpt = summary.get("checkpoint") or path.parent.name
        results.setdefault(ckpt, {})[summary["benchmark"]] = (
            dict(summary["metrics"]) | {"primary": summary.get("primary"), "ci": summary.get("ci", {})})
    return results


# ---------------------------------------------------------------------------------------------------
# evaluation during training
# ---------------------------------------------------------------------------------------------------

class PeriodicEval:
    """Evaluation during training with the same code as ``rlpost eval``, on a fixed held-out subset.

        evaluator = PeriodicEval(["gsm8k=/data/gsm8k_test.jsonl", "arithmetic"], every=50, limit=64,
                                 out_dir=run_dir / "eval")
        ...
        if metrics := evaluator.maybe_run(step, engine, tokenizer):   # after engine.load_weights
            tracker.log(metrics, step)

    Rows are loaded once (a seeded subset of ``limit`` problems) so every step scores the same problems.
    Logged names: ``eval/<benchmark>/<metric>`` (e.g. ``eval/gsm8k/mean@1``, ``eval/gsm8k/pass@4``).
    Files go to ``out_dir/step_<step>/<benchmark>.*``; a rerun of the same step resumes them.
    """

    def __init__(self, benchmarks: Sequence[str | BenchmarkSpec], every: int = 0, limit: int | None = 64,
                 n: int | None = None, temperature: float | None = None, top_p: float | None = None,
                 max_tokens: int | None = None, seed: int = 0, out_dir: str | os.PathLike | None = None,
                 batch_size: int = 16, chat_template: bool = True, at_start: bool = False, prompt_fn=None,
                 extractor: str | None = None):
        self.specs = [resolve_benchmark(b) for b in benchmarks]
        if extractor is not None:   # e.g. the training prompts ask for \\boxed{} where the benchmark asks for "####"
            EXTRACTORS.get(extractor)
            self.specs = [dataclasses.replace(s, extractor=extractor) for s in self.specs]
        self.prompt_fn = prompt_fn
        self.every, self.limit, self.seed, self.at_start = every, limit, seed, at_start
        self.sampling = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.batch_size, self.chat_template = batch_size, chat_template
        self._rows: dict[str, list[dict]] = {}

    def rows(self, spec: BenchmarkSpec) -> list[dict]:
        if spec.name not in self._rows:
            self._rows[spec.name] = load_rows(spec, limit=self.limit, seed=self.seed)
        return self._rows[spec.name]

    def due(self, step: int) -> bool:
        return self.every > 0 and (step % self.every == 0) and (step > 0 or self.at_start)

    def maybe_run(self, step: int, engine, tokenizer) -> dict[str, float]:
        """Metrics when ``step`` is due (see :meth:`due`), else an empty dict."""
        return self.run(step, engine, tokenizer) if self.due(step) else {}

    def run(self, step: int, engine, tokenizer) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for spec in self.specs:
            out = None if self.out_dir is None else self.out_dir / f"step_{step}" / spec.name
            result = evaluate(engine, tokenizer, spec, self.rows(spec), out_path=out, batch_size=self.batch_size,
                              progress=False, chat_template=self.chat_template, seed=self.seed,
                              checkpoint=f"step_{step}", n_boot=0, prompt_fn=self.prompt_fn, **self.sampling)
            metrics.update({f"eval/{spec.name}/{k}": v for k, v in result.metrics.items()})
        return metrics
