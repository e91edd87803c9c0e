"""Extractors on well-formed and malformed completions."""
from rlpost.eval.extract import EXTRACTORS, answer_tag, boxed, countdown, gsm8k, knk, last_number


def test_boxed_basic_nested_and_last_wins():
    assert boxed("so the answer is \\boxed{42}.") == "42"
    assert boxed("$\\boxed{\\frac{1}{2}}$") == "\\frac{1}{2}"
    assert boxed("\\boxed{\\left\\{1, 2\\right\\}}") == "\\left\\{1, 2\\right\\}"  # escaped braces
    assert boxed("first \\boxed{1} then \\boxed{2}, finally \\boxed{\\sqrt{3}}") == "\\sqrt{3}"
    assert boxed("\\fbox{7}") == "7"
    assert boxed("\\boxed 5$") == "5"


def test_boxed_malformed():
    assert boxed("") is None
    assert boxed(None) is None
    assert boxed("the answer is 42") is None           # no box
    assert boxed("\\boxed{}") is None                  # empty box
    assert boxed("\\boxed{3} ... \\boxed{\\frac{1}{") == "3"  # truncated last box: the previous one
    assert boxed("\\boxed{\\frac{1}{2}") is None       # only an unbalanced box
    assert boxed("\\boxedx{3}") is None                # not the command


def test_gsm8k():
    assert gsm8k("Natalia sold 48/2 = 24 clips.\n#### 72") == "72"
    assert gsm8k("#### $1,234.") == "1234"
    assert gsm8k("#### -5") == "-5"
    assert gsm8k("#### 3.50") == "3.50"
    assert gsm8k("#### 1\n... wait\n#### 2") == "2"        # several: last wins
    assert gsm8k("no marker, but \\boxed{18}") == "18"     # falls back to the box
    assert gsm8k("####") is None
    assert gsm8k("") is None
    assert gsm8k("the answer is 12") is None


def test_last_number():
    assert last_number("3 apples and 1,234.5 pears") == "1234.5"
    assert last_number("it is -7.") == "-7"
    assert last_number("no digits here") is None
    assert last_number("") is None


def test_countdown():
    assert countdown("<think>try</think> <answer> (1 + 2) * 3 </answer>") == "(1 + 2) * 3"
    assert countdown("<answer>1+2</answer> more <answer>(4 - 1) * 3</answer>") == "(4 - 1) * 3"  # last tag
    assert countdown("thinking...\n\nAnswer: (3 + 5) * 2 = 16.") == "(3 + 5) * 2 = 16"  # last line
    assert countdown("<answer> 6 × 7 − 2 </answer>") == "6 × 7 − 2"
    assert countdown("<answer>(1 + 2") == "(1 + 2"  # unclosed tag runs to the end; the checker judges it
    assert countdown("") is None
    assert countdown("no numbers at all") is None
    assert countdown("<answer></answer>") is None


def test_answer_tag():
    assert answer_tag("a <answer> x </answer> b") == "x"
    assert answer_tag("nothing") is None


def test_knk():
    text = "<think>...</think><answer> (1) Zoey is a knight\n(2) Oliver is a knave </answer>"
    assert knk(text) == "Oliver=knave,Zoey=knight"
    # contradictory answer inside the tag -> None
    assert knk("<answer>Zoey is a knight. Zoey is a knave.</answer>") is None
    # no tag: the last statement about each person wins
    assert knk("If Zoey is a knave then ... so Zoey is a knight and Oliver is a knave.") == "Oliver=knave,Zoey=knight"
    assert knk("") is None
    assert knk("<answer>I cannot tell</answer>") is None


def test_answer_line():
    from rlpost.eval.extract import answer_line
    assert answer_line("so x = 3.\nAnswer: $\\frac{1}{2}$.") == "\\frac{1}{2}"
    assert answer_line("answer: 7\nwait\nAnswer: 12") == "12"                 # the last one wins
    assert answer_line("Answer: \\boxed{5}") == "5"
    assert answer_line("no line, but \\boxed{9}") == "9"
    assert answer_line("nothing") is None and answer_line("") is None


def test_registry_names():
    for name in ["boxed", "gsm8k", "last_number", "boxed_or_last_number", "countdown", "knk"]:
        assert name in EXTRACTORS
    assert EXTRACTORS.get("boxed_or_last_number")("x = 4") == "4"
