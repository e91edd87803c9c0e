"""Evaluation harness: benchmarks, answer extraction, checking, metrics, ``rlpost eval`` (docs/eval.md).

    from rlpost.eval import evaluate, BENCHMARKS, PeriodicEval
    result = evaluate(engine, tokenizer, "gsm8k=/data/gsm8k_test.jsonl", out_path="runs/eval/ckpt/gsm8k")
    result.metrics["mean@1"], result.ci["mean@1"]
"""
from rlpost.eval.benchmarks import BENCHMARKS, BenchmarkSpec, load_rows, resolve_benchmark
from rlpost.eval.check import CHECKERS
from rlpost.eval.extract import EXTRACTORS
from rlpost.eval.metrics import maj_at_k, pass_at_k, summarize
from rlpost.eval.runner import (EvalResult, PeriodicEval, evaluate, format_table, load_results, table_entry,
                                write_table)

__all__ = ["BENCHMARKS", "BenchmarkSpec", "CHECKERS", "EXTRACTORS", "EvalResult", "PeriodicEval", "evaluate",
           "format_table", "load_results", "load_rows", "maj_at_k", "pass_at_k", "resolve_benchmark", "summarize",
           "table_entry", "write_table"]
