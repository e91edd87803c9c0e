"""The OpenAI-compatible routes of ``rlpost serve`` (rlpost/serving/openai_api.py), driven by the ``openai`` client:
first over a fake engine (the routes' schema, fast), then against one real worker on the tiny model (module-scoped,
LoRA on): the base weights, then LoRA adapter versions and a full-weight update (which the OpenAI routes follow)."""
import math
import threading
import time

import pytest

openai = pytest.importorskip("openai")

TOKEN = "openai-test-token-81c2"
ENGINE_ARGS = ["--dtype", "float32", "--gpu-memory-utilization", "0.2", "--max-model-len", "256"]


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    from rlpost.config import ModelConfig
    from rlpost.models.loading import load_tokenizer
    return load_tokenizer(str(tiny_model_path), ModelConfig())


class CountingEngine:
    """Completion j of a request: the prompt's first ``max_tokens`` ids shifted by j, each with log-prob -(t+1)/10."""
    max_model_len = 64

    def __init__(self, tok):
        self.tok, self.calls = tok, []

    def generate(self, requests, params, seed_offset=0):
        from rlpost.types import Sample
        self.calls.append((requests, params))
        out = []
        for i, r in enumerate(requests):
            for j in range(params.n):
                ids = r.prompt_ids[j:j + params.max_tokens]
                out.append(Sample(prompt_ids=r.prompt_ids, completion_ids=ids, text=self.tok.decode(ids),
                                  logprobs=[-(t + 1) / 10 for t in range(len(ids))], finish_reason="length",
                                  request_index=i))
        return out

    def close(self):
        pass


@pytest.fixture(scope="module")
def fake_server(tok):
    """A real HTTP worker (uvicorn in a thread) on CountingEngine, with a token."""
    import uvicorn

    from rlpost.engines.vllm_server import free_port
    from rlpost.serving.server import Worker, create_app
    port = free_port()
    engine = CountingEngine(tok)
    worker = Worker(lambda: engine, model="models/tiny", token=TOKEN, log_file=None, host="127.0.0.1", port=port,
                    tokenizer=tok, served_model_name="tiny")
    server = uvicorn.Server(uvicorn.Config(create_app(worker), host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True


def test_openai_client_on_the_routes_schema(fake_server, tok):
    url, engine = fake_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["tiny"]

    prompt_ids = tok("12+34=", add_special_tokens=False)["input_ids"]
    resp = client.completions.create(model="tiny", prompt="12+34=", max_tokens=3, n=2, logprobs=0, seed=5,
                                     temperature=0.7, stop="\n")
    _, params = engine.calls[-1]
    assert (params.n, params.max_tokens, params.seed, params.temperature, params.stop) == (2, 3, 5, 0.7, ["\n"])
    assert [c.index for c in resp.choices] == [0, 1]
    c0, c1 = resp.choices
    assert c0.token_ids == prompt_ids[:3] and c1.token_ids == prompt_ids[1:4]     # vLLM's extension fields
    assert c0.prompt_token_ids == prompt_ids
    assert c0.logprobs.token_logprobs == [-0.1, -0.2, -0.3]
    assert c0.logprobs.tokens == [tok.decode([i]) for i in prompt_ids[:3]] and c0.logprobs.text_offset == [0, 1, 2]
    assert c0.text == "12+" and c0.finish_reason == "length"
    # usage: the prompt once (its two samples share it), every completion token
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens, resp.usage.total_tokens) == (6, 6, 12)

    messages = [{"role": "user", "content": "7+58="}]
    chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=4, logprobs=True)
    expected_prompt = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)["input_ids"]
    requests, params = engine.calls[-1]
    assert requests[0].prompt_ids == expected_prompt and params.max_tokens == 4
    choice = chat.choices[0]
    assert chat.prompt_token_ids == expected_prompt and choice.token_ids == expected_prompt[:4]
    assert [e.logprob for e in choice.logprobs.content] == [-0.1, -0.2, -0.3, -0.4]
    assert choice.message.role == "assistant" and choice.message.content == tok.decode(expected_prompt[:4])
    plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=2)
    assert plain.choices[0].logprobs is None and plain.choices[0].token_ids == expected_prompt[:2]
    # no max_tokens: the rest of the context (max_model_len - prompt length)
    client.chat.completions.create(model="tiny", messages=messages)
    assert engine.calls[-1][1].max_tokens == CountingEngine.max_model_len - len(expected_prompt)


def test_openai_routes_refuse_what_they_cannot_do(fake_server):
    url, _ = fake_server
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError, match="'tiny'"):
        client.completions.create(model="gpt-4", prompt="1+1=")
    cases = [(dict(prompt="1+1=", logprobs=2), "sampled token"), (dict(prompt="1+1=", echo=True), "echo"),
             (dict(prompt="1+1=", max_tokens=100), "max_model_len"), (dict(prompt="1+1=", stream=True), "stream")]
    for kwargs, reason in cases:
        with pytest.raises(openai.BadRequestError, match=reason):
            client.completions.create(model="tiny", **kwargs)
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "1"}], logprobs=True,
                                       top_logprobs=3)
    with pytest.raises(openai.BadRequestError, match="tools"):    # unknown fields are never ignored
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "1"}],
                                       tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])


