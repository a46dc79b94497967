"""What heads must score, recomputed in numpy from the cache (shared by the tests that check a head's numbers)."""

from __future__ import annotations

import numpy as np


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def expected_region_scores(reader, regions: list[np.ndarray], mix: float) -> dict[str, list[float]]:
    """{"pos", "neg"}: per SugarCrepe item j, (1 - mix) cos(global) + mix * mean over the caption's segments of
    the best cosine with `regions[j]` ((R_j, E) unit rows, the item's image's regions)."""
    it = reader.items
    g_img = unit(reader.read("images", "global", reader.rows("images", it["image"])))
    out = {}
    for col, field in (("caption", "pos"), ("negative_caption", "neg")):
        rows = reader.rows("texts", it[col])
        g = (g_img * unit(reader.read("texts", "global", rows))).sum(1)
        want = []
        for j, row in enumerate(rows):
            seg = reader.segment_rows(np.array([row]))[0]
            seg = seg[seg >= 0]
            assert len(seg) > 0
            best = (unit(reader.read("texts", "global", seg)) @ regions[j].T).max(1)
            want.append((1 - mix) * g[j] + mix * best.mean())
        out[field] = want
    return out
