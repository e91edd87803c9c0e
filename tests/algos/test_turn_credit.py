"""Per-turn credit (rlpost/algos/turn_credit.py) against advantages computed by hand, and the plumbing from a
multi_turn rollout through collate to AdvantageInput."""
import math

import pytest
import torch

from rlpost.algos import ADVANTAGES, AdvantageInput
from rlpost.algos.advantages import GRPOAdvParams, grpo
from rlpost.algos.turn_credit import GiGPOParams, TurnReturnParams
from rlpost.batch import collate

NAN = float("nan")


def three_episodes():
    """One prompt group of three episodes: 3 turns [0, 0, 1] (R=1), 2 turns [0.5, 0] (R=0.5), 1 turn [0] with
    R=0.2 (another reward function's 0.2, counted at the last turn)."""
    turn_index = torch.tensor([[0, 0, -1, 1, -1, 2], [0, -1, 1, 1, -1, -1], [0, 0, 0, -1, -1, -1]])
    mask = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], dtype=torch.float)
    return AdvantageInput(rewards=torch.tensor([1.0, 0.5, 0.2]), group_ids=torch.zeros(3, dtype=torch.long),
                          response_mask=mask, turn_index=turn_index,
                          turn_rewards=torch.tensor([[0, 0, 1], [0.5, 0, NAN], [0, NAN, NAN]], dtype=torch.float64),
                          turn_states=torch.tensor([[7, 8, 9], [7, 8, 0], [7, 0, 0]]))


def per_token(turn_values, inp):
    """[B,T] from per-(row, turn) values, 0 on observation and padding tokens."""
    out = torch.zeros_like(inp.response_mask)
    for b in range(out.shape[0]):
        for t in range(out.shape[1]):
            k = int(inp.turn_index[b, t])
            if k >= 0 and inp.response_mask[b, t]:
                out[b, t] = turn_values[b][k]
    return out


def test_turn_return_gamma_one_no_scaling():
    inp = three_episodes()
    adv, m = ADVANTAGES.get("turn_return")(inp, TurnReturnParams(gamma=1.0, scale_rewards="none"))
    # G = [1, 1, 1], [0.5, 0], [0.2]; baseline mean(G_0) = (1 + 0.5 + 0.2) / 3 = 17/30
    b = 17 / 30
    expected = per_token([[1 - b] * 3, [0.5 - b, -b], [0.2 - b]], inp)
    torch.testing.assert_close(adv, expected)
    assert adv[0, 2] == 0 and adv[1, 4] == 0          # observation tokens
    assert m["turn_credit/turns_mean"] == 2.0


def test_turn_return_discounted_and_group_scaled():
    inp = three_episodes()
    adv, _ = ADVANTAGES.get("turn_return")(inp, TurnReturnParams(gamma=0.5, scale_rewards="group", eps=1e-4))
    # G (gamma 0.5): [0.25, 0.5, 1], [0.5, 0], [0.2]; G_0 = [0.25, 0.5, 0.2], mean 0.95/3
    b = 0.95 / 3
    std = math.sqrt(((0.25 - b) ** 2 + (0.5 - b) ** 2 + (0.2 - b) ** 2) / 2)
    expected = per_token([[(g - b) / (std + 1e-4) for g in (0.25, 0.5, 1.0)], [(0.5 - b) / (std + 1e-4), -b / (std + 1e-4)],
                          [(0.2 - b) / (std + 1e-4)]], inp)
    torch.testing.assert_close(adv, expected)


def test_turn_return_with_the_reward_at_the_end_is_grpo():
    inp = three_episodes()
    inp.turn_rewards = torch.tensor([[0, 0, 0], [0, 0, NAN], [0, NAN, NAN]], dtype=torch.float64)
    adv, _ = ADVANTAGES.get("turn_return")(inp, TurnReturnParams())
    ref, _ = grpo(inp, GRPOAdvParams())
    torch.testing.assert_close(adv, ref)


