"""The blind control cross-validated on a benchmark's own items: how much of it a text-only scorer solves.

Items are split into K folds; for each fold a fresh `blind` head is fitted on the other folds' (positive, negative)
captions (`Benchmark.contrasts`) and scores the fold's items through the benchmark's own `evaluate`. Items that
share a caption (SugarCrepe reuses a COCO caption across subsets) always fall in the same fold, so no caption is
scored by a head that saw it in training. The folds' item records are put back in the benchmark's item order and
the metrics recomputed from them, so the result is a BenchResult like any other: bootstrap, `--json`, `compare`.
"""

from __future__ import annotations

import numpy as np

from ..cache.reader import CacheReader
from ..core import InputError
from ..heads import create_head
from .benchmarks.base import Benchmark, BenchResult, columns


def caption_groups(items: dict[str, np.ndarray], cols: list[str]) -> np.ndarray:
    """(n,) group id per item: items joined whenever they share a text key in any of `cols` (union-find)."""
    n = len(next(iter(items.values()))) if items else 0
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for col in cols:
        for i, key in enumerate(items[col].tolist()):
            if not key:
                continue
            j = owner.setdefault(key, i)
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([find(i) for i in range(n)], dtype=np.int64)


def assign_folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(n,) fold per item: whole groups, in a seeded order, each to the fold with the fewest items so far."""
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(names))
    load, fold_of = np.zeros(folds, np.int64), np.empty(len(names), np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of[g] = f
        load[f] += sizes[g]
    return fold_of[inverse]


def _contrast_rows(reader: CacheReader, bench: Benchmark, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pos rows, neg rows) of texts over the items `idx`: one pair per contrast whose two captions differ and extracted."""
    it, ok = reader.items, reader.ok("texts")
    pos, neg = [], []
    for pc, nc in bench.contrasts:
        a, b = it[pc][idx], it[nc][idx]
        keep = (a != "") & (b != "") & (a != b)
        ra, rb = reader.rows("texts", a[keep]), reader.rows("texts", b[keep])
        good = ok[ra] & ok[rb]
        pos.append(ra[good])
        neg.append(rb[good])
    return np.concatenate(pos or [np.zeros(0, np.int64)]), np.concatenate(neg or [np.zeros(0, np.int64)])


def cross_validate_blind(bench: Benchmark, reader: CacheReader, folds: int = 5, seed: int = 0, steps: int = 300,
                         **head_config: object) -> BenchResult:
    if folds < 2:
        raise InputError(f"--folds must be at least 2 (got {folds})")
    bench.check(reader)
    full = bench.evaluate(reader, _fresh(reader, head_config))  # item order, counts and notes; its scores are replaced
    it = reader.items
    n = len(it["id"])
    cols = sorted({c for pair in bench.contrasts for c in pair})
    fold = assign_folds(caption_groups(it, cols), folds, seed)
    records: dict[tuple[str, str], dict] = {}
    fitted = 0
    for k in range(folds):
        test, train = np.flatnonzero(fold == k), np.flatnonzero(fold != k)
        if not len(test):
            continue
        head = _fresh(reader, head_config)
        pos, neg = _contrast_rows(reader, bench, train)
        if len(pos):
            head.fit(reader.read("texts", "global", pos), reader.read("texts", "global", neg), steps=steps, seed=seed + k)
            fitted += 1
        for rec in bench.evaluate(reader.select_items(test), head).items:
            records[(rec["subset"], rec["id"])] = rec
    keys = [(rec["subset"], rec["id"]) for rec in full.items]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"{bench.name} has items with the same (subset, id): folds cannot be put back in order")
    items = [records[k] for k in keys]
    notes = list(full.notes)
    if fitted:
        notes.append(f"blind: {folds}-fold cross-validated on the benchmark's own {n} items (seed {seed}; items sharing "
                     "a caption kept in one fold): each item is scored by a text-only head fitted on the other folds")
    else:
        notes.append(f"blind: {bench.name} has no caption that is a negative for every image (each is some image's "
                     "positive), so a text-only scorer has nothing to learn: scored with the unfitted head")
    return BenchResult(full.bench, f"blind ({folds}-fold)", full.backbone, full.cache, bench.metrics(columns(items)),
                       items, full.counts, notes)


def _fresh(reader: CacheReader, config: dict[str, object]):
    head = create_head("blind", **config)
    head.attach(reader)
    return head
