"""Load-based dispatch over rlpost serve workers (rlpost/engines/dispatch.py), with fake workers: every
assignment below is worked out by hand from the water-filling rule in the module docstring."""
import threading

import pytest

from rlpost.engines import vllm_server
from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.engines.dispatch import LoadTracker, request_weight, split, water_level


def test_water_level_by_hand():
    assert water_level([0, 0], 4) == 2                 # both filled to 2
    assert water_level([0, 6], 8) == 7                 # 6 fills worker 0 up to 6, the last 2 are shared: 6 + 2/2
    assert water_level([10, 0, 4], 9) == 6.5           # 4 lifts worker 1 to 4, then 5 shared by two: 4 + 5/2
    assert water_level([5, 5], 0) == 5


@pytest.mark.parametrize("loads, weights, expected", [
    ([0, 0], [1, 1, 1, 1], [(0, 0, 2), (1, 2, 4)]),    # even: shares 2, 2; midpoints .5 1.5 | 2.5 3.5
    ([0, 0], [1, 1, 1], [(0, 0, 2), (1, 2, 3)]),       # shares 1.5, 1.5: midpoint 1.5 on the boundary -> worker 0
    ([0, 6], [2, 2, 2, 2], [(0, 0, 4)]),               # level 7: shares 7, 1; midpoints 1 3 5 7 (7: boundary)
    ([0, 6], [2, 2, 2, 2, 2], [(0, 0, 4), (1, 4, 5)]),  # level 8: shares 8, 2; midpoints 1 3 5 7 | 9
    ([10, 0, 4], [3, 3, 3], [(1, 0, 2), (2, 2, 3)]),   # level 6.5: shares 0, 6.5, 2.5; midpoints 1.5 4.5 | 7.5
    ([100, 0], [1, 1], [(1, 0, 2)]),                   # a busy worker gets nothing
    ([0, 0, 0], [5], [(1, 0, 1)]),                      # shares 5/3 each: midpoint 2.5 lies in [5/3, 10/3)
    ([0, 0, 9], [5], [(0, 0, 1)]),                      # shares 2.5, 2.5, 0: midpoint 2.5 on the boundary
    ([3, 0], [], []),
])
def test_split_by_hand(loads, weights, expected):
    assert split(loads, weights) == expected


def test_request_weight_counts_prompt_and_completion_budget():
    assert request_weight(prompt_len=10, n=4, max_tokens=6) == 64


class FakeWorkers:
    """Stands in for VLLMServerEngine._post: records (worker, request ids, seed_offset) and answers one sample
    per request whose completion is the request's first prompt token; worker 0's first call waits for `gate`."""

    def __init__(self):
        self.calls, self.gate, self.lock = [], threading.Event(), threading.Lock()
        self.blocked_once = False

    def __call__(self, k, path, body, what):
        ids = [r["prompt_ids"][0] for r in body["requests"]]
        with self.lock:
            self.calls.append((k, ids, body["seed_offset"]))
            block = k == 0 and not self.blocked_once
            self.blocked_once = self.blocked_once or block
        if block:
            assert self.gate.wait(10)
        return {"samples": [{"completion_ids": [i], "logprobs": [-1.0], "text": str(i), "finish_reason": "length",
                             "entropies": None, "request_index": j} for j, i in enumerate(ids)]}


@pytest.fixture
def fake_client(monkeypatch):
    monkeypatch.setattr(vllm_server, "wait_healthy", lambda urls, *a, **k: [{} for _ in urls])
    engine = vllm_server.VLLMServerEngine(["http://w0", "http://w1"], tokenizer=None)
    engine._post = FakeWorkers()
    yield engine
    engine.close()


def test_concurrent_calls_see_each_others_load(fake_client):
    """Thread A's one request (weight 1 * (3 + 5) = 8) goes to worker 0 (tie: the lower worker) and stays in
    flight. The main thread's three requests (8 each, 24 in all) then see loads [8, 0]: level 16, shares 8 and 16,
    so request 100 goes to worker 0 and 200, 300 to worker 1, with seed offsets 0 and 1 (their places here)."""
    params = SamplingParams(n=1, max_tokens=5, seed=7)
    fake = fake_client._post
    out_a = []
    a = threading.Thread(target=lambda: out_a.extend(fake_client.generate([GenRequest([9, 1, 1])], params)))
    a.start()
    for _ in range(1000):
        if fake.calls:
            break
        threading.Event().wait(0.01)
    assert fake.calls == [(0, [9], 0)] and fake_client.load.snapshot() == [8.0, 0.0]
    samples = fake_client.generate([GenRequest([100, 1, 1]), GenRequest([200, 1, 1]), GenRequest([300, 1, 1])],
                                   params)
    assert sorted(fake.calls[1:]) == [(0, [100], 0), (1, [200, 300], 1)]
    assert [(s.request_index, s.completion_ids) for s in samples] == [(0, [100]), (1, [200]), (2, [300])]
    assert fake_client.load.snapshot() == [8.0, 0.0]   # only A's request is still in flight
    fake.gate.set()
    a.join(10)
    assert [s.completion_ids for s in out_a] == [[9]] and fake_client.load.snapshot() == [0.0, 0.0]


def test_a_failed_slice_releases_its_load(fake_client):
    def failing(k, path, body, what):
        raise vllm_server.EngineError(f"worker {k} down")
    fake_client._post = failing
    with pytest.raises(vllm_server.EngineError, match="down"):
        fake_client.generate([GenRequest([1, 2]), GenRequest([3, 4])], SamplingParams(n=2, max_tokens=4))
    assert fake_client.load.snapshot() == [0.0, 0.0]


def test_tracker_reserve_and_release():
    t = LoadTracker(2)
    assert t.reserve([4, 4, 4]) == [(0, 0, 2, 8.0), (1, 2, 3, 4.0)]   # level 6: shares 6, 6; midpoints 2 6 | 10
    assert t.snapshot() == [8.0, 4.0]
    assert t.reserve([4]) == [(1, 0, 1, 4.0)]                          # the less loaded worker
    t.release(0, 8.0)
    t.release(1, 8.0)
    assert t.snapshot() == [0.0, 0.0]


def test_per_episode_calls_are_all_in_flight_and_spread_by_load(fake_client):
    """Per-episode rollouts (continuous_batching) send one-request calls from many threads: each is posted from
    its caller's thread, so 12 of them are in flight at once (more than the client's pool of 4 * 2 + 1 threads),
    and each goes to the less-loaded worker (equal weights: 6 and 6)."""
    gate, lock, seen = threading.Event(), threading.Lock(), []

    def held(k, path, body, what):
        with lock:
            seen.append(k)
        assert gate.wait(10)
        return {"samples": [{"completion_ids": [1], "logprobs": [-1.0], "text": "1", "finish_reason": "length",
                             "entropies": None, "request_index": 0}]}
    fake_client._post = held
    threads = [threading.Thread(target=fake_client.generate, args=([GenRequest([i, 1, 1])],
                                                                    SamplingParams(n=1, max_tokens=5)))
               for i in range(12)]
    for t in threads:
        t.start()
    for _ in range(1000):
        if len(seen) == 12:
            break
        threading.Event().wait(0.01)
    assert sorted(seen) == [0] * 6 + [1] * 6 and fake_client.load.snapshot() == [48.0, 48.0]
    gate.set()
    for t in threads:
        t.join(10)
    assert fake_client.load.snapshot() == [0.0, 0.0]
