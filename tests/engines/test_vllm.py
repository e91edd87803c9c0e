"""The colocated vLLM engine (rlpost/engines/vllm_engine.py) against the learner's own forward pass.

One in-process engine for the whole module (a vLLM start-up costs ~5-20 s on CPU). Tolerances: fp32 on CPU,
vLLM's kernels vs transformers' -- measured max |diff| ~3e-6 for log-probs and ~1e-6 for entropies; the tests
allow 1e-4.
"""

import pytest
import torch

pytest.importorskip("vllm")

from rlpost.algos.losses import ClipParams  # noqa: E402
from rlpost.batch import collate  # noqa: E402
from rlpost.config import ModelConfig, OptimConfig  # noqa: E402
from rlpost.engines.base import EngineError, GenRequest, SamplingParams  # noqa: E402
from rlpost.learner import Learner, LearnerSettings, build_scheduler, token_logprobs  # noqa: E402
from rlpost.models.loading import load_model, load_tokenizer  # noqa: E402
from rlpost.types import Prompt, Sample, Trajectory  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
TOL = 1e-4


@pytest.fixture(scope="module")
def tok(tiny_model_path):
    return load_tokenizer(str(tiny_model_path), ModelConfig())


@pytest.fixture(scope="module")
def engine(tiny_model_path, tok):
    from rlpost.engines.vllm_engine import VLLMEngine
    eng = VLLMEngine(str(tiny_model_path), tok, dtype="float32", gpu_memory_utilization=0.2, max_model_len=256,
                     max_lora_rank=8, max_loras=2)   # LoRA on: no adapter is active until one is loaded
    yield eng
    eng.close()


@pytest.fixture()
def model(tiny_model_path):
    return load_model(str(tiny_model_path), ModelConfig(), "cpu")


def prompt_ids(tok, question="12+34="):
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def requests(tok):
    return [GenRequest(prompt_ids(tok, q)) for q in ("12+34=", "7+58=", "90+9=")]


def learner_view(model, tok, samples, temperature):
    """The learner's log-probs and entropies [B,T] of the sampled tokens, and the batch."""
    batch = collate([Trajectory(Prompt(0, ""), 0, [s], s.text) for s in samples], tok.pad_token_id)
    with torch.no_grad():
        logp, ent = token_logprobs(model.eval(), batch, temperature, True)
    return batch, logp, ent


def max_diff(a, b, mask):
    return float(((a - b).abs() * mask).max())


def test_generate_contract(engine, tok):
    reqs = requests(tok)
    samples = engine.generate(reqs, SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=1))
    assert len(samples) == 12 and [s.request_index for s in samples] == [i // 4 for i in range(12)]
    for s in samples:
        assert s.prompt_ids == reqs[s.request_index].prompt_ids
        assert len(s.logprobs) == len(s.completion_ids) == len(s.loss_mask) and s.entropies is None
        assert s.text == tok.decode(s.completion_ids, skip_special_tokens=True)
        assert s.finish_reason == "stop" and s.completion_ids[-1] == tok.eos_token_id   # EOS kept, like hf
    short = engine.generate(reqs[:1], SamplingParams(n=2, temperature=1.0, max_tokens=1, seed=1))
    assert [s.finish_reason for s in short] == ["length", "length"] and all(len(s.completion_ids) == 1 for s in short)


def test_stop_strings_are_kept(engine, tok):
    greedy = engine.generate(requests(tok)[:1], SamplingParams(n=2, temperature=0.0, max_tokens=8))
    assert greedy[0].completion_ids == greedy[1].completion_ids and len(greedy[0].text) >= 2
    first = greedy[0].text[0]
    stopped = engine.generate(requests(tok)[:1], SamplingParams(n=1, temperature=0.0, max_tokens=8, stop=[first]))[0]
    assert stopped.text == first and stopped.finish_reason == "stop" and len(stopped.completion_ids) == 1


def test_seeds_are_per_row_and_global(engine, tok):
    reqs = requests(tok)
    params = SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=5)
    a, b = engine.generate(reqs, params), engine.generate(reqs, params)
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    tail = engine.generate(reqs[1:], params, seed_offset=1)       # a worker's slice of the same batch
    assert [s.completion_ids for s in tail] == [s.completion_ids for s in a[4:]]
    other = engine.generate(reqs, SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=6))
    assert [s.completion_ids for s in other] != [s.completion_ids for s in a]


