"""BiVLC: two images x two captions per item; I2T, T2I and Group, overall and per type.

`bow_proof/<metric>`: the same over the items whose negative caption has exactly the positive's words.
"""

from __future__ import annotations

import numpy as np

from ...cache.reader import CacheReader
from ...heads.base import Head
from ..metrics import bivlc_metrics, bivlc_outcomes
from .base import BOW_PROOF, Benchmark, BenchResult, register_benchmark

OUTCOMES = ("Ipos2T", "Ineg2T", "Tpos2I", "Tneg2I", "I2T", "T2I", "Group")



@register_benchmark("bivlc")
class BiVLC(Benchmark):
    source = "bivlc"
    contrasts = (("caption", "negative_caption"),)

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        s, valid, bow = self.score_2x2(reader, head, "image", "negative_image", "caption", "negative_caption")
        it = reader.items
        n = len(it["id"])
        out = bivlc_outcomes(s["c0i0"], s["c1i0"], s["c0i1"], s["c1i1"])
        items = [{"id": str(it["id"][j]), "subset": f"{it['type'][j]}/{it['subtype'][j]}", "valid": bool(valid[j]),
                  BOW_PROOF: bool(bow[j]), **{k: bool(v[j]) for k, v in out.items()}} for j in range(n)]
        return self.result(reader, head, items)

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        types = np.array([s.split("/")[0] for s in cols["subset"].tolist()])
        return bivlc_metrics({k: cols[k].astype(bool) for k in OUTCOMES}, types)
