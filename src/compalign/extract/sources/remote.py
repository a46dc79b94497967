"""A data root in object storage: the Path calls the folder sources make, answered for an fsspec URL.

The folder sources (pairs, karpathy, sugarcrepe, aro_order, and the parquet ones, bivlc and winoground) are written
against pathlib.Path; a UrlPath answers the same calls (`/`, name, suffix, stem, parent, is_file, is_dir, exists,
iterdir, glob, rglob) for `s3://bucket/prefix`, so a source reads a bucket with its own code, and reads bytes
through base.read_bytes like a local file.

Each folder is listed once per plan (one LIST request per 1,000 keys) and every is_file, size and ETag after that
is answered from the listing: the images of a folder cost one request, not one HEAD each. The objects a plan must
hash (those the planning cache does not know) are read at the end of planning, many at once (read_many). A bucket
has no links and no `..`, so the checks on a key are lexical (PlanBuilder). Only the planning process holds a
filesystem: the image rows carry the URL and the storage options, and each decoding worker opens its own
(base.read_bytes).
"""

from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import PurePosixPath
from typing import Any

from ...cache.location import whole_reads
from .plan_cache import settled

READ_AHEAD = 64  # objects fetched at once while planning (64 COCO images: ~10 MB in memory)


# What says an object changed, best first: buckets give an ETag; a plain web server (python -m http.server, a
# static nginx without etags) often only a Last-Modified, which fsspec's http info passes through as well.
_VERSION_FIELDS = (("ETag", "etag"), ("etag", "etag"), ("Content-MD5", "md5"), ("Last-Modified", "modified"))


def object_stamp(info: dict[str, Any] | None) -> tuple[int, str, bool] | None:
    """(size, "etag:..." or "modified:...", settled) of an object from its listing or HEAD, what the planning cache
    keys it by; None when its server says nothing that changes with a write (such an object is read again on every
    plan). A Last-Modified has whole seconds: a rewrite within the second keeps it, so one younger than the
    cache's SETTLE_NS is not `settled` (not recorded), as a file's mtime is not."""
    info = info or {}
    for field, kind in _VERSION_FIELDS:
        if version := info.get(field):
            ok = kind != "modified" or _older_than_settle(version)
            return int(info.get("size") or 0), f"{kind}:{version}", ok
    return None


def _older_than_settle(http_date: str) -> bool:
    try:
        return settled(int(parsedate_to_datetime(http_date).timestamp() * 1e9))
    except (TypeError, ValueError):  # not an HTTP date: nothing to say it is old
        return False


class Remote:
    """One plan's filesystem: the fsspec instance, the storage options that made it, each folder's listing once."""

    def __init__(self, fs: Any, options: dict[str, Any] | None = None):
        self.fs, self.options = fs, dict(options or {})
        self._listings: dict[str, dict[str, dict[str, Any]]] = {}
        # A plan sees the bucket as it is now: fsspec keeps one filesystem object per process, and what it listed
        # for an earlier plan (a notebook planning again) would hide what has been uploaded since.
        fs.invalidate_cache()

    def listing(self, folder: str) -> dict[str, dict[str, Any]]:
        """name -> fsspec info of each entry directly inside `folder` ({} when nothing is there)."""
        if folder not in self._listings:
            try:
                entries = self.fs.ls(folder, detail=True)
            except FileNotFoundError:
                entries = []
            # ls of an object's own key lists the object itself: that is not an entry inside it
            self._listings[folder] = {e["name"].rstrip("/").rsplit("/", 1)[-1]: e for e in entries
                                      if e["name"].rstrip("/") != folder}
        return self._listings[folder]

    def read_many(self, keys: list[str]) -> Iterator[tuple[str, bytes | BaseException]]:
        """(key, its bytes or why it could not be read) of every key, READ_AHEAD requests in flight at a time.

        An object store answers one GET in tens of milliseconds whatever its size, so planning a bucket one image
        at a time is latency-bound: s3fs (like every async fsspec filesystem) runs a `cat_ranges` batch
        concurrently. READ_AHEAD bounds what is held: each batch's bytes are hashed and dropped before the next."""
        for lo in range(0, len(keys), READ_AHEAD):
            part = keys[lo:lo + READ_AHEAD]
            yield from zip(part, self.fs.cat_ranges(part, None, None, on_error="return", **whole_reads(self.fs)))


class UrlPath:
    """A key on a Remote's filesystem, with the part of pathlib.Path's interface the folder sources use."""

    def __init__(self, remote: Remote, key: str):
        self.remote, self.key = remote, key.rstrip("/") or key

    def __str__(self) -> str:
        return self.remote.fs.unstrip_protocol(self.key)

    def __repr__(self) -> str:
        return f"UrlPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and other.remote is self.remote and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __lt__(self, other: UrlPath) -> bool:  # sorted(folder.iterdir()), as with Paths
        return self.key < other.key

    def __truediv__(self, rel: str | PurePosixPath) -> UrlPath:
        return UrlPath(self.remote, posixpath.join(self.key, str(rel)))

    def joined(self, rel: str) -> UrlPath:
        """`self / rel` with `.` and `..` folded, as os.path.normpath does for a local path."""
        return UrlPath(self.remote, posixpath.normpath(posixpath.join(self.key, rel)))

    def is_relative_to(self, other: UrlPath) -> bool:
        return self.key == other.key or self.key.startswith(other.key.rstrip("/") + "/")

    @property
    def options(self) -> dict[str, Any]:
        return self.remote.options

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    @property
    def parent(self) -> UrlPath:
        return UrlPath(self.remote, posixpath.dirname(self.key))

    def info(self) -> dict[str, Any] | None:
        """The fsspec info of this key from its folder's listing (size, type, ETag ...), or None if there is none."""
        return self.remote.listing(posixpath.dirname(self.key)).get(self.name)

    def _is_bucket(self) -> bool:  # `bucket` itself: no folder above it to list
        return "/" not in self.key.strip("/")

    def is_file(self) -> bool:
        return not self._is_bucket() and (self.info() or {}).get("type") == "file"

    def is_dir(self) -> bool:
        if self._is_bucket():
            return bool(self.remote.listing(self.key)) or self.remote.fs.exists(self.key)
        return (self.info() or {}).get("type") == "directory"

    def exists(self) -> bool:
        return self.is_file() or self.is_dir()

    def iterdir(self) -> Iterator[UrlPath]:
        for name in self.remote.listing(self.key):
            yield self / name

    def rglob(self, pattern: str) -> Iterator[UrlPath]:
        """Objects anywhere under this prefix whose name matches `pattern` (`*.parquet`), one recursive listing."""
        for key in sorted(self.remote.fs.find(self.key)):
            if fnmatch.fnmatchcase(posixpath.basename(key), pattern):
                yield UrlPath(self.remote, key)

    def glob(self, pattern: str) -> Iterator[UrlPath]:
        """Entries matching `pattern`; wildcards in its last part only (`dataset_*.json`, `annotations/captions_*.json`)."""
        folder, _, leaf = pattern.rpartition("/")
        assert not any(c in folder for c in "*?["), f"UrlPath.glob: wildcards in folders are not supported ({pattern})"
        base = self / folder if folder else self
        for name in sorted(base.remote.listing(base.key)):
            if fnmatch.fnmatchcase(name, leaf):
                yield base / name
