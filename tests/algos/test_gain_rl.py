"""GAIN-RL (rlpost/algos/gain_rl.py): angle concentration identities, scores on a real tiny Qwen2, the sampler."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from rlpost.algos.data_samplers import DATA_SAMPLERS, RandomSampler
from rlpost.algos.gain_rl import (
    GainRLParams, GainRLSampler, MLPInputHook, angle_cache_key, angle_concentration, angle_terms,
    cached_angle_scores, common_prefix_len, compute_angle_scores, load_angle_order, mu_update, rank_order,
    sequence_angle,
)


def _brute(hidden, mask, n_prefix, n_suffix):
    """C_intra, C_inter from the full cosine matrix of each row's valid tokens."""
    intra, inter = [], []
    for h, m in zip(hidden, mask):
        x = F.normalize(h[m.bool()].double(), dim=-1)
        cos = x @ x.T
        q = slice(n_prefix, x.shape[0] - n_suffix)
        intra.append(cos[q, q].mean().item())
        inter.append(cos[q, :n_prefix].mean().item())
    return torch.tensor(intra, dtype=torch.float64), torch.tensor(inter, dtype=torch.float64)


def test_angle_terms_by_hand():
    # P = [(1,0)], Q = [(1,0), (0,1)] (n_prefix = 1): cos(Q,Q) = [[1,0],[0,1]] -> mean 0.5
    #   cos(Q,P) = [1, 0] -> mean 0.5;  score = 0.5 + 0.5 = 1; with w_inter = 8: 0.5 + 4 = 4.5
    #   identity: ||(1,1)||^2 / 2^2 = 0.5;  <(1,1), (1,0)> / (2*1) = 0.5
    hidden = torch.tensor([[[3.0, 0.0], [2.0, 0.0], [0.0, 5.0]]])
    mask = torch.ones(1, 3)
    c_intra, c_inter = angle_terms(hidden, mask, n_prefix=1)
    assert c_intra.item() == pytest.approx(0.5) and c_inter.item() == pytest.approx(0.5)
    assert angle_concentration(hidden, mask, 1).item() == pytest.approx(1.0)
    assert angle_concentration(hidden, mask, 1, w_inter=8.0).item() == pytest.approx(4.5)


def test_sum_of_unit_vectors_matches_brute_force_cosines():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 12, 6, generator=g)
    mask = torch.ones(3, 12)
    mask[1, 9:] = 0                      # right padding
    mask[2, :4] = 0                      # left padding
    for n_prefix, n_suffix in [(0, 0), (3, 1), (2, 2)]:
        c_intra, c_inter = angle_terms(hidden, mask, n_prefix, n_suffix)
        b_intra, b_inter = _brute(hidden, mask, n_prefix, n_suffix)
        assert torch.allclose(c_intra.double(), b_intra, atol=1e-5)
        if n_prefix:
            assert torch.allclose(c_inter.double(), b_inter, atol=1e-5)
    # full-sequence angle = mean of the whole cosine matrix; per-row prefix lengths as a tensor
    assert torch.allclose(sequence_angle(hidden, mask).double(), _brute(hidden, mask, 0, 0)[0], atol=1e-5)
    per_row = angle_terms(hidden, mask, torch.tensor([1, 2, 3]), 0)[0]
    assert per_row[2].item() == pytest.approx(_brute(hidden[2:], mask[2:], 3, 0)[0].item(), abs=1e-5)


def test_empty_blocks_give_zero_not_nan():
    hidden = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    c_intra, c_inter = angle_terms(hidden, mask, n_prefix=2, n_suffix=2)   # Q empty in both rows
    assert torch.equal(c_intra, torch.zeros(2)) and torch.equal(c_inter, torch.zeros(2))
    _, c_inter = angle_terms(hidden, mask, n_prefix=0)                      # P empty -> C_inter = 0
    assert torch.equal(c_inter, torch.zeros(2))
    assert torch.equal(sequence_angle(hidden, torch.zeros(2, 4)), torch.zeros(2))


# ---------------------------------------------------------------- scores on a real tiny model

@pytest.fixture(scope="module")
def tiny_qwen():
    import transformers
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, intermediate_size=128)
    return transformers.Qwen2ForCausalLM(cfg).eval()