def test_requests_for_the_served_model_are_rewritten_to_the_active_adapter():
    """rlpost serve's middleware on vLLM's routes (OpenAIDefaults): the served name, the checkpoint path or no model
    -> the active adapter's name (the served name without one); other names as asked; token ids on by default on
    completions and chat only, and a caller's ``return_token_ids: false`` kept."""
    from types import SimpleNamespace

    from rlpost.serving.server import OpenAIDefaults
    engine = SimpleNamespace(active_lora=None)
    defaults = OpenAIDefaults(None, SimpleNamespace(served_model_name="tiny", model="models/tiny", engine=engine))
    chat = "/v1/chat/completions"
    assert defaults.rewrite(chat, {"messages": []}) == {"messages": [], "model": "tiny", "return_token_ids": True}
    assert defaults.rewrite(chat, {"model": "models/tiny"})["model"] == "tiny"
    engine.active_lora = SimpleNamespace(lora_name="policy-v2")
    for asked in ({}, {"model": None}, {"model": ""}, {"model": "tiny"}, {"model": "models/tiny"}):
        assert defaults.rewrite(chat, asked)["model"] == "policy-v2", asked
    assert defaults.rewrite(chat, {"model": "policy-v1"})["model"] == "policy-v1"
    assert defaults.rewrite(chat, {"model": "gpt-4"})["model"] == "gpt-4"          # vLLM answers 404
    assert defaults.rewrite("/v1/completions", {"return_token_ids": False}) == {"model": "policy-v2",
                                                                                  "return_token_ids": False}
    assert defaults.rewrite("/v1/responses", {"model": "tiny"}) == {"model": "policy-v2"}


# ------------------------------------------------------------------------------------- one real rlpost serve worker
@pytest.fixture(scope="module")
def worker(tiny_model_path, tmp_path_factory):
    pytest.importorskip("vllm")
    from rlpost.engines.vllm_server import start_workers, stop_workers
    handles = start_workers(str(tiny_model_path), 1, token=TOKEN, timeout_s=600,
                            engine_args=[*ENGINE_ARGS, "--served-model-name", "tiny-arith", "--max-lora-rank", "8",
                                         "--max-loras", "2"],   # LoRA on for the adapter test (the last one)
                            log_dir=str(tmp_path_factory.mktemp("openai-worker-logs")))
    yield handles[0]
    stop_workers(handles, timeout_s=20)


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_client_against_a_real_worker(worker, tok, tiny_model_path):
    """Models list, a completion and a chat completion with log-probs and token ids from the real engine; the ids
    are exactly what the engine sampled (the learner's log-probs of them agree with the returned ones), and the
    token is required."""
    import torch

    from rlpost.config import ModelConfig
    from rlpost.models.loading import load_model
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{worker.url}/v1", api_key="wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny-arith"]

    messages = [{"role": "user", "content": "12+34="}]
    chat = client.chat.completions.create(model="tiny-arith", messages=messages, max_tokens=12, logprobs=True,
                                          temperature=1.0, seed=3, n=2)
    prompt = tok(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                 add_special_tokens=False)["input_ids"]
    assert chat.prompt_token_ids == prompt and len(chat.choices) == 2
    model = load_model(str(tiny_model_path), ModelConfig(), "cpu").eval()
    for choice in chat.choices:
        ids, lps = choice.token_ids, [e.logprob for e in choice.logprobs.content]
        assert 0 < len(ids) == len(lps) <= 12 and all(lp <= 0 and math.isfinite(lp) for lp in lps)
        assert tok.decode(ids, skip_special_tokens=True) == choice.message.content
        with torch.no_grad():   # the learner's log-probs of the returned ids, at temperature 1
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1]
            learner = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        assert max(abs(a - b) for a, b in zip(learner.tolist(), lps)) < 1e-4
    assert chat.usage.prompt_tokens == len(prompt)
    assert chat.usage.completion_tokens == sum(len(c.token_ids) for c in chat.choices)

    text_prompt = tok.apply_chat_template([{"role": "user", "content": "7+58="}], tokenize=False,
                                          add_generation_prompt=True)
    comp = client.completions.create(model="tiny-arith", prompt=text_prompt, max_tokens=8, logprobs=0, temperature=0)
    choice = comp.choices[0]
    assert choice.prompt_token_ids == tok(text_prompt, add_special_tokens=False)["input_ids"]
    assert len(choice.token_ids) == len(choice.logprobs.token_logprobs) > 0
    greedy = client.completions.create(model="tiny-arith", prompt=choice.prompt_token_ids, max_tokens=8,
                                       temperature=0)
    assert greedy.choices[0].token_ids == choice.token_ids and greedy.choices[0].text == choice.text