def test_a_request_with_its_own_seed_samples_the_same_in_any_batch(engine, tok):
    seeded = [GenRequest(r.prompt_ids, seed=100 + k) for k, r in enumerate(requests(tok))]
    params = SamplingParams(n=3, temperature=1.0, max_tokens=8, seed=5)
    alone = [s.completion_ids for s in engine.generate(seeded[1:2], params)]
    unseeded_call = SamplingParams(n=3, temperature=1.0, max_tokens=8)
    batch = [s.completion_ids for s in engine.generate(seeded[::-1], unseeded_call)]
    assert batch[3:6] == alone and len(set(map(tuple, batch))) > 3


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 5, 1.0), (1.2, 0, 0.8),
                                                      (0.0, 0, 1.0)])
def test_logprobs_and_entropies_match_the_learner(engine, tok, model, temperature, top_k, top_p):
    """Sampled-token log-probs = log softmax(z/T) before top-k/top-p (hf convention), entropies of softmax(z/T)."""
    samples = engine.generate(requests(tok), SamplingParams(n=4, temperature=temperature, top_k=top_k, top_p=top_p,
                                                            max_tokens=8, seed=3, return_entropy=True))
    batch, logp, ent = learner_view(model, tok, samples, temperature)
    assert max_diff(logp, batch.sampler_logprobs, batch.response_mask) < TOL
    assert max_diff(ent, batch.sampler_entropies, batch.response_mask) < TOL


def test_logits_processor_hook(engine, tok, model):
    """fn(step, input_ids [N,L], logits [N,V]) runs before temperature: halving the logits = sampling at 2T."""
    seen = []

    def halve(step, input_ids, logits):
        seen.append((step, input_ids.clone()))
        return logits / 2

    reqs = requests(tok)
    samples = engine.generate(reqs, SamplingParams(n=2, temperature=0.8, max_tokens=8, seed=2, return_entropy=True,
                                                   logits_processors=[halve]))
    batch, logp, ent = learner_view(model, tok, samples, 1.6)
    assert max_diff(logp, batch.sampler_logprobs, batch.response_mask) < TOL
    assert max_diff(ent, batch.sampler_entropies, batch.response_mask) < TOL
    step0, ids0 = seen[0]
    assert step0 == 0 and ids0.shape[0] == 6                          # every row of the call, at step 0
    longest = max(len(r.prompt_ids) for r in reqs)
    assert ids0.shape[1] == longest                                   # left-padded prompts
    step1, ids1 = next((s, i) for s, i in seen if s == 1)
    assert ids1.shape[1] == longest + 1                               # ... then one generated token per step
    firsts = sorted(s.completion_ids[0] for s in samples)
    assert sorted(ids1[:, -1].tolist()) == firsts


def test_hapo_temperature_processor_runs(engine, tok):
    from rlpost.algos.hapo import HAPOTemperature, HAPOTemperatureParams
    state = {"q": 0.0, "sigma": 1.0, "h_pos_max": 2.0, "h_neg_min": -2.0}
    for mode in ("signed", "released_code"):
        proc = HAPOTemperature(HAPOTemperatureParams(temperature_tau=0.1, h_sign_mode=mode), state=dict(state))
        samples = engine.generate(requests(tok), SamplingParams(n=2, temperature=1.0, max_tokens=6, seed=2,
                                                                logits_processors=[proc]))
        assert len(samples) == 6
        metrics = proc.metrics()
        if mode == "signed":    # the prose reading: low-entropy tokens cool, high-entropy ones heat (per token)
            assert metrics["hapo/temperature_min"] < 1.0 < metrics["hapo/temperature_max"]
        else:                   # the released code: h~ >= 0, so no token is cooled, and some are heated
            assert 1.0 <= metrics["hapo/temperature_min"] < metrics["hapo/temperature_max"]


def test_repetition_penalty_and_min_p_match_the_hf_convention(engine, tok, model):
    """vLLM applies the penalty after rlpost's processor and min-p before top-k/top-p; the returned log-probs and
    entropies still follow the hf engine's convention (penalised softmax(z'/T) before truncation)."""
    from test_hf_engine import penalised_reference
    samples = engine.generate(requests(tok), SamplingParams(n=3, temperature=0.9, top_k=20, min_p=0.05,
                                                            repetition_penalty=1.5, max_tokens=8, seed=4,
                                                            return_entropy=True))
    model.eval()
    for s in samples:
        lp, ent, _ = penalised_reference(model, s, 0.9, 1.5)
        assert torch.allclose(torch.tensor(s.logprobs), lp, atol=TOL), (s.logprobs, lp)
        assert torch.allclose(torch.tensor(s.entropies), ent, atol=TOL)


