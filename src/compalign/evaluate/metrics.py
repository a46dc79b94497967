"""Benchmark metrics as pure functions of scores. Comparisons are strict: a tie is wrong.

All results are percentages. Items whose scores are NaN (a failed image or caption) are invalid:
they are left out of every mean and counted by the caller.
"""

from __future__ import annotations

import re

import numpy as np

SUGARCREPE_CATEGORIES = {"replace": ("replace_att", "replace_obj", "replace_rel"),
                         "swap": ("swap_att", "swap_obj"),
                         "add": ("add_att", "add_obj")}


def pct(x: np.ndarray) -> float:
    return float(100.0 * np.mean(x)) if len(x) else float("nan")


def sugarcrepe_metrics(correct: np.ndarray, subset: np.ndarray) -> dict[str, float]:
    """Each subset; category micro-averages; macro mean of the subsets present; micro mean of all items."""
    correct, subset = np.asarray(correct, bool), np.asarray(subset)
    out: dict[str, float] = {}
    present = np.unique(subset).tolist()  # sorted; in C (the bootstrap calls this a thousand times)
    for s in present:
        out[s] = pct(correct[subset == s])
    for cat, members in SUGARCREPE_CATEGORIES.items():
        mask = np.isin(subset, members)
        if mask.any():
            out[cat] = pct(correct[mask])
    out["macro"] = float(np.mean([out[s] for s in present])) if present else float("nan")
    out["micro"] = pct(correct)
    return out


def bivlc_outcomes(c0i0: np.ndarray, c1i0: np.ndarray, c0i1: np.ndarray, c1i1: np.ndarray) -> dict[str, np.ndarray]:
    """BiVLC per-item outcomes; cXiY = s(caption X, image Y), 0 = positive, 1 = negative."""
    ipos2t = c0i0 > c1i0
    ineg2t = c1i1 > c0i1
    tpos2i = c0i0 > c0i1
    tneg2i = c1i1 > c1i0
    i2t, t2i = ipos2t & ineg2t, tpos2i & tneg2i
    return {"Ipos2T": ipos2t, "Ineg2T": ineg2t, "Tpos2I": tpos2i, "Tneg2I": tneg2i,
            "I2T": i2t, "T2I": t2i, "Group": i2t & t2i}


def bivlc_metrics(outcomes: dict[str, np.ndarray], types: np.ndarray) -> dict[str, float]:
    """Overall and per type (replace / swap / add), e.g. `I2T`, `swap/Group`."""
    types = np.asarray(types)
    out = {name: pct(v) for name, v in outcomes.items()}
    for t in sorted(set(types.tolist())):
        for name, v in outcomes.items():
            out[f"{t}/{name}"] = pct(v[types == t])
    return out


def sugarcrepe_pp_outcomes(ip1: np.ndarray, ip2: np.ndarray, ineg: np.ndarray,
                           tp1p2: np.ndarray | None, tp1n: np.ndarray | None, tp2n: np.ndarray | None) -> dict[str, np.ndarray]:
    """SugarCrepe++: ITT needs both positives above the negative; TOT compares caption pairs."""
    out = {"ITT": (ip1 > ineg) & (ip2 > ineg)}
    if tp1p2 is not None:
        out["TOT"] = (tp1p2 > tp1n) & (tp1p2 > tp2n)
    return out


RETRIEVAL_KS = (1, 5, 10)
MISS = np.iinfo(np.int64).max  # the rank of a query whose target is not in its ranked list at all


def first_hit(ranked_owner: np.ndarray, target: np.ndarray) -> np.ndarray:
    """0-based rank of the first candidate owned by each query's target; MISS when none is.

    ranked_owner (Q, D): for text->image, the gallery image of each ranked candidate; for image->text, the
    image that owns each ranked caption annotation (so an image with several captions hits at its best one).
    """
    hit = ranked_owner == np.asarray(target)[:, None]  # (Q, D)
    return np.where(hit.any(1), hit.argmax(1), MISS)


def recall_at(ranks: np.ndarray, prefix: str, ks: tuple[int, ...] = RETRIEVAL_KS) -> dict[str, float]:
    """`{prefix}_R@k`: percent of queries whose first hit is in the top k."""
    return {f"{prefix}_R@{k}": pct(np.asarray(ranks) < k) for k in ks}


WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")  # "man's" is one word; punctuation and case are not words


def words(text: str) -> tuple[str, ...]:
    """The caption's bag of words: lower-cased word tokens, sorted (a multiset, as a tuple)."""
    return tuple(sorted(WORD.findall(text.lower())))


def same_words(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) bool: caption a[i] and b[i] have exactly the same words, each as many times (order aside).

    A bag-of-words scorer gives such a pair equal scores, so on items whose negative has the positive's very
    words it is at chance by construction (wrong under the strict `>`): the bag-of-words-proof subset.
    """
    return np.fromiter((words(x) == words(y) for x, y in zip(a.tolist(), b.tolist())), dtype=bool, count=len(a))
