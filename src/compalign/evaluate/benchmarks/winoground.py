"""Winoground: two images x two captions with the same words; text, image and group scores, overall and per tag.

`bow_proof/<metric>`: the same over the items whose two captions have exactly the same words (most of Winoground
by design; a few pairs differ in a word or its form).
"""

from __future__ import annotations

import numpy as np

from ...cache.reader import CacheReader
from ...heads.base import Head
from ..metrics import pct
from .base import BOW_PROOF, Benchmark, BenchResult, left_out_note, register_benchmark

OUTCOMES = ("text", "image", "group")
TAGS = ("tag", "secondary_tag", "collapsed_tag")  # item columns the per-tag metrics group by



def winoground_outcomes(c0i0: np.ndarray, c1i0: np.ndarray, c0i1: np.ndarray, c1i1: np.ndarray) -> dict[str, np.ndarray]:
    """The official per-item scores (Thrush et al. 2022); cXiY = s(caption X, image Y); strict `>`, a tie is wrong.

    text: each image prefers its own caption; image: each caption prefers its own image; group: both.
    """
    text = (c0i0 > c1i0) & (c1i1 > c0i1)
    image = (c0i0 > c0i1) & (c1i1 > c1i0)
    return {"text": text, "image": image, "group": text & image}


def winoground_metrics(outcomes: dict[str, np.ndarray], tags: dict[str, np.ndarray]) -> dict[str, float]:
    """`text`, `image`, `group` over all items, then `<column>/<value>/<outcome>` for each tag value present
    (an empty value, e.g. the many items without a secondary tag, is no group)."""
    out = {name: pct(v) for name, v in outcomes.items()}
    for col, values in tags.items():
        values = np.asarray(values)
        for t in sorted(set(values.tolist()) - {""}):
            for name, v in outcomes.items():
                out[f"{col}/{t}/{name}"] = pct(v[values == t])
    return out


@register_benchmark("winoground")
class Winoground(Benchmark):
    source = "winoground"

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        s, valid, bow = self.score_2x2(reader, head, "image_0", "image_1", "caption_0", "caption_1")
        it = reader.items
        n = len(it["id"])
        out = winoground_outcomes(s["c0i0"], s["c1i0"], s["c0i1"], s["c1i1"])
        # `subset` is the collapsed tag (Object / Relation / Both), the grouping the paper's tables lead with.
        items = [{"id": str(it["id"][j]), "subset": str(it["collapsed_tag"][j]), "valid": bool(valid[j]),
                  BOW_PROOF: bool(bow[j]), **{t: str(it[t][j]) for t in TAGS}, **{k: bool(v[j]) for k, v in out.items()}}
                 for j in range(n)]
        return self.result(reader, head, items, left_out_note(valid))

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        return winoground_metrics({k: cols[k].astype(bool) for k in OUTCOMES}, {t: cols[t] for t in TAGS})