def test_score_matches_learner(engine, tok, model):
    samples = engine.generate(requests(tok), SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=4))
    scores = engine.score([(s.prompt_ids, s.completion_ids) for s in samples])
    batch, logp, _ = learner_view(model, tok, samples, 1.0)
    padded = torch.zeros_like(logp)
    for i, sc in enumerate(scores):
        padded[i, :len(sc)] = torch.tensor(sc)
    assert max_diff(padded, logp, batch.response_mask) < TOL


def test_weight_sync_after_a_learner_step(engine, tok, model, tiny_model_path):
    """After a GRPO step and load_weights, vLLM's log-probs of a fixed prompt+completion equal the learner's
    (within TOL) and differ from the pre-step ones."""
    reqs = requests(tok)
    samples = engine.generate(reqs, SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=9))
    fixed = [(s.prompt_ids, s.completion_ids) for s in samples[:4]]
    before = engine.score(fixed)

    settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=8, max_grad_norm=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    learner = Learner(model.train(), opt, build_scheduler(opt, OptimConfig(), 1), settings)
    trajs = [Trajectory(Prompt(0, ""), s.request_index, [s], s.text, reward=float(k % 2))
             for k, s in enumerate(samples)]
    batch = collate(trajs, tok.pad_token_id)
    adv = (batch.rewards - 0.5)[:, None] * batch.response_mask
    learner.update(batch, adv, learner.prepare(batch))

    engine.load_weights(model.named_parameters())
    after = engine.score(fixed)
    samples_fixed = [Sample(p, c, [0.0] * len(c)) for p, c in fixed]
    fbatch, logp, _ = learner_view(model, tok, samples_fixed, 1.0)
    mask = fbatch.response_mask
    flat = lambda rows: torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True)  # noqa
    assert max_diff(flat(after), logp, mask) < TOL
    assert max_diff(flat(after), flat(before), mask) > 1e-2
    # sampling after the sync uses the new weights too
    new = engine.generate(reqs, SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=1))
    nbatch, nlogp, _ = learner_view(model, tok, new, 1.0)
    assert max_diff(nlogp, nbatch.sampler_logprobs, nbatch.response_mask) < TOL
    # put the base weights back for the other tests of this module
    engine.load_weights(load_model(str(tiny_model_path), ModelConfig(), "cpu").named_parameters())
    assert max_diff(flat(engine.score(fixed)), flat(before), mask) < TOL


def test_lora_adapter_sync_matches_the_learner_as_merged_sync_does(engine, tok, tiny_model_path):
    """A peft policy after a GRPO step: with its adapter loaded (model.lora.sync=adapter, vLLM's LoRA) and with
    its merged weights loaded (sync=merged), vLLM's sampled-token log-probs equal the learner's (within TOL); the
    two live adapter versions switch without a reload, and each gives its own version's log-probs."""
    from peft import LoraConfig, get_peft_model

    from rlpost.models.lora import merged_named_parameters
    from rlpost.models.lora_sync import adapter_weights
    torch.manual_seed(0)
    policy = get_peft_model(load_model(str(tiny_model_path), ModelConfig(), "cpu"),
                            LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False))
    engine.load_adapter(adapter_weights(policy, "policy-v0"))
    reqs, params = requests(tok), SamplingParams(n=4, temperature=1.0, max_tokens=8, seed=5)
    v0 = engine.generate(reqs, params)
    batch, logp, _ = learner_view(policy, tok, v0, 1.0)
    assert max_diff(logp, batch.sampler_logprobs, batch.response_mask) < TOL

    settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=8, max_grad_norm=0.0)
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    learner = Learner(policy.train(), opt, build_scheduler(opt, OptimConfig(), 1), settings)
    trajs = [Trajectory(Prompt(0, ""), s.request_index, [s], s.text, reward=float(k % 2)) for k, s in enumerate(v0)]
    batch = collate(trajs, tok.pad_token_id)
    learner.update(batch, (batch.rewards - 0.5)[:, None] * batch.response_mask, learner.prepare(batch))

    engine.load_adapter(adapter_weights(policy, "policy-v1"))
    assert engine.live_adapters() == ["policy-v0", "policy-v1"]
    v1 = engine.generate(reqs, params)
    batch, logp, _ = learner_view(policy, tok, v1, 1.0)
    assert max_diff(logp, batch.sampler_logprobs, batch.response_mask) < TOL
    v1_logprobs = batch.sampler_logprobs
    assert engine.use_adapter("policy-v0")                               # still live: no reload
    assert engine.generate(reqs, params)[0].logprobs == v0[0].logprobs
    assert not engine.use_adapter("policy-v7")

    engine.load_weights(merged_named_parameters(policy))                  # merged sync of the same version
    assert engine.active_lora is None
    merged = engine.generate(reqs, params)
    batch, logp, _ = learner_view(policy, tok, merged, 1.0)
    assert max_diff(logp, batch.sampler_logprobs, batch.response_mask) < TOL
    assert max_diff(batch.sampler_logprobs, v1_logprobs, batch.response_mask) < TOL   # same samples, same numbers
    engine.load_weights(load_model(str(tiny_model_path), ModelConfig(), "cpu").named_parameters())


