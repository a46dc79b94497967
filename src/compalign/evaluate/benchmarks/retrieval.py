"""Image-text retrieval (COCO 5k, Flickr30k 1k Karpathy test): text->image and image->text R@1/5/10.

Queries and gallery are caption *annotations*: a caption string written for two images is encoded once
but is two gallery entries (and two queries), each owned by its image. Text->image hits when the query's
own image is in the top k; image->text when any of the image's captions is (the CLIP convention).

First stage: FAISS over the L2-normalised cached global embeddings (`index`: flat = exact, ivf, hnsw,
auto). Second stage (`rerank` K > 0): the head re-scores each query's top K from the cache, so any head,
trained or not, is judged on retrieval. Tie rule, both stages: higher score first; equal scores keep
the earlier order (first stage: gallery order, images as first met in the annotations and captions in
annotation order; second stage: the first stage's order).
"""

from __future__ import annotations

import numpy as np

from ...cache.reader import CacheReader
from ...core import InputError
from ...heads.base import Head
from ..metrics import MISS, RETRIEVAL_KS, first_hit, recall_at
from ..scoring import score_pairs
from ..search import IndexKind, build_index, normalise
from .base import Benchmark, BenchResult, head_label, register_benchmark


class _Gallery:
    """The split's images (one per dataset image id) and caption annotations, failed rows left out."""

    def __init__(self, reader: CacheReader):
        it = reader.items
        image_id = it["image_id"] if "image_id" in it else it["image"]
        _, first, owner = np.unique(image_id, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")  # images in the order the annotations first name them
        rank_of = np.empty_like(order)
        rank_of[order] = np.arange(len(order))
        owner = rank_of[owner]  # (A,) image index of each annotation
        image_keys = it["image"][first[order]]
        ok_img = reader.ok("images")[reader.rows("images", image_keys)]
        ok_ann = ok_img[owner] & reader.ok("texts")[reader.rows("texts", it["caption"])]
        keep_img = np.flatnonzero(ok_img & np.bincount(owner[ok_ann], minlength=len(order)).astype(bool))
        new = np.full(len(order), -1)
        new[keep_img] = np.arange(len(keep_img))
        self.invalid = int((~ok_ann).sum())
        self.ann = np.flatnonzero(ok_ann)  # item rows of the kept annotations
        self.owner = new[owner[self.ann]]  # (A,) kept image index of each kept annotation
        self.image_keys = image_keys[keep_img]  # (I,)
        self.image_ids = np.asarray(image_id)[first[order]][keep_img]
        self.text_keys = it["caption"][self.ann]  # (A,) repeats allowed: one entry per annotation
        self.ann_ids = it["id"][self.ann]


class Retrieval(Benchmark):
    source = "karpathy"
    dataset: str | None = None  # an alias's dataset (coco, flickr30k); None: any

    def __init__(self, index: IndexKind = "flat", rerank: int = 0):
        if index not in ("flat", "ivf", "hnsw", "auto"):
            raise InputError(f"--index is flat, ivf, hnsw or auto (got {index!r})")
        if rerank < 0:
            raise InputError(f"--rerank must be 0 (first stage only) or a positive shortlist size (got {rerank})")
        self.index, self.rerank = index, rerank

    def check(self, reader: CacheReader) -> None:
        super().check(reader)
        have = reader.attrs["source"].get("info", {}).get("dataset")
        if self.dataset and have != self.dataset:
            raise InputError(f"{reader.path} holds {have!r} captions; --bench {self.name} needs {self.dataset!r} "
                             "(use --bench retrieval for any Karpathy-layout dataset)")

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        self.check(reader)
        if head.name != "global" and not self.rerank:
            raise InputError(f"--head {head.name} on retrieval re-ranks the global first stage: pass --rerank K "
                             "(e.g. --rerank 100); the first stage alone is --head global")
        g = _Gallery(reader)
        images = normalise(reader.read("images", "global", reader.rows("images", g.image_keys)))  # (I, E)
        texts = normalise(reader.read("texts", "global", reader.rows("texts", g.text_keys)))  # (A, E)
        depth = max(RETRIEVAL_KS[-1], self.rerank)
        notes, ranked = [], {}
        for direction, gallery, queries in (("t2i", images, texts), ("i2t", texts, images)):
            idx = build_index(gallery, self.index, k=RETRIEVAL_KS[-1], probe=queries)
            _, ids = idx.search(queries, depth)  # (Q, D) gallery rows, by the tie rule
            notes.append(f"{direction} first stage: {idx.describe()}")
            if self.rerank:
                ids = self._rerank(reader, head, g, direction, ids)
            ranked[direction] = ids
        t2i = first_hit(ranked["t2i"], g.owner)  # the query caption's own image
        i2t = first_hit(g.owner[ranked["i2t"]], np.arange(len(g.image_keys)))  # any caption of the query image
        if self.rerank:
            notes.append(f"re-ranked by {head_label(head)}: top {self.rerank} of each query")
        items = [{"id": str(a), "subset": "t2i", "rank": None if r == MISS else int(r) + 1} for a, r in zip(g.ann_ids, t2i)]
        items += [{"id": str(i), "subset": "i2t", "rank": None if r == MISS else int(r) + 1} for i, r in zip(g.image_ids, i2t)]
        return self.result(reader, head, items, notes, {"items": len(g.ann), "images": len(g.image_keys), "invalid": g.invalid})

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        ranks = np.array([MISS if r is None else r - 1 for r in cols["rank"].tolist()], dtype=np.int64)
        return {**recall_at(ranks[cols["subset"] == "t2i"], "t2i"), **recall_at(ranks[cols["subset"] == "i2t"], "i2t")}

    def _rerank(self, reader: CacheReader, head: Head, g: _Gallery, direction: str, ids: np.ndarray) -> np.ndarray:
        """The top `rerank` candidates of each query, re-ordered by the head's score (stable: ties keep order)."""
        short = ids[:, :self.rerank]  # (Q, K)
        Q, K = short.shape
        if direction == "t2i":  # query q is annotation q; candidates are images
            img, txt = g.image_keys[short.reshape(-1)], np.repeat(g.text_keys, K)
        else:  # query q is image q; candidates are annotations
            img, txt = np.repeat(g.image_keys, K), g.text_keys[short.reshape(-1)]
        s = score_pairs(reader, head, img, txt).reshape(Q, K)
        order = np.argsort(-s, axis=1, kind="stable")
        return np.concatenate([np.take_along_axis(short, order, 1), ids[:, self.rerank:]], axis=1)


@register_benchmark("retrieval")
class AnyRetrieval(Retrieval):
    """Any Karpathy-layout dataset."""


@register_benchmark("coco")
class CocoRetrieval(Retrieval):
    dataset = "coco"


@register_benchmark("flickr30k")
class Flickr30kRetrieval(Retrieval):
    dataset = "flickr30k"
