"""SugarCrepe: item correct iff s(I, pos) > s(I, neg); subsets, categories, macro and micro means.

`bow_proof/<metric>`: the same metrics over the items whose negative has exactly the positive's words (most of
swap_att and swap_obj, none of the other subsets), where a bag-of-words scorer is at chance by construction.
"""

from __future__ import annotations

import numpy as np

from ...cache.reader import CacheReader
from ...heads.base import Head
from ..metrics import SUGARCREPE_CATEGORIES, sugarcrepe_metrics
from ..scoring import score_captions
from .base import BOW_PROOF, Benchmark, BenchResult, bow_proof, columns, head_label, register_benchmark, warn_invalid


@register_benchmark("sugarcrepe")
class SugarCrepe(Benchmark):
    source = "sugarcrepe"
    contrasts = (("caption", "negative_caption"),)

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        self.check(reader)
        it = reader.items
        n = len(it["id"])
        pos, neg = score_captions(reader, head, it["image"], it["caption"], it["negative_caption"])
        valid = ~(np.isnan(pos) | np.isnan(neg))
        warn_invalid(valid)
        correct = pos > neg
        bow = bow_proof(reader, it["caption"], it["negative_caption"])
        items = [{"id": str(i), "subset": str(sub), "pos": float(p), "neg": float(q), "correct": bool(c), "valid": bool(v),
                  BOW_PROOF: bool(b)} for i, sub, p, q, c, v, b in zip(it["id"], it["subset"], pos, neg, correct, valid, bow)]
        metrics = self.metrics(columns(items))
        SUBSETS = sorted(x for members in SUGARCREPE_CATEGORIES.values() for x in members)
        absent = [s for s in SUBSETS if s not in set(it["subset"].tolist())]
        notes = [f"{len(SUBSETS) - len(absent)} of {len(SUBSETS)} subsets present (absent: {', '.join(absent)}): the macro "
                 "and category means cover only the subsets present"] if absent else []
        return BenchResult("sugarcrepe", head_label(head), reader.backbone["name"], str(reader.path), metrics, items,
                           {"items": n, "invalid": int((~valid).sum()), BOW_PROOF: int(bow.sum())}, notes)

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        return sugarcrepe_metrics(cols["correct"].astype(bool), cols["subset"])
