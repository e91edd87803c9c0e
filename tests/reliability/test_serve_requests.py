"""`rlpost serve` answers malformed request bodies with 4xx and the reason, never 500 (the app on a fake engine)."""
import pytest
from fastapi.testclient import TestClient

from rlpost.serving.server import create_app


class FakeWorker:
    token, model, log_file, host, port = None, "m", None, "127.0.0.1", 0
    weights_version, weights_fingerprint, server = 0, None, None

    class engine:  # noqa: N801
        @staticmethod
        def reset_prefix_cache():
            return None

    async def call(self, fn, *args):
        return fn(*args)

    def generate(self, body):
        return {"samples": [], "echo": body}

    def update_weights(self, body):
        return {"ok": True, "echo": body}


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(FakeWorker()), raise_server_exceptions=False)


GOOD = {"requests": [{"prompt_ids": [1, 2, 3]}], "params": {"n": 2, "max_tokens": 8}}


@pytest.mark.parametrize("body, reason", [
    ("not json", "json"),
    ([], "dict"),
    ({}, "requests"),
    ({"requests": "x"}, "requests"),
    ({"requests": [{"prompt_ids": ["a"]}]}, "prompt_ids"),
    ({"requests": [{"prompt_ids": []}]}, "prompt_ids"),
    ({**GOOD, "params": {"max_tokens": -1}}, "max_tokens"),
    ({**GOOD, "params": {"temprature": 0.5}}, "temprature"),      # a misspelt sampling parameter
    ({**GOOD, "extra": 1}, "extra"),
    ({"requests": [{"prompt_ids": [1], "seed": -1}]}, "seed"),
])
def test_malformed_generate_bodies_get_422_with_the_reason(client, body, reason):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) else {"json": body}
    resp = client.post("/generate", **kwargs)
    assert resp.status_code == 422, (resp.status_code, resp.text)
    assert reason in resp.text.lower()


def test_a_good_body_reaches_the_engine_with_defaults_filled_in(client):
    resp = client.post("/generate", json=GOOD)
    assert resp.status_code == 200
    echo = resp.json()["echo"]
    assert echo["requests"] == [{"prompt_ids": [1, 2, 3], "seed": None}] and echo["params"]["temperature"] == 1.0
    assert echo["params"]["n"] == 2 and echo["seed_offset"] == 0


def test_update_weights_body_is_checked(client):
    assert client.post("/update_weights", json={"transport": "carrier-pigeon"}).status_code == 422
    assert client.post("/update_weights", json={"transport": "file", "path": "/x"}).status_code == 200
    health = client.get("/health").json()
    assert health["weights_version"] == 0 and health["weights_fingerprint"] is None


class SeedEcho:
    """An engine whose sample j of a request is [the request's seed, j]."""

    def generate(self, requests, params, seed_offset=0):
        from rlpost.types import Sample
        return [Sample(prompt_ids=r.prompt_ids, completion_ids=[r.seed, j], logprobs=[0.0, 0.0], request_index=i)
                for i, r in enumerate(requests) for j in range(params.n)]

    def close(self):
        pass


@pytest.fixture()
def seed_echo_workers():
    """Two real HTTP workers (uvicorn, in threads) on the SeedEcho engine."""
    import threading
    import time

    import uvicorn

    from rlpost.engines.vllm_server import free_port
    from rlpost.serving.server import Worker
    servers = []
    for _ in range(2):
        port = free_port()
        worker = Worker(SeedEcho, model="m", token=None, log_file=None, host="127.0.0.1", port=port)
        server = uvicorn.Server(uvicorn.Config(create_app(worker), host="127.0.0.1", port=port, log_level="warning"))
        threading.Thread(target=server.run, daemon=True).start()
        servers.append((server, f"http://127.0.0.1:{port}"))
    deadline = time.time() + 30
    while not all(server.started for server, _ in servers) and time.time() < deadline:
        time.sleep(0.05)
    yield [url for _, url in servers]
    for server, _ in servers:
        server.should_exit = True


def test_a_requests_own_seed_reaches_the_engine_of_whichever_worker_serves_it(seed_echo_workers):
    from rlpost.engines.base import GenRequest, SamplingParams
    from rlpost.engines.vllm_server import VLLMServerEngine
    client = VLLMServerEngine(seed_echo_workers, tokenizer=None, timeout_s=30)
    try:
        reqs = [GenRequest([1, 2], seed=s) for s in (7, 8, 9)]
        samples = client.generate(reqs, SamplingParams(n=2))
        assert [s.completion_ids for s in samples] == [[7, 0], [7, 1], [8, 0], [8, 1], [9, 0], [9, 1]]
        assert [s.completion_ids[0] for s in client.generate([GenRequest([1])] * 2, SamplingParams())] == [None, None]
    finally:
        client.close()


def test_a_bind_beyond_loopback_without_a_token_is_refused(monkeypatch, capsys):
    """`rlpost serve --host 0.0.0.0` without a token exits 2 before loading anything, naming the flags."""
    from rlpost.cli import main
    from rlpost.serving.server import check_bind
    monkeypatch.delenv("RLPOST_SERVE_TOKEN", raising=False)
    assert main(["serve", "no-such-model-is-loaded", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "0.0.0.0" in err and "--token" in err and "--allow-unauthenticated" in err
    for host in ("10.1.2.3", "::", "example.org"):
        with pytest.raises(PermissionError, match="--allow-unauthenticated"):
            check_bind(host, None)
    check_bind("0.0.0.0", "s3cret")                              # a token: allowed
    check_bind("0.0.0.0", None, allow_unauthenticated=True)      # said so: allowed
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
        check_bind(host, None)                                   # loopback: allowed
