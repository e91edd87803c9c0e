"""APR / A²FM in the training loop: per-tree advantages, policy-only sample weights, the workflow reward and
metrics hooks, population std, the tasks, rewards, data generators, tokenizers and recipes."""
import copy
import json
import random

import pytest
import torch

from rlpost.algos import ADVANTAGES, AdvantageInput, build_params
from rlpost.algos.advantages import GRPOAdvParams, grpo, per_trajectory
from rlpost.batch import collate
from rlpost.engines.base import SamplingParams
from rlpost.learner import FixedLogprobs
from rlpost.types import Prompt, Sample, Trajectory

from test_a2fm import CharTokenizer, ScriptedEngine, policy, prompt  # noqa: E402  (scripted A²FM policy)


def traj(group, reward, n_samples, length=3, prompt_id=0):
    samples = [Sample(prompt_ids=[5, 6], completion_ids=[7] * length, logprobs=[-1.0] * length) for _ in range(n_samples)]
    return Trajectory(prompt=Prompt(prompt_id, "p"), group_id=group, samples=samples, final_text="",
                      sample_weights=[1.0 / n_samples] * n_samples, reward=reward)


# ------------------------------------------------------------------------------ advantages

def test_grpo_population_std_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    inp = AdvantageInput(rewards, groups, torch.ones(8, 1))
    pop, _ = grpo(inp, GRPOAdvParams(std="population", eps=0.0))
    unb, _ = grpo(inp, GRPOAdvParams(eps=0.0))
    # group 0: mean 1/2, population std 1/2 -> +-1; unbiased std sqrt(1/3) -> +-0.8660
    # group 1: mean 3/4, population std sqrt(3/16) = 0.4330 -> 0.5774 / -1.7321
    assert pop[:, 0].tolist() == pytest.approx([1, -1, -1, 1, 0.57735, 0.57735, 0.57735, -1.73205], abs=1e-4)
    assert unb[:, 0].tolist() == pytest.approx([0.86603, -0.86603, -0.86603, 0.86603, 0.5, 0.5, 0.5, -1.5], abs=1e-4)
    # the A²FM figure: forced [1,0 | 0,0 | 0,1], adaptive [0.8, 0.8, 1] -> 1.06, -1.10, 0.62 (mixed group)
    fig = AdvantageInput(torch.tensor([1, 0, 0, 0, 0, 1, 0.8, 0.8, 1]), torch.zeros(9, dtype=torch.long), torch.ones(9, 1))
    adv = grpo(fig, GRPOAdvParams(std="population", eps=1e-6))[0][:, 0]
    assert [round(v, 2) for v in adv.tolist()] == [1.06, -1.1, -1.1, -1.1, -1.1, 1.06, 0.62, 0.62, 1.06]
    batch = grpo(AdvantageInput(rewards, torch.arange(8), torch.ones(8, 1)),
                 GRPOAdvParams(scale_rewards="batch", std="population", eps=0.0))[0]
    assert batch.abs().sum() == 0  # groups of one: centred rewards are 0
    with pytest.raises(ValueError, match="unbiased or population"):
        GRPOAdvParams(std="sample")
    assert build_params(ADVANTAGES.entry("grpo").params, None, {"std": "population"}).std == "population"


def test_collate_records_the_trajectory_of_each_row():
    batch = collate([traj(0, 1.0, 3), traj(0, 0.0, 1), traj(1, 1.0, 2)], pad_id=0)
    assert batch.traj_index.tolist() == [0, 0, 0, 1, 2, 2]
    assert batch.sample_weights.tolist() == pytest.approx([1 / 3] * 3 + [1.0] + [0.5] * 2)
    assert batch.select(torch.tensor([1, 4])).traj_index.tolist() == [0, 2]


