"""APR: solver traces, spawn/join parsing, and the rollout workflow against a scripted engine."""
import random
from collections import Counter

import pytest

from rlpost.engines.base import SamplingParams
from rlpost.types import Prompt
from rlpost.workflows import WORKFLOWS
from rlpost.workflows.apr import (AprParams, AprWorkflow, Spawn, SpawnError, apr_metrics, apr_trace, check_solution,
                                  check_trace, countdown_problem, countdown_prompt, countdown_reward, extract_solution,
                                  parse_spawn, render_join, sos_trace, strip_spawn_block, validate_tree)

from scripted_engine import CharTokenizer, ScriptedEngine


def oracle_engine(trees):
    """An engine that answers every prompt of the given solver trees with the solver's completion."""
    table = {}
    for tree in trees:
        for prompt, completion in tree.sequences():
            table[prompt] = completion
    return ScriptedEngine(lambda p: table[p])


def sp(n):
    """The trainer's per-step params: n trees per prompt."""
    return SamplingParams(n=n, temperature=1.0, max_tokens=100_000, seed=0)


# ----------------------------------------------------------------------- (a) solver traces

def test_every_generated_trace_checks_out_for_200_random_problems():
    rng = random.Random(1234)
    solved = spawned = 0
    for i in range(200):
        target, nums = countdown_problem(rng)
        budget = [None, "sub_calls", "tokens"][i % 3]
        tree = apr_trace(target, nums, rng, budget=budget, count_tokens=len)
        assert validate_tree(tree) == [], (target, nums, validate_tree(tree)[:3])
        serial = sos_trace(target, nums, rng, budget="tokens" if i % 2 else None, count_tokens=len)
        assert validate_tree(serial) == [], (target, nums, validate_tree(serial)[:3])
        for t in (tree, serial):
            root_prompt = t.calls[0][0]
            assert countdown_reward(t.final_text, root_prompt) == float(t.solved)
        solved += tree.solved
        spawned += len(tree.calls) > 1
    assert solved > 100 and spawned > 100  # the solver finds most solutions and parallelises ~90 % of the time


def test_budget_prefixes():
    rng = random.Random(7)
    tree = apr_trace(39, [25, 36, 51, 49], rng, beam_size=3, sub_beam_size=3, p_parallel=1.0, budget="sub_calls")
    k = tree.num_children()
    assert k > 1 and all(p.startswith(f"Sub Call Budget: {k} Moving to Node #0\n") for p, _ in tree.calls)
    assert all(not c.calls[0][0].startswith("Sub Call Budget") for spawn in tree.children for c in spawn)
    tree = apr_trace(39, [25, 36, 51, 49], random.Random(7), beam_size=3, sub_beam_size=3, p_parallel=1.0,
                     budget="tokens", count_tokens=len)
    prefix = tree.calls[0][0].split("Moving")[0]
    assert prefix.startswith("Token Budget: ") and int(prefix.split()[2]) % 512 == 0
    assert all(p.startswith(prefix) for p, _ in tree.sequences())  # copied down to children
    assert countdown_prompt(39, [1, 2], sub_call_budget=3) == "Sub Call Budget: 3 Moving to Node #0\nCurrent State: 39:[1, 2], Operations: []"


def test_validator_catches_corrupted_traces():
    tree = apr_trace(10, [2, 3, 5], random.Random(0), beam_size=4, sub_beam_size=4, p_parallel=1.0)
    assert validate_tree(tree) == []
    text = tree.calls[0][0] + tree.calls[0][1]
    assert check_trace(text.replace("Resulting Numbers: [", "Resulting Numbers: [1, ", 1), 10)      # wrong numbers
    assert check_trace(text.replace("2+3=5", "2+3=6", 1), 10)                                      # wrong arithmetic
    assert check_trace(text + "Moving to Node #0,9,9\n", 10)                                       # unknown node
    assert check_trace(text + "I think the answer is 10\n", 10)                                    # unknown line
    assert not check_solution("Current State: 10:[2, 3, 5], Operations: []",
                              "Exploring Operation: 2+3=5, Resulting Numbers: [5, 5]\n"
                              "Exploring Operation: 5*5=10, Resulting Numbers: [10]\n10,10 equal: Goal Reached")


# ----------------------------------------------------------------------- (b) spawn parsing

