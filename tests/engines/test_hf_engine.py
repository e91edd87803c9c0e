"""The transformers engine against a real (random-weight) tiny Qwen2 model."""
import dataclasses

import pytest
import torch

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.engines.hf import HFEngine


@pytest.fixture(scope="module")
def engine(random_tiny_model, char_tokenizer):
    return HFEngine(random_tiny_model, char_tokenizer)


def prompt_ids(tok, text="12+34="):
    chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    return tok(chat, add_special_tokens=False)["input_ids"]


def test_n_samples_logprobs_match_a_forward_pass(engine, char_tokenizer):
    reqs = [GenRequest(prompt_ids(char_tokenizer)), GenRequest(prompt_ids(char_tokenizer, "7+8="))]
    samples = engine.generate(reqs, SamplingParams(n=3, temperature=0.7, max_tokens=6, seed=0, return_entropy=True))
    assert [s.request_index for s in samples] == [0, 0, 0, 1, 1, 1]
    model = engine.model
    for s in samples:
        assert len(s.logprobs) == len(s.completion_ids) == len(s.entropies) <= 6
        assert s.finish_reason in ("stop", "length")
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logits = model(ids).logits[0, len(s.prompt_ids) - 1:-1] / 0.7
        logp = torch.log_softmax(logits, -1)
        expected = logp.gather(-1, torch.tensor(s.completion_ids)[:, None]).squeeze(-1)
        entropy = -(logp.exp() * logp).sum(-1)
        assert torch.allclose(torch.tensor(s.logprobs), expected, atol=1e-4)
        assert torch.allclose(torch.tensor(s.entropies), entropy, atol=1e-4)


def test_seeded_sampling_is_reproducible(engine, char_tokenizer):
    req = [GenRequest(prompt_ids(char_tokenizer))]
    a = engine.generate(req, SamplingParams(n=4, max_tokens=8, seed=123))
    b = engine.generate(req, SamplingParams(n=4, max_tokens=8, seed=123))
    c = engine.generate(req, SamplingParams(n=4, max_tokens=8, seed=124))
    assert [s.completion_ids for s in a] == [s.completion_ids for s in b]
    assert [s.completion_ids for s in a] != [s.completion_ids for s in c]


def test_a_request_with_its_own_seed_samples_the_same_in_any_batch(engine, char_tokenizer):
    """GenRequest.seed: each sample draws from its own generator, so neither the other requests of the call, their
    number nor the call's seed change it (the random-weight model samples long, varied completions)."""
    params = SamplingParams(n=3, temperature=1.0, max_tokens=12)
    texts = ("12+34=", "7+8=", "90+9=", "5+5=")
    seeded = [GenRequest(prompt_ids(char_tokenizer, t), seed=100 + k) for k, t in enumerate(texts)]
    alone = [s.completion_ids for s in engine.generate(seeded[1:2], params)]
    batch = [s.completion_ids for s in engine.generate(seeded, dataclasses.replace(params, seed=9))]
    assert batch[3:6] == alone and len(set(map(tuple, batch))) > 6   # the samples of a request differ too
    reordered = [s.completion_ids for s in engine.generate(seeded[::-1], params)]
    assert reordered[6:9] == alone
    unseeded = GenRequest(prompt_ids(char_tokenizer, "1+1="))
    with pytest.raises(ValueError, match="every request of a call or on none"):
        engine.generate([seeded[0], unseeded], params)


def test_greedy_matches_generate(engine, char_tokenizer):
    ids = prompt_ids(char_tokenizer)
    ours = engine.generate([GenRequest(ids)], SamplingParams(temperature=0.0, max_tokens=10))[0]
    ref = engine.model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                                eos_token_id=char_tokenizer.eos_token_id, pad_token_id=char_tokenizer.pad_token_id)
    ref_ids = ref[0, len(ids):].tolist()
    assert ours.completion_ids == ref_ids[:len(ours.completion_ids)]