def test_tree_advantages_use_one_reward_per_tree_and_reach_every_call():
    from rlpost.advantage_step import AdvantageStep
    from rlpost.config import load_config
    from rlpost.distributed import Runtime
    trajs = [traj(0, 1.0, 3), traj(0, 0.0, 1), traj(1, 1.0, 1), traj(1, 1.0, 2), traj(2, 1.0, 1), traj(2, 0.0, 4)]
    batch = collate(trajs, pad_id=0)
    step = AdvantageStep(load_config(None, ["algo.advantage={name: grpo, std: population, eps: 1.0e-10}"]).algo,
                         Runtime())
    assert step.fn is grpo and step.params == GRPOAdvParams(std="population", eps=1e-10)
    fixed = FixedLogprobs()
    adv, metrics = step(batch, fixed)
    # group 0: trees (1, 0): mean 1/2, std 1/2 -> +1 on the 3 calls of tree 0, -1 on tree 1's call
    # (row-level stats would use mean 3/4 over the 4 rows); group 1: all solved -> 0; group 2 as group 0
    per_row = adv[:, 0].tolist()
    assert per_row == pytest.approx([1, 1, 1, -1, 0, 0, 0, 1, -1, -1, -1, -1])
    assert torch.equal(adv != 0, (batch.response_mask > 0) & (adv[:, :1] != 0))
    assert metrics["advantage/abs_mean"] == pytest.approx(4 / 6)   # over the 6 trees, not the 12 rows
    # a batch of single-sample trajectories takes the estimator's own path (same numbers)
    single = collate([traj(0, 1.0, 1), traj(0, 0.0, 1)], pad_id=0)
    assert step(single, fixed)[0][:, 0].tolist() == pytest.approx([1.0, -1.0])
    direct = per_trajectory(grpo, step.params, AdvantageInput(single.rewards, single.group_ids,
                                                                      single.response_mask), single.traj_index)[0]
    assert direct[:, 0].tolist() == pytest.approx([1.0, -1.0])


def test_sample_weights_scale_the_policy_term_but_not_the_kl(random_tiny_model):
    from rlpost.algos import POLICY_LOSSES
    from rlpost.learner import Learner, LearnerSettings, batched_logprobs
    model = copy.deepcopy(random_tiny_model).train()
    ref = copy.deepcopy(random_tiny_model).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trajs = [traj(0, 1.0, 2, prompt_id=0), traj(0, 0.0, 1)]
    for t in trajs:
        for s in t.samples:
            s.completion_ids = [20, 21, 22]
    batch = collate(trajs, pad_id=0)
    params = build_params(POLICY_LOSSES.entry("grpo").params, None, None)

    def loss(beta, weights, adv_value):
        settings = LearnerSettings(loss_name="grpo", loss_params=params, loss_agg="seq-mean-token-mean",
                                   max_completion_length=3, beta=beta, micro_batch_size=8)
        learner = Learner(model, torch.optim.SGD(model.parameters(), lr=0.0), None, settings, ref_model=ref)
        b = copy.copy(batch)
        b.sample_weights = torch.tensor(weights)
        fixed = FixedLogprobs(ref_logprobs=batched_logprobs(ref, b, settings, False)[0] if beta else None)
        out, _ = learner._micro_loss(b, torch.full((3, 3), adv_value) * b.response_mask, fixed, {})
        return out.item()

    # KL only (zero advantages): the weights change nothing; policy only: the loss scales with them
    assert loss(0.5, [0.5, 0.5, 1.0], 0.0) == pytest.approx(loss(0.5, [1.0, 1.0, 1.0], 0.0), rel=1e-6)
    assert loss(0.5, [1.0, 1.0, 1.0], 0.0) > 0
    assert loss(0.0, [0.5, 0.5, 1.0], 1.0) == pytest.approx(-(0.5 + 0.5 + 1.0) / 3, rel=1e-5)


# ------------------------------------------------------------------------------ trainer hooks