PREFIX, SUFFIX = [1, 2, 3, 4], [5, 6]
QUESTIONS = [[10, 11, 12], [20, 21, 22, 23, 24, 25, 26], [30, 31], [40, 41, 42, 43, 44]]
TEXTS = [PREFIX + q + SUFFIX for q in QUESTIONS]


def _hooked_hidden(model, ids, layer=-1):
    captured = {}
    handle = model.model.layers[layer].mlp.register_forward_pre_hook(lambda m, a: captured.update(h=a[0]))
    with torch.no_grad():
        model(input_ids=torch.tensor([ids]))
    handle.remove()
    return captured["h"]


def test_compute_angle_scores_on_tiny_qwen2(tiny_qwen):
    assert common_prefix_len(TEXTS) == 4 and common_prefix_len([t[::-1] for t in TEXTS]) == 2
    scores = compute_angle_scores(tiny_qwen, None, TEXTS, layer=-1, batch_size=3)
    expected = []
    for ids in TEXTS:                                     # one text at a time, no padding, brute-force cosines
        intra, inter = _brute(_hooked_hidden(tiny_qwen, ids), torch.ones(1, len(ids)), 4, 2)
        expected.append(intra.item() + inter.item())
    assert scores == pytest.approx(expected, abs=1e-5)
    assert compute_angle_scores(tiny_qwen, None, TEXTS, batch_size=1) == pytest.approx(scores, abs=1e-5)
    w8 = compute_angle_scores(tiny_qwen, None, TEXTS, n_prefix=4, n_suffix=2, w_inter=8.0)
    assert w8 != pytest.approx(scores)
    assert tiny_qwen.training is False


def test_compute_angle_scores_with_char_tokenizer_and_layer(tiny_qwen):
    class CharTok:
        pad_token_id = 0

        def encode(self, text):
            return [1 + ord(c) % 60 for c in text]

    texts = ["Q: add 2 and 3. A:", "Q: what is 7 times 8? A:", "Q: 1+1? A:"]
    tok = CharTok()
    scores = compute_angle_scores(tiny_qwen, tok, texts, layer=0, batch_size=2)
    ids = [tok.encode(t) for t in texts]
    assert common_prefix_len(ids) == 3 and common_prefix_len([i[::-1] for i in ids]) == 3   # "Q: " and " A:"
    for text_ids, score in zip(ids, scores):
        intra, inter = _brute(_hooked_hidden(tiny_qwen, text_ids, layer=0), torch.ones(1, len(text_ids)), 3, 3)
        assert score == pytest.approx(intra.item() + inter.item(), abs=1e-5)


def test_mlp_input_hook_for_training_time_angle(tiny_qwen):
    ids = torch.tensor([TEXTS[1]])
    with MLPInputHook(tiny_qwen, -1) as hook:
        out = tiny_qwen(input_ids=ids)                    # full forward: logits still produced
    assert out.logits.shape == (1, len(TEXTS[1]), 64)
    angle = sequence_angle(hook.hidden, torch.ones_like(ids))
    intra, _ = _brute(_hooked_hidden(tiny_qwen, TEXTS[1]), torch.ones_like(ids), 0, 0)
    assert angle.item() == pytest.approx(intra.item(), abs=1e-5)


def test_cached_angle_scores_atomic(tmp_path):
    calls = []

    def fn():
        calls.append(1)
        return [0.5, 0.25, 0.75]

    key = angle_cache_key("tiny-qwen", "dataset@abc", -1, "auto")
    first = cached_angle_scores(tmp_path, key, fn)
    second = cached_angle_scores(tmp_path, key, fn)
    assert len(calls) == 1 and torch.equal(first, second) and first.dtype == torch.float64
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"angle_scores_{key}.pt"]
    assert angle_cache_key("a", 1) != angle_cache_key("a", 2)


# ---------------------------------------------------------------- the sampler

