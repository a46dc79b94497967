"""Bootstrap intervals for a result's metrics, and paired comparisons of two runs scored on the same items.

Both work from a result's per-item records alone (`BenchResult.items`, or the `items` of a `score --json` file)
through the benchmark's `metrics(columns)`: a replicate resamples the item rows with replacement and recomputes
every metric from them, so any metric a benchmark defines (a subset mean, a macro mean, R@k) gets an interval
without its own formula.

Rows are resampled within each `subset` (SugarCrepe's subsets, BiVLC's type/subtype, retrieval's t2i / i2t):
the benchmark fixes how many items each subset has, and a plain resample of the rows could drop a small subset
from a replicate, leaving its metric undefined and the macro mean over a different set of subsets.

Everything is seeded: the same items, n and seed give the same numbers.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..core import InputError
from .benchmarks.base import BENCHMARKS, Benchmark, columns

Metrics = Callable[[dict[str, np.ndarray]], dict[str, float]]


def _metrics_of(bench: Benchmark | type[Benchmark] | str) -> Metrics:
    """A benchmark instance, class or registered name -> its `metrics(columns)` (a staticmethod)."""
    return BENCHMARKS.get(bench).metrics if isinstance(bench, str) else bench.metrics


def _strata(items: list[dict[str, Any]]) -> list[np.ndarray]:
    """Row indices of each subset (all rows as one stratum when the records have no `subset`)."""
    if not items or "subset" not in items[0]:
        return [np.arange(len(items))]
    _, inverse = np.unique(np.asarray([it["subset"] for it in items]), return_inverse=True)
    return [np.flatnonzero(inverse == g) for g in range(inverse.max() + 1)]


def _resamples(items: list[dict[str, Any]], n: int, seed: int) -> Iterator[np.ndarray]:
    """n index vectors, each the rows of one replicate: every stratum resampled to its own size."""
    rng = np.random.default_rng(seed)
    strata = _strata(items)
    for _ in range(n):
        yield np.concatenate([rows[rng.integers(0, len(rows), len(rows))] for rows in strata])


def _replicates(metrics: Metrics, runs: list[list[dict[str, Any]]], names: list[str], n: int,
                seed: int) -> np.ndarray:
    """(runs, n, metrics) bootstrap values; every run indexed by the same rows in each replicate (paired)."""
    cols = [columns(items) for items in runs]
    out = np.full((len(runs), n, len(names)), np.nan)
    for r, idx in enumerate(_resamples(runs[0], n, seed)):
        for j, c in enumerate(cols):
            # one fancy index per column: the replicate costs a metrics() call, never a Python loop over items
            m = metrics({k: v[idx] for k, v in c.items()})
            out[j, r] = [m.get(k, np.nan) for k in names]
    return out


def _percentiles(values: np.ndarray, level: float) -> np.ndarray:
    """(2, metrics) percentile bounds over axis 0, NaN replicates left out (a metric NaN throughout stays NaN)."""
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "All-NaN slice": a metric undefined on these items
        return np.nanpercentile(values, [tail, 100 - tail], axis=0)


def bootstrap_intervals(bench: Benchmark | type[Benchmark] | str, items: list[dict[str, Any]], n: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap interval of every metric: {metric: [low, high]} in percent."""
    if n < 1:
        raise InputError(f"the bootstrap needs at least 1 replicate (got {n})")
    if not 0 < level < 1:
        raise InputError(f"the interval level is a fraction between 0 and 1 (got {level})")
    metrics = _metrics_of(bench)
    if not items:
        return {}
    names = list(metrics(columns(items)))
    lo, hi = _percentiles(_replicates(metrics, [items], names, n, seed)[0], level)
    return {k: [float(a), float(b)] for k, a, b in zip(names, lo, hi)}


def check_same_items(items_a: list[dict[str, Any]], items_b: list[dict[str, Any]], a: str = "run A",
                     b: str = "run B") -> None:
    """Raise InputError unless both runs have the same item ids in the same order (a paired comparison needs it)."""
    ids_a, ids_b = [it["id"] for it in items_a], [it["id"] for it in items_b]
    if ids_a == ids_b:
        return
    why = f"{a} has {len(ids_a)} items, {b} {len(ids_b)}"
    for i, (x, y) in enumerate(zip(ids_a, ids_b)):
        if x != y:
            why = f"item {i} is {x!r} in {a} and {y!r} in {b}"
            break
    raise InputError(f"{a} and {b} were not scored on the same items ({why}); both must be scored on the same "
                     "cache/items to be compared")


def paired_comparison(bench: Benchmark | type[Benchmark] | str, items_a: list[dict[str, Any]],
                      items_b: list[dict[str, Any]], n: int = 1000, seed: int = 0,
                      level: float = 0.95) -> dict[str, dict[str, Any]]:
    """B against A per metric: {"a", "b", "delta" (b - a, points), "ci" [low, high], "p", "a_ci", "b_ci"}.

    The paired bootstrap resamples the same rows for both runs, so an item both got right (or wrong) moves
    neither, and the interval reflects only the items on which they differ. p is two-sided:
    2·min(P(delta* <= 0), P(delta* >= 0)), clipped to 1; with n replicates the smallest p it can report is 0,
    read as "below 1/n" (so 2/n is the smallest nonzero value). a_ci and b_ci, each run's own interval from the
    same replicates, equal `bootstrap_intervals` of that run with the same n and seed (the rows drawn are the same).
    """
    if n < 1:
        raise InputError(f"the bootstrap needs at least 1 replicate (got {n})")
    check_same_items(items_a, items_b)
    metrics = _metrics_of(bench)
    if not items_a:
        return {}
    point_a, point_b = metrics(columns(items_a)), metrics(columns(items_b))
    names = [k for k in point_a if k in point_b]
    reps = _replicates(metrics, [items_a, items_b], names, n, seed)
    deltas = reps[1] - reps[0]  # (n, metrics)
    lo, hi = _percentiles(deltas, level)
    (a_lo, a_hi), (b_lo, b_hi) = _percentiles(reps[0], level), _percentiles(reps[1], level)
    out = {}
    for j, k in enumerate(names):
        d = deltas[:, j][~np.isnan(deltas[:, j])]
        p = min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))) if len(d) else float("nan")
        out[k] = {"a": point_a[k], "b": point_b[k], "delta": point_b[k] - point_a[k],
                  "ci": [float(lo[j]), float(hi[j])], "p": float(p),
                  "a_ci": [float(a_lo[j]), float(a_hi[j])], "b_ci": [float(b_lo[j]), float(b_hi[j])]}
    return out
