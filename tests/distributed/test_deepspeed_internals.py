"""rlpost/distributed/deepspeed_internals.py against a real two-rank ZeRO-3 engine (torchrun, gloo on CPU); the
checks themselves are in zero3_internals_worker.py. Each rank reports through its own result file
(tests/distributed/multirank.py), never through stdout, where the ranks' lines interleave."""
from pathlib import Path

import pytest

from tests.distributed.multirank import run_ranks

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_gathered_without_hooks_on_a_two_rank_zero3_engine(tmp_path):
    results = run_ranks(HERE / "zero3_internals_worker.py", 2, tmp_path / "results", timeout=600)
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["ok"] for r in results), results
    # the ranks ran different numbers of hook-free forwards (1 and 3): no collective inside the gathered block
    assert [r["hook_free_forwards"] for r in results] == [1, 3]
