"""Checkers: math equivalence with its fallback, Countdown rules, K&K."""
import pytest

import rlpost.eval.check as check
from rlpost.eval.check import CHECKERS, check_countdown, check_knk, check_math, normalize_answer


def test_math_equivalence():
    assert check_math("\\frac{1}{2}", "0.5")
    assert check_math("\\dfrac12", "\\frac{1}{2}")
    assert check_math("42", "42.0")
    assert check_math("1,000", "1000")
    assert check_math("\\sqrt{2}", "2^{1/2}")
    assert not check_math("3", "4")
    assert not check_math(None, "4")
    assert not check_math("", "4")


def test_math_falls_back_when_math_verify_raises(monkeypatch):
    import math_verify

    def boom(*a, **k):
        raise RuntimeError("sympy exploded")
    monkeypatch.setattr(math_verify, "parse", boom)
    check._mv_parse.cache_clear()
    assert check.math_verify_equal("1/2", "0.5") is None
    assert check_math("\\frac{2}{4}", "1/2")           # numbers compared exactly
    assert check_math("\\text{Monday}", "monday")       # strings normalised
    assert not check_math("3", "4")
    check._mv_parse.cache_clear()


def test_normalize_answer():
    assert normalize_answer("$042.0$") == "42"
    assert normalize_answer("\\frac{2}{4}") == "1/2"
    assert normalize_answer("\\left( 1, 2 \\right)") == "(1,2)"
    assert normalize_answer("90^\\circ") == "90"
    assert normalize_answer(None) == ""


ROW = {"nums": [1, 2, 3, 4], "target": 24}


@pytest.mark.parametrize("expr, ok", [
    ("1 * 2 * 3 * 4", True),
    ("(1 + 2 + 3) * 4", True),
    ("4 * 3 * 2 * 1 = 24", True),                # '= target' accepted
    ("24 = (1 + 2 + 3) * 4", True),
    ("(4 × 3) × (2 × 1)", True),                 # unicode operators
    ("1 * 2 * 3 * 4 * 1", False),                # 1 used twice
    ("2 * 3 * 4", False),                        # 1 unused
    ("(1 + 3) * 6", False),                      # 6 is not given
    ("4 ** 2 + 2 * 3 + 1 - 1", False),           # power not allowed
    ("-1 + 2 + 3 * 4 + 10", False),              # unary minus not allowed
    ("__import__('os').system('true')", False),  # never evaluated
    ("1 / (2 - 2) + 3 * 4", False),              # division by zero
    ("1.0 * 2 * 3 * 4", False),                  # floats are not the given integers
    ("(1 + 2) * 3 + 4", False),                  # 13, wrong value
    ("", False),
    (None, False),
])
def test_countdown_checker(expr, ok):
    assert check_countdown(expr, 24, ROW) is ok


def test_countdown_exact_fractions():
    # (8 / 3) * 3 = 8 exactly (a float evaluator would be fine here too, but 1/3 * 3 must not round)
    assert check_countdown("8 / 3 * 3 + 1", 9, {"nums": [8, 3, 3, 1]})
    assert check_countdown("(1 / 3) * 3 * 5", 5, {"nums": [1, 3, 3, 5]})


def test_knk_checker():
    gold = "(1) Zoey is a knight\n(2) Oliver is a knave"
    assert check_knk("Oliver=knave,Zoey=knight", gold)
    assert not check_knk("Zoey=knight", gold)                              # missing person
    assert not check_knk("Oliver=knight,Zoey=knight", gold)                # wrong role
    assert not check_knk("Ann=knave,Oliver=knave,Zoey=knight", gold)       # extra person
    assert check_knk("Oliver=knave,Zoey=knight", [True, False], {"names": ["Zoey", "Oliver"]})
    assert not check_knk(None, gold)


def test_registry():
    assert {"math", "exact", "countdown", "knk"} <= set(CHECKERS.names())
    assert CHECKERS.get("exact")("07", "7", {})
