"""APR: Adaptive Parallel Reasoning with spawn/join threads (Pan, Li, Lian et al., arXiv 2504.15466).

One LM orchestrates its own inference as a tree of threads. A parent call ends with a spawn block;
the harness runs every listed child with only a short context (batched in one engine call), and
the parent continues from its pre-spawn text plus the children's compact results. All calls of a
rollout tree share the tree's reward, each weighted 1/S (S = calls in the tree).

Text protocol (as in Parallel-Reasoning/APR ``src/data/search.py`` and ``tinyrl/rollout/apr_utils.py``)::

    [Sub Call Budget: k |Token Budget: n ]Moving to Node #0              <- root prompt
    Current State: 39:[25, 36, 51, 49], Operations: []
    Exploring Operation: 51-49=2, Resulting Numbers: [25, 36, 2]
    Generated Node #0,0: 39:[25, 36, 2] Operation: 51-49=2
    ...
    <Calling Sub Searches>                                               <- spawn, then EOS
    <Start Sub Search 0 at level 1> Moving to Node #0,0
    <Start Sub Search 1 at level 1> Moving to Node #0,1
    <End Calling Sub Searches>

    child prompt:  Moving to Node #0,0\\nCurrent State: 39:[25, 36, 2], Operations: ['51-49=2']

    parent continuation prompt = parent text with its last spawn block removed, then
    <Sub Searches>                                                       <- harness-only (a stop string)
    <No Solution in Sub Search 0 at level 1 at Node #0,0>
    <Goal Reached in Sub Search 1 at level 1 at Node #0,1>
    {child 1's success path: the text after its second-to-last "Goal Reached"}
    <End Sub Searches>

A serial search line is one of ``Current State: ...``, ``Exploring Operation: a op b=c, Resulting
Numbers: [...]``, ``Generated Node #id: t:[...] Operation: ...``, ``Moving to Node #id``,
``x,t equal: Goal Reached``, ``x,t unequal: No Solution``, ``No solution found.``, and, in SoS+
traces, ``Start Sub Search at level l: Moving to Node #id`` / ``Exit Sub Search at level l`` /
``No solution found in sub search``. A success ends with ``t,t equal: Goal Reached`` followed by
the solution path from the thread's start node, which is what :func:`extract_solution` returns and
:func:`check_solution` verifies.

Contents: (a) a Countdown solver writing APR trees (:func:`apr_trace`) and SoS+ serial traces
(:func:`sos_trace`), with budget prefixes, and :func:`validate_tree`; (b) :func:`parse_spawn`, robust
to malformed output; (c) :class:`AprWorkflow`, the rollout loop; plus :func:`countdown_reward`.

Malformed model output never raises. :func:`parse_spawn` returns a :class:`SpawnError` whose ``code``
is one of ``missing_end`` (spawn header without ``<End Calling Sub Searches>``), ``malformed_line``
(a line in the block is not ``<Start Sub Search i at level l> Moving to Node #id``), ``empty_spawn``,
``too_many_threads`` (more than ``max_threads`` lines), ``unknown_node`` (an id with no state earlier
in the thread). The workflow adds ``depth_exceeded`` (a thread at ``max_depth`` spawned),
``too_many_calls`` (``max_calls_per_thread`` reached), ``fake_join`` (the model kept writing the
harness header ``<Sub Searches>``) and ``context_exhausted``. Outcome of an error: the thread stops
there; a child's result is then "No Solution", and a root's tree ends with its text as
``final_text`` (so the countdown reward is 0 unless it already holds a valid solution). Errors
are listed in ``Trajectory.info["errors"]`` as ``(depth, code)``.
"""
from __future__ import annotations

import dataclasses
import heapq
import itertools
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable

from rlpost.engines.base import GenRequest, SamplingParams
from rlpost.types import Prompt, Sample, Trajectory

CALL_START = "<Calling Sub Searches>"
CALL_END = "<End Calling Sub Searches>"
JOIN_START = "<Sub Searches>"
JOIN_END = "<End Sub Searches>"
GOAL = "Goal Reached"

_BUDGET = re.compile(r"^(Sub Call Budget: \d+ |Token Budget: \d+ )")
_MOVE = re.compile(r"^Moving to Node #(\d+(?:,\d+)*)$")
_STATE = re.compile(r"^Current State: (\d+):\[([-\d, ]*)\], Operations: \[(.*)\]$")
_EXPLORE = re.compile(r"^Exploring Operation: (\d+)([-+*/])(\d+)=(-?\d+), Resulting Numbers: \[([-\d, ]*)\]$")
_GEN = re.compile(r"^Generated Node #(\d+(?:,\d+)*): (\d+):\[([-\d, ]*)\] Operation: (\d+[-+*/]\d+=-?\d+)$")
_EQ = re.compile(r"^(-?\d+),(\d+) equal: Goal Reached$")
_NEQ = re.compile(r"^(-?\d+),(\d+) unequal: No Solution$")
_SERIAL_SUB = re.compile(r"^Start Sub Search at level (\d+): Moving to Node #(\d+(?:,\d+)*)$")
_SERIAL_EXIT = re.compile(r"^Exit Sub Search at level (\d+)$")
_SPAWN_LINE = re.compile(r"^<Start Sub Search (\d+) at level (\d+)> Moving to Node #(\d+(?:,\d+)*)$")
_JOIN_LINE = re.compile(r"^<(Goal Reached|No Solution) in Sub Search (\d+) at level (\d+) at Node #(\d+(?:,\d+)*)>$")
_PLAIN = {"No solution found.", "No solution found in sub search"}


