"""A²FM miniature: questions that need no tool, multi-step reasoning, or a tool (executor or search).

Four kinds of question (column ``kind``), answered by a short string (column ``answer``):

* ``instant``:   ``What is 3+4?`` (one single-digit sum: a direct answer suffices)
* ``reasoning``: ``What is 3+4+5+2?`` (a chain of four single-digit terms: step-by-step partial sums)
* ``calc``:      ``What is 482*91?`` (a 3-digit by 2-digit product: needs the calculator or Python)
* ``search``:    ``What is the code of Zorvak?`` (a fictional fact: only the shipped corpus knows it)

The corpus (``rlpost/tasks/data/a2fm_corpus.jsonl``, made by :func:`build_corpus`) holds one document per
fictional place; every row carries it as the ``corpus`` column, which the A²FM workflow's ``search``
tool indexes (BM25). Train and test never share a question: sums, products and places are split by a
hash (places: ~25 % held out, so a test ``search`` question cannot be answered from memory).

Prompts are chat messages: a system message with the mode specification (``system="short"``, a
condensed one for tiny char-level models, or ``"full"``, :func:`rlpost.workflows.a2fm.system_prompt`)
and the question.
"""
from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from rlpost.tasks import TASKS

CORPUS_PATH = Path(__file__).parent / "data" / "a2fm_corpus.jsonl"
KINDS = ("instant", "reasoning", "calc", "search")
SHORT_SYSTEM = "Pick default_agent, reasoning_agent or toolcalling_agent (python, calculator, search)."
_SYLLABLES = ["zor", "vak", "mil", "tren", "qua", "bex", "dor", "lin", "pra", "sul", "kep", "tov", "ria", "nox",
              "gal", "fen", "hum", "jiv", "wex", "yol"]


def _bucket(key: str) -> int:
    return hashlib.sha256(key.encode()).digest()[0]


def build_corpus(n: int = 160, seed: int = 0) -> list[dict]:
    """``n`` fictional places, each ``{"id", "title", "text"}`` with a 4-digit code."""
    rng = random.Random(f"a2fm-corpus-{seed}")
    names: list[str] = []
    while len(names) < n:
        name = "".join(rng.sample(_SYLLABLES, 2)).capitalize()
        if name not in names:
            names.append(name)
    return [{"id": f"doc{i}", "title": name,
             "text": f"{name} is a small town. The code of {name} is {rng.randint(1000, 9999)}."}
            for i, name in enumerate(names)]


def load_corpus() -> list[dict]:
    if CORPUS_PATH.exists():
        return [json.loads(line) for line in CORPUS_PATH.read_text().splitlines() if line.strip()]
    return build_corpus()


def write_corpus(path: str | Path = CORPUS_PATH) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d) + "\n" for d in build_corpus()))
    return path


def code_of(doc: dict) -> str:
    return doc["text"].rsplit(" ", 1)[1].rstrip(".")


def question(kind: str, rng: random.Random, split: str, corpus: list[dict]) -> tuple[str, str, dict]:
    """(question, answer, details) of one ``kind`` from ``split``."""
    want_test = split == "test"
    while True:
        if kind == "instant":
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            key, q, ans, info = f"i{a}+{b}", f"What is {a}+{b}?", str(a + b), {"terms": [a, b]}
            test = _bucket(key) < 52            # ~20 % of the 100 sums
        elif kind == "reasoning":
            terms = [rng.randint(1, 9) for _ in range(4)]
            expr = "+".join(map(str, terms))
            key, q, ans, info = f"r{expr}", f"What is {expr}?", str(sum(terms)), {"terms": terms}
            test = _bucket(key) < 26
        elif kind == "calc":
            a, b = rng.randint(100, 999), rng.randint(10, 99)
            key, q, ans, info = f"c{a}*{b}", f"What is {a}*{b}?", str(a * b), {"expression": f"{a}*{b}"}
            test = _bucket(key) < 26
        elif kind == "search":
            doc = rng.choice(corpus)
            key, q, ans, info = f"s{doc['title']}", f"What is the code of {doc['title']}?", code_of(doc), \
                {"place": doc["title"]}
            test = _bucket(key) < 64            # ~25 % of the places are only asked at test time
        else:
            raise ValueError(f"a2fm_mini: unknown kind {kind!r} (one of {KINDS})")
        if test == want_test:
            return q, ans, info


@TASKS.register("a2fm_mini")
def make_split(split: str, n: int, seed: int = 0, mix=(1, 1, 1, 1), system: str = "short") -> list[dict]:
    """``n`` rows ``{"prompt": messages, "answer", "kind", "corpus", ...}``; ``mix``: weights of KINDS.

    Kinds cycle in proportion to ``mix`` (deterministic), questions are drawn from ``split``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"a2fm_mini split must be 'train' or 'test', got {split!r}")
    from rlpost.workflows.a2fm import system_prompt
    sys_text = SHORT_SYSTEM if system == "short" else system_prompt() if system == "full" else system
    corpus = load_corpus()
    rng = random.Random(f"a2fm-mini-{split}-{seed}")
    cycle = [k for k, w in zip(KINDS, mix) for _ in range(int(w))]
    if not cycle:
        raise ValueError("a2fm_mini: mix must give at least one kind a positive weight")
    rows = []
    for i in range(n):
        kind = cycle[i % len(cycle)]
        q, ans, info = question(kind, rng, split, corpus)
        rows.append({"prompt": [{"role": "system", "content": sys_text}, {"role": "user", "content": q}],
                     "question": q, "answer": ans, "kind": kind, "corpus": corpus,
                     **{k: info.get(k) for k in ("terms", "expression", "place")}})
    return rows
