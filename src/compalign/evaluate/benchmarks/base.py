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
from ..scoring import score_captions, score_two_by_two


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

    def score(self, reader: CacheReader, head: Head, image: str, *captions: str
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Check the cache, then score each item's image against its k caption columns (the first the positive).

        Returns (scores (k, n), valid (n,): no score NaN (no failed image or caption), bag-of-words-proof (n,))."""
        self.check(reader)
        it = reader.items
        s = score_captions(reader, head, it[image], *(it[c] for c in captions))
        valid = ~np.isnan(s).any(axis=0)
        warn_invalid(valid)
        return s, valid, bow_proof(reader, *(it[c] for c in captions))

    def score_2x2(self, reader: CacheReader, head: Head, i0: str, i1: str, c0: str, c1: str
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Check the cache, then score items of two image and two caption columns: (the four scores, valid, bow-proof)."""
        self.check(reader)
        it = reader.items
        s, valid = score_two_by_two(reader, head, it[i0], it[i1], it[c0], it[c1])
        warn_invalid(valid)
        return s, valid, bow_proof(reader, it[c0], it[c1])

    def result(self, reader: CacheReader, head: Head, items: list[dict[str, Any]], notes: list[str] | None = None,
               counts: dict[str, int] | None = None) -> BenchResult:
        """The BenchResult of per-item records: metrics recomputed from them, counted (items, invalid, bow-proof)."""
        cols = columns(items)
        if counts is None:
            invalid = int((~cols["valid"].astype(bool)).sum()) if items else 0
            counts = {"items": len(items), "invalid": invalid, BOW_PROOF: int(cols[BOW_PROOF].sum()) if items else 0}
        return BenchResult(self.name, head_label(head), reader.backbone["name"], str(reader.path), self.metrics(cols),
                           items, counts, list(notes or []))

    def check(self, reader: CacheReader) -> None:
        reader.require_complete()
        kind = reader.attrs["source"]["kind"]
        if kind != self.source:
            raise InputError(f"{reader.path} was extracted from a {kind!r} source; --bench {self.name} needs "
                             f"`compalign extract --data {self.source}`")


class ContrastBenchmark(Benchmark):
    """Items of one image, its caption and one negative caption; correct iff s(I, caption) > s(I, negative).

    Ties are wrong (strict `>`), an item with a NaN score is invalid. Records: id, subset, the `extra` item
    columns, pos, neg, correct, valid, bow_proof; subclasses add their notes and their `item_metrics`."""

    contrasts = (("caption", "negative_caption"),)
    extra: ClassVar[tuple[str, ...]] = ()  # item columns carried into each record (ARO's group)

    def evaluate(self, reader: CacheReader, head: Head) -> BenchResult:
        (pos, neg), valid, bow = self.score(reader, head, "image", "caption", "negative_caption")
        it = reader.items
        correct, valid = contrast_outcomes(pos, neg)
        items = [{"id": str(it["id"][j]), "subset": str(it["subset"][j]), **{c: str(it[c][j]) for c in self.extra},
                  "pos": float(pos[j]), "neg": float(neg[j]), "correct": bool(correct[j]), "valid": bool(valid[j]),
                  BOW_PROOF: bool(bow[j])} for j in range(len(pos))]
        res = self.result(reader, head, items)
        res.notes = self.notes(it, res, valid)
        return res

    def notes(self, items: dict[str, np.ndarray], result: BenchResult, valid: np.ndarray) -> list[str]:
        """What a reader of the table must know (subsets absent, items left out)."""
        return left_out_note(valid)


def contrast_outcomes(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(correct, valid): strict `>`; an item with a NaN score is invalid (and not correct)."""
    valid = ~(np.isnan(pos) | np.isnan(neg))
    return valid & (pos > neg), valid


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


def absent_note(subsets: list[str] | tuple[str, ...], present: np.ndarray) -> list[str]:
    """The note a table needs when some of a benchmark's subsets were not extracted."""
    have = set(present.tolist())
    absent = [s for s in subsets if s not in have]
    return [f"{len(subsets) - len(absent)} of {len(subsets)} subsets present (absent: {', '.join(absent)}): the macro "
            "and category means cover only the subsets present"] if absent else []


def left_out_note(valid: np.ndarray) -> list[str]:
    """The note a table needs when failed images or captions left items out of its means."""
    n, bad = len(valid), int((~valid).sum())
    return [f"{bad} of {n} items left out (failed image or caption): every score is over the other {n - bad}, "
            "so it is not comparable with a run over all items"] if bad else []


def warn_invalid(valid: np.ndarray) -> None:
    if (~valid).any():
        log.warning("%d items use a failed image or caption and are left out", int((~valid).sum()))