def gigpo_batch():
    """Group 0: four episodes from state 7; ep0 and ep1 reach state 1, ep2 state 2, ep3 stops after one turn.
    Group 1: one episode that also starts from key 7 (another prompt: must not join group 0's state groups)."""
    turn_index = torch.tensor([[0, -1, 1], [0, -1, 1], [0, -1, 1], [0, 0, -1], [0, -1, -1]])
    mask = (turn_index >= 0).float()
    return AdvantageInput(rewards=torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0]), group_ids=torch.tensor([0, 0, 0, 0, 1]),
                          response_mask=mask, turn_index=turn_index,
                          turn_rewards=torch.tensor([[0, 1], [0, 0], [0, 1], [0, NAN], [1, NAN]], dtype=torch.float64),
                          turn_states=torch.tensor([[7, 1], [7, 1], [7, 2], [7, 0], [7, 0]]))


def test_gigpo_by_hand_without_scaling():
    inp = gigpo_batch()
    adv, m = ADVANTAGES.get("gigpo")(inp, GiGPOParams(gamma=0.5, omega=1.0, scale_rewards="none"))
    # A^E: R - 0.5 in group 0, 0 in group 1.  G (gamma 0.5): [0.5, 1], [0, 0], [0.5, 1], [0], [1]
    # state 7 of group 0: G = 0.5, 0, 0.5, 0 (mean 0.25); state 1: 1, 0 (mean 0.5); state 2 and group 1: alone -> 0
    expected = per_token([[0.5 + 0.25, 0.5 + 0.5], [-0.5 - 0.25, -0.5 - 0.5], [0.5 + 0.25, 0.5 + 0.0], [-0.5 - 0.25],
                          [0.0]], inp)
    torch.testing.assert_close(adv, expected)
    assert m["turn_credit/state_group_size"] == pytest.approx((4 * 4 + 2 * 2 + 1 + 1) / 8)


def test_gigpo_by_hand_with_std_and_omega():
    inp = gigpo_batch()
    adv, _ = ADVANTAGES.get("gigpo")(inp, GiGPOParams(gamma=0.5, omega=0.5, scale_rewards="group", eps=1e-6))
    e = 0.5 / (math.sqrt(1 / 3) + 1e-6)                 # std of R = 1, 0, 1, 0 (unbiased): sqrt(1/3)
    s7 = 0.25 / (math.sqrt(0.25 / 3) + 1e-6)            # std of 0.5, 0, 0.5, 0: sqrt(4 * 0.0625 / 3)
    s1 = 0.5 / (math.sqrt(0.5) + 1e-6)                  # std of 1, 0: sqrt(0.5)
    expected = per_token([[e + 0.5 * s7, e + 0.5 * s1], [-e - 0.5 * s7, -e - 0.5 * s1], [e + 0.5 * s7, e],
                          [-e - 0.5 * s7], [0.0]], inp)
    torch.testing.assert_close(adv, expected)


def one_row_per_turn(inp):
    """Each episode of ``inp`` as one row per turn, holding that turn's trained tokens (an agent episode of requests
    that do not extend each other): (the rows' AdvantageInput, the episode of each row, the turn of each row)."""
    rows = [(i, k, int(((inp.turn_index[i] == k) & (inp.response_mask[i] > 0)).sum()))
            for i in range(len(inp.rewards)) for k in range(int((~torch.isnan(inp.turn_rewards[i])).sum()))]
    episode, turn = torch.tensor([i for i, _, _ in rows]), torch.tensor([k for _, k, _ in rows])
    index = torch.full((len(rows), max(n for _, _, n in rows)), -1)
    for r, (_, k, n) in enumerate(rows):
        index[r, :n] = k
    split = AdvantageInput(rewards=inp.rewards[episode], group_ids=inp.group_ids[episode],
                           response_mask=(index >= 0).float(), turn_index=index,
                           turn_rewards=inp.turn_rewards[episode], turn_states=inp.turn_states[episode])
    return split, episode, turn


@pytest.mark.parametrize("name, params", [("turn_return", TurnReturnParams(gamma=0.5)),
                                          ("gigpo", GiGPOParams(gamma=0.5, omega=0.5))])
@pytest.mark.parametrize("batch", [three_episodes, gigpo_batch])
def test_episodes_of_several_rows_get_each_turns_advantage(name, params, batch):
    """per_trajectory_turns: an episode split into a row per turn gives every row's tokens the advantage its turn
    has when the episode is one row (statistics over episodes, not rows: group std included)."""
    from rlpost.algos.turn_credit import per_trajectory_turns
    inp = batch()
    fn = ADVANTAGES.get(name)
    whole, _ = fn(inp, params)
    split, episode, turn = one_row_per_turn(inp)
    adv, _ = per_trajectory_turns(fn, params, split, episode)
    for r in range(len(episode)):
        i, k = int(episode[r]), int(turn[r])
        value = whole[i][(inp.turn_index[i] == k) & (inp.response_mask[i] > 0)][0]
        torch.testing.assert_close(adv[r], value * split.response_mask[r])
    assert not torch.allclose(fn(split, params)[0][:, 0], adv[:, 0])   # row-level statistics would differ


