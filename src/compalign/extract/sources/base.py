"""What a data source yields: unique images, unique captions, and items that reference them by key.

A source reads annotation files, resolves and hashes images (the key is the content hash, so the
same picture under two names is encoded once), and records row-level problems instead of dying.
Whole-file problems (malformed JSON/parquet, missing columns, not UTF-8, nothing usable) raise
SourceError naming the file and the fix.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...cache.location import is_url, location, whole_reads  # is_url re-exported: the sources read URLs the way stores do
from ...core import CompalignError
from ...core.host import cores_each
from ...core.registry import Registry
from .plan_cache import PlanCache, active_cache, settled, using
from .remote import Remote, UrlPath, object_stamp

log = logging.getLogger(__name__)


class SourceError(CompalignError, ValueError):
    """The input cannot be read at all; the message names the file, the row and the fix."""


def read_text(path: Path | UrlPath) -> str:
    """An annotation file as text: UTF-8, with or without a BOM (Excel and Notepad write one)."""
    data = read_bytes(path)
    body = data[len(codecs.BOM_UTF8):] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        line = body.count(b"\n", 0, e.start) + 1
        raise SourceError(f"{path}: not UTF-8 text (byte 0x{body[e.start]:02x} on line {line}). Save it as UTF-8, "
                          f"e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8-{path.name}`") from None


def read_json(path: Path | UrlPath, fix: str) -> Any:
    """An annotation file's JSON; malformed JSON raises SourceError naming the line, the column and `fix`."""
    text = read_text(path)  # raises SourceError naming the line of a non-UTF-8 byte
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg}). {fix}") from None


def parquet_image_bytes(cell: object) -> bytes | None:
    """The bytes of a parquet image cell: the Hub's Image feature {"bytes", "path"}, or raw bytes."""
    if isinstance(cell, dict):
        return cell.get("bytes")
    return cell if isinstance(cell, bytes) else None


def read_parquet(path: Path | UrlPath) -> Any:
    """A parquet file as a pyarrow Table, local or in a bucket (read through a seekable fsspec file: the footer,
    then the column chunks, not a download of the whole file first)."""
    import pyarrow.parquet as pq

    if isinstance(path, UrlPath):
        with path.remote.fs.open(path.key, "rb") as f:
            return pq.read_table(f)
    return pq.read_table(path)


def parquet_image_name(cell: object) -> str | None:
    """The file name the Hub's Image feature keeps beside the bytes ({"bytes", "path"}), if any."""
    return (cell.get("path") or None) if isinstance(cell, dict) else None


def read_bytes(where: str | Path | UrlPath, options: dict[str, Any] | None = None,
               start: int | None = None, end: int | None = None) -> bytes:
    """The bytes of a local file, an fsspec URL or a UrlPath: all of them, or [start, end). How the sources read.

    A URL string is opened here, in the calling process, with `options` (the --storage-option flags): a
    DataLoader worker gets its own filesystem, never the planning process's (fsspec keeps one instance per
    process and refuses a parent's async filesystem, s3fs included, after a fork)."""
    if isinstance(where, UrlPath) or is_url(where):  # one request (a range one for a tar member), not a file's blocks
        fs, key = (where.remote.fs, where.key) if isinstance(where, UrlPath) else url_fs(where, options)
        return fs.cat_file(key, start=start, end=end, **whole_reads(fs))
    if start is None:
        return Path(where).read_bytes()
    with open(where, "rb") as f:
        f.seek(start)
        return f.read() if end is None else f.read(end - start)


def open_binary(path: str, options: dict[str, Any] | None = None) -> Any:
    """A seekable binary file of a local path or an fsspec URL (fsspec is needed only for URLs)."""
    if not is_url(path):
        return open(path, "rb")
    return _fsspec().open(path, "rb", **(options or {})).open()


