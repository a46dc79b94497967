"""The FAISS first stage of retrieval against numpy brute force, and its approximate indexes against exact.

On N x 512 clustered unit vectors (seeded: `--clusters` Gaussian centres on the unit sphere, each point a
random centre plus isotropic noise of norm ~`--noise`, then normalised) and Q queries drawn the same way
(not from the gallery), per gallery size, in this one process:

1. FAISS exact (`build_index(..., "flat")` + `.search`) vs numpy brute force (`exact_topk`): build and
   search times, their ratio, and how far their top-k scores differ (max abs difference of the sorted
   score rows: tie-tolerant, ids of tied scores may legitimately differ).
2. IVF and HNSW at the parameters `build_index` picks for `--recall-target` (and which kind `auto`
   picks), tuned on `--sample` tuning queries of their own (`probe=`, drawn like the queries, a
   different seed), so recall@k against numpy exact on the Q queries is out of sample (the fraction of the exact top-k ids found),
   query time per 1,000 queries and its ratio to flat's, build time (`build_index`'s wall time, tuning
   included; the share spent computing its exact probe truth is shown separately), bytes of the index
   (`faiss.serialize_index`, or ntotal * d * 4 for flat) and the process's peak RSS so far.

    .venv/bin/python benchmarks/retrieval.py [--sizes 100000,1000000] [--q 1000] [--k 10] [--threads N]
        [--clusters 1000] [--noise 1.0] [--recall-target 0.99] [--sample 1000] [--probe-block B] [--kinds ivf,hnsw] [--gpu]

`--n 100000` is shorthand for `--sizes 100000`. Sizes run smallest first, so peak RSS is monotone over
the run. Only one index is alive at a time, and the numpy reference is blocked over queries so that
block x N scores (about 16 bytes each with `exact_topk`'s lexsort) stay near 1 GiB. `build_index`
computes its probe truth with `exact_topk`'s default block (all `--sample` queries at once: ~16 GB at
1M x 1000); `--probe-block` (default: the same ~1 GiB bound, 0 = the library's default) re-blocks those
calls, which changes their memory, not their results. A full 1M run takes a long while on few cores
(HNSW construction and IVF's k-means dominate). Timings are printed, never asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from common import log

import compalign.evaluate.search as search
from compalign.evaluate.search import build_index, exact_topk, normalise

D = 512


def clustered(rng: np.random.Generator, centres: np.ndarray, n: int, noise: float, block: int = 65536) -> np.ndarray:
    """n unit rows: a random centre each plus N(0, noise^2/d) per dimension, normalised, built in place."""
    out = np.empty((n, centres.shape[1]), np.float32)
    scale = np.float32(noise / np.sqrt(centres.shape[1]))
    for b in range(0, n, block):
        m = min(block, n - b)
        x = centres[rng.integers(0, len(centres), m)]
        x += rng.standard_normal(x.shape, dtype=np.float32) * scale
        out[b:b + m] = normalise(x)
    return out


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn: Callable[[], Any], min_s: float = 1.0, max_reps: int = 5) -> tuple[float, Any]:
    """(best wall time, last result) of fn, repeated while the total stays under min_s (short runs only)."""
    best, total, reps = float("inf"), 0.0, 0
    while True:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
        best, total, reps = min(best, dt), total + dt, reps + 1
        if total >= min_s or reps >= max_reps:
            return best, out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, truth)]))


def index_bytes(faiss: Any, idx: Any) -> int:
    if idx.kind == "flat":
        return idx.index.ntotal * idx.index.d * 4
    buf = faiss.serialize_index(idx.index)
    n = buf.nbytes
    del buf
    return n


class ProbeTimer:
    """Wraps `exact_topk` as build_index sees it: re-blocks it (memory) and times it (build time's share)."""

    def __init__(self, block: int | None):
        self.block, self.seconds = block, 0.0

    def __call__(self, queries: np.ndarray, gallery: np.ndarray, k: int, block: int = 4096):
        t = time.perf_counter()
        try:
            return exact_topk(queries, gallery, k, block=self.block or block)
        finally:
            self.seconds += time.perf_counter() - t


def run_size(faiss: Any, a: argparse.Namespace, n: int) -> None:
    rng = np.random.default_rng(a.seed)
    centres = normalise(rng.standard_normal((a.clusters, D), dtype=np.float32))
    t = time.perf_counter()
    gallery = clustered(rng, centres, n, a.noise)
    queries = clustered(np.random.default_rng(a.seed + 1), centres, a.q, a.noise)
    tuning = clustered(np.random.default_rng(a.seed + 2), centres, a.sample, a.noise)  # build_index's probe=
    log(f"[n={n}] data {time.perf_counter() - t:.1f} s ({gallery.nbytes / 2**30:.2f} GiB gallery)")
    block = max(1, (1 << 30) // (16 * n))  # ~1 GiB of exact_topk temporaries per block
    rows: list[dict[str, Any]] = []

    # numpy brute force: the reference
    t = time.perf_counter()
    ref_s, ref_i = exact_topk(queries, gallery, a.k, block=block)
    np_search = time.perf_counter() - t
    rows.append(dict(name="numpy exact", build=0.0, search=np_search, recall=1.0, bytes=gallery.nbytes,
                     rss=peak_rss_gb(), params=f"exact_topk, block {block}"))
    log(f"[n={n}] numpy exact: search {np_search:.2f} s")

    # FAISS flat
    t = time.perf_counter()
    flat = build_index(gallery, "flat", k=a.k, gpu=a.gpu)
    flat_build = time.perf_counter() - t
    flat_search, (f_s, f_i) = timed(partial(flat.search, queries, a.k))
    score_diff = float(np.max(np.abs(f_s - ref_s)))
    ids_same = float(np.mean(f_i == ref_i))
    rows.append(dict(name="faiss flat", build=flat_build, search=flat_search, recall=recall_at_k(f_i, ref_i),
                     bytes=index_bytes(faiss, flat), rss=peak_rss_gb(), params=flat.describe()))
    log(f"[n={n}] flat: build {flat_build:.2f} s, search {flat_search:.2f} s")
    del flat, f_s, f_i

    # approximate kinds at the parameters build_index tunes them to
    for kind in a.kinds.split(","):
        probe = ProbeTimer(None if a.probe_block == 0 else (a.probe_block or max(1, (1 << 30) // (16 * n))))
        search.exact_topk = probe
        try:
            t = time.perf_counter()
            idx = build_index(gallery, kind, k=a.k, recall_target=a.recall_target, probe=tuning,
                              sample=a.sample, seed=a.seed, gpu=a.gpu)
            build = time.perf_counter() - t
        finally:
            search.exact_topk = exact_topk
        s_time, (_, ids) = timed(partial(idx.search, queries, a.k))
        rows.append(dict(name=f"faiss {kind}", build=build, probe=probe.seconds, search=s_time,
                         recall=recall_at_k(ids, ref_i), bytes=index_bytes(faiss, idx), rss=peak_rss_gb(),
                         params=idx.describe(), tuned=idx.params, probe_recall=idx.recall))
        log(f"[n={n}] {kind}: build {build:.1f} s (probe truth {probe.seconds:.1f} s), search {s_time:.3f} s, "
            f"recall@{a.k} {rows[-1]['recall']:.4f}; {idx.describe()}")
        del idx, ids

    # what auto picks: build_index's own rule, its row is that kind's (same code path, same seed)
    auto = "flat" if n < search.AUTO_EXACT_BELOW else "ivf"
    built = ["flat", *a.kinds.split(",")]
    auto_row = f"the faiss {auto} row" if auto in built else f"no row ({auto} not in --kinds)"
    per_k = 1000 / a.q
    flat_row = rows[1]
    print(f"\n== n = {n:,} x {D}, {a.q:,} queries (not from the gallery), {a.clusters} clusters, noise {a.noise}, "
          f"k = {a.k}, {a.threads} threads, recall target {a.recall_target} ==")
    hdr = (f"{'index':<12} {'build s':>9} {'probe s':>8} {'ms/1k q':>10} {'flat/this':>9} {'recall@' + str(a.k):>9} "
           f"{'index MB':>9} {'peak RSS GB':>11}  params")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        q_ms = r["search"] * per_k * 1e3
        print(f"{r['name']:<12} {r['build']:>9.2f} {r.get('probe', 0.0):>8.1f} {q_ms:>10.1f} "
              f"{flat_row['search'] / r['search']:>9.2f} {r['recall']:>9.4f} {r['bytes'] / 1e6:>9.0f} "
              f"{r['rss']:>11.2f}  {r['params']}")
    print(f"flat vs numpy: search {np_search / flat_search:.1f}x faster, build+search "
          f"{np_search / (flat_build + flat_search):.1f}x; top-{a.k} scores max |diff| {score_diff:.2e}, "
          f"same ids at {ids_same:.4%} of places")
    for r in rows[2:]:
        print(f"{r['name']}: {flat_row['search'] / r['search']:.1f}x flat's query speed at recall@{a.k} "
              f"{r['recall']:.4f} (tuned to {r['tuned']}, recall {r['probe_recall']:.4f} on its {a.sample} tuning queries); "
              f"build {r['build'] / max(flat_build, 1e-9):.0f}x flat's, index {r['bytes'] / flat_row['bytes']:.2f}x flat's bytes")
    print(f"auto picks {auto} at n = {n:,} (exact below {search.AUTO_EXACT_BELOW:,}): see {auto_row}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated gallery sizes")
    ap.add_argument("--n", type=int, help="a single gallery size (overrides --sizes)")
    ap.add_argument("--q", type=int, default=1000, help="queries, drawn like the gallery but not from it")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0, help="noise norm relative to the unit centres")
    ap.add_argument("--recall-target", type=float, default=0.99)
    ap.add_argument("--sample", type=int, default=1000, help="tuning queries passed to build_index as probe=")
    ap.add_argument("--probe-block", type=int, default=None,
                    help="query block of build_index's exact probe truth (default ~1 GiB; 0 = library default)")
    ap.add_argument("--kinds", default="ivf,hnsw", help="approximate kinds to build (HNSW at 1M is the slow one)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gpu", action="store_true", help="let build_index move flat to the GPU (default CPU vs CPU)")
    a = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(a.threads)
    sizes = [a.n] if a.n else sorted(int(s) for s in a.sizes.split(","))
    log(f"faiss {faiss.__version__}, numpy {np.__version__}, {a.threads} threads, sizes {sizes}")
    for n in sizes:
        run_size(faiss, a, n)


if __name__ == "__main__":
    main()
