"""Tokenizers of the study miniatures: the char tokenizer plus each protocol's fixed phrases as tokens.

A character-level tokenizer spends ~3x more tokens on APR's verbose protocol lines than the paper's
Llama-2 BPE does; adding each fixed phrase (``Exploring Operation: ``, ``<Calling Sub Searches>``, ...) as
one token brings a trace to roughly BPE length (1,257 characters -> ~420 tokens) while numbers, ids
and arithmetic stay character-level. The A²FM miniature does the same for its tags and tool-call JSON
keys, and adds the 100 two-digit strings ``00``..``99`` (numbers are copied between question, tool call,
tool response and answer: half as many tokens to copy for a tiny model). They save and load like any tokenizer (``save_pretrained`` / ``AutoTokenizer.from_pretrained``);
decode(encode(text)) == text.
"""
from __future__ import annotations

from rlpost.models.tokenizer import build_char_tokenizer

PHRASES = ["Exploring Operation: ", ", Resulting Numbers: ", "Generated Node #", " Operation: ", "Moving to Node #",
           "Current State: ", ", Operations: ", " equal: Goal Reached", " unequal: No Solution",
           "<Calling Sub Searches>", "<End Calling Sub Searches>", "<Start Sub Search ", " at level ",
           "<Sub Searches>", "<End Sub Searches>", "<Goal Reached in Sub Search ", "<No Solution in Sub Search ",
           " at Node #", "No solution found.", "Token Budget: ", "Sub Call Budget: ", "Start Sub Search at level ",
           "Exit Sub Search at level ", "No solution found in sub search"]


A2FM_PHRASES = ["<classification>\n", "\n</classification>\n", "default_agent", "reasoning_agent",
                "toolcalling_agent", "<answer>", "</answer>", "<reasoning>", "</reasoning>", "<plan>", "</plan>",
                "<tool_call>\n", "\n</tool_call>", "\n<tool_response>\n", "\n</tool_response>\n",
                "Results for tool call ", '{"name": "', '", "arguments": {"', '": "', '"}}', "calculator", "python",
                "search", "expression", "code of ", "print(", "What is "] + [f"{i:02d}" for i in range(100)]


def phrase_tokenizer(phrases: list[str]):
    tok = build_char_tokenizer()
    tok.add_tokens(list(phrases))
    return tok


def apr_tokenizer():
    return phrase_tokenizer(PHRASES)


def a2fm_tokenizer():
    return phrase_tokenizer(A2FM_PHRASES)