ROOT = "Moving to Node #0\nCurrent State: 10:[2, 3, 5], Operations: []"
R1 = ("\nExploring Operation: 2+3=5, Resulting Numbers: [5, 5]\n"
      "Generated Node #0,0: 10:[5, 5] Operation: 2+3=5\n"
      "Exploring Operation: 5-2=3, Resulting Numbers: [3, 3]\n"
      "Generated Node #0,1: 10:[3, 3] Operation: 5-2=3\n")
SPAWN = ("<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n"
         "<Start Sub Search 1 at level 1> Moving to Node #0,1\n<End Calling Sub Searches>\n")
C0 = "Moving to Node #0,0\nCurrent State: 10:[5, 5], Operations: ['2+3=5']"
C0_OUT = ("\nExploring Operation: 5+5=10, Resulting Numbers: [10]\n10,10 equal: Goal Reached\n"
          "Moving to Node #0,0\nCurrent State: 10:[5, 5], Operations: ['2+3=5']\n"
          "Exploring Operation: 5+5=10, Resulting Numbers: [10]\n10,10 equal: Goal Reached\n")
C1 = "Moving to Node #0,1\nCurrent State: 10:[3, 3], Operations: ['5-2=3']"
C1_OUT = "\nExploring Operation: 3+3=6, Resulting Numbers: [6]\n6,10 unequal: No Solution\nNo solution found.\n"
JOIN = ("<Sub Searches>\n<Goal Reached in Sub Search 0 at level 1 at Node #0,0>\n"
        "Moving to Node #0,0\nCurrent State: 10:[5, 5], Operations: ['2+3=5']\n"
        "Exploring Operation: 5+5=10, Resulting Numbers: [10]\n10,10 equal: Goal Reached\n"
        "<No Solution in Sub Search 1 at level 1 at Node #0,1>\n<End Sub Searches>\n")
R2 = ("10,10 equal: Goal Reached\nMoving to Node #0\nCurrent State: 10:[2, 3, 5], Operations: []\n"
      "Exploring Operation: 2+3=5, Resulting Numbers: [5, 5]\nGenerated Node #0,0: 10:[5, 5] Operation: 2+3=5\n"
      "Moving to Node #0,0\nCurrent State: 10:[5, 5], Operations: ['2+3=5']\n"
      "Exploring Operation: 5+5=10, Resulting Numbers: [10]\n10,10 equal: Goal Reached\n")


def test_parse_spawn_well_formed():
    spawn = parse_spawn(ROOT + R1 + SPAWN)
    assert spawn == Spawn(["0,0", "0,1"], [C0, C1])
    assert parse_spawn(ROOT + R1) is None                                   # no block: the call is final
    assert parse_spawn(ROOT + R1 + SPAWN + "and then more text") is None    # text after the block: final (TinyRL)
    assert strip_spawn_block(ROOT + R1 + SPAWN) == ROOT + R1
    assert render_join(["0,0", "0,1"], [extract_solution(C0 + C0_OUT), None], 1) == JOIN


@pytest.mark.parametrize("block, code", [
    ("<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n", "missing_end"),
    ("<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,7\n<End Calling Sub Searches>\n",
     "unknown_node"),
    ("<Calling Sub Searches>\n" + "".join(f"<Start Sub Search {i} at level 1> Moving to Node #0,{i % 2}\n"
                                          for i in range(3)) + "<End Calling Sub Searches>\n", "too_many_threads"),
    ("<Calling Sub Searches>\n<Start Sub Search 0> go to #0,0\n<End Calling Sub Searches>\n", "malformed_line"),
    ("<Calling Sub Searches>\n<End Calling Sub Searches>\n", "empty_spawn"),
])
def test_parse_spawn_malformed_is_an_error_outcome(block, code):
    result = parse_spawn(ROOT + R1 + block, max_threads=2)
    assert isinstance(result, SpawnError) and result.code == code, result


# ----------------------------------------------------------------------- (c) rollout workflow

def scripted_tree_engine(root=ROOT):
    child_prefix = root[:root.find("Moving")] if root.startswith("Token Budget") else ""
    table = {root: R1 + SPAWN, child_prefix + C0: C0_OUT, child_prefix + C1: C1_OUT, root + R1 + JOIN: R2}
    return ScriptedEngine(lambda p: table[p])