def test_trainer_scores_a2fm_groups_through_the_workflow_and_logs_its_metrics():
    from rlpost.config import RewardConfig
    from rlpost.rewards import RewardManager
    from rlpost.rollout import Scorer
    from rlpost.workflows.a2fm import A2FMWorkflow, score_apo_batch
    workflow = A2FMWorkflow(ScriptedEngine(policy), CharTokenizer(), rho=1)
    scorer = Scorer(RewardManager.from_config([RewardConfig("a2fm_exact_match")]), workflow, 10_000)
    trajs = workflow.rollout([prompt(0), prompt(1, "INVALID question")], SamplingParams(n=2, max_tokens=10_000))
    assert len(trajs) == 2 * (3 + 2)       # gamma = params.n adaptive rollouts after 3 * rho forced ones
    components = scorer.score(trajs)
    expected = score_apo_batch(copy.deepcopy(trajs))
    assert [t.reward for t in trajs] == expected == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    assert components["a2fm_exact_match"] == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]  # r_acc
    assert components["apo/format"][-2:] == [0.0, 0.0] and "apo/adaptive_factor" in components
    m = scorer.metrics(trajs, components)
    assert m["a2fm/invalid_route_rate"] == 0.5 and m["reward/apo/format/mean"] == 0.8
    # evaluation rolls out adaptive rollouts only
    evals = workflow.eval_rollout([prompt(0)], SamplingParams(n=3, max_tokens=10_000))
    assert len(evals) == 3 and not any(t.info["forced"] for t in evals)


def test_adaptive_penalty_applies_when_the_forced_instant_path_is_right():
    from rlpost.workflows.a2fm import A2FMWorkflow, route_tag

    def easy(ctx):  # every mode answers right; the adaptive rollout routes itself to reasoning
        turn = ctx.split("<|assistant|>", 1)[1]
        if "</classification>" in turn:
            return "<reasoning>r</reasoning><answer>42</answer>" if "reasoning_agent" in turn else "<answer>42</answer>"
        return "Hard.\n" + route_tag("reasoning") + "<reasoning>r</reasoning><answer>42</answer>"

    wf = A2FMWorkflow(ScriptedEngine(easy), CharTokenizer(), rho=2, alpha=2.0, max_turns=0)
    trajs = wf.rollout([prompt(0)], SamplingParams(n=1, max_tokens=10_000))
    for t in trajs:
        t.reward = 1.0  # r_acc from the reward functions
    wf.score(trajs)
    # p = 1 (both forced instant right): the adaptive reasoning rollout gets 1 - 1^2 = 0; agentic forced
    # rollouts fail the format (no tool call) -> 0; forced ones are never penalised
    assert [t.info["mode"] for t in trajs][-1] == "reasoning"
    assert [t.reward for t in trajs] == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


# ------------------------------------------------------------------------------ tasks, rewards, data

def test_apr_countdown_task_and_reward():
    from rlpost.rewards import REWARDS
    from rlpost.tasks import TASKS
    from rlpost.workflows.apr import apr_trace, check_solution, solvable
    train, test = TASKS.get("apr_countdown")("train", 200), TASKS.get("apr_countdown")("test", 50)
    key = lambda r: (r["target"], tuple(sorted(r["nums"])))  # noqa: E731  (a problem; its orderings share a split)
    assert not {key(r) for r in train} & {key(r) for r in test} and len({(r["target"], tuple(r["nums"])) for r in test}) == 50
    assert all(solvable(r["target"], r["nums"]) and 10 <= r["target"] <= 30 and len(r["nums"]) == 3 for r in train)
    assert train[0]["prompt"] == f"Moving to Node #0\nCurrent State: {train[0]['target']}:{train[0]['nums']}, Operations: []"
    assert TASKS.get("apr_countdown")("test", 1, token_budget=256)[0]["prompt"].startswith("Token Budget: 256 Moving")
    tree = apr_trace(train[0]["target"], train[0]["nums"], random.Random(0), beam_size=4, sub_beam_size=4)
    reward = REWARDS.get("apr_countdown")([train[0]["prompt"]], [tree.final_text])
    assert reward == [float(tree.solved)] and check_solution(train[0]["prompt"], "") is False


