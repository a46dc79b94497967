"""SugarCrepe: item correct iff s(I, pos) > s(I, neg); subsets, categories, macro and micro means.

`bow_proof/<metric>`: the same metrics over the items whose negative has exactly the positive's words (most of
swap_att and swap_obj, none of the other subsets), where a bag-of-words scorer is at chance by construction.
"""

from __future__ import annotations

import numpy as np

from ..metrics import SUGARCREPE_CATEGORIES, sugarcrepe_metrics
from .base import BenchResult, ContrastBenchmark, absent_note, register_benchmark


@register_benchmark("sugarcrepe")
class SugarCrepe(ContrastBenchmark):
    source = "sugarcrepe"

    def notes(self, items: dict[str, np.ndarray], result: BenchResult, valid: np.ndarray) -> list[str]:
        return absent_note(sorted(x for members in SUGARCREPE_CATEGORIES.values() for x in members), items["subset"])

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        return sugarcrepe_metrics(cols["correct"].astype(bool), cols["subset"])
