"""pass@k, maj@k, mean@k and the bootstrap against hand-computed cases."""
import math

import numpy as np
import pytest

from rlpost.eval.metrics import bootstrap_ci, default_ks, maj_at_k, pass_at_k, per_problem_scores, summarize


def test_pass_at_k_hand_computed():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    # n=4, c=1, k=1: 1 - C(3,1)/C(4,1) = 1 - 3/4 = 0.25 (= c/n)
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12
    assert pass_at_k(10, 3, 5) == pytest.approx(11 / 12)
    # n-c < k: every draw of k samples contains a correct one
    assert pass_at_k(5, 4, 2) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(8, 8, 8) == 1.0


def test_pass_at_k_matches_binomials_and_is_stable_for_large_n():
    for n, c, k in [(16, 5, 4), (32, 1, 8), (20, 19, 1)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))
    # C(1000, 500) overflows a float; the product form does not
    assert 0.0 < pass_at_k(1000, 1, 500) <= 1.0
    assert pass_at_k(1000, 1, 500) == pytest.approx(0.5)  # one correct in 1000, draw half: 500/1000


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_maj_at_k_majority_and_ties():
    # clear majority "2" (3 votes) beats "3" (2 votes); "2" is correct
    assert maj_at_k(["2", "3", "2", "3", "2"], [True, False, True, False, True]) == 1.0
    # tie 2-2 between "3" (seen first) and "2": the first-seen answer wins -> wrong
    assert maj_at_k(["3", "2", "2", "3"], [False, True, True, False]) == 0.0
    # same votes, other order: "2" is first -> right
    assert maj_at_k(["2", "3", "3", "2"], [True, False, False, True]) == 1.0
    # missing answers (None) do not vote, even when they are the most common
    assert maj_at_k([None, None, None, "7"], [False, False, False, True]) == 1.0
    # no answer at all -> 0
    assert maj_at_k([None, None], [False, False]) == 0.0
    # only the first k samples vote: first 3 are ["5", "5", "6"] -> "5", wrong
    assert maj_at_k(["5", "5", "6", "6", "6"], [False, False, True, True, True], k=3) == 0.0
    assert maj_at_k(["5", "5", "6", "6", "6"], [False, False, True, True, True], k=5) == 1.0


def test_per_problem_scores_and_summary():
    correct = [[True, False, True, False],   # c=2 of 4
               [False, False, False, False],  # c=0
               [True, True, True, True]]      # c=4
    keys = [["1", "2", "1", "2"], ["9", "9", None, "8"], ["4", "4", "4", "4"]]
    metrics, ci = summarize(correct, keys, n_boot=200, seed=0)
    # mean@4 = (2/4 + 0 + 1) / 3 = 0.5
    assert metrics["mean@4"] == pytest.approx(0.5)
    assert metrics["pass@1"] == pytest.approx(0.5)
    # pass@2: problem 1: 1 - C(2,2)/C(4,2) = 1 - 1/6 = 5/6; problem 2: 0; problem 3: 1 -> (5/6 + 1)/3
    assert metrics["pass@2"] == pytest.approx((5 / 6 + 1) / 3)
    assert metrics["pass@4"] == pytest.approx(2 / 3)
    # maj@4: p1 tie "1"/"2" -> "1" first, correct; p2 "9" wrong; p3 right -> 2/3
    assert metrics["maj@4"] == pytest.approx(2 / 3)
    # maj@2: p1 tie "1"/"2" -> "1", correct; p2 "9" wrong; p3 right
    assert metrics["maj@2"] == pytest.approx(2 / 3)
    assert set(ci) == {"mean@4", "pass@1", "pass@2", "pass@4", "maj@2", "maj@4"}
    for name, (lo, hi) in ci.items():
        assert 0.0 <= lo <= metrics[name] <= hi <= 1.0


def test_default_ks():
    assert default_ks(1) == [1]
    assert default_ks(8) == [1, 2, 4, 8]
    assert default_ks(6) == [1, 2, 4, 6]


def test_bootstrap_is_seeded_and_degenerate_cases():
    scores = per_problem_scores([[True], [False], [True], [True]])
    a = bootstrap_ci(scores, n_boot=100, seed=3)
    b = bootstrap_ci(scores, n_boot=100, seed=3)
    assert a == b
    # every problem has the same score -> the interval collapses onto it
    const = {"mean@1": np.ones(5)}
    assert bootstrap_ci(const, n_boot=50, seed=0)["mean@1"] == (1.0, 1.0)
    assert bootstrap_ci(scores, n_boot=0) == {}


def test_uneven_samples_rejected():
    with pytest.raises(ValueError):
        per_problem_scores([[True, False], [True]])
