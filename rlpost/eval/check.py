"""Answer checkers: ``fn(pred, gold, row) -> bool``, registered in :data:`CHECKERS`.

pred: the extracted answer (``None`` when the extractor found nothing; always wrong)
gold: the benchmark row's gold answer (after the spec's gold extraction)
row:  the whole dataset row, for checkers that need more than one column (Countdown's ``nums``)

    math       math-verify equivalence (``\\frac12`` == ``0.5``); if math-verify is missing, raises, or cannot
               parse one side, a normalised string / number comparison decides
    exact      the normalised string / number comparison alone (fast, no sympy)
    countdown  the expression uses each of ``row["nums"]`` exactly once, only ``+ - * /`` and parentheses,
               and evaluates (exactly, with fractions; never ``eval()``) to ``gold`` (the target)
    knk        the same knight/knave role for exactly the same people as the gold answer
"""
from __future__ import annotations

import ast
import functools
import re
import threading
from collections import Counter
from fractions import Fraction
from typing import Any

from rlpost.eval.extract import answer_tag, format_knk, parse_knk
from rlpost.registry import Registry

CHECKERS = Registry("answer checker")

# ---------------------------------------------------------------------------------------------------
# normalisation (also the key majority voting groups answers by)
# ---------------------------------------------------------------------------------------------------

_LATEX_DROP = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\displaystyle", "$")


def _unwrap_text(s: str) -> str:
    return re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)


