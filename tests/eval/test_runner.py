"""The runner with a fake engine: records, metrics, resume after an interruption, tables, CLI."""
import argparse
import json
import re

import pytest

from rlpost.eval.benchmarks import BENCHMARKS, BenchmarkSpec, load_rows, resolve_benchmark
from rlpost.eval.cli import add_eval_args, run_eval
from rlpost.eval.runner import PeriodicEval, evaluate, format_table, load_results, table_entry
from rlpost.types import Sample


class CharTokenizer:
    """Enough of a HF tokenizer: __call__, decode, optional chat template."""

    def __init__(self, chat_template=None):
        self.chat_template = chat_template

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return f"<user>{messages[0]['content']}</user><assistant>"


def solve(prompt: str) -> int:
    a, op, b = re.search(r"(\d+)([+-])(\d+)=", prompt).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


class FakeEngine:
    """Answers arithmetic prompts; sample j of a row is wrong when (row value + j) % 3 == 0."""

    def __init__(self, fail_on_call=None):
        self.calls, self.fail_on_call, self.generated, self.seeds = 0, fail_on_call, [], {}

    def generate(self, requests, params):
        self.calls += 1
        if self.fail_on_call == self.calls:
            raise RuntimeError("simulated crash")
        out = []
        for r in requests:
            prompt = "".join(chr(i) for i in r.prompt_ids)
            self.generated.append(r.info["row"])
            self.seeds[r.info["row"]] = r.seed
            value = solve(prompt)
            for j in range(params.n):
                text = f"the answer is {value + 1 if (value + j) % 3 == 0 else value}"
                ids = [ord(c) for c in text]
                out.append(Sample(prompt_ids=r.prompt_ids, completion_ids=ids, logprobs=[0.0] * len(ids), text=text))
        return out

    def close(self):
        pass


SPEC = BENCHMARKS.get("arithmetic")


@pytest.fixture
def rows():
    return load_rows(SPEC, limit=7, seed=0)


def expected_mean(rows, n):
    vals = [solve(r["prompt"]) for r in rows]
    return sum(sum((v + j) % 3 != 0 for j in range(n)) / n for v in vals) / len(vals)


def test_evaluate_records_and_metrics(tmp_path, rows):
    engine = FakeEngine()
    res = evaluate(engine, CharTokenizer(), SPEC, rows, n=3, out_path=tmp_path / "arith", batch_size=2,
                   progress=False, n_boot=100)
    assert engine.calls == 4  # ceil(7 / 2)
    assert res.metrics["mean@3"] == pytest.approx(expected_mean(rows, 3))
    assert res.metrics["pass@3"] == 1.0  # two of every three samples are right
    assert res.metrics["answered"] == 1.0
    assert res.primary == "mean@3" and res.num_problems == 7 and res.num_samples == 21
    lines = (tmp_path / "arith.samples.jsonl").read_text().splitlines()
    assert "_meta" in json.loads(lines[0])
    recs = [json.loads(x) for x in lines[1:]]
    assert len(recs) == 21
    assert set(recs[0]) >= {"row", "sample", "prompt", "completion", "extracted", "correct", "gold"}
    r0 = recs[0]
    assert r0["correct"] == (r0["extracted"] == str(solve(r0["prompt"])))
    summary = json.loads((tmp_path / "arith.json").read_text())
    assert summary["metrics"]["mean@3"] == res.metrics["mean@3"]
    assert summary["ci"]["mean@3"][0] <= res.metrics["mean@3"] <= summary["ci"]["mean@3"][1]


def test_resume_after_interruption(tmp_path, rows):
    full = evaluate(FakeEngine(), CharTokenizer(), SPEC, rows, n=3, out_path=tmp_path / "full", batch_size=2,
                    progress=False, n_boot=100)

    out = tmp_path / "run"
    crashing = FakeEngine(fail_on_call=3)  # batches (0,1) and (2,3) finish, the third call raises
    with pytest.raises(RuntimeError, match="simulated crash"):
        evaluate(crashing, CharTokenizer(), SPEC, rows, n=3, out_path=out, batch_size=2, progress=False)
    samples = tmp_path / "run.samples.jsonl"
    assert len(samples.read_text().splitlines()) == 1 + 4 * 3
    # make it worse: a half-written record of row 4 and a line cut off mid-write
    with samples.open("a") as f:
        f.write(json.dumps({"row": 4, "sample": 0, "correct": True, "extracted": "1", "finish_reason": "stop",
                            "completion_tokens": 1}) + "\n")
        f.write('{"row": 4, "sample": 1, "corr')

    resumed_engine = FakeEngine()
    resumed = evaluate(resumed_engine, CharTokenizer(), SPEC, rows, n=3, out_path=out, batch_size=2,
                       progress=False, n_boot=100)
    assert resumed_engine.generated == [4, 5, 6]  # only the unfinished rows
    assert sorted(crashing.generated + resumed_engine.generated) == list(range(7))  # nothing generated twice
    recs = [json.loads(x) for x in samples.read_text().splitlines()[1:]]
    assert len(recs) == 21 and len({(r["row"], r["sample"]) for r in recs}) == 21
    assert resumed.metrics == full.metrics
    assert resumed.ci == full.ci

    # a rerun of a finished evaluation generates nothing
    idle = FakeEngine()
    again = evaluate(idle, CharTokenizer(), SPEC, rows, n=3, out_path=out, batch_size=2, progress=False, n_boot=100)
    assert idle.calls == 0 and again.metrics == full.metrics


