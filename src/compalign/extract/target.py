"""Where extraction writes: one writer per store, and `--overwrite` only ever replaces a compalign store.

A store is replaced only when its root `zarr.json` carries the compalign schema attr; a folder that is
not a store, the data root, a folder holding the data root, or a regular file are refused untouched.
The lock is a sibling file (`.NAME.lock`), not inside the store, because `--overwrite` removes the store.
One process holds it exclusively; the ranks of one torchrun job hold it shared (ranks.py says why that is safe).
In object storage (`--out s3://...`) the lock is an object held as a lease (object_lock.py) instead of a
flock; rank 0 of a job holds it for all its ranks. Every other rule holds there as on disk.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..cache.location import Location, location
from ..cache.store import CREATING, SCHEMA, CacheError
from .object_lock import ObjectLock

NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)  # the folder is not ours to write: a message, not a traceback


def _root_attrs(path: Location) -> dict[str, Any]:
    """The attributes in a folder's root zarr.json ({} where there is none, or it is not JSON)."""
    try:
        return json.loads((path / "zarr.json").read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}


def _compalign(value: object) -> bool:
    """A schema name of any compalign cache version."""
    return str(value or "").startswith(SCHEMA.split("/")[0] + "/")


def is_store(path: Path | Location) -> bool:
    """True for a folder whose root zarr.json has a compalign schema attr (of any version)."""
    path = location(path)
    if not path.is_dir() or not (path / "zarr.json").is_file():
        return False
    return _compalign(_root_attrs(path).get("schema"))


def creation_cut_short(path: Path | Location) -> bool:
    """True for a store in a bucket whose creation stopped before its root attributes were written
    (cache.store._send); extraction replaces it (a local store is made aside, so none is ever left at --out)."""
    attrs = _root_attrs(location(path))
    return "schema" not in attrs and _compalign(attrs.get(CREATING))


def check_target(out: Path | Location, data_root: Path | str, overwrite: bool) -> None:
    """Refuse an --out that would destroy what is not ours, before anything is loaded or written.
    `data_root`: the --root, a local folder (Path) or a URL (str)."""
    loc = location(out)
    if isinstance(data_root, str):  # a URL root: only a store at or above it in the same bucket can hold it
        where, root = str(loc).rstrip("/"), data_root.rstrip("/")
        if not loc.local and (root == where or root.startswith(where + "/")):
            raise CacheError(f"--out {loc} is the data root {data_root} or holds it; extraction never writes over its "
                             f"input. Pass a new prefix, e.g. --out {root}.zarr")
    if not loc.local:  # the bucket must be there
        loc.check()
        if "/" not in loc.key:
            raise CacheError(f"--out {loc} is a whole bucket; pass a store inside it, e.g. --out {loc}/NAME.zarr")
        if loc.is_file():
            raise CacheError(f"--out {loc} exists and is an object, not a prefix; pass a new or existing compalign store")
    elif isinstance(data_root, Path):
        out = loc.path
        out_abs, data_abs = out.absolute(), data_root.absolute()
        for a, b in ((out_abs, data_abs), (out_abs.resolve(), data_abs.resolve())):
            if a == b or a in b.parents:
                raise CacheError(f"--out {out} is the data root {data_root} or holds it; extraction never writes over its "
                                 f"input. Pass a new folder, e.g. --out {data_root.parent / (data_root.name + '.zarr')}")
    if loc.local and (loc.path.is_symlink() or (loc.path.exists() and not loc.path.is_dir())):
        raise CacheError(f"--out {loc.path} exists and is not a folder; pass the path of a new or existing compalign store")
    if loc.exists() and not is_store(loc) and not creation_cut_short(loc) and (overwrite or loc.names()):
        n = sum(1 for _ in loc.path.rglob("*")) if loc.local else len(loc.files())
        raise CacheError(f"--out {loc} is a folder that is not a compalign store ({n} entries); compalign only replaces "
                         "its own stores. Pass a new --out, or remove the folder yourself if it is not needed.")


def remove_store(out: Path | Location) -> str:
    """Delete a compalign store (checked again here); returns what was removed, for the log and the summary."""
    out = location(out)
    if not is_store(out):
        raise CacheError(f"{out} is not a compalign store; refusing to delete it")
    files, size = len(out.files()), out.size()
    out.rmtree()
    return f"replaced the store {out} ({files} files, {size / 2**20:.1f} MiB)"


class WriterLock:
    """The lock file of one store, open; `take` locks it (exclusive: one writer; shared: the ranks of one job)."""

    def __init__(self, out: Path):
        self.out, self.path = out, out.absolute().parent / f".{out.name}.lock"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            if e.errno not in NOT_WRITABLE:
                raise
            raise CacheError(f"cannot write in {self.path.parent} ({e.strerror}). Pass an --out in a folder you can "
                             "write.") from None

    def take(self, shared: bool = False) -> None:
        """Lock now or be refused now (never wait), naming the process that holds it; taking a shared lock while
        holding the exclusive one turns it shared (not atomically: flock(2) drops the old lock first, so a writer
        that starts in that instant can win it, and this process is refused; never two writers)."""
        try:
            fcntl.flock(self.fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise CacheError(f"another compalign extract (pid {other}) is writing {self.out}; wait for it to finish, "
                             "or pass another --out (two writers on one store corrupt it)") from None
        if not shared:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, str(os.getpid()).encode(), 0)

    def close(self) -> None:
        """Release the lock (once; again is a no-op). The file stays: removing it would race a waiting writer."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextmanager
def writer_lock(out: Path | Location, take: bool = True, processes: list[dict[str, Any]] | None = None
                ) -> Iterator[WriterLock | ObjectLock]:
    """Hold an exclusive lock on `out` for the whole run; a second writer is refused at once, naming the first.
    With `take` off the lock is only opened: a rank of a job takes its shared lock later (extract/ranks.py).
    `processes`: the run's processes, which a lock object names (object_lock.py; a flock needs none)."""
    loc = location(out)
    lock = WriterLock(loc.path) if loc.local else ObjectLock(loc, processes=processes)
    try:
        if take:
            lock.take()
        yield lock
    finally:
        lock.close()