def test_mu_update_by_hand():
    p = GainRLParams(angle_gain=0.5)   # the paper summary's gamma
    # acc .75, angle .4: 500 tanh(2*.25) + 500 tanh(.5*.4) = 231.05858 + 98.68766 = 329.74624
    mu, delta = mu_update(0.0, 0.75, 0.4, p)
    assert delta == pytest.approx(500 * math.tanh(0.5) + 500 * math.tanh(0.2)) and mu == pytest.approx(329.74624)
    # acc .1, angle 0: 500 tanh(-.8) = -332.02 -> clipped at adj_min = 0: mu stays
    assert mu_update(100.0, 0.1, 0.0, p)[0] == 100.0
    # acc_scale 2 (code's 0/2 reward): accuracy 1.5 acts as .75
    assert mu_update(0.0, 1.5, 0.4, GainRLParams(acc_scale=2.0, angle_gain=0.5))[0] == pytest.approx(329.74624)
    # clip at adj_max: n = 1000, acc 1, angle 10 -> 1000 (tanh 1 + tanh 5) = 1761.6 -> 1000
    assert mu_update(0.0, 1.0, 10.0, GainRLParams(step_size=1000.0))[0] == 1000.0


def test_default_gamma_is_the_codes_and_moves_mu_below_38_percent_accuracy():
    assert GainRLParams().angle_gain == 2.0
    # gamma 2 (code), acc .25, angle .5: 500 tanh(2*(.25-.5)) + 500 tanh(2*.5) = 500 (-.4621172 + .7615942) = 149.73850
    mu, delta = mu_update(10.0, 0.25, 0.5, GainRLParams())
    assert delta == pytest.approx(149.73850, abs=1e-4) and mu == pytest.approx(159.73850, abs=1e-4)
    # gamma .5 (paper summary), same step: 500 (-.4621172 + tanh(.25) = .2449187) = -108.59925 -> clipped at 0: frozen
    mu, delta = mu_update(10.0, 0.25, 0.5, GainRLParams(angle_gain=0.5))
    assert delta == pytest.approx(-108.59925, abs=1e-4) and mu == 10.0
    # the freeze line with gamma .5 is acc = beta - gamma C / alpha = .5 - .48/4 = .38 at C = .48: delta 0 there
    assert mu_update(0.0, 0.38, 0.48, GainRLParams(angle_gain=0.5))[1] == pytest.approx(0.0, abs=1e-9)
    assert mu_update(0.0, 0.38, 0.48, GainRLParams())[0] == pytest.approx(500 * math.tanh(0.96) - 500 * math.tanh(0.24))


def test_rank_order_puts_nan_last():
    assert rank_order([0.1, float("nan"), 0.9, 0.5]).tolist() == [2, 3, 0, 1]


def test_gaussian_sampler_tracks_mu():
    N = 10000
    scores = torch.linspace(1, 0, N)                      # already descending: rank k = row k
    s = DATA_SAMPLERS.get("gain_rl")(N, GainRLParams(), seed=0, scores=scores)
    draws = [s.next_indices(50) for _ in range(60)]
    rows = torch.tensor(draws).double()
    # mu = 0: ranks follow a half-normal, mean sigma sqrt(2/pi) = 797.9
    assert rows.mean().item() == pytest.approx(1000 * math.sqrt(2 / math.pi), abs=40)
    assert all(len(set(d)) == 50 and d == sorted(d) for d in draws)
    s.mu = 5000.0
    rows = torch.tensor([s.next_indices(50) for _ in range(60)]).double()
    assert rows.mean().item() == pytest.approx(5000, abs=40)
    assert rows.std().item() == pytest.approx(1000, rel=0.06)
    idx = s.next_indices(50)
    m = s.metrics()
    assert m["gain_rl/mu"] == 5000.0
    assert m["gain_rl/sampled_rank_mean"] == pytest.approx(sum(idx) / 50)
    assert m["gain_rl/sampled_score_mean"] == pytest.approx(scores[torch.tensor(idx)].double().mean().item())