def to_number(s: str) -> Fraction | None:
    """``"1,234"``, ``"-3.50"``, ``"3/4"``, ``"\\frac{3}{4}"`` -> an exact Fraction; None for anything else."""
    s = s.strip()
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", s) or re.fullmatch(r"(-?\d+)\s*/\s*(-?\d+)", s)
    try:
        if m:
            return Fraction(int(m.group(1)), int(m.group(2)))
        if re.fullmatch(r"-?(\d{1,3}(,\d{3})+|\d+)(\.\d*)?|-?\.\d+", s):
            return Fraction(s.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return None


def normalize_answer(s: Any) -> str:
    """A canonical string: LaTeX spacing/sizing and ``$`` dropped, ``\\text{}`` unwrapped, ``dfrac`` ->
    ``frac``, degree signs and a trailing period removed, whitespace removed, case folded, numbers written
    in lowest terms (``"042.0"`` -> ``"42"``, ``"\\frac{2}{4}"`` -> ``"1/2"``)."""
    if s is None:
        return ""
    s = str(s).strip()
    for tok in _LATEX_DROP:
        s = s.replace(tok, "")
    s = _unwrap_text(s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.strip().rstrip(".").strip()
    num = to_number(s)
    if num is not None:
        return str(num)  # Fraction prints "42" or "1/2"
    return re.sub(r"\s+", "", s).lower()


def answers_match(pred: Any, gold: Any) -> bool:
    """Normalised string equality, or numeric equality when both sides are numbers."""
    if pred is None or gold is None:
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    return bool(p) and p == g


# ---------------------------------------------------------------------------------------------------
# checkers
# ---------------------------------------------------------------------------------------------------

def _latex(s: str) -> str:
    return s if "$" in s or "\\boxed" in s else f"${s}$"


@functools.lru_cache(maxsize=8192)
def _mv_parse(text: str, timeout: int | None) -> tuple:
    # Cached: the gold answer is parsed once per problem instead of once per sample, and repeated
    # predictions (majority answers) once. Exceptions are not cached, so a failure is retried.
    from math_verify import parse
    return tuple(parse(_latex(text), parsing_timeout=timeout))


def math_verify_equal(pred: str, gold: str) -> bool | None:
    """math-verify's verdict, or None when it is unavailable, raises, or cannot parse one side."""
    try:
        from math_verify import verify
    except ImportError:
        return None
    # math-verify's timeouts use signal.alarm, which only works in the main thread; elsewhere run
    # without them rather than raise (the answers are short, extracted strings).
    main = threading.current_thread() is threading.main_thread()
    timeout = 5 if main else None
    try:
        gold_parsed, pred_parsed = _mv_parse(gold, timeout), _mv_parse(pred, timeout)
        if not gold_parsed or not pred_parsed:
            return None
        return bool(verify(list(gold_parsed), list(pred_parsed), timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - math-verify raises many kinds (sympy, timeouts); fall back
        return None


@CHECKERS.register("math")
def check_math(pred: str | None, gold: Any, row: dict | None = None) -> bool:
    """math-verify equivalence, OR the normalised comparison (so an answer math-verify cannot parse,
    such as a word, is still compared, and a math-verify failure never crashes an evaluation)."""
    if pred is None or gold is None or not str(pred).strip():
        return False
    if answers_match(pred, gold):
        return True
    return bool(math_verify_equal(str(pred), str(gold)))


@CHECKERS.register("exact")
def check_exact(pred: str | None, gold: Any, row: dict | None = None) -> bool:
    return answers_match(pred, gold)


_CD_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}


def countdown_eval(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value and integer literals of ``expr``; ValueError for anything but ints, + - * /, ().

    Walks the AST itself (never ``eval``): unary minus, powers, names, calls and floats are refused, and
    the length is capped so a hostile completion cannot make the parser recurse deeply.
    """
    if len(expr) > 256:
        raise ValueError("expression too long")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"not an expression: {expr!r}") from err
    used: list[int] = []

    def ev(node) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _CD_OPS:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ValueError("division by zero")
            return _CD_OPS[type(node.op)](left, right)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        raise ValueError(f"not allowed in a countdown expression: {type(node).__name__}")

    return ev(tree.body), used


def _countdown_lhs(expr: str) -> str | None:
    """``"(1+2)*3 = 9"`` -> ``"(1+2)*3"``; also ``"9 = (1+2)*3"``. None when both sides are expressions."""
    sides = [s.strip() for s in expr.split("=") if s.strip()]
    if len(sides) <= 1:
        return sides[0] if sides else None
    non_numbers = [s for s in sides if not re.fullmatch(r"-?\d+(\.\d+)?", s)]
    return non_numbers[0] if len(non_numbers) == 1 else None


@CHECKERS.register("countdown")
def check_countdown(pred: str | None, gold: Any, row: dict | None = None) -> bool:
    """True when ``pred`` uses each of ``row["nums"]`` exactly once and equals ``gold`` (the target)."""
    if pred is None or row is None or "nums" not in row:
        return False
    expr = str(pred).replace("×", "*").replace("÷", "/").replace("−", "-")
    expr = _countdown_lhs(expr)
    if expr is None:
        return False
    try:
        value, used = countdown_eval(expr)
        target = Fraction(str(gold if gold is not None else row["target"]).strip())
    except (ValueError, ZeroDivisionError, RecursionError, MemoryError):
        return False
    return Counter(used) == Counter(int(x) for x in row["nums"]) and value == target


def knk_gold(gold: Any, row: dict | None = None) -> dict[str, str] | None:
    """The gold roles from a Logic-RL ``solution_text_format`` string, an already canonical
    ``"A=knight,B=knave"`` string, or ``row["names"]`` + a list of booleans (True = knight)."""
    if isinstance(gold, (list, tuple)) and row and "names" in row:
        return {str(n): ("knight" if is_knight else "knave") for n, is_knight in zip(row["names"], gold)}
    if isinstance(gold, dict):
        return {str(k): str(v).lower() for k, v in gold.items()}
    text = str(gold or "")
    if "=" in text and "is a" not in text:
        pairs = [p.split("=", 1) for p in text.split(",") if "=" in p]
        return {k.strip(): v.strip().lower() for k, v in pairs} or None
    return parse_knk(answer_tag(text) or text)


@CHECKERS.register("knk")
def check_knk(pred: str | None, gold: Any, row: dict | None = None) -> bool:
    """Every person's role matches the gold answer, with no person missing or extra."""
    if not pred:
        return False
    want = knk_gold(gold, row)
    got = knk_gold(pred)
    return bool(want) and got is not None and format_knk(got) == format_knk(want)
