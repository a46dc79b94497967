"""Score (image key, text key) pairs with a head, from the cache alone.

Rows are gathered once per batch of pairs (unique images, unique texts), embedded by the head,
and scored in one vectorised call; no Python loop runs over items.
"""

from __future__ import annotations

import numpy as np

from ..cache.reader import CacheReader
from ..heads.base import Head


def gather_images(reader: CacheReader, head: Head, rows: np.ndarray) -> dict[str, np.ndarray]:
    return reader.gather("images", head.needs_images, rows, head.layer)


def gather_texts(reader: CacheReader, head: Head, rows: np.ndarray) -> dict[str, np.ndarray]:
    return reader.gather("texts", head.needs_texts, rows, head.layer)


def score_pairs(reader: CacheReader, head: Head, image_keys: np.ndarray, text_keys: np.ndarray,
                batch_size: int = 8192) -> np.ndarray:
    """(n,) scores; NaN where the image or the caption failed to extract."""
    head.attach(reader)
    irows, trows = reader.rows("images", image_keys), reader.rows("texts", text_keys)
    valid = reader.ok("images")[irows] & reader.ok("texts")[trows]
    out = np.full(len(irows), np.nan, dtype=np.float32)
    for b in range(0, len(irows), batch_size):
        sl = slice(b, b + batch_size)
        ui, ii = np.unique(irows[sl], return_inverse=True)
        ut, ti = np.unique(trows[sl], return_inverse=True)
        im = head.embed_images(gather_images(reader, head, ui))
        tx = head.embed_texts(gather_texts(reader, head, ut))
        out[sl] = head.score_pairs(_take(im, ii), _take(tx, ti))
    out[~valid] = np.nan
    return out


def score_captions(reader: CacheReader, head: Head, images: np.ndarray, *captions: np.ndarray) -> np.ndarray:
    """(k, n) scores of each of k caption columns against the same n images, in one call (NaN where failed)."""
    n = len(images)
    return score_pairs(reader, head, np.tile(images, len(captions)), np.concatenate(captions)).reshape(len(captions), n)


def score_two_by_two(reader: CacheReader, head: Head, i0: np.ndarray, i1: np.ndarray, c0: np.ndarray,
                     c1: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every (caption, image) score of items with two images and two captions, in one call.

    Returns ({"c0i0", "c1i0", "c0i1", "c1i1"}: (n,) scores, valid (n,)); invalid where any of the four is NaN.
    """
    n = len(i0)
    s = score_pairs(reader, head, np.concatenate([i0, i0, i1, i1]), np.concatenate([c0, c1, c0, c1])).reshape(4, n)
    return dict(zip(("c0i0", "c1i0", "c0i1", "c1i1"), s)), ~np.isnan(s).any(axis=0)


def score_text_pairs(reader: CacheReader, head: Head, a_keys: np.ndarray, b_keys: np.ndarray) -> np.ndarray:
    head.attach(reader)
    ar, br = reader.rows("texts", a_keys), reader.rows("texts", b_keys)
    a = head.embed_texts(gather_texts(reader, head, ar))
    b = head.embed_texts(gather_texts(reader, head, br))
    out = np.asarray(head.score_text_pairs(a, b), dtype=np.float32)
    ok = reader.ok("texts")
    out[~(ok[ar] & ok[br])] = np.nan
    return out


def _take(rep, idx: np.ndarray):
    """Index a head's representation (an array, a tensor, or a dict of them) by rows."""
    if isinstance(rep, dict):
        return {k: _take(v, idx) for k, v in rep.items()}
    return rep[idx]
