"""A character tokenizer and a scripted engine for the A²FM and APR workflow unit tests."""
from rlpost.types import Sample


class CharTokenizer:
    """One token per character, no special tokens: decode(encode(s)) == s and tokens == characters."""

    def encode(self, text, add_special_tokens=True):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


class ScriptedEngine:
    """Implements the Engine protocol; ``respond(prompt_text) -> completion`` gives each call's text.

    Stop strings end the text (kept, as the real engines do); max_tokens cuts it (finish "length").
    ``calls`` records the decoded prompts of every generate() call.
    """

    def __init__(self, respond):
        self.tok, self.respond, self.calls = CharTokenizer(), respond, []

    def generate(self, requests, params):
        prompts = [self.tok.decode(r.prompt_ids) for r in requests]
        self.calls.append(prompts)
        out = []
        for r, prompt in zip(requests, prompts):
            for _ in range(params.n):
                text, finish = self.respond(prompt), "stop"
                hits = [text.find(s) + len(s) for s in params.stop if s in text]
                if hits:
                    text = text[:min(hits)]
                if len(text) > params.max_tokens:
                    text, finish = text[:params.max_tokens], "length"
                ids = self.tok.encode(text)
                out.append(Sample(prompt_ids=list(r.prompt_ids), completion_ids=ids, logprobs=[-0.5] * len(ids),
                                  text=text, finish_reason=finish))
        return out

    def load_weights(self, named_tensors):
        pass

    def close(self):
        pass
