"""The sampling filters (rlpost/sampling.py) on hand-computed logits, and that the modules which use them outside
the hf engine do not load it."""
import ast
import subprocess
import sys
from pathlib import Path

import torch

from rlpost.sampling import apply_repetition_penalty, filter_min_p, filter_top_k_top_p, seen_tokens

ROOT = Path(__file__).resolve().parents[1]
INF = float("-inf")
P = torch.tensor([[0.5, 0.3, 0.15, 0.05]])   # probabilities of a 4-token vocabulary


def test_top_k_keeps_the_k_largest_logits_unchanged():
    z = torch.tensor([[1.0, 3.0, -2.0, 2.0]])
    assert filter_top_k_top_p(z, 2, 1.0).tolist() == [[INF, 3.0, INF, 2.0]]
    assert filter_top_k_top_p(z, 0, 1.0).tolist() == z.tolist()     # 0 = off
    assert filter_top_k_top_p(z, 4, 1.0).tolist() == z.tolist()     # k = V keeps everything


def test_top_p_keeps_the_smallest_nucleus_reaching_p():
    z = torch.log(P)
    # sorted masses 0.5, 0.8, 0.95, 1.0: p=0.7 needs the first two, p=0.5 only the first, p=0.9 three
    kept = lambda p: (~torch.isinf(filter_top_k_top_p(z, 0, p)[0])).tolist()  # noqa: E731
    assert kept(0.7) == [True, True, False, False]
    assert kept(0.4) == [True, False, False, False]
    assert kept(0.9) == [True, True, True, False]
    out = filter_top_k_top_p(z[:, [3, 0, 2, 1]], 0, 0.7)   # the same in another vocabulary order
    assert torch.equal(out[0, [1, 3]], z[0, [0, 1]]) and torch.isinf(out[0, [0, 2]]).all()


def test_top_k_then_top_p_per_row():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.1, 0.2, 0.3, 0.4]]))
    # top-k 3, then top-p 0.6 over the renormalised top 3: row 0 (0.5, 0.3, 0.15)/0.95 -> 0.53 < 0.6, keep 2;
    # row 1 (0.4, 0.3, 0.2)/0.9 -> 0.44, 0.78: keep 2
    out = filter_top_k_top_p(z, 3, 0.6)
    assert (~torch.isinf(out)).tolist() == [[True, True, False, False], [False, False, True, True]]
    assert torch.equal(out[~torch.isinf(out)], z[~torch.isinf(out)])


def test_min_p_keeps_tokens_above_a_share_of_the_largest():
    z = torch.log(P)
    # min_p 0.2: keep p >= 0.2 * 0.5 = 0.1 -> the first three; 0.7: p >= 0.35 -> only the first
    assert filter_min_p(z, 0.2).tolist() == [[z[0, 0].item(), z[0, 1].item(), z[0, 2].item(), INF]]
    assert (~torch.isinf(filter_min_p(z, 0.7)[0])).tolist() == [True, False, False, False]
    assert filter_min_p(z, 0.0) is z


def test_repetition_penalty_and_seen_tokens():
    z = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = seen_tokens([[0, 1, 1]], 4, "cpu")
    assert seen.tolist() == [[True, True, False, False]]
    assert seen_tokens([[], [3]], 4, "cpu").tolist() == [[False] * 4, [False, False, False, True]]
    # seen tokens: 2 / 2 = 1 (positive: divided), -1 * 2 = -2 (negative: multiplied); unseen unchanged
    assert apply_repetition_penalty(z, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0]]
    assert apply_repetition_penalty(z, seen, 1.0) is z


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_learner_side_and_vllm_worker_do_not_import_the_hf_engine():
    for path in ("rlpost/shared_prefix.py", "rlpost/engines/vllm_worker.py"):
        assert "rlpost.engines.hf" not in imported_modules(ROOT / path), path
    # at run time too: the learner's shared-prefix pass loads neither the hf engine nor the engines package
    code = "import sys, rlpost.shared_prefix; print(sorted(m for m in sys.modules if m.startswith('rlpost.engines')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
