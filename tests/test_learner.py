"""Learner pieces: exact gradient accumulation, schedules, optimizers by name."""
import copy
import math

import pytest
import torch

from rlpost.algos.losses import ClipParams
from rlpost.config import OptimConfig
from rlpost.learner import FixedLogprobs, Learner, LearnerSettings, build_optimizer, build_scheduler
from rlpost.types import Prompt, Sample, Trajectory
from rlpost.batch import collate


def make_batch(tok, n=8):
    g = torch.Generator().manual_seed(0)
    trajs = []
    for i in range(n):
        prompt = tok("12+34=", add_special_tokens=False)["input_ids"]
        comp = torch.randint(5, 60, (1 + i % 5,), generator=g).tolist()
        s = Sample(prompt_ids=prompt, completion_ids=comp, logprobs=[-1.0] * len(comp))
        trajs.append(Trajectory(Prompt(0, "p"), group_id=i // 4, samples=[s], final_text="", reward=float(i % 3)))
    return collate(trajs, tok.pad_token_id)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_micro_batching_gives_the_same_update(random_tiny_model, char_tokenizer, agg):
    batch = make_batch(char_tokenizer)
    adv = torch.randn(batch.response_mask.shape, generator=torch.Generator().manual_seed(1)) * batch.response_mask
    grads = []
    # row counts, then token budgets (rows x longest row <= budget; 1 = one row per micro-batch)
    for micro, budget in ((8, 0), (3, 0), (1, 0), (8, 30), (8, 1)):
        model = copy.deepcopy(random_tiny_model).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        settings = LearnerSettings("grpo", ClipParams(), agg, max_completion_length=5, micro_batch_size=micro,
                                   max_grad_norm=0.0, max_tokens_per_micro_batch=budget)
        learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), 1), settings)
        # capture the accumulated gradient right before the optimizer step
        captured = {}
        opt.step = lambda *a, **k: captured.update({n: p.grad.clone() for n, p in model.named_parameters()})
        learner.update(batch, adv, learner.prepare(batch))
        grads.append(captured)
    for name in grads[0]:
        for other in grads[1:]:
            assert torch.allclose(grads[0][name], other[name], atol=1e-6), name


def test_token_budget_micro_batches_by_hand(char_tokenizer):
    """Widths 7 7 8 9 11 (prompt 6 + completions 1 1 2 3 5), budget 24: rows 0-2 cost 3 x 8 = 24 (fits), adding
    row 3 would cost 4 x 9 = 36; rows 3-4 cost 2 x 11 = 22. Without a budget: micro_batch_size rows each."""
    from rlpost.learner import micro_batches
    tok = char_tokenizer
    prompt = tok("12+34=", add_special_tokens=False)["input_ids"]
    assert len(prompt) == 6
    trajs = [Trajectory(Prompt(0, "p"), group_id=0, samples=[Sample(prompt_ids=prompt, completion_ids=[7] * c,
                                                                    logprobs=[-1.0] * c)], final_text="")
             for c in (1, 1, 2, 3, 5)]
    batch = collate(trajs, tok.pad_token_id)
    rows = torch.arange(5)
    budget = LearnerSettings("grpo", ClipParams(), "token-mean", 5, micro_batch_size=2, max_tokens_per_micro_batch=24)
    assert [p.tolist() for p in micro_batches(batch, rows, budget)] == [[0, 1, 2], [3, 4]]
    budget.max_tokens_per_micro_batch = 10  # shorter than two rows: one row each; row 4 (11) alone though over budget
    assert [p.tolist() for p in micro_batches(batch, rows, budget)] == [[0], [1], [2], [3], [4]]
    budget.max_tokens_per_micro_batch = 0
    assert [p.tolist() for p in micro_batches(batch, rows, budget)] == [[0, 1], [2, 3], [4]]


def test_mini_batch_partition_by_hand(random_tiny_model, char_tokenizer):
    """10 rows, steps_per_generation 3, num_iterations 2: slices of 10 // 3 = 3 rows, row 9 in no step, the pass
    repeated. Learner.update takes exactly these rows, in this order (methods get the same list)."""
    from rlpost.learner import mini_batches
    settings = LearnerSettings("grpo", ClipParams(), "token-mean", 5, steps_per_generation=3, num_iterations=2)
    expected = [[0, 1, 2], [3, 4, 5], [6, 7, 8]] * 2
    assert [rows.tolist() for rows in mini_batches(10, settings)] == expected
    settings.steps_per_generation, settings.num_iterations = 1, 1
    assert [rows.tolist() for rows in mini_batches(4, settings)] == [[0, 1, 2, 3]]

    batch = make_batch(char_tokenizer, n=10)
    learner = Learner(random_tiny_model, None, None, LearnerSettings("grpo", ClipParams(), "token-mean", 5,
                                                                     steps_per_generation=3, num_iterations=2))
    taken = []
    learner._optimizer_step = lambda batch, adv, fixed, rows, *extra: taken.append(rows.tolist()) or {}
    learner.update(batch, torch.zeros(batch.response_mask.shape), FixedLogprobs())
    assert taken == expected == [rows.tolist() for rows in learner.mini_batches(10)]


