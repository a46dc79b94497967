"""The FAISS first stage against numpy brute force, the tie rule, and the recall of the approximate indexes."""

from __future__ import annotations

import numpy as np
import pytest

from compalign.evaluate.metrics import MISS, first_hit, recall_at
from compalign.evaluate.search import build_index, exact_topk, normalise, tie_sort


def _clustered(n: int, d: int, seed: int, centres: int = 50) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    return normalise(c[rng.integers(0, centres, n)] + 0.3 * rng.standard_normal((n, d)).astype(np.float32))


def test_flat_faiss_equals_numpy_brute_force_tie_tolerant():
    gallery, queries = _clustered(3000, 64, 0), _clustered(200, 64, 1)
    s_np, i_np = exact_topk(queries, gallery, 10)
    s_fa, i_fa = build_index(gallery, "flat").search(queries, 10)
    assert np.allclose(s_fa, s_np, atol=1e-5)
    # ids agree wherever a score is not within float error of its neighbour (a near-tie may swap)
    gap = np.minimum(np.abs(np.diff(s_np, axis=1, prepend=np.inf)), np.abs(np.diff(s_np, axis=1, append=-np.inf)))
    clear = gap > 1e-5
    assert clear.mean() > 0.95 and np.array_equal(i_fa[clear], i_np[clear])


def test_exact_ties_rank_the_lower_gallery_index_first():
    rng = np.random.default_rng(0)
    base = normalise(rng.standard_normal((5, 16)))
    gallery = np.concatenate([base, base[[3, 1]]])  # rows 5, 6 duplicate rows 3, 1: exact ties
    for search in (lambda q, k: exact_topk(q, gallery, k), build_index(gallery, "flat").search):
        _, ids = search(base[[3, 1]], 3)
        assert ids[0, :2].tolist() == [3, 5] and ids[1, :2].tolist() == [1, 6]
    s, i = tie_sort(np.array([[0.5, 0.75, 0.5, -1.0]], np.float32), np.array([[7, 2, 4, -1]]))
    assert i.tolist() == [[2, 4, 7, -1]] and s.tolist()[0][:3] == [0.75, 0.5, 0.5]  # FAISS's -1 padding last


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_reach_the_recall_they_report(kind):
    gallery, probe, queries = _clustered(20000, 32, 2), _clustered(300, 32, 5), _clustered(300, 32, 3)
    idx = build_index(gallery, kind, k=10, recall_target=0.99, probe=probe)  # tuned on queries, not gallery rows
    assert idx.recall >= 0.99 and idx.sample == 300 and "recall@k" in idx.describe()
    _, truth = exact_topk(queries, gallery, 10)
    _, found = idx.search(queries, 10)
    held_out = np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(found, truth)])
    assert held_out >= 0.97  # on queries it was not tuned on, within a little of the target


def test_auto_is_exact_for_small_galleries():
    idx = build_index(_clustered(1000, 16, 4), "auto")
    assert idx.kind == "flat" and idx.recall is None and idx.describe() == "flat: exact"


def test_recall_definitions_on_a_hand_made_gallery():
    # text->image: 4 caption queries owned by images 0, 0, 1, 2; ranked gallery images per query
    t2i = np.array([[0, 1, 2], [1, 0, 2], [2, 0, 1], [0, 1, 3]])
    ranks = first_hit(t2i, np.array([0, 0, 1, 2]))
    assert ranks.tolist() == [0, 1, 2, MISS]  # the last query's image is not in its list at all
    assert recall_at(ranks, "t2i", (1, 2, 3)) == {"t2i_R@1": 25.0, "t2i_R@2": 50.0, "t2i_R@3": 75.0}
    # image->text: image 0 has six captions (annotations 0..5), image 1 one (6); a caption string shared by
    # both images is two annotations (5 owned by 0, 7 owned by 1), each a gallery entry of its own
    owner = np.array([0, 0, 0, 0, 0, 0, 1, 1])
    ranked = np.array([[6, 7, 3, 0], [5, 6, 0, 1]])  # query image 0, query image 1
    ranks = first_hit(owner[ranked], np.array([0, 1]))
    assert ranks.tolist() == [2, 1]  # image 0 hits at its best caption (3), image 1 at annotation 6
    assert recall_at(ranks, "i2t", (1, 2)) == {"i2t_R@1": 0.0, "i2t_R@2": 50.0}
