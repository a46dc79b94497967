"""What a data source yields: unique images, unique captions, and items that reference them by key.

A source reads annotation files, resolves and hashes images (the key is the content hash, so the
same picture under two names is encoded once), and records row-level problems instead of dying.
Whole-file problems (malformed JSON/parquet, missing columns) raise SourceError naming the file
and the fix.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ...core import CompalignError


class SourceError(CompalignError, ValueError):
    """The input cannot be read at all; the message names the file, the row and the fix."""


def content_key(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def text_key(s: str) -> str:
    return hashlib.blake2b(s.encode("utf-8"), digest_size=16).hexdigest()


@dataclass
class ImageRef:
    key: str
    origin: str  # relative path, or "file.parquet#row:column"
    path: str | None = None  # absolute path to read from
    data: bytes | None = None  # bytes held in memory (parquet sources)
    error: str | None = None  # known bad before decoding (missing, escapes the root)


@dataclass
class Plan:
    kind: str
    root: str
    images: list[ImageRef]
    texts: list[str]
    items: dict[str, list[str]]  # column -> values; key columns hold image/text keys
    problems: list[str] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.kind, [i.key for i in self.images], [text_key(t) for t in self.texts]]).encode())
        h.update(json.dumps(self.items, sort_keys=True).encode())
        return h.hexdigest()[:16]


class PlanBuilder:
    """Accumulates unique images/texts in first-seen order and the item table."""

    def __init__(self, kind: str, root: Path):
        self.kind, self.root = kind, root.resolve()
        self._images: dict[str, ImageRef] = {}
        self._by_path: dict[str, str] = {}
        self._texts: dict[str, str] = {}
        self.items: dict[str, list[str]] = {}
        self.problems: list[str] = []

    def image_file(self, rel: str, base: Path | None = None) -> str:
        base = (base or self.root).resolve()
        if rel in self._by_path:
            return self._by_path[rel]
        target = (base / rel).resolve()
        error = None
        if Path(rel).is_absolute() or not target.is_relative_to(self.root):
            error = f"path {rel!r} escapes the data root {self.root}; use paths relative to the root"
        elif not target.is_file():
            error = f"file not found: {target}"
        if error:
            key = "missing-" + text_key(rel)
            ref = ImageRef(key=key, origin=rel, error=error)
        else:
            data = target.read_bytes()
            key = content_key(data)
            ref = ImageRef(key=key, origin=rel, path=str(target))
        self._images.setdefault(key, ref)
        self._by_path[rel] = key
        return key

    def image_bytes(self, data: bytes | None, origin: str) -> str:
        if not data:
            key = "missing-" + text_key(origin)
            self._images.setdefault(key, ImageRef(key=key, origin=origin, error=f"{origin}: no image bytes"))
            return key
        key = content_key(data)
        self._images.setdefault(key, ImageRef(key=key, origin=origin, data=data))
        return key

    def text(self, s: str) -> str:
        key = text_key(s)
        self._texts.setdefault(key, s)
        return key

    def item(self, **cols: str) -> None:
        n = len(next(iter(self.items.values()))) if self.items else 0
        for name in cols:
            if name not in self.items:
                self.items[name] = [""] * n  # a column first seen late is empty for earlier items
        for name, values in self.items.items():
            values.append(cols.get(name, ""))

    def problem(self, msg: str) -> None:
        self.problems.append(msg)

    def build(self) -> Plan:
        return Plan(self.kind, str(self.root), list(self._images.values()), list(self._texts.values()),
                    self.items, self.problems)


SourceFn = Callable[[Path], Plan]
_SOURCES: dict[str, SourceFn] = {}


def register_source(name: str) -> Callable[[SourceFn], SourceFn]:
    def wrap(fn: SourceFn) -> SourceFn:
        _SOURCES[name] = fn
        return fn
    return wrap


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def plan_source(kind: str, root: str | Path) -> Plan:
    if kind not in _SOURCES:
        raise SourceError(f"unknown data kind {kind!r}; choose one of {', '.join(list_sources())}")
    root = Path(root)
    if not root.exists():
        raise SourceError(f"{root} does not exist; pass --root pointing at the {kind} data")
    return _SOURCES[kind](root)
