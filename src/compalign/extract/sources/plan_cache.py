"""The planning cache: content hashes of image files keyed by (path, size, mtime_ns), so a rerun reads no image again.

Planning hashes every image's bytes (the key of an image is its content hash); on a million files that is a full
read of the dataset before the first forward pass, on every resume. The cache is a small SQLite file beside the
store (`.NAME.plan-cache.sqlite`, like the writer lock: `--overwrite` removes the store, not what is known about
the inputs); for a store in a bucket, a file in the user's cache folder (cache_path). An entry is trusted only
while the file's size and mtime are what they were; a touched or rewritten file is hashed again and its entry
replaced. An object of a URL root (`s3://...`) is cached under its URL with its size and its ETag from the bucket
listing (stored as `etag:...` in the mtime column): every PUT gives an object a new ETag, so an entry is trusted
while the ETag is unchanged, with no clock involved.

A tar shard is cached whole (table `shards`): what planning it found (each sample's member offsets, image key,
caption and URL, and the problems it named), under the shard's path or URL with its size and mtime or ETag. A rerun
replays an unchanged shard without opening it: for a shard in a bucket that is one listing instead of a download
of every shard (the headers of a tar are spread through it, so even listing its members reads all of it).

A file modified within the filesystem's timestamp granularity of being hashed could keep its mtime (git's "racy"
case), so a file whose mtime is younger than SETTLE_NS when it is hashed is hashed but not recorded. A cache that
cannot be read (corrupt, another version) is started afresh: it only ever saves time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sqlite3
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SETTLE_NS = 3_000_000_000  # coarser than any filesystem's mtime granularity (FAT: 2 s)


def settled(mtime_ns: int) -> bool:
    """Whether a file with this mtime may be recorded: it is older than SETTLE_NS, so a rewrite changes its mtime."""
    return time.time_ns() - mtime_ns > SETTLE_NS

FLUSH_ROWS = 10_000  # new entries written per transaction: memory stays bounded on huge datasets
SCHEMA = ("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, key TEXT)",
          "CREATE TABLE IF NOT EXISTS shards (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, plan BLOB)")


def cache_path(out: Path | str) -> Path:
    """Where the planning cache of the store `out` lives: a hidden sibling file of a local store. A store in
    object storage (a URL) cannot hold a sqlite file, so its cache is a local file named after the URL in the
    user's cache folder ($XDG_CACHE_HOME/compalign/plan-cache/, ~/.cache by default)."""
    if isinstance(out, Path):
        return out.absolute().parent / f".{out.name}.plan-cache.sqlite"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "compalign" / "plan-cache"
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", out)[-80:]
    return base / f"{readable}-{hashlib.sha256(out.encode()).hexdigest()[:12]}.sqlite"


class PlanCache:
    """(path, size, mtime_ns) -> content key. `hits` / `misses` count lookups (shown in the log, used by tests)."""

    def __init__(self, path: Path, record: bool = True):
        self.path, self.record = path, record  # record=False: look up only (another process writes the file)
        self.hits = self.misses = 0
        self._new: list[tuple[str, int, int | str, str]] = []
        self._conn: sqlite3.Connection | None = None  # opened on the first lookup: sources without files make no file

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self._conn = self._connect()
            except sqlite3.DatabaseError as e:
                log.warning("planning cache %s unreadable (%s): starting a new one", self.path, e)
                self.path.unlink(missing_ok=True)
                self._conn = self._connect()
        return self._conn

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)  # the user cache folder of a store in a bucket
        db = sqlite3.connect(self.path, timeout=60)  # torchrun ranks read while rank 0 writes: wait, do not fail
        try:
            for table in SCHEMA:
                db.execute(table)
            db.execute("SELECT count(*) FROM hashes").fetchone()  # a corrupt file fails here, not mid-plan
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def known(self, path: str, size: int, stamp: int | str) -> str | None:
        """The cached key while `path`'s size and stamp (a file's mtime_ns, an object's "etag:..." from its
        listing) are what they were (a hit), else None."""
        row = self._db.execute("SELECT size, mtime_ns, key FROM hashes WHERE path = ?", (path,)).fetchone()
        if row is not None and row[0] == size and row[1] == stamp:
            self.hits += 1
            return row[2]
        return None

    def remember(self, path: str, size: int, stamp: int | str, key: str, settled: bool = True) -> None:
        """Record a key that `known` did not have (a miss); not one hashed while its file may still change
        within one mtime tick (`settled` False). An ETag needs no settling: a rewrite changes it whatever
        the clocks say."""
        self.misses += 1
        if self.record and settled:
            self._new.append((path, size, stamp, key))
            if len(self._new) >= FLUSH_ROWS:
                self.flush()

    def shard(self, path: str, size: int, stamp: int | str) -> list[Any] | None:
        """What planning the tar shard `path` found (the entries its caller recorded), while its size and stamp are
        what they were; a hit counts each image the shard holds as known."""
        row = self._db.execute("SELECT size, mtime_ns, plan FROM shards WHERE path = ?", (path,)).fetchone()
        if row is None or (row[0], row[1]) != (size, stamp):
            return None
        entries = json.loads(zlib.decompress(row[2]))
        self.hits += sum(1 for e in entries if e[0] == "sample")
        return entries

    def remember_shard(self, path: str, size: int, stamp: int | str, entries: list[Any], settled: bool = True) -> None:
        """Record a shard's entries (JSON lists whose first element names the kind: "sample" ones count as images
        hashed); not while the shard may still change within one mtime tick."""
        self.misses += sum(1 for e in entries if e[0] == "sample")
        if self.record and settled:
            blob = zlib.compress(json.dumps(entries, separators=(",", ":")).encode(), 6)
            with self._db:  # a shard holds thousands of samples: its own transaction, written now
                self._db.execute("INSERT OR REPLACE INTO shards VALUES (?, ?, ?, ?)", (path, size, stamp, blob))

    def flush(self) -> None:
        if self._new:
            with self._db:  # one transaction
                self._db.executemany("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?)", self._new)
        self._new = []

    def close(self) -> None:
        self.flush()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


_ACTIVE: ContextVar[PlanCache | None] = ContextVar("compalign_plan_cache", default=None)


def active_cache() -> PlanCache | None:
    """The cache the current planning uses (PlanBuilder asks; sources need not pass it along)."""
    return _ACTIVE.get()


@contextmanager
def using(cache: PlanCache | None) -> Iterator[PlanCache | None]:
    token = _ACTIVE.set(cache)
    try:
        yield cache
    finally:
        _ACTIVE.reset(token)