def test_each_problem_has_its_own_seed_whatever_the_batch(rows):
    """The engine gets a seed per problem (GenRequest.seed), the same for every batch size and distinct per problem;
    another eval seed gives other seeds, no seed none."""
    def seeds(batch_size, seed=5):
        engine = FakeEngine()
        evaluate(engine, CharTokenizer(), SPEC, rows, n=2, batch_size=batch_size, progress=False, n_boot=0, seed=seed)
        return engine.seeds
    by_batch = [seeds(b) for b in (1, 3, 7)]
    assert by_batch[0] == by_batch[1] == by_batch[2] and len(set(by_batch[0].values())) == len(rows)
    assert set(seeds(2, seed=6).values()).isdisjoint(by_batch[0].values())
    assert set(seeds(2, seed=None).values()) == {None}


def test_resume_refuses_other_settings(tmp_path, rows):
    evaluate(FakeEngine(), CharTokenizer(), SPEC, rows, n=2, out_path=tmp_path / "x", progress=False, n_boot=0)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(FakeEngine(), CharTokenizer(), SPEC, rows, n=2, temperature=0.3, out_path=tmp_path / "x",
                 progress=False, n_boot=0)
    # resume=False starts over
    res = evaluate(FakeEngine(), CharTokenizer(), SPEC, rows, n=2, temperature=0.3, out_path=tmp_path / "x",
                   resume=False, progress=False, n_boot=0)
    assert res.num_samples == 14


def test_chat_template_and_gold_extraction(tmp_path):
    seen = []

    class Echo:
        def generate(self, requests, params):
            seen.extend("".join(map(chr, r.prompt_ids)) for r in requests)
            return [Sample([], [1], [0.0], text="so #### 1,000") for _ in requests for _ in range(params.n)]

    spec = BENCHMARKS.get("gsm8k")
    rows = [{"question": "How many?", "answer": "work...\n#### 1000"}, {"question": "Again?", "answer": "#### 5"}]
    res = evaluate(Echo(), CharTokenizer(chat_template="x"), spec, rows, out_path=None, progress=False, n_boot=0)
    assert seen[0].startswith("<user>How many?\nLet's think step by step") and seen[0].endswith("<assistant>")
    assert res.metrics["mean@1"] == 0.5  # "1,000" == gold "1000"; row 2 wants 5
    res_raw = evaluate(Echo(), CharTokenizer(chat_template="x"), spec, rows, chat_template=False, progress=False,
                       n_boot=0)
    assert res_raw.metrics["mean@1"] == 0.5 and not seen[-1].startswith("<user>")


def test_format_table_like_papers(tmp_path, rows):
    res = evaluate(FakeEngine(), CharTokenizer(), SPEC, rows, n=3, out_path=tmp_path / "ck1" / "arithmetic",
                   checkpoint="ck1", progress=False, n_boot=50)
    results = {"ck1": {"arithmetic": table_entry(res)},
               "ck2": {"arithmetic": {"mean@3": 0.25}, "gsm8k": {"mean@1": 0.5}}}
    text = format_table(results, paper_rows={"HAPO 7B": {"gsm8k": 81.99}})
    lines = text.strip().splitlines()
    assert lines[0] == "| Model | Avg | GSM8K (mean@1) | Arithmetic (mean@3) |"
    assert lines[2] == "| HAPO 7B (paper) | – | 82.0 | – |"  # no Avg over a partial row
    assert lines[3].startswith("| ck1 | ") and lines[3].endswith(f"| – | {100 * res.metrics['mean@3']:.1f} |")
    assert lines[4] == "| ck2 | 37.5 | 50.0 | 25.0 |"
    assert load_results(tmp_path)["ck1"]["arithmetic"]["mean@3"] == res.metrics["mean@3"]
    with_ci = format_table({"ck1": {"arithmetic": table_entry(res)}}, with_ci=True, average=False)
    assert "–" in with_ci.splitlines()[2] and "(" in with_ci.splitlines()[2]


