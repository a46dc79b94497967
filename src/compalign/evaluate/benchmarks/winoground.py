"""Winoground: two images x two captions with the same words; text, image and group scores, overall and per tag.

`bow_proof/<metric>`: the same over the items whose two captions have exactly the same words (most of Winoground
by design; a few pairs differ in a word or its form).
"""

from __future__ import annotations

import numpy as np

from ...cache.reader import CacheReader
from ...heads.base import Head
from ..metrics import pct
from ..scoring import score_two_by_two
from .base import BOW_PROOF, Benchmark, BenchResult, bow_proof, columns, head_label, register_benchmark, warn_invalid

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
        self.check(reader)
        it = reader.items
        n = len(it["id"])
        s, valid = score_two_by_two(reader, head, it["image_0"], it["image_1"], it["caption_0"], it["caption_1"])
        warn_invalid(valid)
        out = winoground_outcomes(s["c0i0"], s["c1i0"], s["c0i1"], s["c1i1"])
        # `subset` is the collapsed tag (Object / Relation / Both), the grouping the paper's tables lead with.
        bow = bow_proof(reader, it["caption_0"], it["caption_1"])
        items = [{"id": str(it["id"][j]), "subset": str(it["collapsed_tag"][j]), "valid": bool(valid[j]),
                  BOW_PROOF: bool(bow[j]), **{t: str(it[t][j]) for t in TAGS}, **{k: bool(v[j]) for k, v in out.items()}}
                 for j in range(n)]
        metrics = self.metrics(columns(items))
        notes = [f"{int((~valid).sum())} of {n} items left out (failed image or caption): every score is over "
                 f"the other {int(valid.sum())}, so it is not comparable with a run over all items"] if (~valid).any() else []
        return BenchResult("winoground", head_label(head), reader.backbone["name"], str(reader.path), metrics, items,
                           {"items": n, "invalid": int((~valid).sum()), BOW_PROOF: int(bow.sum())}, notes)

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        return winoground_metrics({k: cols[k].astype(bool) for k in OUTCOMES}, {t: cols[t] for t in TAGS})
