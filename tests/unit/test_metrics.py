"""Metric definitions on hand-made cases: strict `>`, BiVLC's four comparisons in every combination."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from compalign.evaluate.benchmarks.base import columns
from compalign.evaluate.benchmarks.sugarcrepe import SugarCrepe
from compalign.evaluate.metrics import bivlc_metrics, bivlc_outcomes, same_words, sugarcrepe_metrics, words


def test_sugarcrepe_tie_counts_as_wrong_and_means_are_exact():
    pos = np.array([0.5, 0.3, 0.2, 0.9, 0.1, 0.4])
    neg = np.array([0.4, 0.3, 0.1, 0.8, 0.2, 0.1])  # item 1 ties -> wrong
    subset = np.array(["swap_att", "swap_att", "replace_att", "replace_obj", "add_obj", "add_obj"])
    m = sugarcrepe_metrics(pos > neg, subset)
    assert m["swap_att"] == 50.0
    assert m["replace_att"] == 100.0 and m["replace_obj"] == 100.0
    assert m["add_obj"] == 50.0
    assert m["swap"] == 50.0 and m["replace"] == 100.0 and m["add"] == 50.0
    assert m["macro"] == pytest.approx((50 + 100 + 100 + 50) / 4)  # mean of the 4 subsets present
    assert m["micro"] == pytest.approx(100 * 4 / 6)


def test_bivlc_outcomes_on_every_ordering_of_four_scores():
    """All 3**4 assignments of scores from {0, 1, 2} (ties included), vectorised at once."""
    grid = np.array(list(itertools.product([0.0, 1.0, 2.0], repeat=4)))  # (81, 4): c0i0, c1i0, c0i1, c1i1
    c0i0, c1i0, c0i1, c1i1 = grid.T
    out = bivlc_outcomes(c0i0, c1i0, c0i1, c1i1)
    seen = set()
    for j, (a, b, c, d) in enumerate(grid):
        want = {"Ipos2T": a > b, "Ineg2T": d > c, "Tpos2I": a > c, "Tneg2I": d > b}
        for k, v in want.items():
            assert bool(out[k][j]) == v, (k, grid[j])
        i2t, t2i = want["Ipos2T"] and want["Ineg2T"], want["Tpos2I"] and want["Tneg2I"]
        assert bool(out["I2T"][j]) == i2t and bool(out["T2I"][j]) == t2i
        assert bool(out["Group"][j]) == (i2t and t2i)
        seen.add(tuple(want.values()))
    # every combination of the four comparisons that scores can realise is covered: 14 of 16
    # (Ipos2T, Ineg2T true with Tpos2I, Tneg2I false is a cycle a>b>=d>c>=a, and its mirror)
    assert len(seen) == 14
    assert (True, True, False, False) not in seen and (False, False, True, True) not in seen


def test_bivlc_ties_are_wrong_and_types_split():
    s = np.array([0.5, 0.5])
    out = bivlc_outcomes(s, s, s, s)  # everything tied
    assert not any(v.any() for v in out.values())
    c0i0, c1i0, c0i1, c1i1 = np.array([1.0, 1.0]), np.array([0.0, 0.0]), np.array([0.0, 2.0]), np.array([1.0, 1.0])
    m = bivlc_metrics(bivlc_outcomes(c0i0, c1i0, c0i1, c1i1), np.array(["swap", "add"]))
    assert m["swap/Group"] == 100.0 and m["add/Group"] == 0.0 and m["Group"] == 50.0
    assert m["add/Ipos2T"] == 100.0 and m["add/Ineg2T"] == 0.0 and m["add/Tpos2I"] == 0.0


@pytest.mark.parametrize("a, b, same", [
    ("A red car and a blue house.", "a blue car and a red house", True),  # case and punctuation are not words
    ("A man on a motorcycle is waving at two men.", "Two men on a motorcycle are waving at a man.", False),  # is/are
    ("the dog chases the cat", "the cat chases the dog", True),
    ("the dog chases the cat", "the cat chases the dog dog", False),  # a multiset: counts matter
    ("the dog chases the cat", "the cat chases a dog", False),
    ("a man's hat", "a hat's man", False),  # "man's" is one word, not "man" + "s"
    ("two dogs", "two  dogs ", True),
    ("", "", True),
])
def test_same_words_is_multiset_equality_of_lowercased_words(a, b, same):
    assert same_words(np.array([a]), np.array([b])).tolist() == [same]


def test_words_are_sorted_lowercased_tokens():
    assert words("The cat, the DOG's bowl!") == ("bowl", "cat", "dog's", "the", "the")


def test_bow_proof_metrics_are_the_metrics_of_the_bow_proof_items_only():
    # 6 items: swap_att rows 0-2 (rows 0, 1 bag-of-words-proof), replace_obj rows 3-5 (none).
    items = [{"id": str(i), "subset": s, "correct": c, "valid": v, "bow_proof": b}
             for i, (s, c, v, b) in enumerate([("swap_att", True, True, True), ("swap_att", False, True, True),
                                               ("swap_att", True, True, False), ("replace_obj", True, True, False),
                                               ("replace_obj", False, True, False), ("replace_obj", True, False, False)])]
    m = SugarCrepe.metrics(columns(items))
    assert m["swap_att"] == pytest.approx(200 / 3) and m["replace_obj"] == 50.0  # the invalid row is left out
    assert {k: v for k, v in m.items() if k.startswith("bow_proof/")} == {
        "bow_proof/swap_att": 50.0, "bow_proof/swap": 50.0, "bow_proof/macro": 50.0, "bow_proof/micro": 50.0}
    for it in items:
        it["bow_proof"] = False
    assert not any(k.startswith("bow_proof/") for k in SugarCrepe.metrics(columns(items)))  # no such items: no metric
    no_field = [{k: v for k, v in it.items() if k != "bow_proof"} for it in items]  # a JSON from before the field
    assert SugarCrepe.metrics(columns(no_field)) == {k: v for k, v in m.items() if not k.startswith("bow_proof/")}