def _lora_adapter(tiny_model_path, seed: int):
    """A rank-8 adapter on the attention projections with random A and B (B != 0, so the greedy tokens move)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from rlpost.config import ModelConfig
    from rlpost.models.loading import load_model
    torch.manual_seed(seed)
    return get_peft_model(load_model(str(tiny_model_path), ModelConfig(), "cpu"),
                          LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                     init_lora_weights=False))


@pytest.mark.vllm
@pytest.mark.slow
def test_openai_routes_serve_the_active_adapter(worker, tiny_model_path, tmp_path):
    """With adapter sync the OpenAI routes follow the policy as /generate does: the served name runs on the active
    adapter (the response names it), an older live version runs when named, /v1/models lists them, and a
    full-weight update brings the served name back to the engine's weights."""
    import requests as http

    from rlpost.models.lora_sync import adapter_weights, write_adapter
    from rlpost.serving.weights import save_weights_file
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client = openai.OpenAI(base_url=f"{worker.url}/v1", api_key=TOKEN, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "12+34="}]

    def post(route, body):
        r = http.post(f"{worker.url}{route}", json=body, headers=auth, timeout=120)
        assert r.status_code == 200, r.text
        return r.json()

    def chat(model):
        """(the response's model, its greedy token ids, the prompt's ids) of a chat completion."""
        r = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        return r.model, r.choices[0].token_ids, r.prompt_token_ids

    def generate(prompt_ids):
        body = {"requests": [{"prompt_ids": prompt_ids}], "params": {"temperature": 0, "max_tokens": 8}}
        return post("/generate", body)["samples"][0]["completion_ids"]

    def load(name, seed):
        path = write_adapter(adapter_weights(_lora_adapter(tiny_model_path, seed), name), tmp_path / name)
        assert post("/load_adapter", {"name": name, "transport": "file", "path": str(path)})["adapter"] == name

    assert post("/use_adapter", {"name": "policy-v1"}) == {"ok": False}      # nothing live yet
    served, base, prompt = chat("tiny-arith")
    assert served == "tiny-arith" and base == generate(prompt)                # no adapter: the base, as before

    load("policy-v1", seed=1)
    served, v1, _ = chat("tiny-arith")
    assert served == "policy-v1" and v1 == generate(prompt) and v1 != base   # the adapter's greedy tokens
    assert chat(str(tiny_model_path))[:2] == ("policy-v1", v1)               # the checkpoint path: the policy too
    comp = client.completions.create(model="tiny-arith", prompt=prompt, max_tokens=8, temperature=0)
    assert comp.model == "policy-v1" and comp.choices[0].token_ids == v1
    for route, body in [("/v1/responses", {"input": "12+34=", "max_output_tokens": 8}),
                        ("/v1/messages", {"messages": messages, "max_tokens": 8})]:   # vLLM's other two
        assert post(route, {"model": "tiny-arith", "temperature": 0, **body})["model"] == "policy-v1", route

    load("policy-v2", seed=2)
    served, v2, _ = chat("tiny-arith")
    assert served == "policy-v2" and v2 == generate(prompt) and v2 not in (v1, base)
    assert chat("policy-v1")[:2] == ("policy-v1", v1)                        # an older live version, by name
    assert [m.id for m in client.models.list().data] == ["tiny-arith", "policy-v1", "policy-v2"]
    assert post("/use_adapter", {"name": "policy-v1"}) == {"ok": True}
    assert chat("tiny-arith")[:2] == ("policy-v1", v1) and generate(prompt) == v1
    with pytest.raises(openai.NotFoundError):
        chat("policy-v0")                                                    # never loaded

    from rlpost.config import ModelConfig
    from rlpost.models.loading import load_model
    path = save_weights_file(load_model(str(tiny_model_path), ModelConfig(), "cpu").named_parameters(),
                             str(tmp_path))
    post("/update_weights", {"transport": "file", "path": path})             # full weights: no adapter on top
    assert chat("tiny-arith")[:2] == ("tiny-arith", base) and generate(prompt) == base
    assert http.get(f"{worker.url}/health", headers=auth, timeout=10).json()["adapter"] is None


@pytest.mark.vllm
@pytest.mark.slow
def test_sigterm_stops_the_worker_and_its_engine_processes(worker):
    """Last in this module (it ends the worker): SIGTERM to the `rlpost serve` process alone (not its group) ends
    vLLM's engine core and model worker too; uvicorn re-raises the signal after its shutdown, which used to end
    the process before the engine was stopped, leaving both with their reserved memory."""
    import os
    import signal
    import time
    group = os.getpgid(worker.process.pid)
    assert len(psutil_group(group)) >= 2                      # the server and at least the engine core
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=60) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while psutil_group(group) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert psutil_group(group) == []


def psutil_group(pgid: int) -> list:
    """The live processes of a process group."""
    import os

    import psutil
    alive = []
    for p in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return alive
