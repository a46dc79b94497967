"""SugarCrepe++: an image, two paraphrased positives P1, P2 and one negative N per item.

ITT (image-to-text): s(I,P1) > s(I,N) and s(I,P2) > s(I,N).
TOT (text-only):     t(P1,P2) > t(P1,N) and t(P1,P2) > t(P2,N); needs a head with a text-text score.
Strict `>`: a tie is wrong. Metrics per subset (`swap_att/ITT`), per category (`swap/ITT`, item-weighted),
the macro mean of the subsets present (`ITT`, `TOT`, as the paper averages) and the item-weighted
micro mean (`micro/ITT`, `micro/TOT`). `bow_proof/<metric>`: the same over the items whose negative has exactly
P1's words (P1 is the caption the negative was made from; P2 is a paraphrase, so a bag-of-words scorer still sees a
difference between P2 and N, and is at chance only on the P1 half of ITT and on TOT's P1 comparison).
"""

from __future__ import annotations

import numpy as np

from ...cache.reader import CacheReader
from ...core import InputError
from ...heads.base import Head
from ..metrics import sugarcrepe_metrics, sugarcrepe_pp_outcomes
from ..scoring import score_captions, score_text_pairs
from .base import BOW_PROOF, Benchmark, BenchResult, absent_note, bow_proof, head_label, register_benchmark, warn_invalid

SUBSETS = ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")  # SugarCrepe++ has no add_*
OUTCOMES = ("ITT", "TOT")



def _text_scores(reader: CacheReader, head: Head, a: np.ndarray, b: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """score_text_pairs in slices: it embeds all its rows at once, and token heads' rows are large."""
    return np.concatenate([score_text_pairs(reader, head, a[i:i + batch_size], b[i:i + batch_size])
                           for i in range(0, len(a), batch_size)])


@register_benchmark("sugarcrepe_pp")
class SugarCrepePP(Benchmark):
    source = "sugarcrepe"  # the sugarcrepe source reads the SugarCrepe++ list files into a caption2 column
    contrasts = (("caption", "negative_caption"), ("caption2", "negative_caption"))

    def check(self, reader: CacheReader) -> None:
        super().check(reader)
        it = reader.items
        if "caption2" not in it or not (it["caption2"] != "").any():
            raise InputError(f"{reader.path} has no second positive caption (caption2): it was extracted from "
                             "SugarCrepe files, not SugarCrepe++ ones. Score it with --bench sugarcrepe, or extract "
                             "the SugarCrepe++ JSONs (replace_att.json ... swap_obj.json) with `compalign extract "
                             "--data sugarcrepe`")

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        self.check(reader)
        it = reader.items
        # A root mixing SugarCrepe (dict-form, e.g. add_*.json) and SugarCrepe++ files leaves caption2 empty
        # for the former: they are not SugarCrepe++ items, so they are left out, and the note says how many.
        keep = np.flatnonzero(it["caption2"] != "")
        ids, subset = it["id"][keep], it["subset"][keep]
        img, p1, p2, neg = (it[c][keep] for c in ("image", "caption", "caption2", "negative_caption"))
        m = len(keep)
        notes: list[str] = []
        if m < len(it["id"]):
            without = sorted(set(it["subset"][it["caption2"] == ""].tolist()))
            notes.append(f"{len(it['id']) - m} of {len(it['id'])} items have no caption2 (subsets {', '.join(without)}: "
                         "SugarCrepe, not SugarCrepe++) and are left out")
        # Image-text: one call, three blocks of m: (I,P1), (I,P2), (I,N).
        s = score_captions(reader, head, img, p1, p2, neg)
        try:  # Text-text: (P1,P2), (P1,N), (P2,N).
            t = _text_scores(reader, head, np.concatenate([p1, p1, p2]), np.concatenate([p2, neg, neg])).reshape(3, m)
        except NotImplementedError:
            t = None
            notes.append(f"head {head_label(head)!r} has no text-text score: TOT is absent, only ITT is reported")
        out = sugarcrepe_pp_outcomes(*s, *(t if t is not None else (None, None, None)))
        valid = ~np.isnan(s).any(axis=0) & (~np.isnan(t).any(axis=0) if t is not None else True)
        warn_invalid(valid)
        bow = bow_proof(reader, p1, neg)
        items = [{"id": str(ids[j]), "subset": str(subset[j]), "valid": bool(valid[j]), BOW_PROOF: bool(bow[j]),
                  **{k: bool(v[j]) for k, v in out.items()}} for j in range(m)]
        return self.result(reader, head, items, notes + absent_note(SUBSETS, subset))

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in OUTCOMES:
            if o not in cols:  # TOT: the head had no text-text score
                continue
            per = sugarcrepe_metrics(cols[o].astype(bool), cols["subset"])
            rename = {"macro": o, "micro": f"micro/{o}"}
            out.update({rename.get(k, f"{k}/{o}"): v for k, v in per.items()})
        return out