def test_concurrent_calls_sample_as_one_batch_call(engine, tok):
    """generate from several threads at once (continuous batching, EngineDriver): each row samples what it samples
    in one batch call -- token ids, log-probs (kept-mass correction included) and entropies."""
    from concurrent.futures import ThreadPoolExecutor
    assert engine.continuous_batching
    reqs = requests(tok)
    params = SamplingParams(n=2, temperature=0.9, top_k=20, max_tokens=12, seed=4, return_entropy=True)
    batch = engine.generate(reqs, params)
    with ThreadPoolExecutor(len(reqs)) as pool:   # request i alone is row block i of the batch: seed_offset=i
        alone = [s for out in pool.map(lambda i: engine.generate([reqs[i]], params, seed_offset=i), range(3))
                 for s in out]
    assert [s.completion_ids for s in alone] == [s.completion_ids for s in batch]
    assert [s.logprobs for s in alone] == [s.logprobs for s in batch]
    assert [s.entropies for s in alone] == [s.entropies for s in batch] and all(s.entropies for s in batch)


def no_eos(eos_id):
    def processor(step, input_ids, logits):
        logits[:, eos_id] = -float("inf")
        return logits
    return processor


def test_a_request_sent_while_another_runs_joins_its_batch(engine, tok):
    """A 2-token request sent while a 200-token one is decoding returns long before it: it joined the running batch
    at the next step instead of waiting for the long call to end."""
    import threading
    started, long_done, result = threading.Event(), threading.Event(), {}
    cut = no_eos(tok.eos_token_id)

    def long_processor(step, input_ids, logits):
        if step == 5:
            started.set()
        return cut(step, input_ids, logits)

    def long_call():
        result["long"] = engine.generate(requests(tok)[:1], SamplingParams(max_tokens=200, seed=1,
                                                                           logits_processors=[long_processor]))
        long_done.set()

    thread = threading.Thread(target=long_call)
    thread.start()
    assert started.wait(60)
    short = engine.generate(requests(tok)[1:2], SamplingParams(max_tokens=2, seed=1))
    assert not long_done.is_set() and len(short[0].completion_ids) == 2
    thread.join(120)
    assert len(result["long"][0].completion_ids) == 200


def test_a_failing_call_fails_alone(engine, tok):
    """A logits processor that raises fails its own call with its error; a call running beside it goes on decoding
    after the failure, samples what it samples alone, and the engine goes on serving."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    started, broke, after = threading.Event(), threading.Event(), []
    cut = no_eos(tok.eos_token_id)

    def broken(step, input_ids, logits):
        if step == 3:
            broke.set()
            raise ValueError("broken processor")
        return logits

    def steady(step, input_ids, logits):
        started.set()
        if broke.is_set():
            after.append(step)
        return cut(step, input_ids, logits)

    reqs = requests(tok)
    params = SamplingParams(n=2, max_tokens=60, seed=7, logits_processors=[steady])
    with ThreadPoolExecutor(2) as pool:
        ok = pool.submit(engine.generate, reqs[:1], params)
        assert started.wait(60)
        bad = pool.submit(engine.generate, reqs[1:], SamplingParams(max_tokens=20, logits_processors=[broken]))
        with pytest.raises(ValueError, match="broken processor"):
            bad.result(120)
        beside = ok.result(120)
    assert after and all(len(s.completion_ids) == 60 for s in beside)   # it ran on after the other call failed
    assert [s.completion_ids for s in beside] == [s.completion_ids for s in engine.generate(reqs[:1], params)]


def test_limits_fail_loudly(engine, tok, tiny_model_path):
    from rlpost.engines.vllm_engine import VLLMEngine, default_max_model_len
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate(requests(tok), SamplingParams(max_tokens=300))
    with pytest.raises(ValueError, match="sleep mode"):
        VLLMEngine(str(tiny_model_path), tok, enable_sleep_mode=True)
    assert default_max_model_len(str(tiny_model_path), 32) == 512    # 1024 + 32 -> 1280, capped by the model's 512


def test_close_frees_the_engine(engine, tok):
    engine.close()
    assert engine.llm is None
    with pytest.raises(EngineError, match="after close"):
        engine.generate(requests(tok), SamplingParams())
    engine.close()  # idempotent