# ================================================================== (a) text helpers and solver

def state_line(target: int, nums, ops) -> str:
    return f"Current State: {target}:{list(nums)}, Operations: {list(ops)}"


def thread_prompt(node_id: str, target: int, nums, ops, prefix: str = "") -> str:
    """``{prefix}Moving to Node #id\\nCurrent State: t:[...], Operations: [...]`` (no trailing newline)."""
    return f"{prefix}Moving to Node #{node_id}\n{state_line(target, nums, ops)}"


def countdown_prompt(target: int, nums, sub_call_budget: int | None = None, token_budget: int | None = None) -> str:
    """The root prompt of a Countdown problem, optionally with one conditioning prefix."""
    if sub_call_budget is not None and token_budget is not None:
        raise ValueError("use one budget prefix, not both")
    prefix = (f"Sub Call Budget: {sub_call_budget} " if sub_call_budget is not None else
              f"Token Budget: {token_budget} " if token_budget is not None else "")
    return thread_prompt("0", target, nums, [], prefix)


def token_budget_bin(n_tokens: int, bin_size: int = 512, cap: int | None = 4096) -> int:
    """Round a token count up to a multiple of ``bin_size`` (SoS+ uses 512-token bins up to 4096)."""
    b = max(1, -(-n_tokens // bin_size)) * bin_size
    return min(b, cap) if cap else b


def combine(a: int, b: int, ops: str = "+-*/") -> list[tuple[int, str]]:
    """Countdown moves on a pair: a+b, a*b, larger-smaller, and larger/smaller when exact (those in ``ops``)."""
    hi, lo = (a, b) if a > b else (b, a)
    out = [("+", a + b, f"{a}+{b}={a + b}"), ("*", a * b, f"{a}*{b}={a * b}"), ("-", hi - lo, f"{hi}-{lo}={hi - lo}")]
    if lo != 0 and hi % lo == 0:
        out.append(("/", hi // lo, f"{hi}/{lo}={hi // lo}"))
    return [(value, text) for op, value, text in out if op in ops]


def mult_heuristic(nums, target: int) -> int:
    """h = sum_i min_j |n_i - f_j|, f_j the factors of target (>= 2): the paper's "multiply" heuristic."""
    factors = [f for f in range(2, target + 1) if target % f == 0] or [target]
    return sum(min(abs(n - f) for f in factors) for n in nums)


def solvable(target: int, nums, ops: str = "+-*/") -> bool:
    """Depth-first: can all of ``nums`` be combined into ``target``?"""
    if len(nums) == 1:
        return nums[0] == target
    for i, j in itertools.combinations(range(len(nums)), 2):
        rest = [n for k, n in enumerate(nums) if k not in (i, j)]
        if any(solvable(target, rest + [v], ops) for v, _ in combine(nums[i], nums[j], ops)):
            return True
    return False


def countdown_problem(rng: random.Random, count: int = 4, min_target: int = 10, max_target: int = 100) -> tuple[int, list[int]]:
    """A solvable problem: target in [min_target, max_target], ``count`` numbers in [1, max_target-1]."""
    target = rng.randint(min_target, max_target)
    while True:
        nums = [rng.randint(1, max_target - 1) for _ in range(count)]
        if solvable(target, nums):
            return target, nums


@dataclass
class SearchTree:
    """One thread of a solver run, as LM calls.

    calls:     (prompt, completion) of each successive call of this thread
    children:  children[k] = the threads spawned at the end of calls[k] (one list per spawn)
    solved:    the thread's final text ends with a goal path
    """
    calls: list[tuple[str, str]]
    children: list[list["SearchTree"]] = field(default_factory=list)
    solved: bool = False

    @property
    def final_text(self) -> str:
        prompt, completion = self.calls[-1]
        return prompt + completion

    def sequences(self) -> list[tuple[str, str]]:
        """Every (prompt, completion) pair of the tree: the SFT examples (each call is its own sequence)."""
        out = list(self.calls)
        for spawn in self.children:
            for child in spawn:
                out += child.sequences()
        return out

    def num_children(self) -> int:
        return sum(1 + c.num_children() for spawn in self.children for c in spawn)


@dataclass(eq=False)
class _Node:
    idx: str
    nums: list[int]
    ops: list[str]
    h: float
    parent: "_Node | None" = None


def _path(goal: _Node, start: _Node, target: int) -> str:
    """The recap from ``start`` to ``goal``, ending with ``t,t equal: Goal Reached``."""
    chain = [goal]
    while chain[-1] is not start:
        chain.append(chain[-1].parent)
    chain.reverse()
    text = f"Moving to Node #{start.idx}\n"
    for node, nxt in zip(chain, chain[1:]):
        text += state_line(target, node.nums, node.ops) + "\n"
        text += f"Exploring Operation: {nxt.ops[-1]}, Resulting Numbers: {nxt.nums}\n"
        if nxt is goal:
            return text + f"{target},{target} equal: {GOAL}\n"
        text += f"Generated Node #{nxt.idx}: {target}:{nxt.nums} Operation: {nxt.ops[-1]}\n"
        text += f"Moving to Node #{nxt.idx}\n"
    raise AssertionError("goal is not below start")


def _expand(node: _Node, target: int, beam: int, rng: random.Random, heuristic,
            ops: str = "+-*/") -> tuple[str, _Node | None, list[_Node]]:
    """Write one node's expansion: keep the ``beam`` best successors (shuffled), report each."""
    successors = []
    for i, j in itertools.combinations(range(len(node.nums)), 2):
        rest = [n for k, n in enumerate(node.nums) if k not in (i, j)]
        for value, op in combine(node.nums[i], node.nums[j], ops):
            nums = rest + [value]
            successors.append(_Node("", nums, node.ops + [op], heuristic(nums, target), node))
    successors.sort(key=lambda n: n.h)  # stable: ties keep generation order
    kept = successors[:beam]
    rng.shuffle(kept)
    text, frontier = "", []
    for child in kept:
        child.idx = f"{node.idx},{len(frontier)}"
        text += f"Exploring Operation: {child.ops[-1]}, Resulting Numbers: {child.nums}\n"
        if len(child.nums) == 1:
            if child.nums[0] == target:
                return text + f"{target},{target} equal: {GOAL}\n", child, []
            text += f"{child.nums[0]},{target} unequal: No Solution\n"
        else:
            text += f"Generated Node #{child.idx}: {target}:{child.nums} Operation: {child.ops[-1]}\n"
            frontier.append(child)
    frontier.sort(key=lambda n: n.h)
    return text, None, frontier


def _beam_order(start: _Node, beam: int):
    """The visiting order of a beam search from ``start``: ``(nodes, push)``. ``nodes`` yields the queued nodes,
    popped ``beam`` at a time (lowest ``h`` first, ties first-queued); ``push(successors)`` queues more."""
    heap, tie = [(start.h, 0, start)], itertools.count(1)

    def push(successors):
        for c in successors:
            heapq.heappush(heap, (c.h, next(tie), c))

    def nodes():
        while heap:
            yield from [heapq.heappop(heap)[2] for _ in range(min(beam, len(heap)))]

    return nodes(), push


def _parallel_search(target, start: _Node, beam, sub_beam, rng, p_parallel, level, spawn_levels, heuristic,
                     root: _Node, ops: str = "+-*/") -> tuple[SearchTree, _Node | None]:
    """Hybrid BFS/DFS of APR App. A.3: at levels < spawn_levels, a node with >1 successors is, with
    probability ``p_parallel``, explored by one child thread per successor (a spawn)."""
    call_prompt = thread_prompt(start.idx, target, start.nums, start.ops)
    text = ""
    tree = SearchTree(calls=[])
    nodes, push = _beam_order(start, beam)
    for node in nodes:
        text += f"Moving to Node #{node.idx}\n" + state_line(target, node.nums, node.ops) + "\n"
        lines, goal, frontier = _expand(node, target, beam, rng, heuristic, ops)
        text += lines
        if goal is not None:
            text += _path(goal, root, target)
            tree.calls.append((call_prompt, text[len(call_prompt):]))
            tree.solved = True
            return tree, goal
        if level < spawn_levels and len(frontier) > 1 and rng.random() < p_parallel:
            subs = [_parallel_search(target, c, sub_beam, sub_beam, rng, p_parallel, level + 1, spawn_levels,
                                     heuristic, c, ops) for c in frontier]
            block = CALL_START + "\n" + "".join(
                f"<Start Sub Search {i} at level {level + 1}> Moving to Node #{c.idx}\n"
                for i, c in enumerate(frontier)) + CALL_END + "\n"
            tree.calls.append((call_prompt, text[len(call_prompt):] + block))
            tree.children.append([t for t, _ in subs])
            text += render_join([c.idx for c in frontier],
                                [_path(g, c, target).rstrip("\n") if g else None for c, (_, g) in zip(frontier, subs)],
                                level + 1)
            call_prompt = text
            for _, g in subs:
                if g is not None:
                    text += f"{target},{target} equal: {GOAL}\n" + _path(g, root, target)
                    tree.calls.append((call_prompt, text[len(call_prompt):]))
                    tree.solved = True
                    return tree, g
        else:
            push(frontier)
    text += "No solution found.\n"
    tree.calls.append((call_prompt, text[len(call_prompt):]))
    return tree, None


def _serial_search(target, start: _Node, beam, rng, p_sub, level, heuristic, root: _Node,
                   ops: str = "+-*/") -> tuple[str, _Node | None]:
    """SoS+ (the serial hybrid search): promising nodes get an inline sub-search, one after another."""
    text = ""
    nodes, push = _beam_order(start, beam)
    for node in nodes:
        if node is not start:  # the caller writes the move to the start node
            text += f"Moving to Node #{node.idx}\n"
        text += state_line(target, node.nums, node.ops) + "\n"
        lines, goal, frontier = _expand(node, target, beam, rng, heuristic, ops)
        text += lines
        if goal is not None:
            return text + _path(goal, root, target), goal
        if frontier and rng.random() < p_sub:
            for c in frontier:
                sub, g = _serial_search(target, c, beam, rng, p_sub, level + 1, heuristic, root, ops)
                text += f"Start Sub Search at level {level + 1}: Moving to Node #{c.idx}\n" + sub
                text += f"Exit Sub Search at level {level + 1}\n"
                if g is not None:
                    return text, g
                text += "No solution found in sub search\n"
        else:
            push(frontier)
    return text + "No solution found.\n", None


def _apply_prefix(tree: SearchTree, prefix: str, to_children: bool) -> None:
    tree.calls = [(prefix + p, c) for p, c in tree.calls]
    if to_children:
        for spawn in tree.children:
            for child in spawn:
                _apply_prefix(child, prefix, True)


def _tree_tokens(tree: SearchTree, count_tokens: Callable[[str], int]) -> int:
    return sum(count_tokens(c) for _, c in tree.sequences())


def apr_trace(target: int, nums, rng: random.Random, beam_size: int | None = None, sub_beam_size: int | None = None,
              p_parallel: float = 0.9, spawn_levels: int = 1, budget: str | None = None,
              count_tokens: Callable[[str], int] | None = None, heuristic=mult_heuristic,
              ops: str = "+-*/") -> SearchTree:
    """An APR solver tree for one problem (App. A.3 Alg. 2 as in ``src/data/search.py``).

    Args:
        beam_size: parent beam; default ``U{1..10}`` as in the released data (``--max_beam_size 10``).
        sub_beam_size: child beam; default ``U{beam..15}`` (``--max_sub_call_beam_size 15``).
        p_parallel: chance to spawn at a level-0 node with >1 successors. The code uses 0.9
            (``promising_threshold``); the paper text says 10 % (see the notes' open question 1).
        spawn_levels: threads at level < spawn_levels may spawn (1 = only the root, as in the paper).
        ops: the allowed operations (Countdown: ``+-*/``; a miniature may use fewer, e.g. ``+-``).
        budget: None, ``"sub_calls"`` (root prompts get ``Sub Call Budget: k `` with k = child threads
            in the tree; children do not) or ``"tokens"`` (every prompt gets ``Token Budget: n ``,
            n = the tree's completion tokens rounded up to 512; needs ``count_tokens``).
    """
    beam = beam_size or rng.randint(1, 10)
    sub_beam = sub_beam_size or rng.randint(beam, max(beam, 15))
    start = _Node("0", list(nums), [], heuristic(nums, target))
    tree, _ = _parallel_search(target, start, beam, sub_beam, rng, p_parallel, 0, spawn_levels, heuristic, start, ops)
    if budget == "sub_calls":
        _apply_prefix(tree, f"Sub Call Budget: {tree.num_children()} ", to_children=False)
    elif budget == "tokens":
        if count_tokens is None:
            raise ValueError("budget='tokens' needs count_tokens")
        _apply_prefix(tree, f"Token Budget: {token_budget_bin(_tree_tokens(tree, count_tokens), cap=None)} ", True)
    elif budget is not None:
        raise ValueError(f"budget must be None, 'sub_calls' or 'tokens', got {budget!r}")
    return tree


def sos_trace(target: int, nums, rng: random.Random, beam_size: int | None = None, p_sub: float = 0.5,
              budget: str | None = None, count_tokens: Callable[[str], int] | None = None,
              heuristic=mult_heuristic, budget_bin: int = 512, budget_cap: int | None = 4096,
              ops: str = "+-*/") -> SearchTree:
    """A serial SoS+ trace (one call, no spawns), from the same root prompt as APR.

    ``p_sub`` is the chance that a node's successors get inline sub-searches (``sosp`` default 0.5);
    ``budget="tokens"`` prefixes ``Token Budget: n `` in ``budget_bin``-token bins capped at ``budget_cap``
    (the paper: 512 and 4096; a miniature with short traces uses smaller bins).
    """
    beam = beam_size or rng.randint(1, 5)
    start = _Node("0", list(nums), [], heuristic(nums, target))
    prompt = thread_prompt("0", target, nums, [])
    text, goal = _serial_search(target, start, beam, rng, p_sub, 0, heuristic, start, ops)
    tree = SearchTree(calls=[(prompt, text[len(state_line(target, nums, [])):])], solved=goal is not None)
    if budget == "tokens":
        if count_tokens is None:
            raise ValueError("budget='tokens' needs count_tokens")
        n_tokens = count_tokens(tree.final_text)
        _apply_prefix(tree, f"Token Budget: {token_budget_bin(n_tokens, budget_bin, budget_cap)} ", True)
    elif budget is not None:
        raise ValueError(f"sos_trace budget must be None or 'tokens', got {budget!r}")
    return tree


# ================================================================== solutions and validity

def extract_solution(trace: str) -> str | None:
    """A thread's return value: the text after its second-to-last "Goal Reached", or None."""
    hits = [m.start() for m in re.finditer(GOAL, trace)]
    if len(hits) < 2:
        return None
    return trace[hits[-2] + len(GOAL):].strip()


def _ints(s: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", s)]


def _apply(a: int, op: str, b: int) -> int | None:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a // b if b != 0 and a % b == 0 else None


def check_solution(prompt: str, solution: str | None) -> bool:
    """True when ``solution`` (a goal path) solves the problem in ``prompt`` (TinyRL ``check_solution``).

    Walks the ``Exploring Operation`` lines from the prompt's numbers: each must use available
    numbers, be arithmetically right (exact division) and list the right resulting numbers; the
    first ``Goal Reached`` line must come when exactly [target] is left.
    """
    m = re.search(r"Current State:\s*(\d+):\[(.*?)\]", prompt)
    if not m or not solution:
        return False
    target, current = int(m.group(1)), _ints(m.group(2))
    for line in solution.splitlines():
        op_m = re.search(r"Exploring Operation:\s*(\d+)([-+*/])(\d+)=(-?\d+),\s*Resulting Numbers:\s*\[(.*?)\]", line)
        if op_m:
            a, op, b, c = int(op_m.group(1)), op_m.group(2), int(op_m.group(3)), int(op_m.group(4))
            rest = list(current)
            try:
                rest.remove(a)
                rest.remove(b)
            except ValueError:
                return False
            if _apply(a, op, b) != c or sorted(rest + [c]) != sorted(_ints(op_m.group(5))):
                return False
            current = rest + [c]
        if GOAL in line:
            return current == [target]
    return False


def countdown_reward(final_text: str, prompt_text: str) -> float:
    """APR's RL reward: 1 if the tree's final text ends in a valid solution path, else 0."""
    return float(check_solution(prompt_text, extract_solution(final_text)))


class _Checker:
    """Line-by-line validity of a search trace: arithmetic, node states and references, protocol lines."""

    def __init__(self, target: int, nodes: dict[str, tuple[tuple, tuple]] | None = None):
        self.target, self.nodes, self.problems = target, dict(nodes or {}), []
        self.pending = self.cur = self.cur_id = self.cur_ops = self.last = None
        self.joined_goal = self.join_has_goal = False
        self.spawn_ids, self.first = None, True   # first: the thread's start node may still be defined

    def bad(self, n: int, msg: str) -> None:
        self.problems.append(f"line {n + 1}: {msg}")

    def move(self, n: int, node_id: str) -> None:
        if node_id not in self.nodes and not self.first:
            self.bad(n, f"move to unknown node #{node_id}")
        self.pending, self.cur = node_id, None

    def feed(self, text: str) -> list[str]:
        for n, line in enumerate(text.split("\n")):
            line = _BUDGET.sub("", line) if n == 0 else line
            if line:
                self.line(n, line)
        return self.problems

    def line(self, n: int, s: str) -> None:  # noqa: C901 - one branch per line kind
        if m := _MOVE.match(s):
            return self.move(n, m.group(1))
        if m := _SERIAL_SUB.match(s):
            return self.move(n, m.group(2))
        if m := _STATE.match(s):
            if self.pending is None:
                return self.bad(n, "state without a preceding move")
            nums, ops = tuple(_ints(m.group(2))), tuple(re.findall(r"'([^']*)'", m.group(3)))
            if int(m.group(1)) != self.target:
                self.bad(n, "wrong target")
            known = self.nodes.setdefault(self.pending, (nums, ops))
            if known != (nums, ops):
                self.bad(n, f"state of #{self.pending} is {known}, not {(nums, ops)}")
            self.cur, self.cur_id, self.cur_ops, self.pending, self.last = list(nums), self.pending, ops, None, None
            self.first = False
            return
        if m := _EXPLORE.match(s):
            if self.cur is None:
                return self.bad(n, "exploring without a current state")
            a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            rest = list(self.cur)
            try:
                rest.remove(a)
                rest.remove(b)
            except ValueError:
                return self.bad(n, f"{a} or {b} not in {self.cur}")
            if _apply(a, op, b) != c:
                self.bad(n, f"wrong arithmetic {a}{op}{b}={c}")
            result = _ints(m.group(5))
            if sorted(result) != sorted(rest + [c]):
                self.bad(n, f"resulting numbers {result} != {rest + [c]}")
            self.last = (result, f"{a}{op}{b}={c}")
            return
        if m := _GEN.match(s):
            node_id, nums = m.group(1), tuple(_ints(m.group(3)))
            if self.last is None or list(nums) != self.last[0] or m.group(4) != self.last[1]:
                self.bad(n, f"generated node #{node_id} does not match the last exploration")
            if node_id.rsplit(",", 1)[0] != self.cur_id:
                self.bad(n, f"node #{node_id} is not a child of #{self.cur_id}")
            state = (nums, tuple(self.cur_ops or ()) + (m.group(4),))
            if self.nodes.setdefault(node_id, state) != state:
                self.bad(n, f"node #{node_id} redefined")
            return
        if m := _EQ.match(s):
            x = int(m.group(1))
            ok_last = self.last is not None and self.last[0] == [x]
            if x != self.target or int(m.group(2)) != self.target or not (ok_last or self.joined_goal):
                self.bad(n, "goal claimed without reaching the target")
            self.joined_goal = False
            return
        if m := _NEQ.match(s):
            x = int(m.group(1))
            if self.last is None or self.last[0] != [x] or x == self.target:
                self.bad(n, "wrong 'No Solution' line")
            return
        if s in _PLAIN or _SERIAL_EXIT.match(s):
            self.cur = None
            return
        if s == CALL_START:
            self.spawn_ids = []
            return
        if m := _SPAWN_LINE.match(s):
            if self.spawn_ids is None or int(m.group(1)) != len(self.spawn_ids):
                return self.bad(n, "spawn line out of place")
            if m.group(3) not in self.nodes:
                self.bad(n, f"spawn of unknown node #{m.group(3)}")
            self.spawn_ids.append(m.group(3))
            return
        if s == CALL_END:
            self.spawn_ids = None
            return
        if s == JOIN_START:
            self.cur, self.joined_goal, self.join_has_goal = None, False, False
            return
        if m := _JOIN_LINE.match(s):
            if m.group(4) not in self.nodes:
                self.bad(n, f"join of unknown node #{m.group(4)}")
            self.cur, self.join_has_goal = None, self.join_has_goal or m.group(1) == GOAL
            return
        if s == JOIN_END:
            # the parent may now claim the goal a child reached ("t,t equal: Goal Reached")
            self.cur, self.joined_goal = None, self.join_has_goal
            return
        self.bad(n, f"unrecognised line {s[:60]!r}")


def check_trace(text: str, target: int, nodes: dict | None = None) -> list[str]:
    """Problems found in one call's text (prompt + completion); [] when every line checks out."""
    return _Checker(target, nodes).feed(text)


def validate_tree(tree: SearchTree, root_prompt: str | None = None) -> list[str]:
    """Every problem in a solver tree: lines, spawn blocks, child prompts, join blocks, final solution
    and budget prefixes. [] means the tree is a valid training example for the workflow's protocol."""
    first = tree.calls[0][0]
    m = re.search(r"Current State: (\d+):", first)
    if not m:
        return ["root prompt has no Current State"]
    target, problems = int(m.group(1)), []
    token_prefix = first[:first.find("Moving to Node")] if first.startswith("Token Budget: ") else ""

    def visit(t: SearchTree, depth: int, where: str) -> None:
        for k, (prompt, completion) in enumerate(t.calls):
            full = prompt + completion
            problems.extend(f"{where} call {k}: {p}" for p in check_trace(full, target))
            spawn = parse_spawn(full, max_threads=10**6)
            if k < len(t.calls) - 1:
                if not isinstance(spawn, Spawn) or k >= len(t.children) or len(spawn.node_ids) != len(t.children[k]):
                    problems.append(f"{where} call {k}: not followed by a matching spawn")
                    continue
                kids = t.children[k]
                for i, (child, p) in enumerate(zip(kids, spawn.prompts)):
                    if child.calls[0][0] != token_prefix + p:
                        problems.append(f"{where} call {k}: child {i} prompt differs from its node's state")
                results = [extract_solution(c.final_text) for c in kids]
                if t.calls[k + 1][0] != strip_spawn_block(full) + render_join(spawn.node_ids, results, depth + 1):
                    problems.append(f"{where} call {k + 1}: prompt is not the joined continuation")
            elif spawn is not None:
                problems.append(f"{where}: last call spawns")
            elif not (full.endswith(f"equal: {GOAL}\n") or full.rstrip().endswith("No solution found.")
                      or full.rstrip().endswith("Exit Sub Search at level 1")):
                problems.append(f"{where}: last call ends without a result")
        for s, spawn_kids in enumerate(t.children):
            for i, child in enumerate(spawn_kids):
                visit(child, depth + 1, f"{where}/spawn{s}.child{i}")

    visit(tree, 0, "root")
    solution = extract_solution(tree.final_text)
    if tree.solved and not check_solution(root_prompt or first, solution):
        problems.append("root: solved but the final solution does not check out")
    if first.startswith("Sub Call Budget: "):
        if int(_ints(first)[0]) != tree.num_children():
            problems.append("root: Sub Call Budget differs from the number of child threads")
    return problems


# ================================================================== (b) spawn/join parsing

@dataclass
class Spawn:
    """A well-formed spawn block: the child node ids and their contexts (without budget prefix)."""
    node_ids: list[str]
    prompts: list[str]


@dataclass
class SpawnError:
    """A malformed spawn; ``code`` is one of the documented outcomes (see the module docstring)."""
    code: str
    message: str = ""


def node_table(text: str) -> dict[str, tuple[int, list[int], list[str]]]:
    """Node id -> (target, nums, ops) for every node whose state the text reveals.

    ``Moving to Node #id`` followed by a ``Current State`` line gives the state directly; a
    ``Generated Node #id`` line gives it from its parent's state plus the operation.
    """
    lines = [_BUDGET.sub("", ln.strip()) for ln in text.split("\n")]
    table: dict[str, tuple[int, list[int], list[str]]] = {}
    for ln, nxt in zip(lines, lines[1:]):
        mv = _MOVE.match(ln) or _SERIAL_SUB.match(ln)
        st = _STATE.match(nxt)
        if mv and st and mv.group(mv.lastindex) not in table:
            table[mv.group(mv.lastindex)] = (int(st.group(1)), _ints(st.group(2)), re.findall(r"'([^']*)'", st.group(3)))
    for ln in lines:
        if (g := _GEN.match(ln)) and g.group(1) not in table:
            parent = table.get(g.group(1).rsplit(",", 1)[0])
            if parent is not None:
                table[g.group(1)] = (int(g.group(2)), _ints(g.group(3)), parent[2] + [g.group(4)])
    return table


def strip_spawn_block(trace: str) -> str:
    """The trace before its last ``<Calling Sub Searches>``."""
    i = trace.rfind(CALL_START)
    return trace if i == -1 else trace[:i]


def render_join(node_ids: list[str], results: list[str | None], level: int) -> str:
    """The harness's join block; a child's ``result`` is its success path or None."""
    text = JOIN_START + "\n"
    for i, (node_id, result) in enumerate(zip(node_ids, results)):
        if result is None:
            text += f"<No Solution in Sub Search {i} at level {level} at Node #{node_id}>\n"
        else:
            text += f"<Goal Reached in Sub Search {i} at level {level} at Node #{node_id}>\n{result}\n"
    return text + JOIN_END + "\n"


def parse_spawn(trace: str, max_threads: int = 10) -> Spawn | SpawnError | None:
    """Read the spawn block at the end of one call's text (its prompt + completion).

    Returns None when the call did not spawn (no block, or text after the block: then the call
    is final, as in TinyRL), a :class:`Spawn`, or a :class:`SpawnError` (never raises).
    Previous spawn blocks never remain in a thread's text (the harness removes them when it
    joins), so the last ``<Calling Sub Searches>`` belongs to this call.
    """
    start = trace.rfind(CALL_START)
    if start == -1:
        return None
    block = trace[start + len(CALL_START):]
    end = block.find(CALL_END)
    if end == -1:
        return SpawnError("missing_end", f"{CALL_START} without {CALL_END}")
    if block[end + len(CALL_END):].strip():
        return None
    lines = [ln.strip() for ln in block[:end].split("\n") if ln.strip()]
    matches = [_SPAWN_LINE.match(ln) for ln in lines]
    if not all(matches):
        bad = lines[matches.index(None)]
        return SpawnError("malformed_line", f"not a sub-search line: {bad[:80]!r}")
    if not matches:
        return SpawnError("empty_spawn", "spawn block lists no sub-search")
    if len(matches) > max_threads:
        return SpawnError("too_many_threads", f"{len(matches)} sub-searches > max_threads={max_threads}")
    table = node_table(trace[:start])
    ids = [m.group(3) for m in matches]
    unknown = [i for i in ids if i not in table]
    if unknown:
        return SpawnError("unknown_node", f"no state for node(s) {', '.join('#' + u for u in unknown)}")
    return Spawn(ids, [thread_prompt(i, table[i][0], table[i][1], table[i][2]) for i in ids])


# ================================================================== (c) rollout workflow

@dataclass
class AprParams:
    max_depth: int = 1                 # threads at depth < max_depth may spawn (root = 0); paper: 1
    max_threads: int = 10              # children per spawn (APR conditions on 0-10)
    max_calls_per_thread: int = 8      # parent continuations per thread
    max_context: int | None = None     # prompt + completion tokens per call; max_tokens is clamped
    max_repairs: int = 2               # times "<Sub Searches>" is swapped for "<Calling Sub Searches>"
    add_special_tokens: bool = True    # tokenize each call's prompt with BOS (TinyRL prepends bos_token)


@dataclass(eq=False)
class _Thread:
    tree: int
    depth: int
    prompt: str                 # the context of this thread's next call
    prefix: str = ""            # condition prefix copied to children ("Token Budget: n " or "")
    parent: "_Thread | None" = None
    trace: str = ""             # prompt + completion of the last call
    calls: int = 0
    repairs: int = 0
    children: list = field(default_factory=list)
    node_ids: list = field(default_factory=list)
    waiting: int = 0
    own_tokens: int = 0         # sequential tokens: own calls + the longest child of each spawn
    child_max: int = 0
    result: str | None = None


@dataclass(eq=False)
class _Tree:
    prompt: Prompt
    start: float
    samples: list = field(default_factory=list)
    depths: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    total_tokens: int = 0
    threads: int = 1
    repairs: int = 0
    max_call: int = 0           # longest prompt + completion of any call (the context the tree needed)
    root: _Thread | None = None
    wall: float = 0.0


class AprWorkflow:
    """Roll out APR call trees.

        wf = AprWorkflow(engine, tokenizer, max_depth=1)           # as the trainer builds it (AprParams)
        trajs = wf.rollout(prompts, SamplingParams(n=5, temperature=1.0, max_tokens=4096))
        rewards = [countdown_reward(t.final_text, t.prompt.text) for t in trajs]   # or REWARDS "apr_countdown"

    ``params.n`` trees per prompt (prompt-major, ``group_id = prompt.id``); each engine call samples once
    (``n=1``) with ``params`` plus the stop string ``<Sub Searches>``; ``params.max_tokens`` caps every call
    (clamped further by ``max_context``). A per-step ``params.seed`` is offset by the round number, so the
    rounds of one rollout draw different random streams. Engines must keep a matched stop string at the
    end of ``Sample.text`` (as :class:`~rlpost.engines.base.SamplingParams` specifies).

    Every pending call of every tree goes into one ``engine.generate`` per round, so all children
    of a spawn are decoded together, each from its own short context. Each engine call becomes
    one :class:`Sample` (its prompt carries everything the call did not sample, including the
    join block, so the loss mask covers exactly the call's own tokens); ``sample_weights`` are
    1/S for the S calls of a tree. ``info`` holds ``calls``, ``threads``, ``total_tokens`` (all
    generated tokens), ``sequential_tokens`` (longest causal chain: a spawn adds only its longest
    child), ``max_call_tokens`` (the longest prompt + completion of any call: the context the tree
    needed), ``wall_time_s``, ``errors``, ``repairs`` and ``call_depths``.

    Trainer hooks: :meth:`metrics` (``apr/...`` per step). The reward is per tree (``apr_countdown``
    in :data:`rlpost.rewards.REWARDS`); the trainer computes group statistics per tree and gives every
    call the tree's advantage (see ``rlpost.advantage_step.AdvantageStep``).
    """

    def __init__(self, engine, tokenizer, max_depth: int = 1, max_threads: int = 10,
                 max_calls_per_thread: int = 8, max_context: int | None = None, max_repairs: int = 2,
                 add_special_tokens: bool = True):
        self.engine, self.tokenizer = engine, tokenizer
        self.max_depth, self.max_threads = max_depth, max_threads
        self.max_calls_per_thread, self.max_context, self.max_repairs = max_calls_per_thread, max_context, max_repairs
        self.add_special_tokens = add_special_tokens

    def rollout(self, prompts: list[Prompt], params: SamplingParams) -> list[Trajectory]:
        """``params.n`` trees per prompt, prompt-major."""
        self.sampling = dataclasses.replace(params, n=1, stop=list(params.stop) + [JOIN_START])
        self._round = 0
        start = time.perf_counter()
        trees = [_Tree(p, start) for p in prompts for _ in range(params.n)]
        ready = []
        for i, tree in enumerate(trees):
            text = tree.prompt.text
            head = text[:text.find("Moving to Node")] if "Moving to Node" in text else ""
            tree.root = _Thread(i, 0, text, prefix=head if head.startswith("Token Budget: ") else "")
            ready.append(tree.root)
        while ready:
            batch, ready = ready, []
            for th, sample in zip(batch, self._generate(batch, trees, ready)):
                if sample is not None:
                    self._after_call(th, sample, trees, ready)
            self._round += 1
        return [self._trajectory(t) for t in trees]

    def metrics(self, trajectories: list[Trajectory]) -> dict[str, float]:
        """Trainer hook: ``apr/...`` batch means, logged every step (and as ``eval/apr/...``)."""
        return apr_metrics(trajectories)

    # ------------------------------------------------------------------ one round

    def _generate(self, batch: list[_Thread], trees, ready) -> list[Sample | None]:
        """One engine call per distinct max_tokens (just one unless ``max_context`` clamps)."""
        ids = [list(self.tokenizer.encode(th.prompt, add_special_tokens=self.add_special_tokens)) for th in batch]
        caps = [self.sampling.max_tokens if self.max_context is None
                else min(self.sampling.max_tokens, self.max_context - len(i)) for i in ids]
        out: list[Sample | None] = [None] * len(batch)
        for i, cap in enumerate(caps):
            if cap <= 0:
                self._finish(batch[i], trees, ready, error="context_exhausted")
        for cap in sorted({c for c in caps if c > 0}):
            idx = [i for i, c in enumerate(caps) if c == cap]
            requests = [GenRequest(ids[i], {"tree": batch[i].tree, "depth": batch[i].depth}) for i in idx]
            seed = None if self.sampling.seed is None else self.sampling.seed + 1_000_003 * self._round + cap
            samples = self.engine.generate(requests, dataclasses.replace(self.sampling, max_tokens=cap, seed=seed))
            for i, s in zip(idx, samples):
                out[i] = s
        return out

    def _after_call(self, th: _Thread, sample: Sample, trees, ready) -> None:
        tree = trees[th.tree]
        n_tok = len(sample.completion_ids)
        tree.total_tokens += n_tok
        tree.max_call = max(tree.max_call, len(sample.prompt_ids) + n_tok)
        th.own_tokens += n_tok
        text = sample.text
        if text.endswith(JOIN_START):
            # The model tried to write the harness's join header: swap in the spawn header and let it
            # continue. Like TinyRL, the partial text becomes prompt (it is not trained on).
            if th.repairs < self.max_repairs:
                th.repairs += 1
                tree.repairs += 1
                th.prompt = th.prompt + text[: -len(JOIN_START)] + CALL_START
                ready.append(th)
                return
        tree.samples.append(sample)
        tree.depths.append(th.depth)
        th.calls += 1
        th.trace = th.prompt + text
        if text.endswith(JOIN_START):
            return self._finish(th, trees, ready, error="fake_join")
        spawn = parse_spawn(th.trace, self.max_threads)
        if spawn is None:
            return self._finish(th, trees, ready)
        if isinstance(spawn, SpawnError):
            return self._finish(th, trees, ready, error=spawn.code)
        if th.depth >= self.max_depth:
            return self._finish(th, trees, ready, error="depth_exceeded")
        if th.calls >= self.max_calls_per_thread:
            return self._finish(th, trees, ready, error="too_many_calls")
        th.node_ids = spawn.node_ids
        th.children = [_Thread(th.tree, th.depth + 1, th.prefix + p, prefix=th.prefix, parent=th) for p in spawn.prompts]
        th.waiting = len(th.children)
        tree.threads += len(th.children)
        ready.extend(th.children)

    def _finish(self, th: _Thread, trees, ready, error: str | None = None) -> None:
        tree = trees[th.tree]
        if error:
            tree.errors.append((th.depth, error))
        th.result = None if error else extract_solution(th.trace)
        parent = th.parent
        if parent is None:
            tree.wall = time.perf_counter() - tree.start
            return
        parent.child_max = max(parent.child_max, th.own_tokens)
        parent.waiting -= 1
        if parent.waiting == 0:  # join: the parent continues from its pre-spawn text + results
            parent.own_tokens += parent.child_max
            parent.child_max = 0
            parent.prompt = strip_spawn_block(parent.trace) + render_join(
                parent.node_ids, [c.result for c in parent.children], parent.depth + 1)
            ready.append(parent)

    def _trajectory(self, tree: _Tree) -> Trajectory:
        s = len(tree.samples)
        root = tree.root
        return Trajectory(
            prompt=tree.prompt, group_id=tree.prompt.id, samples=tree.samples,
            final_text=root.trace or root.prompt, sample_weights=[1.0 / s] * s if s else [],
            info={"calls": s, "threads": tree.threads, "total_tokens": tree.total_tokens,
                  "sequential_tokens": root.own_tokens, "wall_time_s": tree.wall, "errors": tree.errors,
                  "max_call_tokens": tree.max_call,
                  "repairs": tree.repairs, "call_depths": tree.depths})


def apr_metrics(trajectories: list[Trajectory]) -> dict[str, float]:
    """Batch means of the tree counters (``apr/...``) for logging."""
    if not trajectories:
        return {}
    k = len(trajectories)

    def mean(key):
        return sum(t.info.get(key, 0) for t in trajectories) / k

    return {"apr/calls": mean("calls"), "apr/children": mean("threads") - 1,
            "apr/total_tokens": mean("total_tokens"), "apr/sequential_tokens": mean("sequential_tokens"),
            "apr/max_call_tokens": mean("max_call_tokens"),
            "apr/wall_time_s": mean("wall_time_s"),
            "apr/error_rate": sum(bool(t.info.get("errors")) for t in trajectories) / k}
