"""remote_reward_model sends one request per batch of completions, several batches in flight at once, and puts the
scores back in the completions' order."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlpost.rewards.reward_model import RemoteRewardModel


class JudgeServer:
    """A judge that scores len(completion) and holds each request until ``hold`` requests are in flight together
    (a barrier: with fewer concurrent requests it times out and answers 503)."""

    def __init__(self, hold: int):
        self.batches, self.barrier = [], threading.Barrier(hold, timeout=5)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.batches.append(list(body["completions"]))
                try:
                    owner.barrier.wait()
                    status, reply = 200, {"scores": [float(len(c)) for c in body["completions"]]}
                except threading.BrokenBarrierError:
                    status, reply = 503, {"error": "requests did not arrive together"}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/score"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def judge():
    server = JudgeServer(hold=3)
    yield server
    server.close()


def test_batches_are_sent_together_and_scores_keep_their_order(judge):
    completions = ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"]
    remote = RemoteRewardModel(judge.url, batch_size=2, max_concurrency=3, retries=0, timeout_s=20, scale=2.0)
    assert remote(["p"] * 6, completions) == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]   # scale * len
    assert sorted(judge.batches) == [["a", "bb"], ["ccc", "dddd"], ["eeeee", "ffffff"]]   # one request per batch


def test_one_batch_at_a_time_cannot_pass_the_barrier(judge):
    remote = RemoteRewardModel(judge.url, batch_size=2, max_concurrency=1, retries=0, timeout_s=20)
    with pytest.raises(RuntimeError, match="503"):
        remote(["p"] * 6, ["a", "bb", "ccc", "dddd", "eeeee", "ffffff"])