def test_fixed_logprobs_rows_slices_every_set_field():
    old = torch.arange(12.0).view(4, 3)
    fixed = FixedLogprobs(old_logprobs=old, ref_logprobs=-old, entropy_mask=(old > 5).float())
    part = fixed.rows(torch.tensor([3, 1]))
    assert part.old_logprobs.tolist() == [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]]
    assert part.ref_logprobs.tolist() == [[-9.0, -10.0, -11.0], [-3.0, -4.0, -5.0]]
    assert part.entropy_mask.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert part.old_entropies is None and part.sum_p_sq is None
    assert fixed.old_logprobs.shape == (4, 3)   # the full-batch values are untouched


def test_schedules_with_warmup():
    p = torch.nn.Parameter(torch.zeros(1))

    def lrs(kind, warmup=2, total=6):
        opt = torch.optim.SGD([p], lr=1.0)
        sched = build_scheduler(opt, OptimConfig(lr_scheduler_type=kind, warmup_steps=warmup), total)
        out = []
        for _ in range(total):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs("constant") == pytest.approx([0.5, 1, 1, 1, 1, 1])
    # linear: after warm-up, 1 - (step - 2)/4 for step 2..5 -> 1, .75, .5, .25
    assert lrs("linear") == pytest.approx([0.5, 1, 1, 0.75, 0.5, 0.25])
    # cosine: 0.5 (1 + cos(pi (step-2)/4))
    assert lrs("cosine") == pytest.approx([0.5, 1] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)])


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lion", "adabelief", "lamb"])
def test_optimizers_by_name(random_tiny_model, name):
    opt = build_optimizer(random_tiny_model, OptimConfig(optimizer=name, learning_rate=1e-3))
    assert opt.param_groups[0]["lr"] == 1e-3


def test_unknown_optimizer_is_named(random_tiny_model):
    with pytest.raises(ValueError, match="optim.optimizer: unknown optimizer 'adamx'"):
        build_optimizer(random_tiny_model, OptimConfig(optimizer="adamx"))


def test_token_budget_old_logprobs_keep_the_batch_order(random_tiny_model, char_tokenizer):
    """The no-grad pass sorts rows by length for the budget and must return them in the batch's order."""
    from rlpost.learner import batched_logprobs
    batch = make_batch(char_tokenizer)
    outs = []
    for budget in (0, 25):
        settings = LearnerSettings("grpo", ClipParams(), "token-mean", 5, micro_batch_size=3, need_entropy=True,
                                   max_tokens_per_micro_batch=budget)
        outs.append(batched_logprobs(random_tiny_model, batch, settings, need_entropy=True, need_sum_p_sq=True))
    mask = batch.response_mask.bool()
    for plain, budgeted in zip(*outs):
        assert torch.allclose(plain[mask], budgeted[mask], atol=1e-5)
    assert not torch.allclose(outs[0][0][mask], outs[0][0].flip(0)[mask.flip(0)], atol=1e-5)  # order matters


def test_non_finite_gradient_steps_are_skipped_counted_and_stop_the_run(random_tiny_model, char_tokenizer, caplog):
    """A NaN advantage makes the gradient norm NaN: the optimizer step is skipped (weights unchanged), the step
    logs train/skipped_steps = 1 with a warning, a finite step resets the count, and the
    optim.max_consecutive_skipped_steps-th skip in a row raises NonFiniteGradientError naming that key."""
    import copy

    from rlpost.algos.losses import ClipParams
    from rlpost.batch import collate
    from rlpost.config import OptimConfig
    from rlpost.learner import Learner, LearnerSettings, NonFiniteGradientError, build_scheduler
    from rlpost.types import Prompt, Sample, Trajectory
    model = copy.deepcopy(random_tiny_model).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    settings = LearnerSettings("grpo", ClipParams(), "token-mean", max_completion_length=3,
                               max_consecutive_skipped_steps=2)
    learner = Learner(model, opt, build_scheduler(opt, OptimConfig(), 10), settings)
    prompt = char_tokenizer("1+2=", add_special_tokens=False)["input_ids"]
    batch = collate([Trajectory(Prompt(0, "p"), 0, [Sample(prompt_ids=prompt, completion_ids=[10 + i, 20],
                                                           logprobs=[0.0] * 2)], "") for i in range(2)],
                    char_tokenizer.pad_token_id)
    good = torch.tensor([[1.0], [-1.0]]).expand(2, 2) * batch.response_mask
    bad = good.clone()
    bad[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with caplog.at_level("WARNING"):
        m = learner.update(batch, bad, learner.prepare(batch))
    assert m["train/skipped_steps"] == 1.0 and math.isnan(m["grad_norm"])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert "optimizer step skipped" in caplog.text
    assert learner.update(batch, good, learner.prepare(batch))["train/skipped_steps"] == 0.0  # resets the count
    learner.update(batch, bad, learner.prepare(batch))
    with pytest.raises(NonFiniteGradientError, match="optim.max_consecutive_skipped_steps"):
        learner.update(batch, bad, learner.prepare(batch))