def test_rollout_spawn_join_masks_and_weights():
    engine = scripted_tree_engine()
    wf = AprWorkflow(engine, CharTokenizer())
    [traj] = wf.rollout([Prompt(id=7, text=ROOT)], sp(1))
    # three engine calls: root, the two children together (each with only its own context), the continuation
    assert engine.calls == [[ROOT], [C0, C1], [ROOT + R1 + JOIN]]
    tok = CharTokenizer()
    assert [(tok.decode(s.prompt_ids), s.text) for s in traj.samples] == [
        (ROOT, R1 + SPAWN), (C0, C0_OUT), (C1, C1_OUT), (ROOT + R1 + JOIN, R2)]
    # the joined children text sits in the continuation's prompt, so no loss falls on it; every
    # completion token was sampled by its own call and is trained
    for s in traj.samples:
        assert s.loss_mask == [1] * len(s.completion_ids) and len(s.logprobs) == len(s.completion_ids)
    assert JOIN in tok.decode(traj.samples[3].prompt_ids) and "<Sub Searches>" not in traj.samples[3].text
    assert traj.sample_weights == [0.25] * 4 and traj.group_id == 7
    assert traj.final_text == ROOT + R1 + JOIN + R2
    assert countdown_reward(traj.final_text, traj.prompt.text) == 1.0
    assert traj.info["total_tokens"] == len(R1 + SPAWN) + len(C0_OUT) + len(C1_OUT) + len(R2)
    # sequential: root call, then only the longer child, then the continuation
    assert traj.info["sequential_tokens"] == len(R1 + SPAWN) + max(len(C0_OUT), len(C1_OUT)) + len(R2)
    assert traj.info["call_depths"] == [0, 1, 1, 0] and traj.info["errors"] == [] and traj.info["threads"] == 3


def test_shared_reward_weighting_is_one_over_calls_per_tree():
    serial_root = "Sub Call Budget: 0 " + ROOT
    tree_engine = scripted_tree_engine()
    engine = ScriptedEngine(lambda p: "\nNo solution found.\n" if p == serial_root else tree_engine.respond(p))
    trajs = AprWorkflow(engine, CharTokenizer()).rollout([Prompt(0, ROOT), Prompt(1, serial_root)], sp(2))
    assert [t.group_id for t in trajs] == [0, 0, 1, 1]
    # a tree of S calls gives each call weight 1/S, so every tree carries total weight 1
    assert [t.sample_weights for t in trajs] == [[0.25] * 4, [0.25] * 4, [1.0], [1.0]]
    assert [sum(t.sample_weights) for t in trajs] == [1.0] * 4
    # the four trees were rolled out together: round 1 = both roots x2, round 2 = all four children, round 3
    assert [len(c) for c in engine.calls] == [4, 4, 2]


def test_budget_prefix_copied_to_children_only_for_token_budget():
    for root, child_gets in (("Token Budget: 1024 " + ROOT, "Token Budget: 1024 "), ("Sub Call Budget: 2 " + ROOT, "")):
        engine = scripted_tree_engine(root)
        [traj] = AprWorkflow(engine, CharTokenizer()).rollout([Prompt(0, root)], sp(1))
        assert engine.calls[1] == [child_gets + C0, child_gets + C1]
        assert traj.sample_weights == [0.25] * 4 and countdown_reward(traj.final_text, root) == 1.0


def test_oracle_engine_reproduces_solver_trees_including_nesting():
    rng = random.Random(3)
    trees, prompts = [], []
    for i in range(6):
        target, nums = countdown_problem(rng)
        tree = apr_trace(target, nums, rng, beam_size=3, sub_beam_size=4, p_parallel=1.0, spawn_levels=2 if i % 2 else 1)
        trees.append(tree)
        prompts.append(Prompt(i, tree.calls[0][0]))
    engine = oracle_engine(trees)
    trajs = AprWorkflow(engine, CharTokenizer(), max_depth=2).rollout(prompts, sp(1))
    tok = CharTokenizer()
    for tree, traj in zip(trees, trajs):
        got = Counter((tok.decode(s.prompt_ids), s.text) for s in traj.samples)
        assert got == Counter(tree.sequences())
        assert traj.final_text == tree.final_text and traj.info["errors"] == []
        assert countdown_reward(traj.final_text, traj.prompt.text) == float(tree.solved)
        s = len(tree.sequences())
        assert traj.sample_weights == [1 / s] * s
    assert any(max(t.info["call_depths"]) == 2 for t in trajs)  # nested spawns happened


