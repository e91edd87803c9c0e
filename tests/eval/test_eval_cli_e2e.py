"""`rlpost eval` end to end on the real tiny checkpoint: a local GSM8K-format JSONL and a synthetic task."""
import json

import pytest

from rlpost.cli import main

pytestmark = pytest.mark.slow


def test_eval_gsm8k_jsonl_and_synthetic(tmp_path, tiny_model_path, capsys):
    gsm = tmp_path / "gsm8k_test.jsonl"
    rows = [{"question": f"{a}+{b}=", "answer": f"Add them.\n#### {a + b}"} for a, b in [(12, 34), (50, 21), (33, 44), (19, 81)]]
    gsm.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "eval"
    code = main(["eval", str(tiny_model_path), "--engine", "hf", "--benchmark", f"gsm8k={gsm}", "--benchmark", "arithmetic",
                 "--n", "2", "--temperature", "1.0", "--max-tokens", "8", "--limit", "8", "--output-dir", str(out),
                 "--no-progress", "--n-bootstrap", "50"])
    assert code == 0
    table = (out / "results.md").read_text()
    assert "GSM8K" in table and "Arithmetic" in table
    lines = [json.loads(line) for p in out.rglob("*.samples.jsonl") for line in p.read_text().splitlines()]
    samples = [row for row in lines if "completion" in row]
    assert len(samples) == 4 * 2 + 8 * 2  # every sample of every problem is kept
    assert {"completion", "correct"} <= set(samples[0])
    results = json.loads((out / "results.json").read_text())[str(tiny_model_path)]
    assert set(results) == {"gsm8k", "arithmetic"}
    for bench in results.values():
        assert 0.0 <= bench["mean@2"] <= bench["pass@2"] <= 1.0
        assert bench["ci"]["mean@2"][0] <= bench["mean@2"] <= bench["ci"]["mean@2"][1]


def samples_by_batch_size(model, engine, out, batch_sizes):
    """{batch size: ({(row, sample): completion}, mean@4)} of `rlpost eval` at each --batch-size."""
    result = {}
    for bs in batch_sizes:
        assert main(["eval", str(model), "--engine", engine, "--benchmark", "arithmetic", "--n", "4", "--temperature",
                     "1.0", "--max-tokens", "16", "--limit", "48", "--batch-size", str(bs), "--output-dir",
                     str(out / f"bs{bs}"), "--no-progress", "--n-bootstrap", "0"]) == 0
        recs = [json.loads(line) for line in next((out / f"bs{bs}").rglob("*.samples.jsonl")).read_text().splitlines()]
        mean = json.loads((out / f"bs{bs}" / "results.json").read_text())[str(model)]["arithmetic"]["mean@4"]
        result[bs] = ({(r["row"], r["sample"]): r["completion"] for r in recs[1:]}, mean)
    return result


def test_eval_samples_do_not_depend_on_the_batch_size(tmp_path, tiny_model_path):
    """Each (problem, sample) has its own seed: --batch-size 8, 2 and 1 give the same 192 completions and the same
    mean@4 (before, one generator per batch: 239 of 256 samples differed between 8 and 2). Arithmetic prompts all
    have one length, so a row's logits are bit-equal in any batch; with prompts of different lengths they differ in
    the last bits and a rare draw can flip (docs/eval.md gives the measured rates)."""
    by_bs = samples_by_batch_size(tiny_model_path, "hf", tmp_path, (8, 2, 1))
    assert len(by_bs[8][0]) == 48 * 4 and len(set(by_bs[8][0].values())) > 4
    assert by_bs[8] == by_bs[2] == by_bs[1]


@pytest.mark.vllm
def test_eval_with_vllm_engine(tmp_path, tiny_model_path):
    out = tmp_path / "eval_vllm"
    code = main(["eval", str(tiny_model_path), "--engine", "vllm", "--benchmark", "arithmetic", "--n", "2",
                 "--temperature", "0", "--max-tokens", "8", "--limit", "8", "--output-dir", str(out),
                 "--no-progress", "--n-bootstrap", "0"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())[str(tiny_model_path)]
    assert 0.0 <= results["arithmetic"]["mean@2"] <= 1.0


@pytest.mark.vllm
def test_vllm_eval_samples_do_not_depend_on_the_batch_size(tmp_path, tiny_model_path):
    by_bs = samples_by_batch_size(tiny_model_path, "vllm", tmp_path, (8, 2))
    assert len(set(by_bs[8][0].values())) > 4 and by_bs[8] == by_bs[2]