def test_periodic_eval(tmp_path):
    ev = PeriodicEval(["arithmetic"], every=5, limit=4, n=2, out_dir=tmp_path)
    assert ev.maybe_run(3, FakeEngine(), CharTokenizer()) == {}
    assert ev.maybe_run(0, FakeEngine(), CharTokenizer()) == {}
    m = ev.maybe_run(5, FakeEngine(), CharTokenizer())
    assert set(m) >= {"eval/arithmetic/mean@2", "eval/arithmetic/pass@2", "eval/arithmetic/maj@2"}
    assert (tmp_path / "step_5" / "arithmetic.samples.jsonl").exists()
    assert ev.rows(ev.specs[0]) is ev.rows(ev.specs[0])  # same held-out subset every time


def test_periodic_eval_in_the_training_prompt_format(tmp_path):
    seen = []

    def training_format(question):          # what the trainer passes with trainer.eval_prompt_format=training
        seen.append(question)
        return f"[sys][shot]{question}"

    ev = PeriodicEval(["arithmetic"], limit=3, n=1, prompt_fn=training_format, extractor="last_number")
    engine = FakeEngine()
    m = ev.run(1, engine, CharTokenizer(chat_template="x"))
    rows = ev.rows(ev.specs[0])
    assert seen == [r["prompt"] for r in rows]           # the bare question, not the spec's template
    assert ev.specs[0].extractor == "last_number" and m["eval/arithmetic/mean@1"] >= 0
    with pytest.raises(KeyError, match="nope"):
        PeriodicEval(["arithmetic"], extractor="nope")


@pytest.mark.parametrize("name, hub", [("olympiadbench", "Hothan/OlympiadBench"), ("minerva", "math-ai/minervamath")])
def test_olympiad_and_minerva_need_their_data_and_say_how(tmp_path, name, hub, monkeypatch):
    import rlpost.eval.benchmarks as bm
    spec = BENCHMARKS.get(name)
    assert (spec.n, spec.temperature, spec.top_p) == (8, 0.5, 0.7)          # HAPO's evaluation settings

    def offline(*a, **k):
        raise ConnectionError(f"Couldn't reach '{hub}' on the Hub (OfflineModeIsEnabled)")
    monkeypatch.setattr(bm, "read_rows", offline)
    with pytest.raises(FileNotFoundError, match=rf"benchmark {name}: could not load hub dataset '{hub}'.*{name}=PATH"):
        load_rows(spec)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match=rf"benchmark {name}: no file"):
        resolve_benchmark(f"{name}={tmp_path / 'absent.jsonl'}")
    path = tmp_path / f"{name}.jsonl"
    answer = ["$\\frac{1}{2}$"] if name == "olympiadbench" else "\\frac{1}{2}"   # OlympiadBench: a one-item list
    path.write_text(json.dumps({"question": "Half of one?", spec.answer_column: answer}) + "\n")
    local = resolve_benchmark(f"{name}={path}")
    row = load_rows(local)[0]
    from rlpost.eval.benchmarks import gold_answer, render_prompt
    from rlpost.eval.runner import score_sample
    assert render_prompt(local, row).startswith("Half of one?")
    assert score_sample(local, "so \\boxed{0.5}", gold_answer(local, row), row) == ("0.5", True)


def test_resolve_benchmark(tmp_path):
    path = tmp_path / "my_math.jsonl"
    path.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    spec = resolve_benchmark(str(path))
    assert spec.name == "my_math" and spec.extractor == "boxed"
    assert load_rows(spec) == [{"problem": "1+1?", "answer": "2"}]
    named = resolve_benchmark(f"gsm8k={path}")
    assert named.extractor == "gsm8k" and named.data == str(path)
    with pytest.raises(KeyError, match="did you mean 'gsm8k'"):
        resolve_benchmark("gsm8kk")
    for name in ["aime24", "aime25", "amc23", "math500", "gsm8k", "countdown", "knk", "arithmetic", "countdown_synth"]:
        assert isinstance(BENCHMARKS.get(name), BenchmarkSpec)