def test_sampler_maps_ranks_to_rows_update_and_resume():
    scores = [0.2, 0.9, float("nan"), 0.5, 0.7]           # order by descending score: rows 1, 4, 3, 0, 2
    s = GainRLSampler(5, GainRLParams(sigma=0.5, angle_gain=0.5), seed=1, scores=scores)
    # sigma = .5, mu = 0: p(rank k) ~ exp(-2 k^2) -> p(rank 0 = row 1) = 1/(1 + e^-2 + e^-8 + ...) = 0.8805
    firsts = [s.next_indices(1)[0] for _ in range(300)]
    assert set(firsts) <= {1, 4, 3} and firsts.count(1) / 300 == pytest.approx(0.8805, abs=0.06)
    assert sorted(s.next_indices(5)) == [0, 1, 2, 3, 4]
    m = s.update({"accuracy": 0.75, "angle": 0.4})
    assert m["gain_rl/mu"] == pytest.approx(329.74624) and m["gain_rl/accuracy"] == 0.75
    assert s.next_indices(1) == [2]                        # mu far past the last rank: the NaN row (hardest)
    state = s.state_dict()
    a = [s.next_indices(3) for _ in range(3)]
    r = GainRLSampler(5, GainRLParams(sigma=0.5, angle_gain=0.5), seed=99, scores=scores)
    r.load_state_dict(state)
    assert [r.next_indices(3) for _ in range(3)] == a
    with pytest.raises(KeyError, match="angle"):
        s.update({"accuracy": 0.5})
    GainRLSampler(5, GainRLParams(angle_gain=0.0), scores=scores).update({"accuracy": 0.5})
    with pytest.raises(ValueError, match="distinct"):
        s.next_indices(6)
    with pytest.raises(ValueError, match="angle score per row"):
        GainRLSampler(5, GainRLParams(), seed=0, scores=None)


def test_precomputed_angle_order_sets_the_ranks(tmp_path):
    """data.sampler.angle_order: row ids by descending concentration (the authors' sorted indices) replace the
    scores; the draws equal those of a sampler whose scores give the same order."""
    scores = [0.2, 0.9, 0.1, 0.5, 0.7]                    # descending: rows 1, 4, 3, 0, 2
    order = [1, 4, 3, 0, 2]
    torch.save(torch.tensor(order), tmp_path / "sorted.pt")
    (tmp_path / "sorted.json").write_text(json.dumps(order))
    (tmp_path / "sorted.txt").write_text("\n".join(map(str, order)))
    torch.save({"indices": order}, tmp_path / "dict.pt")
    for name in ("sorted.pt", "sorted.json", "sorted.txt", "dict.pt"):
        assert load_angle_order(tmp_path / name, 5).tolist() == order
    ref = GainRLSampler(5, GainRLParams(sigma=1.0), seed=4, scores=scores)
    pre = GainRLSampler(5, GainRLParams(sigma=1.0, angle_order=str(tmp_path / "sorted.pt")), seed=4)
    assert pre.order.tolist() == order
    assert [pre.next_indices(2) for _ in range(20)] == [ref.next_indices(2) for _ in range(20)]
    m = pre.metrics()
    assert "gain_rl/sampled_score_mean" not in m and m["gain_rl/sampled_rank_mean"] == ref.metrics()[
        "gain_rl/sampled_rank_mean"]
    assert GainRLSampler(5, GainRLParams(angle_order=str(tmp_path / "sorted.pt")), seed=0).next_indices(5) == order


def test_precomputed_angle_order_errors_name_the_key(tmp_path):
    torch.save(torch.tensor([0, 1, 1]), tmp_path / "dup.pt")
    with pytest.raises(ValueError, match="angle_order.*not a permutation"):
        load_angle_order(tmp_path / "dup.pt", 3)
    with pytest.raises(ValueError, match="angle_order.*needs 4 integer row ids"):
        load_angle_order(tmp_path / "dup.pt", 4)
    with pytest.raises(FileNotFoundError, match="angle_order"):
        load_angle_order(tmp_path / "missing.pt", 3)


def test_random_sampler_epochs_and_resume():
    s = RandomSampler(5, None, seed=3)
    first = s.next_indices(3) + s.next_indices(3)           # crosses into epoch 1
    assert sorted(first[:5]) == [0, 1, 2, 3, 4] and s.state_dict() == {"epoch": 1, "pos": 1}
    state = s.state_dict()
    nxt = s.next_indices(4)
    r = RandomSampler(5, None, seed=3)
    r.load_state_dict(state)
    assert r.next_indices(4) == nxt
    assert not RandomSampler.needs_scores and GainRLSampler.needs_scores
