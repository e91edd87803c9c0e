"""Answer extractors: completion text -> the answer string a checker compares, or ``None``.

Every extractor has the signature ``fn(text: str) -> str | None`` and is registered in
:data:`EXTRACTORS`, so a :class:`~rlpost.eval.benchmarks.BenchmarkSpec` names it by string.
``None`` means "no answer found" and always scores as wrong (it never matches a gold answer and
never takes part in a majority vote).

    boxed                 the last well-formed ``\\boxed{...}`` (nested braces kept), MATH/AIME/AMC style
    gsm8k                 the number after the last ``####`` (commas, ``$`` and a trailing ``.`` dropped),
                          else the last ``\\boxed{}``
    last_number           the last number in the text (``-1,234.5`` -> ``-1234.5``)
    first_integer         the first integer in the text (the ``arithmetic`` reward's reading)
    boxed_or_last_number  ``boxed``, else ``last_number``
    answer_line           the rest of the line after the last ``Answer:`` (DAPO-Math-17k's format), else ``boxed``
    countdown             the arithmetic expression in the last ``<answer>...</answer>``, else in the last
                          non-empty line
    knk                   Knights & Knaves: ``"Name=knight,Name=knave"`` (sorted by name) from the last
                          ``<answer>...</answer>``, else from the whole text
"""
from __future__ import annotations

import re

from rlpost.registry import Registry

EXTRACTORS = Registry("answer extractor")