def test_cli_end_to_end_and_resume(tmp_path, caplog):
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{a}=", "answer": f"#### {2 * a}"}) + "\n"
                            for a in range(10, 15)))
    parser = add_eval_args(argparse.ArgumentParser())
    args = parser.parse_args(["ckpt/a", "ckpt/b", "--benchmark", f"gsm8k={data}", "--benchmark", "arithmetic",
                              "--limit", "4", "--n", "2", "--output-dir", str(tmp_path / "out"), "--no-progress",
                              "--n-bootstrap", "20"])
    engines = []

    def factory(ckpt, args):
        engines.append(FakeEngine())
        return engines[-1], CharTokenizer()

    assert run_eval(args, engine_factory=factory) == 0
    assert len(engines) == 2 and all(e.calls > 0 for e in engines)
    out = tmp_path / "out"
    for ck in ("a", "b"):
        assert (out / ck / "gsm8k.samples.jsonl").exists() and (out / ck / "arithmetic.json").exists()
    table = (out / "results.md").read_text()
    assert "| ckpt/a |" in table and "GSM8K" in table and "Arithmetic" in table
    assert set(json.loads((out / "results.json").read_text())) == {"ckpt/a", "ckpt/b"}
    # the rerun resumes from the samples files: no generation at all, and says so
    engines.clear()
    with caplog.at_level("INFO"):
        assert run_eval(args, engine_factory=factory) == 0
    assert all(e.calls == 0 for e in engines)
    assert "eval arithmetic: resuming from" in caplog.text and "4 of 4 problems already done" in caplog.text


def test_real_char_tokenizer_round_trip():
    tokenizer_mod = pytest.importorskip("rlpost.models.tokenizer")
    tok = tokenizer_mod.build_char_tokenizer()
    seen = []

    class Echo:
        def generate(self, requests, params):
            seen.extend(tok.decode(r.prompt_ids) for r in requests)
            return [Sample(r.prompt_ids, [5], [0.0], text=str(solve(tok.decode(r.prompt_ids))))
                    for r in requests for _ in range(params.n)]

    rows = load_rows(SPEC, limit=3, seed=1)
    res = evaluate(Echo(), tok, SPEC, rows, n=1, progress=False, n_boot=0)
    assert seen[0] == f"<|im_start|>user\n{rows[0]['prompt']}<|im_end|>\n<|im_start|>assistant\n"
    assert res.metrics["mean@1"] == 1.0


def test_read_rows_file_types(tmp_path):
    from rlpost.eval.benchmarks import read_rows
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?", "answer": "4"}]
    (tmp_path / "a.json").write_text(json.dumps({"test": rows}))
    (tmp_path / "a.csv").write_text("problem,answer\n1+1?,2\n2+2?,4\n")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.json", "a.csv", "a.parquet"):
        assert read_rows(str(tmp_path / name), split="test") == rows
    with pytest.raises(ValueError, match="unsupported"):
        (tmp_path / "a.txt").write_text("x")
        read_rows(str(tmp_path / "a.txt"))


def test_name_equals_path_reads_that_file_even_for_a_generated_benchmark(tmp_path):
    """`--benchmark arithmetic=PATH` evaluates PATH's rows (not the generated ones); a missing file is an error."""
    import json as _json

    from rlpost.eval.benchmarks import load_rows, resolve_benchmark
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(_json.dumps({"prompt": f"{a} + {a} = ?", "answer": str(2 * a)}) for a in (1, 2, 3)))
    spec = resolve_benchmark(f"arithmetic={path}")
    rows = load_rows(spec)
    assert [r["answer"] for r in rows] == ["2", "4", "6"] and spec.rows_fn is None
    with pytest.raises(FileNotFoundError, match="benchmark arithmetic: no file"):
        resolve_benchmark(f"arithmetic={tmp_path / 'missing.jsonl'}")


def test_cli_bad_benchmark_or_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    """Through the error boundary (rlpost.cli.error_boundary), before any engine is built."""
    from rlpost.cli import error_boundary
    parser = add_eval_args(argparse.ArgumentParser())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "#### 2"}\n{"question": \n')
    for bench, message in [("gsm8kk", "did you mean 'gsm8k'"),
                           (f"arithmetic={tmp_path / 'nope.jsonl'}", "benchmark arithmetic: no file"),
                           (f"gsm8k={bad}", "bad.jsonl, line 2: not valid JSON")]:
        args = parser.parse_args(["ckpt/a", "--benchmark", bench, "--output-dir", str(tmp_path / "out")])
        factory = lambda *a: pytest.fail("no engine before the benchmarks resolve")  # noqa: E731
        assert error_boundary(lambda a: run_eval(a, engine_factory=factory))(args) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