def test_length_finish_reason_and_stop_strings(engine, char_tokenizer):
    ids = prompt_ids(char_tokenizer)
    s = engine.generate([GenRequest(ids)], SamplingParams(max_tokens=3, temperature=1.0, seed=0,
                                                          logits_processors=[_ban_eos(char_tokenizer)]))[0]
    assert s.finish_reason == "length" and len(s.completion_ids) == 3
    # force the text "ab" then anything: stop string "b" must end generation right after it
    forced = _force(char_tokenizer, "abcdef")
    s = engine.generate([GenRequest(ids)], SamplingParams(max_tokens=6, temperature=1.0, seed=0, stop=["b"],
                                                          logits_processors=[forced]))[0]
    assert s.text == "ab" and s.finish_reason == "stop"


def _ban_eos(tok):
    def proc(step, input_ids, logits):
        logits[:, tok.eos_token_id] = float("-inf")
        return logits
    return proc


def _force(tok, text):
    ids = tok(text, add_special_tokens=False)["input_ids"]

    def proc(step, input_ids, logits):
        out = torch.full_like(logits, float("-inf"))
        out[:, ids[min(step, len(ids) - 1)]] = 0.0
        assert input_ids.shape[1] >= step  # the processor sees the history
        return out
    return proc


def test_load_weights_changes_outputs(engine, char_tokenizer, random_tiny_model):
    import copy
    other = copy.deepcopy(random_tiny_model)
    eng = HFEngine(other, char_tokenizer)
    req = [GenRequest(prompt_ids(char_tokenizer))]
    params = SamplingParams(temperature=0.0, max_tokens=5)
    before = eng.generate(req, params)[0].logprobs
    new = {k: v + 0.05 * torch.randn_like(v) for k, v in other.named_parameters()}
    eng.load_weights(new.items())
    after = eng.generate(req, params)[0].logprobs
    assert after != before
    with pytest.raises(KeyError, match="unknown parameter"):
        eng.load_weights([("nope.weight", torch.zeros(1))])


def penalised_reference(model, sample, temperature: float, penalty: float):
    """Log-probs and entropies of the sampled tokens under softmax(z'/T), z' = logits with the repetition penalty
    over the prompt and the completion so far (the engines' convention), from one forward pass."""
    from rlpost.sampling import apply_repetition_penalty, seen_tokens
    ids = sample.prompt_ids + sample.completion_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, len(sample.prompt_ids) - 1:-1].float()
    P = len(sample.prompt_ids)
    seen = seen_tokens([ids[:P + t] for t in range(len(sample.completion_ids))], logits.shape[-1], "cpu")
    logp = torch.log_softmax(apply_repetition_penalty(logits, seen, penalty) / temperature, -1)
    chosen = logp.gather(-1, torch.tensor(sample.completion_ids)[:, None]).squeeze(-1)
    return chosen, -(logp.exp() * logp).sum(-1), logp


def test_engine_repetition_penalty_and_min_p_follow_the_convention(engine, char_tokenizer):
    """Sampler log-probs / entropies = softmax(z'/T) with the penalty, before min-p truncation; sampled tokens
    pass the min-p filter; a strong penalty changes what is sampled."""
    reqs = [GenRequest(prompt_ids(char_tokenizer)), GenRequest(prompt_ids(char_tokenizer, "7+8="))]
    params = dict(n=3, temperature=0.8, max_tokens=8, seed=0, return_entropy=True)
    samples = engine.generate(reqs, SamplingParams(**params, repetition_penalty=1.8, min_p=0.1))
    for s in samples:
        lp, ent, logp = penalised_reference(engine.model, s, 0.8, 1.8)
        assert torch.allclose(torch.tensor(s.logprobs), lp, atol=1e-4)
        assert torch.allclose(torch.tensor(s.entropies), ent, atol=1e-4)
        chosen_p = lp.exp()
        assert (chosen_p >= 0.1 * logp.exp().amax(-1) - 1e-6).all()   # every sampled token passed min-p
    plain = engine.generate(reqs, SamplingParams(**params))
    assert [s.completion_ids for s in plain] != [s.completion_ids for s in samples]
