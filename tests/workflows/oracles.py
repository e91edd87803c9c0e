"""Scripted engines for end-to-end tests of the APR and A²FM workflows through the trainer.

They implement the engine protocol on a real tokenizer (token ids of the model's vocabulary), so the
learner trains on their samples like on any engine's; sampler log-probs are a constant -1.0.
"""
from __future__ import annotations

import hashlib
import random
import re

from rlpost.engines.base import ENGINES
from rlpost.types import Sample


class _Scripted:
    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.calls = 0

    @classmethod
    def from_config(cls, cfg, model_path, tokenizer):
        return cls(tokenizer)

    def respond(self, prompt: str) -> str:
        raise NotImplementedError

    def generate(self, requests, params):
        out = []
        for i, r in enumerate(requests):
            prompt = self.tok.decode(r.prompt_ids)
            for _ in range(params.n):
                self.calls += 1
                text, finish = self.respond(prompt), "stop"
                hits = [text.find(s) + len(s) for s in params.stop if s in text]
                if hits:
                    text = text[:min(hits)]
                ids = self.tok(text, add_special_tokens=False)["input_ids"]
                if len(ids) > params.max_tokens:
                    ids, finish = ids[:params.max_tokens], "length"
                    text = self.tok.decode(ids)
                out.append(Sample(list(r.prompt_ids), ids, [-1.0] * len(ids), text=text, finish_reason=finish,
                                  request_index=i))
        return out

    def load_weights(self, named_tensors):
        for _ in named_tensors:
            pass

    def close(self):
        pass


class AprOracle(_Scripted):
    """Answers with the symbolic solver: each root prompt alternates between a narrow (beam 1, often
    unsolved) and a wide (beam 4) solver tree, so groups have reward variance; children and
    continuations are looked up in the trees' own calls."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer)
        self.table: dict[str, str] = {}
        self.visits: dict[str, int] = {}

    def respond(self, prompt: str) -> str:
        from rlpost.workflows.apr import apr_trace
        m = re.search(r"Current State: (\d+):\[([\d, ]*)\], Operations: \[\]$", prompt.rstrip())
        if m is None:  # a child or a continuation of a tree this engine started
            return self.table.get(prompt, "\nNo solution found.\n")
        k = self.visits[prompt] = self.visits.get(prompt, -1) + 1
        seed = int(hashlib.sha256(f"{prompt}{k % 2}".encode()).hexdigest()[:8], 16)
        tree = apr_trace(int(m.group(1)), [int(x) for x in m.group(2).split(",")], random.Random(seed),
                         beam_size=1 if k % 2 == 0 else 4, sub_beam_size=4, p_parallel=1.0)
        self.table.update(tree.sequences())
        return tree.calls[0][1]


class A2FMOracle(_Scripted):
    """Routes by question kind (sums -> instant or reasoning, products and look-ups -> agentic), follows
    forced routes, calls the real tools and copies their result into the answer."""

    def respond(self, prompt: str) -> str:
        from rlpost.studies.a2fm_data import SHORT_JUSTIFICATIONS, answer_of, mode_trace, tool_call_text
        from rlpost.tasks.a2fm_mini import code_of, load_corpus
        from rlpost.workflows.a2fm import parse_route, route_tag
        question = prompt.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
        turn = prompt.split("<|im_start|>assistant\n", 1)[1]
        if m := re.fullmatch(r"What is the code of (\w+)\?", question):
            doc = next(d for d in load_corpus() if d["title"] == m.group(1))
            row = {"kind": "search", "place": m.group(1), "answer": code_of(doc), "terms": None, "expression": None}
        elif m := re.fullmatch(r"What is (\d+)\*(\d+)\?", question):
            row = {"kind": "calc", "expression": f"{m.group(1)}*{m.group(2)}", "terms": None,
                   "answer": str(int(m.group(1)) * int(m.group(2)))}
        else:
            terms = [int(x) for x in re.findall(r"\d+", question)]
            row = {"kind": "instant" if len(terms) == 2 else "reasoning", "terms": terms, "answer": str(sum(terms))}
        head = ""
        mode = parse_route(turn)
        if mode is None:
            mode = {"instant": "instant", "reasoning": "reasoning"}.get(row["kind"], "agentic")
            head = SHORT_JUSTIFICATIONS[mode] + "\n" + route_tag(mode)
        rng = random.Random(self.calls)
        if mode == "agentic":
            if "<tool_response>" in turn:
                return f"<answer>{answer_of(turn)}</answer>"
            return head + tool_call_text(row, rng)[0]
        body = "".join(t for t, _ in mode_trace(row, mode, rng))
        return head + body.split("</classification>\n", 1)[1]


def register() -> None:
    for name, cls in (("apr_oracle_test", AprOracle), ("a2fm_oracle_test", A2FMOracle)):
        if name not in ENGINES:
            ENGINES.add(name, cls)