def test_malformed_model_output_in_rollout_does_not_crash():
    table = {
        ROOT: R1 + "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> Moving to Node #0,0\n",  # truncated
        "Sub Call Budget: 1 " + ROOT: R1 + "<Calling Sub Searches>\n<Start Sub Search 0 at level 1> "
                                      "Moving to Node #0,9\n<End Calling Sub Searches>\n",            # unknown node
        "Token Budget: 512 " + ROOT: R1 + SPAWN,                                                    # 2 > max_threads
    }
    engine = ScriptedEngine(lambda p: table[p])
    trajs = AprWorkflow(engine, CharTokenizer(), max_threads=1).rollout([Prompt(i, p) for i, p in enumerate(table)], sp(1))
    assert [t.info["errors"] for t in trajs] == [[(0, "missing_end")], [(0, "unknown_node")], [(0, "too_many_threads")]]
    for t in trajs:
        assert len(t.samples) == 1 and t.sample_weights == [1.0]
        assert countdown_reward(t.final_text, t.prompt.text) == 0.0


def test_child_errors_become_no_solution_and_parent_continues():
    # child 0 tries to spawn at depth 1 (max_depth=1): depth_exceeded -> "No Solution" for it
    bad_child = C0_OUT.split("10,10 equal")[0] + "Generated Node #0,0,0: 10:[10] Operation: 5+5=10\n" + \
        "<Calling Sub Searches>\n<Start Sub Search 0 at level 2> Moving to Node #0,0,0\n<End Calling Sub Searches>\n"
    join = render_join(["0,0", "0,1"], [None, None], 1)
    table = {ROOT: R1 + SPAWN, C0: bad_child, C1: C1_OUT, ROOT + R1 + join: "No solution found.\n"}
    [traj] = AprWorkflow(ScriptedEngine(lambda p: table[p]), CharTokenizer()).rollout([Prompt(0, ROOT)], sp(1))
    assert traj.info["errors"] == [(1, "depth_exceeded")]
    assert traj.final_text == ROOT + R1 + join + "No solution found.\n" and traj.sample_weights == [0.25] * 4


def test_fake_join_header_is_repaired_into_a_spawn():
    # the model writes the harness-only header; it is a stop string, and the harness swaps in the spawn header
    repaired = ROOT + R1 + "<Calling Sub Searches>"
    table = {ROOT: R1 + "<Sub Searches>\n<Goal Reached ...", repaired: "\n" + SPAWN.split("\n", 1)[1],
             C0: C0_OUT, C1: C1_OUT, ROOT + R1 + JOIN: R2}
    engine = ScriptedEngine(lambda p: table[p])
    [traj] = AprWorkflow(engine, CharTokenizer()).rollout([Prompt(0, ROOT)], sp(1))
    assert traj.info["repairs"] == 1 and traj.info["calls"] == 4   # the partial call is not a training sample
    assert CharTokenizer().decode(traj.samples[0].prompt_ids) == repaired
    assert countdown_reward(traj.final_text, ROOT) == 1.0


def test_context_limit_and_registry():
    [traj] = AprWorkflow(ScriptedEngine(lambda p: "x"), CharTokenizer(), max_context=10).rollout([Prompt(0, ROOT)], sp(1))
    assert traj.samples == [] and traj.info["errors"] == [(0, "context_exhausted")]
    entry = WORKFLOWS.entry("apr")
    assert entry.fn is AprWorkflow and entry.params is AprParams
    wf = entry.fn(ScriptedEngine(lambda p: "\nNo solution found.\n"), CharTokenizer(), **vars(AprParams()))
    trajs = wf.rollout([Prompt(0, ROOT)], sp(3))
    assert len(trajs) == 3 and {t.group_id for t in trajs} == {0}
    m = wf.metrics(trajs)
    assert m == apr_metrics(trajs) and m["apr/calls"] == 1.0 and m["apr/error_rate"] == 0.0
    assert m["apr/max_call_tokens"] == len(ROOT) + len("\nNo solution found.\n")


def test_rollout_uses_per_call_params_and_per_round_seeds():
    seen = []

    class Recorder(ScriptedEngine):
        def generate(self, requests, params):
            seen.append((params.n, params.seed, tuple(params.stop), params.max_tokens))
            return super().generate(requests, params)

    engine = Recorder(scripted_tree_engine().respond)
    params = SamplingParams(n=2, temperature=1.0, max_tokens=100_000, stop=["STOP"], seed=11)
    trajs = AprWorkflow(engine, CharTokenizer()).rollout([Prompt(3, ROOT)], params)
    assert len(trajs) == 2 and all(t.group_id == 3 for t in trajs)
    assert [s[0] for s in seen] == [1, 1, 1] and all(s[2] == ("STOP", "<Sub Searches>") for s in seen)
    assert len({s[1] for s in seen}) == 3          # each round draws its own random stream
    assert params.n == 2 and params.stop == ["STOP"]  # the caller's params are not modified
