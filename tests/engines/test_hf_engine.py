"""The transformers engine against a real (random-weight) tiny Qwen2 model."""
import pytest
import torch

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.engines.hf import HFEngine, filter_top_k_top_p


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


def test_top_k_top_p_filter():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_top_k_top_p(logits, 2, 1.0)[0, 2:]).all()
    kept = ~torch.isinf(filter_top_k_top_p(logits, 0, 0.7)[0])
    assert kept.tolist() == [True, True, False, False]  # 0.5 < 0.7, 0.5+0.3 >= 0.7


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