def test_a2fm_mini_task_traces_and_tools():
    from rlpost.rewards import REWARDS
    from rlpost.sandbox import run_python
    from rlpost.studies.a2fm_data import mode_trace, observation, tool_call_text
    from rlpost.tasks import TASKS
    from rlpost.workflows.a2fm import check_format, extract_answer
    train, test = TASKS.get("a2fm_mini")("train", 200), TASKS.get("a2fm_mini")("test", 80)
    assert [r["kind"] for r in train[:4]] == ["instant", "reasoning", "calc", "search"]
    places = lambda rows: {r["place"] for r in rows if r["kind"] == "search"}  # noqa: E731
    assert places(train) and places(test) and not places(train) & places(test)
    rng = random.Random(0)
    for row in train[:40]:
        for mode in ("instant", "reasoning", "agentic"):
            segments = mode_trace(row, mode, rng)
            text = "".join(t for t, _ in segments)
            assert check_format(mode, text), (mode, text)
            if mode == "agentic":
                assert extract_answer(text) == row["answer"] and [k for _, k in segments] == [True, False, True]
    # the synthetic Python observation is what the sandbox prints
    row = train[2]
    call = None
    while call is None or "python" not in call:
        call, _ = tool_call_text(row, rng)
    assert observation(call, "python", row) == (
        f"\n<tool_response>\nResults for tool call 1 (python):\n{run_python('print(' + row['expression'] + ')').stdout.strip()}"
        "\n</tool_response>\n")
    assert REWARDS.get("a2fm_exact_match")(["q"] * 3, ["42", "", " 42."], answer=["42", "42", "42"]) == [1.0, 0.0, 1.0]


def test_phrase_tokenizers_round_trip_and_save(tmp_path):
    from transformers import AutoTokenizer

    from rlpost.studies.common import save_model, scratch_model
    from rlpost.studies.phrase_tokenizer import a2fm_tokenizer, apr_tokenizer
    from rlpost.workflows.apr import apr_trace
    text = apr_trace(21, [3, 7, 9], random.Random(1), beam_size=3, p_parallel=1.0).final_text
    tok = apr_tokenizer()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text and len(ids) < len(text) / 2
    model, tok = scratch_model(hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64,
                               tokenizer=tok)
    save_model(model, tok, tmp_path / "m")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert loaded(text, add_special_tokens=False)["input_ids"] == ids and loaded.eos_token == "<|im_end|>"
    a2 = a2fm_tokenizer()
    s = '<classification>\ntoolcalling_agent\n</classification>\n<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>'
    assert a2.decode(a2(s, add_special_tokens=False)["input_ids"]) == s


def test_sft_loop_masks_untrained_segments():
    from rlpost.studies.common import encode_pairs
    from rlpost.models.tokenizer import build_char_tokenizer
    tok = build_char_tokenizer()
    [(p, c, m)] = encode_pairs(tok, [("ab", [("cd", True), ("ef", False), ("g", True)])])
    assert len(p) == 2 and len(c) == 6 and m == [1, 1, 0, 0, 1, 1] and c[-1] == tok.eos_token_id


@pytest.mark.parametrize("path", ["recipes/apr/tiny.yaml", "recipes/apr/full.yaml", "recipes/apr/full_sosp.yaml",
                                  "recipes/a2fm/tiny.yaml", "recipes/a2fm/full.yaml"])
def test_recipes_load(path):
    from pathlib import Path

    from rlpost.algos.core import build_params as bp
    from rlpost.config import component, load_config
    from rlpost.workflows import WORKFLOWS
    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / path)
    name, overrides = component(cfg.rollout.workflow)
    bp(WORKFLOWS.entry(name).params, None, overrides, where="rollout.workflow")
    aname, aover = component(cfg.algo.advantage)
    bp(ADVANTAGES.entry(aname).params, None, aover)
    assert json.dumps(cfg.rewards[0].name)
