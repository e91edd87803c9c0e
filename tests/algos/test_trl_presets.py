"""rlpost's TRL ``loss_type`` presets vs TRL's GRPOTrainer (f2cd577): where the normalisation differs, by hand.

With one pass over fresh samples the ratio is 1, so the clipped surrogate of token t of row i is exactly −A_it
and the learner's logged ``loss`` is the aggregation alone. Toy batch: 4 rows with 1, 3, 2, 1 completion tokens
and advantage a_i = 1, 2, 3, 4 on every token, so the per-token losses are l_i = −1, −2, −3, −4.

    row tokens   1  3  2  1        Σ_t l_it = −1, −6, −6, −4       all 7 tokens: Σ = −17

The README's "TRL loss_type presets" table states the same differences in words.
"""
import copy

import pytest
import torch

from rlpost.algos.losses import ClipParams, clipped_surrogate
from rlpost.batch import collate
from rlpost.config import OptimConfig
from rlpost.learner import Learner, LearnerSettings, build_scheduler
from rlpost.types import Prompt, Sample, Trajectory

LENGTHS = (1, 3, 2, 1)
ADV = (1.0, 2.0, 3.0, 4.0)


def _batch(tok):
    prompt = tok("12+34=", add_special_tokens=False)["input_ids"]
    trajs = [Trajectory(Prompt(0, "p"), group_id=0, final_text="", reward=0.0,
                        samples=[Sample(prompt_ids=prompt, completion_ids=[7] * n, logprobs=[-1.0] * n)])
             for n in LENGTHS]
    batch = collate(trajs, tok.pad_token_id)
    return batch, torch.tensor(ADV)[:, None] * batch.response_mask


def _step_losses(model, tok, agg, micro_batch_size, steps_per_generation):
    """The aggregated loss of each optimizer step the learner takes on the toy batch (lr 0: weights stay)."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    settings = LearnerSettings("grpo", ClipParams(), agg, max_completion_length=3, micro_batch_size=micro_batch_size,
                               steps_per_generation=steps_per_generation, max_grad_norm=0.0)
    learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), steps_per_generation), settings)
    losses = []
    step = learner._optimizer_step
    learner._optimizer_step = lambda *a: losses.append(step(*a)["loss"]) or {}
    batch, adv = _batch(tok)
    learner.update(batch, adv, learner.prepare(batch))
    return losses


def test_bnpo_is_token_mean_over_the_step_not_a_mean_of_micro_batch_means(random_tiny_model, char_tokenizer):
    # rlpost bnpo (= dapo, token-mean, exact accumulation): Σ l / Σ m over the step = −17 / 7, whatever the
    # micro-batches (2 rows each here, 1 below).
    for micro in (2, 1):
        [loss] = _step_losses(random_tiny_model, char_tokenizer, "token-mean", micro, 1)
        assert loss == pytest.approx(-17 / 7, rel=1e-6)
    # TRL bnpo: each micro-batch's own token mean, divided by gradient_accumulation_steps. Micro-batches of 2 rows,
    # rows {0,1} (4 tokens) and {2,3} (3 tokens): ½ [ (−1 − 6) / 4 + (−6 − 4) / 3 ] = ½ [−1.75 − 3.3333] = −2.5417.
    trl_bnpo = 0.5 * ((-1 - 6) / 4 + (-6 - 4) / 3)
    assert trl_bnpo == pytest.approx(-2.541667, abs=1e-6) and trl_bnpo != pytest.approx(-17 / 7)


def test_dapo_with_two_steps_per_generation(random_tiny_model, char_tokenizer):
    # steps_per_generation = 2: step 1 trains rows {0,1}, step 2 rows {2,3}.
    # rlpost: each step divides by its own tokens: (−1 − 6) / 4 = −1.75, (−6 − 4) / 3 = −3.3333
    losses = _step_losses(random_tiny_model, char_tokenizer, "token-mean", 2, 2)
    assert losses == [pytest.approx(-7 / 4, rel=1e-6), pytest.approx(-10 / 3, rel=1e-6)]
    # TRL dapo: every micro-batch divides by the generation batch's tokens (num_items_in_batch = 7), without a
    # division by the accumulation steps: step 1 = −7 / 7 = −1.0, step 2 = −10 / 7 = −1.4286, i.e. rlpost's step
    # loss times (the step's tokens / the generation batch's tokens) = 4/7 and 3/7.
    trl_dapo = [-7 / 7, -10 / 7]
    assert [l * n / 7 for l, n in zip(losses, (4, 3))] == [pytest.approx(v, rel=1e-6) for v in trl_dapo]


def test_grpo_and_dr_grpo_match_trl(random_tiny_model, char_tokenizer):
    # grpo: mean over rows of the per-row token mean = ¼ (−1 − 2 − 3 − 4) = −2.5, per step and in TRL alike.
    [loss] = _step_losses(random_tiny_model, char_tokenizer, "seq-mean-token-mean", 2, 1)
    assert loss == pytest.approx(-2.5, rel=1e-6)
    # dr_grpo: Σ l / (rows · L_max) = −17 / (4 · 3); TRL: Σ_mb [Σ l / (2 · 3)] / 2 = (−7 − 10) / 12, the same.
    [loss] = _step_losses(random_tiny_model, char_tokenizer, "seq-mean-token-sum-norm", 2, 1)
    assert loss == pytest.approx(-17 / 12, rel=1e-6)


def test_delta_below_one_plus_epsilon_high_differs_from_trl():
    # epsilon 0.2, epsilon_high 0.28, delta 1.1 < 1.28. Tokens (ratio, A): (1.2, −1), (1.2, +1).
    params = ClipParams(epsilon=0.2, epsilon_high=0.28, delta=1.1)
    loss, _ = clipped_surrogate(torch.tensor([1.2, 1.2]), torch.tensor([-1.0, 1.0]), params)
    # rlpost (INTELLECT-2: cap the ratio at delta where A < 0, then clip):
    #   A = −1: r' = min(1.2, 1.1) = 1.1, loss = max(1.1, clip(1.1)) = 1.1;  A = +1: no cap, max(−1.2, −1.2) = −1.2
    assert loss.tolist() == pytest.approx([1.1, -1.2])
    # TRL: clip the *uncapped* ratio (coef_2 = clip(1.2) = 1.2), cap every token (coef_1 = min(1.2, 1.1) = 1.1),
    #   loss = −min(coef_1 A, coef_2 A):  A = −1: −min(−1.1, −1.2) = 1.2;  A = +1: −min(1.1, 1.2) = −1.1
    trl = [1.2, -1.1]
    assert loss.tolist() != pytest.approx(trl)
    # delta 1.5 > 1 + epsilon_high: the same numbers. (1.4, −1): both 1.4; (1.6, −1): both min(1.6, 1.5) = 1.5;
    # (1.6, +1): rlpost −clip(1.6) = −1.28, TRL −min(1.5, 1.28) = −1.28
    params = ClipParams(epsilon=0.2, epsilon_high=0.28, delta=1.5)
    loss, _ = clipped_surrogate(torch.tensor([1.4, 1.6, 1.6]), torch.tensor([-1.0, -1.0, 1.0]), params)
    assert loss.tolist() == pytest.approx([1.4, 1.5, -1.28])
