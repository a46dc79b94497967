"""ARO VG-Relation / VG-Attribution: item correct iff s(crop, true caption) > s(crop, false caption) (strict).

Metrics (percent): `vg_relation`, `vg_attribution`: accuracy over the subset's items; `vg_relation/macro`:
the mean over relation names of the per-relation accuracy, and `vg_attribution/macro`: the mean over
attribute pairs of the per-pair accuracy, counting only pairs with at least 25 items, as the official
code does (`evaluate_scores` of VG_Attribution skips smaller pairs; VG_Relation keeps every relation).
The paper's VG-Relation / VG-Attribution numbers are these macro means. `bow_proof/<metric>`: the same over the
items whose false caption has exactly the true caption's words (VG-Relation swaps subject and object, VG-Attribution
the two attributes; COCO/Flickr30k-Order only reorder words, so nearly all their items are bag-of-words-proof).
A tie is wrong, as in the official code (argmax over [false, true] picks the first on a tie).
"""

from __future__ import annotations

import numpy as np

from ...cache.reader import CacheReader
from ...heads.base import Head
from ..metrics import pct
from .base import BOW_PROOF, Benchmark, BenchResult, ContrastBenchmark, left_out_note, register_benchmark

SUBSETS = ("vg_relation", "vg_attribution")
MIN_GROUP = {"vg_relation": 1, "vg_attribution": 25}  # the official per-group count thresholds of the macro


def aro_metrics(correct: np.ndarray, subset: np.ndarray, group: np.ndarray,
                min_group: dict[str, int] = MIN_GROUP) -> dict[str, float]:
    correct, subset, group = np.asarray(correct, bool), np.asarray(subset), np.asarray(group)
    out: dict[str, float] = {}
    for s in np.unique(subset).tolist():
        mask = subset == s
        out[s] = pct(correct[mask])
        names, inverse, counts = np.unique(group[mask], return_inverse=True, return_counts=True)
        hits = np.bincount(inverse, weights=correct[mask], minlength=len(names))
        keep = counts >= min_group.get(s, 1)
        out[f"{s}/macro"] = float(np.mean(100.0 * hits[keep] / counts[keep])) if keep.any() else float("nan")
    return out


@register_benchmark("aro")
class ARO(ContrastBenchmark):
    source = "aro"
    extra = ("group",)

    def notes(self, items: dict[str, np.ndarray], result: BenchResult, valid: np.ndarray) -> list[str]:
        present = set(items["subset"].tolist())
        out = [f"{s} absent: only {', '.join(sorted(present))} scored" for s in SUBSETS if s not in present]
        out += [f"{s}/macro is NaN: no group has the {MIN_GROUP.get(s, 1)} valid items the official macro needs"
                for s in sorted(present) if np.isnan(result.metrics.get(f"{s}/macro", 0.0))]
        return out + left_out_note(valid)

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        return aro_metrics(cols["correct"].astype(bool), cols["subset"], cols["group"])


ORDER_PERTURBATIONS = ("nouns_adj", "allbut_nouns_adj", "within_trigrams", "trigrams")  # item columns of aro_order


def order_outcomes(pos: np.ndarray, negs: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(beats (n, 4), correct (n,), valid (n,)) from pos (n,), negs (n, 4) and same (n, 4): the perturbed caption is
    the true caption's very text (a caption whose shuffle changes nothing). Such a perturbation is no negative and is
    beaten vacuously, as in the official code, where argmax over identical scores picks the true caption; every other
    comparison is strict, so a tie with a different text is wrong."""
    valid = ~(np.isnan(pos) | np.isnan(negs).any(axis=1))
    beats = same | (pos[:, None] > negs)
    return beats & valid[:, None], beats.all(axis=1) & valid, valid


@register_benchmark("aro_order")
class AROOrder(Benchmark):
    """COCO-Order / Flickr30k-Order: correct iff the true caption outscores all four word-order perturbations.

    Metrics: `<dataset>_order` (the paper's Precision@1 over the 5 captions) and `<dataset>_order/<perturbation>`
    (the share of items whose true caption beats that perturbation). The perturbations are made by a rule-based
    stand-in for the official spaCy tagger (see compalign.extract.sources.aro), so numbers are close to the paper's.
    """

    source = "aro_order"
    contrasts = tuple(("caption", p) for p in ORDER_PERTURBATIONS)

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        # bow-proof for every item: each perturbation reorders the caption's own words
        s, _, bow = self.score(reader, head, "image", "caption", *ORDER_PERTURBATIONS)  # s (5, n)
        it = reader.items
        n = len(it["id"])
        pos, negs = s[0], s[1:].T
        same = np.stack([it[p] == it["caption"] for p in ORDER_PERTURBATIONS], axis=1)
        beats, correct, valid = order_outcomes(pos, negs, same)
        items = [{"id": str(it["id"][j]), "subset": str(it["subset"][j]), "pos": float(pos[j]),
                  **{f"neg_{p}": float(negs[j, k]) for k, p in enumerate(ORDER_PERTURBATIONS)},
                  **{f"beats_{p}": bool(beats[j, k]) for k, p in enumerate(ORDER_PERTURBATIONS)},
                  "correct": bool(correct[j]), "valid": bool(valid[j]), BOW_PROOF: bool(bow[j])} for j in range(n)]
        notes = [f"perturbations by a rule-based stand-in for spaCy's tagger; {int(same.any(axis=1).sum())} of {n} "
                 "items have a perturbation identical to the true caption (beaten vacuously, as in the official code)"]
        return self.result(reader, head, items, notes + left_out_note(valid))

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in np.unique(cols["subset"]).tolist():
            mask = cols["subset"] == s
            out[s] = pct(cols["correct"][mask].astype(bool))
            for p in ORDER_PERTURBATIONS:
                out[f"{s}/{p}"] = pct(cols[f"beats_{p}"][mask].astype(bool))
        return out