_BOX_COMMANDS = ("\\boxed", "\\fbox")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def _box_content(text: str, start: int) -> str | None:
    """Content of the box whose command ends at ``start``; None when unbalanced (truncated output)."""
    i = start
    while i < len(text) and text[i] == " ":
        i += 1
    if i >= len(text):
        return None
    if text[i] != "{":
        # "\boxed 5" form: the argument runs to the next space, '$' or end of text
        m = re.match(r"[^\s$]+", text[i:])
        return m.group(0) if m and i > start else None
    depth = 0
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{" and text[j - 1] != "\\":
            depth += 1
        elif ch == "}" and text[j - 1] != "\\":
            depth -= 1
            if depth == 0:
                return text[i + 1:j]
    return None


@EXTRACTORS.register("boxed")
def boxed(text: str) -> str | None:
    """Content of the last well-formed ``\\boxed{...}`` or ``\\fbox{...}``.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``). A box cut off by the token
    limit is skipped and the one before it is used. An empty box counts as no answer.
    """
    if not text:
        return None
    starts = sorted(m.end() for cmd in _BOX_COMMANDS for m in re.finditer(re.escape(cmd) + r"(?![A-Za-z])", text))
    for start in reversed(starts):
        content = _box_content(text, start)
        if content is not None:
            content = content.strip()
            return content or None
    return None


def _clean_number(s: str) -> str:
    s = s.replace(",", "").replace("$", "").strip()
    return s.rstrip(".") if s.endswith(".") else s


@EXTRACTORS.register("last_number")
def last_number(text: str) -> str | None:
    """The last number in the text, with thousands separators removed."""
    if not text:
        return None
    found = _NUMBER.findall(text)
    return _clean_number(found[-1]) if found else None


@EXTRACTORS.register("gsm8k")
def gsm8k(text: str) -> str | None:
    """The number after the last ``####`` (GSM8K's answer marker), else the last ``\\boxed{}``.

    ``#### $1,234.`` -> ``1234``. A ``####`` with no number after it falls through to the box.
    """
    if not text:
        return None
    for tail in reversed(text.split("####")[1:]):
        m = re.match(r"\s*\$?\s*(-?[\d,]*\.?\d+)", tail)
        if m:
            return _clean_number(m.group(1))
    return boxed(text)


_INTEGER = re.compile(r"-?\d+")


@EXTRACTORS.register("first_integer")
def first_integer(text: str) -> str | None:
    """The first integer in the text (the ``arithmetic`` reward's reading, so a benchmark scores as it does)."""
    m = _INTEGER.search(text or "")
    return m.group() if m else None


@EXTRACTORS.register("boxed_or_last_number")
def boxed_or_last_number(text: str) -> str | None:
    return boxed(text) or last_number(text)


_ANSWER_LINE = re.compile(r"Answer\s*:\s*([^\n]+)", flags=re.I)


@EXTRACTORS.register("answer_line")
def answer_line(text: str) -> str | None:
    """DAPO-Math-17k's format ("The last line ... of the form Answer: $Answer"): the rest of the line after the
    last ``Answer:`` (surrounding ``$`` and a final ``.`` dropped; a ``\\boxed{}`` inside it is unwrapped), else
    the last ``\\boxed{}``."""
    if not text:
        return None
    found = _ANSWER_LINE.findall(text)
    if found:
        value = found[-1].strip().rstrip(".").strip().strip("$").strip()
        return (boxed(value) or value) or None
    return boxed(text)


def answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` pair (an unclosed final tag runs to the end)."""
    if not text:
        return None
    closed = re.findall(r"<answer>(.*?)</answer>", text, flags=re.S)
    if closed:
        return closed[-1].strip()
    last_open = text.rfind("<answer>")
    return text[last_open + len("<answer>"):].strip() if last_open >= 0 else None


_EXPR_CHARS = re.compile(r"[\d\s+\-*/×÷−().=]+")


@EXTRACTORS.register("countdown")
def countdown(text: str) -> str | None:
    """An arithmetic expression: from the last ``<answer>`` tag, else from the last non-empty line.

    Within that span, the longest run of digits, operators, parentheses and ``=`` that contains a digit
    is returned (so ``Answer: (3 + 5) * 2 = 16.`` gives ``(3 + 5) * 2 = 16``). Unicode ``× ÷ −`` are
    kept; the checker maps them to ``* / -``.
    """
    if not text:
        return None
    span = answer_tag(text)
    if span is None:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        if not lines:
            return None
        span = lines[-1]
    runs = [r.strip().rstrip(".").strip() for r in _EXPR_CHARS.findall(span)]
    runs = [r for r in runs if any(c.isdigit() for c in r)]
    return max(runs, key=len) if runs else None


_KNK_CLAIM = re.compile(r"\b([A-Z][A-Za-z'-]*)\s+(?i:is\s+(?:a\s+|an\s+)?(knight|knave)s?)\b")
_NOT_NAMES = {"He", "She", "It", "This", "That", "Who", "Which", "Everyone", "Nobody", "Someone", "Then", "So",
              "Thus", "Therefore", "Hence", "If", "And", "Or", "But", "Because", "Since"}


def parse_knk(text: str, strict: bool = True) -> dict[str, str] | None:
    """``{"Zoey": "knight", ...}`` from statements "Zoey is a knight"; None when there are none.

    strict: a person given both roles makes the whole answer None (used inside ``<answer>`` tags);
    otherwise the last statement about each person wins (free text reasons through both cases).
    """
    roles: dict[str, str] = {}
    for name, role in _KNK_CLAIM.findall(text or ""):
        if name in _NOT_NAMES:
            continue
        role = role.lower()
        if strict and roles.get(name, role) != role:
            return None  # the same person called both a knight and a knave
        roles[name] = role
    return roles or None


def format_knk(roles: dict[str, str]) -> str:
    return ",".join(f"{name}={roles[name]}" for name in sorted(roles))


@EXTRACTORS.register("knk")
def knk(text: str) -> str | None:
    """Knights & Knaves (Logic-RL format ``<answer> (1) Zoey is a knight\\n(2) ... </answer>``).

    Returns the canonical ``"Oliver=knave,Zoey=knight"`` (sorted by name). Inside the last ``<answer>``
    tag a person given both roles makes the answer None; without a tag the whole text is read and the
    last statement about each person wins.
    """
    if not text:
        return None
    span = answer_tag(text)
    roles = parse_knk(span, strict=True) if span is not None else parse_knk(text, strict=False)
    return format_knk(roles) if roles else None
