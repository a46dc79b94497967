"""Nearest neighbours over L2-normalised cached embeddings with FAISS: the first stage of retrieval.

`flat` (IndexFlatIP) is exact and the reference; `ivf` and `hnsw` are approximate, with their search
parameters raised until recall@k against exact on a sample of queries reaches `recall_target`; `auto`
picks by gallery size as autofaiss does (exact while it is cheap, IVF with nlist ~ 4 sqrt(n) beyond).
Every search rescores its candidates exactly (`pair_scores`) and sorts them by the one tie rule of
compalign's retrieval: higher score first, equal scores in gallery order (lower index first), so results
never depend on FAISS's internal order or rounding.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

log = logging.getLogger(__name__)

IndexKind = Literal["flat", "ivf", "hnsw", "auto"]
AUTO_EXACT_BELOW = 200_000  # galleries smaller than this are searched exactly (a flat scan is then fast)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 and C-contiguous (what FAISS takes); zero rows stay zero."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def pair_scores(queries: np.ndarray, gallery: np.ndarray, ids: np.ndarray, block: int = 1024) -> np.ndarray:
    """(Q, K) inner products of each query with its candidates, one element at a time.

    A matrix product may round the same dot product differently in different columns (BLAS blocks them),
    so two identical gallery rows (one caption owned by two images) could lose their tie by an ulp.
    Multiplying elementwise and summing along the last axis gives equal inputs equal outputs, bit for bit.
    """
    out = np.empty(ids.shape, np.float32)
    for b in range(0, len(queries), block):
        cand = gallery[np.maximum(ids[b:b + block], 0)]  # (q, K, d); -1 padding reads row 0, masked below
        out[b:b + block] = (queries[b:b + block, None, :] * cand).sum(-1)
    return np.where(ids < 0, -np.inf, out).astype(np.float32)


def _finish(queries: np.ndarray, gallery: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rescore candidates exactly, order them by the tie rule, keep k."""
    scores, ids = tie_sort(pair_scores(queries, gallery, ids), ids)
    return scores[:, :k], ids[:, :k]


def exact_topk(queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Reference search in numpy: (scores, ids) of the k best gallery rows per query, by the tie rule."""
    k = min(k, len(gallery))
    extra = min(len(gallery), k + 8)  # a few past k, so that scores tied at the k-th place are ordered by the rule
    ids = np.empty((len(queries), extra), np.int64)
    block = max(1, min(block, 2**28 // max(1, len(gallery))))  # a (block, N) float32 score block stays <= 1 GiB
    for b in range(0, len(queries), block):
        s = queries[b:b + block] @ gallery.T  # (q, n)
        ids[b:b + block] = np.argpartition(-s, extra - 1, axis=1)[:, :extra] if extra < s.shape[1] else np.arange(extra)
    return _finish(queries, gallery, ids, k)


def tie_sort(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Re-sort each row of candidates by (-score, id); FAISS's padding (-1 ids) goes last."""
    key_id = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    key_s = np.where(ids < 0, np.inf, -scores)
    order = np.lexsort((key_id, key_s), axis=1)
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


@dataclass
class Index:
    kind: str  # flat | ivf | hnsw (what `auto` chose)
    index: Any  # the faiss index
    gallery: np.ndarray  # (N, d) the indexed rows: candidates are rescored from them
    params: dict[str, Any] = field(default_factory=dict)  # nlist / nprobe / M / efSearch
    recall: float | None = None  # measured recall@k against exact on `sample` queries (approximate kinds)
    sample: int = 0
    gpu: bool = False

    def describe(self) -> str:
        p = ", ".join(f"{k} {v}" for k, v in self.params.items())
        what = f"{self.kind}{' (GPU)' if self.gpu else ''}{f' ({p})' if p else ''}"
        if self.recall is None:
            return f"{what}: exact"
        return f"{what}: recall@k {self.recall:.4f} against exact on {self.sample} queries"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        extra = min(self.index.ntotal, k + 8)  # a few past k, so that ties at the k-th place follow the rule
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        _, ids = self.index.search(queries, extra)
        return _finish(queries, self.gallery, ids, k)


def _faiss() -> Any:
    import faiss  # imported here: scoring without retrieval never needs it

    return faiss


def _to_gpu(faiss: Any, index: Any) -> tuple[Any, bool]:
    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        return index, False
    return faiss.index_cpu_to_all_gpus(index), True


def build_index(gallery: np.ndarray, kind: IndexKind = "flat", *, k: int = 10, recall_target: float = 0.99,
                probe: np.ndarray | None = None, sample: int = 1000, seed: int = 0, gpu: bool = True) -> Index:
    """An index over unit-length `gallery` rows (N, d); approximate kinds are tuned to `recall_target` at `k`.

    Tuning measures recall against exact on `sample` rows of `probe`, the queries the index will serve (a
    gallery row as its own query finds itself and flatters the index).
    """
    faiss = _faiss()
    n, d = gallery.shape
    if kind == "auto":
        kind = "flat" if n < AUTO_EXACT_BELOW else "ivf"
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
        index, on_gpu = _to_gpu(faiss, index) if gpu else (index, False)
        index.add(gallery)
        return Index("flat", index, gallery, gpu=on_gpu)
    rng = np.random.default_rng(seed)
    if probe is None:
        raise ValueError(f"an {kind} index is tuned on the queries it will serve: pass probe=")
    probe = probe[np.sort(rng.choice(len(probe), size=min(sample, len(probe)), replace=False))]
    _, truth = exact_topk(probe, gallery, k)
    if kind == "ivf":
        nlist = max(1, min(n // 39, int(round(4 * math.sqrt(n)))))  # FAISS wants >= 39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # a small gallery trains fewer lists, without FAISS's warning
        index.train(gallery[rng.choice(n, size=min(n, 256 * nlist), replace=False)])
        index.add(gallery)
        knob, values = "nprobe", [v for v in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if v <= nlist] + [nlist]
        params = {"nlist": nlist}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 200  # FAISS's default (40) builds a graph that tops out below 0.99 recall
        index.add(gallery)
        knob, values = "efSearch", [16, 32, 64, 128, 256, 512, 1024]
        params = {"M": 32, "efConstruction": 200}
    else:
        raise ValueError(f"unknown index kind {kind!r}")
    recall = 0.0
    for v in values:  # the cheapest setting that reaches the target
        setattr(index if kind == "ivf" else index.hnsw, knob, v)
        _, found = Index(kind, index, gallery).search(probe, k)
        recall = float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, truth)]))
        if recall >= recall_target:
            break
    return Index(kind, index, gallery, {**params, knob: v}, recall=recall, sample=len(probe))
