"""The benchmark contract, its registry, and the result schema shared by every benchmark and head."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ...cache.reader import CacheReader
from ...core import InputError
from ...core.registry import Registry
from ...heads.base import Head
from ..metrics import same_words


@dataclass
class BenchResult:
    bench: str
    head: str
    backbone: str
    cache: str
    metrics: dict[str, float]  # name -> percent
    items: list[dict[str, Any]]  # {"id", "subset", ...outcomes}
    counts: dict[str, int] = field(default_factory=dict)  # items scored / invalid
    notes: list[str] = field(default_factory=list)  # what a reader of the table must know (subsets absent, ...)

    def to_json(self) -> dict[str, Any]:
        return {"bench": self.bench, "head": self.head, "backbone": self.backbone, "cache": self.cache,
                "metrics": self.metrics, "counts": self.counts, "notes": self.notes, "items": self.items}


class Benchmark:
    name: ClassVar[str]
    source: ClassVar[str]  # the data kind the cache must have been extracted from
    # (positive, negative) item columns of text keys: the comparisons where one caption must beat another for the
    # same image. The blind control is fitted on them; none where every caption is some image's positive (Winoground).
    contrasts: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, **options: object) -> None:
        """Benchmarks with options (retrieval's --index, --rerank) take them in their own __init__."""
        if options:
            raise InputError(f"--bench {self.name} takes no {', '.join('--' + k for k in sorted(options))}")

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        raise NotImplementedError

    @classmethod
    def metrics(cls, cols: dict[str, np.ndarray]) -> dict[str, float]:
        """The metrics from per-item columns (`columns(result.items)`), so a result's numbers can be recomputed
        from its own JSON: bootstrap intervals resample the rows, `compare` pairs two runs row by row.

        `item_metrics` over the valid items (a failed image or caption leaves its item out of every mean), then
        the same over the bag-of-words-proof ones, as `bow_proof/<name>`."""
        if "valid" in cols:
            cols = _rows(cols, cols["valid"].astype(bool))
        out = cls.item_metrics(cols)
        bow = cols[BOW_PROOF].astype(bool) if BOW_PROOF in cols else None
        if bow is not None and bow.any():
            out.update({f"{BOW_PROOF}/{k}": v for k, v in cls.item_metrics(_rows(cols, bow)).items()})
        return out

    @staticmethod
    def item_metrics(cols: dict[str, np.ndarray]) -> dict[str, float]:
        """The benchmark's own metrics from the columns of the items to count (valid ones only)."""
        raise NotImplementedError

    def check(self, reader: CacheReader) -> None:
        reader.require_complete()
        kind = reader.attrs["source"]["kind"]
        if kind != self.source:
            raise InputError(f"{reader.path} was extracted from a {kind!r} source; --bench {self.name} needs "
                             f"`compalign extract --data {self.source}`")


log = logging.getLogger("compalign.evaluate.benchmarks")

BENCHMARKS: Registry[type[Benchmark]] = Registry("benchmark")


def register_benchmark(name: str) -> Callable[[type[Benchmark]], type[Benchmark]]:
    def wrap(cls: type[Benchmark]) -> type[Benchmark]:
        cls.name = name
        return BENCHMARKS.register(name, cls, source=cls.source)
    return wrap


def list_benchmarks() -> list[str]:
    return BENCHMARKS.names()


def create_benchmark(name: str, **options: object) -> Benchmark:
    return BENCHMARKS.create(name, **options)


def columns(items: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per-item records (a result's `items`, or its JSON) as one array per field."""
    keys = list(items[0]) if items else []
    return {k: np.asarray([it[k] for it in items], dtype=object if k == "rank" else None) for k in keys}


def head_label(head: Head) -> str:
    return getattr(head, "label", head.name)


BOW_PROOF = "bow_proof"  # item field, metric prefix and count name of the bag-of-words-proof subset


def bow_proof(reader: CacheReader, positive: np.ndarray, *negatives: np.ndarray) -> np.ndarray:
    """(n,) bool: every negative caption of the item has exactly the positive's words (text keys in, strings read)."""
    strings = reader.column("texts/strings")
    pos = strings[reader.rows("texts", positive)]
    out = np.ones(len(positive), dtype=bool)
    for neg in negatives:
        out &= same_words(pos, strings[reader.rows("texts", neg)])
    return out


def _rows(cols: dict[str, np.ndarray], keep: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[keep] for k, v in cols.items()}


def warn_invalid(valid: np.ndarray) -> None:
    if (~valid).any():
        log.warning("%d items use a failed image or caption and are left out", int((~valid).sum()))