def url_root(url: str, kind: str, options: dict[str, Any] | None = None) -> UrlPath:
    """The --root URL of a folder source as a UrlPath, once its bucket answers and something is there."""
    location(url, options).check()  # a missing bucket, bad credentials or endpoint: one error naming the fix
    fs, key = url_fs(url, options)
    root = UrlPath(Remote(fs, options), key)
    if not root.exists():
        above = url.rstrip("/").rsplit("/", 1)[0] + "/"
        raise SourceError(f"{url} does not exist (no object and no prefix of that name); pass --root pointing at the "
                          f"{kind} data" + (f" (`aws s3 ls {above}` shows what is there)" if url.startswith("s3://") else ""))
    return root


def url_fs(url: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """(the fsspec filesystem of `url` made with the storage options, the key of `url` on it)."""
    return _fsspec().core.url_to_fs(url, **(options or {}))


def _fsspec() -> Any:
    try:
        import fsspec
    except ImportError:
        raise SourceError("reading URLs needs fsspec (and s3fs / gcsfs for those stores): "
                          "`pip install 'compalign[web]'`") from None
    return fsspec


def content_key(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def text_key(s: str) -> str:
    return hashlib.blake2b(s.encode("utf-8"), digest_size=16).hexdigest()


def range_ignored(path: str, asked: int, got: int) -> OSError:
    """A byte-range read answered with more than was asked: a web server that ignores `Range` and sends the whole
    file. Its bytes at the asked offsets would be the wrong ones, so the read fails."""
    return OSError(f"{path}: {got} bytes came back for a range of {asked}: the server ignores HTTP range requests, "
                   "so tar members cannot be read from it. Download the shards and pass their folder as --root")


@dataclass
class ImageRef:
    key: str
    origin: str  # relative path, or "file.parquet#row:column"
    path: str | None = None  # absolute path to read from
    data: bytes | None = None  # bytes held in memory (parquet sources)
    error: str | None = None  # known bad before decoding (missing, escapes the root)
    name: str | None = None  # the file name a parquet cell gives its bytes (files: the origin's own name)
    offset: int | None = None  # a member of a tar shard: its bytes are path[offset : offset + size]
    size: int | None = None
    options: dict[str, Any] | None = None  # fsspec storage options of a URL path (--storage-option)

    def read(self) -> bytes:
        """The image's bytes: held in memory, a whole file, or a byte range of a tar shard (a path or an fsspec URL).

        A (path, offset, size) reference keeps a plan of millions of tar members small and picklable, and each
        DataLoader worker opens the file or shard itself (no file handle or filesystem is shared across processes)."""
        if self.data is not None:
            return self.data
        assert self.path is not None, f"{self.origin}: an image row without bytes or a path"
        if self.offset is None:
            return read_bytes(self.path, self.options)
        return self.member(read_bytes(self.path, self.options, self.offset, self.offset + (self.size or 0)))

    def member(self, data: bytes) -> bytes:
        """The bytes read for this tar member, once they are all there (a shorter read raises OSError)."""
        if len(data) > (self.size or 0):
            raise range_ignored(str(self.path), self.size or 0, len(data))
        if len(data) != self.size:
            raise OSError(f"{self.path} ends {(self.size or 0) - len(data)} bytes into this member: the shard was "
                          "truncated or rewritten after planning")
        return data

    @property
    def file_name(self) -> str:
        """The image's file name: what names an image in a world's boxes.jsonl (`extract --crops oracle`)."""
        return self.name or Path(self.origin).name


@dataclass
class Plan:
    kind: str
    root: str
    images: list[ImageRef]
    texts: list[str]
    items: dict[str, list[str]]  # column -> values; key columns hold image/text keys
    problems: list[str] = field(default_factory=list)  # rows skipped or partly ignored
    notes: list[str] = field(default_factory=list)  # about the source as a whole (e.g. subsets absent)
    info: dict[str, str] = field(default_factory=dict)  # what the source is (dataset, split), kept in the store
    segments: dict[str, list[str]] = field(default_factory=dict)  # {caption, segment, kind}: see extract.segments
    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([self.kind, [i.key for i in self.images], [text_key(t) for t in self.texts]]).encode())
        h.update(json.dumps(self.items, sort_keys=True).encode())
        return h.hexdigest()[:16]


HASH_THREADS = min(16, cores_each())  # files read and hashed at once while planning (by every torchrun rank here)


def _hash_file(path: Path) -> str | OSError:
    """The content key of a local file, or why it could not be read (a failed row, not a dead plan)."""
    try:
        return content_key(path.read_bytes())
    except OSError as e:
        return e


class PlanBuilder:
    """Accumulates unique images/texts in first-seen order and the item table."""

    def __init__(self, kind: str, root: Path | UrlPath):
        self.kind = kind
        if isinstance(root, UrlPath):  # a bucket has no links: the key as written is the key read
            self.root = self._lexical_root = root.joined(".")
        else:
            self.root = root.resolve()
            # Containment is judged on the path as the user wrote it: folders the root links to
            # (root/val2017 -> /data/coco/val2017) are part of the dataset, `..` out of the root is not.
            self._lexical_root = Path(os.path.normpath(os.path.abspath(root)))
        self._images: dict[str, ImageRef] = {}
        self._by_path: dict[tuple[str, str], str] = {}
        self._texts: dict[str, str] = {}
        self.items: dict[str, list[str]] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.info: dict[str, str] = {}  # dataset, split: recorded in the store's attrs
        self.hashes: PlanCache | None = active_cache()  # known keys of unchanged files (plan_cache.py)
        # files / objects still to hash: stand-in key -> (where, planning-cache stamp or None, settled)
        self._pending: dict[str, tuple[Path | UrlPath, tuple[int, int | str] | None, bool]] = {}

    def _defer(self, path: Path | UrlPath, stamp: tuple[int, int | str] | None, settled: bool = True) -> str:
        """The key of a file or object: the planning cache's while `stamp` (size, mtime_ns or "etag:...") is
        unchanged, else a stand-in that _resolve_pending replaces once the bytes are read and hashed."""
        if stamp is not None and self.hashes is not None and (key := self.hashes.known(str(path), *stamp)):
            return key
        stand_in = "pending-" + text_key(str(path))
        self._pending[stand_in] = (path, stamp if self.hashes is not None else None, settled)
        return stand_in

    def _resolve_pending(self) -> None:
        """Give the files and objects the cache did not know their content keys, in place of their stand-ins.

        Hashing means reading every byte of the dataset once. One file at a time that is one core's hashing
        speed and, on a network filesystem or in a bucket, one round trip per image; so the reads happen here,
        at the end of planning, many at once: local files by HASH_THREADS threads (file reads and blake2b
        release the GIL), a bucket's objects READ_AHEAD requests in flight (Remote.read_many). The rows keep the
        order in which the source named them, and two files with the same bytes are still one image."""
        if not self._pending:
            return
        stand_ins = list(self._pending)
        local = [ph for ph in stand_ins if isinstance(self._pending[ph][0], Path)]
        remote = [ph for ph in stand_ins if not isinstance(self._pending[ph][0], Path)]
        got: dict[str, str | BaseException] = {}
        with ThreadPoolExecutor(HASH_THREADS) as pool:
            for lo in range(0, len(local), 4096):  # a bounded number of futures, whatever the dataset's size
                part = local[lo:lo + 4096]
                got.update(zip(part, pool.map(_hash_file, [self._pending[ph][0] for ph in part])))
        if remote:
            objects = self._pending[remote[0]][0].remote  # type: ignore[union-attr]  # one root, one filesystem
            for ph, (_, data) in zip(remote, objects.read_many([self._pending[ph][0].key for ph in remote])):  # type: ignore[union-attr]
                got[ph] = data if isinstance(data, BaseException) else content_key(data)
        final = {}
        for ph in stand_ins:
            (path, stamp, settled), ref, key = self._pending[ph], self._images[ph], got[ph]
            if isinstance(key, BaseException):  # unreadable, or gone since it was listed: a failed row
                why = "file not found" if isinstance(key, FileNotFoundError) else "unreadable"
                final[ph] = ImageRef(key="missing-" + text_key(ref.origin), origin=ref.origin,
                                     error=f"{why}: {path} ({type(key).__name__})")
                continue
            if stamp is not None:
                self.hashes.remember(str(path), *stamp, key, settled=settled)  # type: ignore[union-attr]
            final[ph] = ImageRef(key=key, origin=ref.origin, path=ref.path, options=ref.options)
        images: dict[str, ImageRef] = {}
        for key, ref in self._images.items():
            ref = final.get(key, ref)
            images.setdefault(ref.key, ref)
        swap = {ph: ref.key for ph, ref in final.items()}
        self._images, self._pending = images, {}
        self.items = {name: [swap.get(v, v) for v in col] for name, col in self.items.items()}
        self._by_path = {where: swap.get(k, k) for where, k in self._by_path.items()}

    def _linked_outside(self, path: Path) -> Path | None:
        """The target of `path` if it is a symlinked file pointing outside every folder of the dataset."""
        if not path.is_symlink():
            return None
        target = path.resolve()
        allowed = [self.root]  # plus the targets of directory links on the way down to the file
        for folder in path.parents:
            if not folder.is_relative_to(self._lexical_root) or folder == self._lexical_root:
                break
            if folder.is_symlink():
                allowed.append(folder.resolve())
        return None if any(target.is_relative_to(a) for a in allowed) else target

    def image_file(self, rel: str, base: Path | UrlPath | None = None) -> str:
        """The key of the image file `rel` (relative to `base`, the root by default). A file that is missing or
        outside the root becomes a failed row saying why, not an error."""
        if isinstance(self._lexical_root, UrlPath):
            return self._object_file(rel, base if isinstance(base, UrlPath) else self._lexical_root)
        base = Path(os.path.abspath(base or self._lexical_root))
        if (str(base), rel) in self._by_path:
            return self._by_path[(str(base), rel)]
        path = Path(os.path.normpath(base / rel))
        error = None
        if Path(rel).is_absolute() or not path.is_relative_to(self._lexical_root):
            error = f"path {rel!r} escapes the data root {self._lexical_root}; use paths relative to the root"
        elif (outside := self._linked_outside(path)) is not None:
            error = (f"{rel!r} is a symlink pointing outside the data root: {path} -> {outside}; "
                     "copy the file into the dataset or link its folder instead")
        elif not path.is_file():
            error = f"file not found: {path}"
        return self._add_file(base, rel, error, lambda: self._local_ref(path, rel))

    def _local_ref(self, path: Path, rel: str) -> ImageRef:
        real, st = path.resolve(), path.stat()
        # a younger file is hashed, not recorded (plan_cache.py)
        return ImageRef(key=self._defer(real, (st.st_size, st.st_mtime_ns), settled(st.st_mtime_ns)), origin=rel,
                        path=str(real))

    def _object_file(self, rel: str, base: UrlPath) -> str:
        """image_file in object storage: the same containment, on keys; existence, size and ETag from the listing."""
        if (str(base), rel) in self._by_path:
            return self._by_path[(str(base), rel)]
        path, info, error = base.joined(rel), None, None
        if rel.startswith("/") or not path.is_relative_to(self._lexical_root):
            error = f"path {rel!r} escapes the data root {self._lexical_root}; use paths relative to the root"
        elif (info := path.info()) is None or info.get("type") != "file":
            error = f"file not found: {path}"
        # The row keeps the URL and the options, never the filesystem: each decoding worker opens its own.
        stamp = object_stamp(info)
        version, ok = (stamp[:2], stamp[2]) if stamp else (None, True)
        return self._add_file(base, rel, error, lambda: ImageRef(key=self._defer(path, version, ok), origin=rel,
                                                                 path=str(path), options=path.options))

    def _add_file(self, base: Path | UrlPath, rel: str, error: str | None, ref: Callable[[], ImageRef]) -> str:
        made = ImageRef(key="missing-" + text_key(rel), origin=rel, error=error) if error else ref()
        self._images.setdefault(made.key, made)
        self._by_path[(str(base), rel)] = made.key
        return made.key

    def image_bytes(self, data: bytes | None, origin: str, name: str | None = None) -> str:
        if not data:
            key = "missing-" + text_key(origin)
            self._images.setdefault(key, ImageRef(key=key, origin=origin, error=f"{origin}: no image bytes", name=name))
            return key
        key = content_key(data)
        self._images.setdefault(key, ImageRef(key=key, origin=origin, data=data, name=name))
        return key

    def image_member(self, origin: str, shard: str, offset: int, size: int, read: Callable[[], bytes],
                     name: str | None = None, options: dict[str, Any] | None = None, key: str | None = None) -> str:
        """A member of a tar shard, read later as shard[offset : offset + size]; `read` gives its bytes to hash,
        unless the planning cache gave its `key` (webdataset.py caches whole shards). `options`: the storage
        options a URL shard is opened with."""
        key = key or content_key(read())
        self._images.setdefault(key, ImageRef(key=key, origin=origin, path=shard, offset=offset, size=size, name=name,
                                                 options=options))
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

    def note(self, msg: str) -> None:
        log.warning("%s", msg)  # shown by `compalign extract` next to the skipped rows
        self.notes.append(msg)

    def build(self, source: Path) -> Plan:
        self._resolve_pending()
        # An empty plan would extract an empty store and exit 0: say why nothing was usable instead.
        if not self.items:
            why = "; ".join(self.problems[:3]) + (f"; ... ({len(self.problems) - 3} more)" if len(self.problems) > 3 else "")
            raise SourceError(f"{source}: no usable {self.kind} items"
                              + (f" (every row was skipped: {why})" if why else " (no rows)")
                              + f"; fix the rows or point --root at the {self.kind} data")
        return Plan(self.kind, str(self.root), list(self._images.values()), list(self._texts.values()),
                    self.items, self.problems, self.notes, self.info)


SourceFn = Callable[..., Plan]  # (root, split=...) -> Plan; only sources with splits take `split`
SOURCES: Registry[SourceFn] = Registry("data kind")


def register_source(name: str, splits: bool = False, patterns: bool = False) -> Callable[[SourceFn], SourceFn]:
    """`splits`: the source reads one split of its files (`--split`, e.g. karpathy's train / val / test).
    `patterns`: --root may be a brace pattern or a URL, not an existing path; the source gets it as a str, and the
    storage options as `options=`. Any other source gets a local Path, or for a URL root a UrlPath (remote.py)
    that answers the Path calls the sources make and carries the storage options: a source reads both."""
    return SOURCES.decorator(name, splits=splits, patterns=patterns)


def list_sources() -> list[str]:
    return SOURCES.names()


def plan_source(kind: str, root: str | Path, split: str | None = None, hashes: PlanCache | None = None,
                options: dict[str, Any] | None = None) -> Plan:
    """`hashes`: the planning cache (plan_cache.py) that spares rereading unchanged image files.
    `options`: fsspec storage options for a URL root (`--storage-option`; credentials come from the environment)."""
    with using(hashes):
        return _plan(kind, root, split, options)


def _plan(kind: str, root: str | Path, split: str | None, options: dict[str, Any] | None) -> Plan:
    read = SOURCES.get(kind)
    if SOURCES.meta(kind).get("patterns"):
        if split is not None:
            raise SourceError(f"--split applies to sources with splits; --data {kind} reads every shard of {root}")
        return read(str(root), options=options)  # a pattern or URL: Path() would fold `s3://` into `s3:/`
    if is_url(root):
        root = url_root(str(root), kind, options)
    else:
        root = Path(root)
        if not root.exists():
            raise SourceError(f"{root} does not exist; pass --root pointing at the {kind} data")
    if split is None:
        return read(root)
    if not SOURCES.meta(kind)["splits"]:
        takes = ", ".join(n for n in list_sources() if SOURCES.meta(n)["splits"])
        raise SourceError(f"--split applies to sources with splits ({takes}); --data {kind} reads all of {root}")
    return read(root, split=split)