def test_estimators_refuse_single_turn_batches():
    inp = AdvantageInput(rewards=torch.ones(2), group_ids=torch.zeros(2, dtype=torch.long), response_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="turn_return needs per-turn rewards: use it with rollout.workflow multi_turn"):
        ADVANTAGES.get("turn_return")(inp, TurnReturnParams())
    with pytest.raises(ValueError, match="gigpo needs per-turn state keys"):
        ADVANTAGES.get("gigpo")(inp, GiGPOParams())


def test_multi_turn_trajectories_collate_to_per_turn_inputs():
    from rlpost.engines.base import SamplingParams
    from rlpost.envs.testing import ScriptedEngine
    from rlpost.models.tokenizer import build_char_tokenizer
    from rlpost.types import Prompt
    from rlpost.workflows.multi_turn import MultiTurnWorkflow
    tok = build_char_tokenizer()
    guesses = ["8<|im_end|>", "12<|im_end|>", "11<|im_end|>"]
    wf = MultiTurnWorkflow(ScriptedEngine(tok, lambda ctx, t: guesses[t]), tok, env="rlpost.envs.examples:GuessNumberEnv",
                           max_turns=5)
    prompts = [Prompt(0, "Guess.", [{"role": "user", "content": "Guess."}], {"answer": "11"}),
               Prompt(1, "Guess.", [{"role": "user", "content": "Guess."}], {"answer": "12"})]
    a, b = wf.rollout(prompts, SamplingParams(n=1, max_tokens=16, seed=0))
    assert a.turn_rewards == [0.0, 0.0, 1.0] and b.turn_rewards == [0.0, 1.0]
    a.reward, b.reward = 1.0, 1.0
    batch = collate([a, b], tok.pad_token_id)
    assert batch.turn_rewards.shape == (2, 3) and math.isnan(batch.turn_rewards[1, 2])
    assert batch.turn_rewards[0].tolist() == [0.0, 0.0, 1.0]
    s = a.samples[0]
    assert batch.turn_index[0, :len(s.completion_ids)].tolist() == s.turn_index
    # sampled tokens carry their turn, observation tokens -1; the mask is exactly where the index is >= 0
    assert [i >= 0 for i in s.turn_index] == [bool(m) for m in s.loss_mask]
    assert [i for i in s.turn_index if i >= 0] == [0, 0, 1, 1, 1, 2, 2, 2]
    # both episodes start from the same prompt state; a's turn 1 and b's turn 1 follow the same "Higher." feedback
    assert batch.turn_states[0, 0] == batch.turn_states[1, 0] and batch.turn_states[0, 1] == batch.turn_states[1, 1]
    assert batch.turn_states[0, 2] != batch.turn_states[0, 1]
    inp = AdvantageInput(rewards=batch.rewards, group_ids=batch.group_ids, response_mask=batch.response_mask,
                         turn_index=batch.turn_index, turn_rewards=batch.turn_rewards, turn_states=batch.turn_states)
    adv, _ = ADVANTAGES.get("turn_return")(inp, TurnReturnParams(gamma=0.5, scale_rewards="none"))
    # groups of one (different prompt ids): A = G_ik - G_i0; a: G = [0.25, 0.5, 1] -> [0, 0.25, 0.75]
    assert adv[0][batch.turn_index[0] == 2].tolist() == [0.75, 0.75, 0.75]
    assert adv[0][batch.turn_index[0] == 0].tolist() == [0.0, 0.0]


def test_single_turn_rows_collate_without_turn_fields():
    from rlpost.types import Prompt, Sample, Trajectory
    t = Trajectory(Prompt(0, "x"), 0, [Sample([1], [2, 3], [0.0, 0.0])], "y")
    batch = collate([t], 0)
    assert batch.turn_index is None and batch.turn_rewards is None and batch.turn_states is None
