"""Where a store lives: a local folder, or a key prefix in object storage (an fsspec URL, `s3://bucket/x.zarr`).

Every file operation on a store goes through a `Location`, so local and remote differ in this file only.
A local location wraps a `Path` and does exactly what the code did with one before (atomic renames, fsync).
A remote one is an fsspec filesystem and a key prefix, and three things differ there:
- durability: a PUT is atomic per object and durable once it returns, so there is nothing to fsync, and a
  marker written (one PUT) after the objects it vouches for is the whole contract (`write_atomic`);
- folders do not exist: a "folder" is a key prefix, there without being made, gone with its last object;
- there is no rename: a new store is written in place, root attributes last (`store.create_store`).
Credentials and endpoint come the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION for s3); anything else is an fsspec storage option (`--storage-option KEY=VALUE`).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import suppress
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any

from ..core import CompalignError, atomic_write, fsync_tree, tree_bytes


class StorageError(CompalignError, OSError):
    """An object-storage URL that cannot work (unknown scheme, no bucket, unreachable); the message names the fix."""


# Names of the exceptions aiobotocore and aiohttp raise when a server cannot be reached or stops answering (matched
# by name: neither package is a dependency of local stores).
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ClientConnectorError",
                "ServerDisconnectedError", "ClientConnectionError", "ClientOSError"}


def unreachable(e: BaseException) -> str | None:
    """What failed, when `e` is a storage server that could not be reached (a refused or timed-out connection,
    an endpoint that stopped answering), found in `e` or what it was raised from or while handling; None
    otherwise. Only an I/O error qualifies at the top: anything else is a bug and keeps its traceback."""
    def io(x: BaseException) -> bool:
        return isinstance(x, (OSError, TimeoutError)) or type(x).__name__ in _UNREACHABLE

    if not io(e):
        return None
    seen: set[int] = set()
    at: BaseException | None = e
    while at is not None and id(at) not in seen:
        seen.add(id(at))
        if isinstance(at, (ConnectionError, TimeoutError)) or type(at).__name__ in _UNREACHABLE:
            return " ".join(f"{type(at).__name__}: {at}".split())
        at = at.__cause__ or at.__context__
    return None


def is_url(where: object) -> bool:
    """A `scheme://...` string other than file:// (a Path never is one: it would have collapsed the `//`)."""
    return isinstance(where, str) and "://" in where and not where.startswith("file://")


def storage_options(pairs: list[str]) -> dict[str, Any]:
    """`--storage-option KEY=VALUE` flags as fsspec options; values parse as JSON where they do (true, 3, {...})."""
    out: dict[str, Any] = {}
    for p in pairs:
        key, sep, val = p.partition("=")
        if not sep or not key.strip():
            raise StorageError(f"--storage-option takes KEY=VALUE (e.g. endpoint_url=http://127.0.0.1:9000), got {p!r}")
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val
    return out


def whole_reads(fs: Any) -> dict[str, Any]:
    """The options (of a read call, or of the filesystem) that fetch an object whole in one request. s3fs first
    asks an object's size (a HEAD, unless a listing told it) to split one over its block size (50 MB) into
    parallel ranges: for an image in a decoding worker that listed nothing, or a chunk a reader fetches among
    many at once, a second round trip for nothing. Other filesystems have no such step ({})."""
    return {"max_concurrency": 1} if getattr(fs, "max_concurrency", None) is not None else {}


def _precondition_failed(e: OSError) -> bool:
    """s3fs turns a 412 into a plain OSError; the service's own code is on the ClientError it came from."""
    return getattr(e.__cause__, "response", {}).get("Error", {}).get("Code") == "PreconditionFailed"


def location(where: str | os.PathLike | Location, options: dict[str, Any] | None = None) -> Location:
    """A Location for a path or URL (a Location is returned as it is). Builds no connection."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    if not is_url(text):
        return Location(Path(text.removeprefix("file://")))
    import fsspec

    try:
        fs, key = fsspec.url_to_fs(text, **(options or {}))
    except (ValueError, ImportError) as e:  # an unknown scheme, or its fsspec package is not installed
        raise StorageError(f"{text}: {e}. Use s3://BUCKET/PATH (s3fs), or install the fsspec package for this scheme") from None
    if not key.strip("/"):
        raise StorageError(f"{text} names no bucket; pass s3://BUCKET/PATH.zarr")
    return Location(key.rstrip("/"), fs, options)


class Location:
    """A local path (`fs` None) or the key prefix `key` on the fsspec filesystem `fs`."""

    def __init__(self, where: Path | str, fs: Any = None, options: dict[str, Any] | None = None):
        self.fs, self.options = fs, dict(options or {})
        self.path: Path = Path(where) if fs is None else None  # type: ignore[assignment]
        self.key: str = "" if fs is None else str(where)

    @property
    def local(self) -> bool:
        return self.fs is None

    def __str__(self) -> str:
        return str(self.path) if self.local else self.fs.unstrip_protocol(self.key)

    def __repr__(self) -> str:
        return f"Location({str(self)!r})"

    def __truediv__(self, rel: str) -> Location:
        return Location(self.path / rel) if self.local else Location(f"{self.key}/{rel}", self.fs, self.options)

    @property
    def name(self) -> str:
        return self.path.name if self.local else self.key.rsplit("/", 1)[-1]

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    def sibling(self, name: str) -> Location:
        """`name` in the folder (prefix) holding this location."""
        if self.local:
            return Location(self.path.with_name(name))
        return Location(f"{self.key.rsplit('/', 1)[0]}/{name}", self.fs, self.options)

    def relative_to(self, base: Location) -> str:
        return str(self.path.relative_to(base.path)) if self.local else self.key[len(base.key) + 1:]

    # ---- reading ----------------------------------------------------------------------------
    # Remote reads drop fsspec's listing cache first: Zarr writes chunks through its own (async) filesystem
    # object, and under torchrun other processes write beside this one, so a listing cached earlier would not
    # show what they wrote. s3fs forgets the key and the folders above it; the folders below it go here, or a
    # size or a read would look its objects up in a listing made before they were written.
    def _fresh(self) -> Any:
        self.fs.invalidate_cache(self.key)
        below = self.key.rstrip("/") + "/"  # the key is stripped of its protocol, as the cache's keys are
        for folder in [k for k in self.fs.dircache if k.startswith(below)]:  # iterates a copy of the keys
            with suppress(KeyError):  # a writer thread's own invalidation may drop it first
                del self.fs.dircache[folder]
        return self.fs

    def exists(self) -> bool:
        return self.path.exists() if self.local else self._fresh().exists(self.key)

    def is_file(self) -> bool:
        return self.path.is_file() if self.local else self._fresh().isfile(self.key)

    def is_dir(self) -> bool:
        return self.path.is_dir() if self.local else self._fresh().isdir(self.key)

    def names(self) -> list[str]:
        """Names of the entries directly inside ([] when there is nothing)."""
        if self.local:
            return [p.name for p in self.path.iterdir()] if self.path.is_dir() else []
        try:
            return [k.rstrip("/").rsplit("/", 1)[-1] for k in self._fresh().ls(self.key, detail=False)]
        except FileNotFoundError:
            return []

    def files(self) -> list[Location]:
        """This file, or every file under this folder, sorted ([] when there is nothing)."""
        if self.local:
            p = self.path
            return [self] if p.is_file() else [Location(f) for f in sorted(f for f in p.rglob("*") if f.is_file())] \
                if p.exists() else []
        return [Location(k, self.fs, self.options) for k in sorted(self._fresh().find(self.key))]

    def file_sizes(self) -> dict[str, int]:
        """{path relative to this folder: bytes} of every file under it, from one listing (in a bucket a LIST per
        1,000 objects, where asking each object would be a round trip each)."""
        if self.local:
            return {str(f.relative_to(self.path)): f.stat().st_size for f in self.path.rglob("*") if f.is_file()}
        return {k[len(self.key) + 1:]: int(info["size"]) for k, info in self._fresh().find(self.key, detail=True).items()
                if info.get("type") != "directory"}

    def read_many(self, rels: list[str]) -> dict[str, bytes]:
        """{rel: bytes} of files under this folder; in a bucket all requested at once (fsspec batches them)."""
        if self.local:
            return {rel: (self.path / rel).read_bytes() for rel in rels}
        keys = [f"{self.key}/{rel}" for rel in rels]
        got = self._fresh().cat(keys, **whole_reads(self.fs)) if keys else {}
        return {rel: got[key] for rel, key in zip(rels, keys)}

    def size(self) -> int:
        """Bytes of a file, or of every file under a folder (0 when there is nothing)."""
        return tree_bytes(self.path) if self.local else int(self._fresh().du(self.key, total=True))

    def open(self, mode: str = "rb") -> IO[Any]:
        return open(self.path, mode) if self.local else self._fresh().open(self.key, mode)

    def read_text(self) -> str:
        return self.path.read_text() if self.local else self._fresh().cat_file(self.key).decode()

    # ---- writing ----------------------------------------------------------------------------
    def write_atomic(self, data: str | bytes) -> None:
        """The file appears whole or not at all: locally a durable temporary file renamed into place; remotely
        one PUT, which S3 makes atomic per object (a reader sees the old object, the new one, or none)."""
        if self.local:
            atomic_write(self.path, data)
        else:
            self.fs.pipe_file(self.key, data.encode() if isinstance(data, str) else data)

    # ---- conditional writes: the writer lock in a bucket (extract/target.py) -----------------
    # Remote only. An ETag names one version of an object; a write or delete "if it is still ETAG" fails when
    # another writer changed the object meanwhile. AWS S3 and moto honour If-Match / If-None-Match; the
    # If-Match steps need s3fs (`conditional` says whether this filesystem has them).
    @property
    def conditional(self) -> bool:
        return hasattr(self.fs, "call_s3")

    def create_exclusive(self, data: bytes) -> str | None:
        """Write the object if none is there (If-None-Match: *): its ETag ("" where the filesystem tells none),
        or None if one is there."""
        try:
            out = self.fs.pipe_file(self.key, data, mode="create")
        except FileExistsError:
            return None
        return str(out.get("ETag", "")) if isinstance(out, dict) else ""

    def version(self) -> tuple[str, float] | None:
        """(ETag, seconds since it was written) of the object, None if there is none. Both times are the
        server's (its Last-Modified and the Date of the reply), so no client clock is trusted."""
        bucket, key = self.key.split("/", 1)
        try:
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        now = parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        return str(head["ETag"]), max(0.0, (now - head["LastModified"]).total_seconds())

    def replace_if(self, data: bytes, etag: str) -> str | None:
        """Overwrite the object if it is still version `etag` (If-Match): the new ETag, or None if it is not
        (changed or gone)."""
        bucket, key = self.key.split("/", 1)
        try:
            out = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=etag)
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or _precondition_failed(e):
                return None
            raise
        self.fs.invalidate_cache(self.key)
        return str(out["ETag"])

    def unlink_if(self, etag: str) -> bool:
        """Delete the object if it is still version `etag`; False (nothing deleted) if it is not."""
        bucket, key = self.key.split("/", 1)
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or _precondition_failed(e):
                return False
            raise
        self.fs.invalidate_cache(self.key)
        return True

    def mkdir(self) -> None:
        if self.local:  # a prefix needs no making
            self.path.mkdir(parents=True, exist_ok=True)

    def fsync(self) -> None:
        if self.local:  # a PUT is durable when it returns
            fsync_tree(self.path)

    def unlink(self) -> None:
        self.path.unlink() if self.local else self.fs.rm_file(self.key)

    def rmtree(self) -> None:
        shutil.rmtree(self.path) if self.local else self.fs.rm(self.key, recursive=True)

    # ---- zarr ------------------------------------------------------------------------------
    def zarr_store(self, mode: str, as_object: bool = False) -> Any:
        """What `zarr.open_group` takes: the path string locally (as before; `as_object`: the LocalStore zarr
        makes of it), zarr's FsspecStore remotely."""
        if self.local and not as_object:
            return str(self.path)
        if self.local:
            from zarr.storage import LocalStore

            return LocalStore(self.path, read_only=mode == "r")
        from zarr.storage import FsspecStore

        # Whole reads: a reader's zarr already reads many chunks at once, and a writer reads only metadata, so no
        # size HEAD before each GET; a --storage-option max_concurrency=N still decides. No listing cache: zarr's
        # filesystem object lives as long as the process, so a group's members listed once would hide the arrays
        # of a store another process has since overwritten; zarr lists only groups, a few requests per open.
        options = {"use_listings_cache": False, **whole_reads(self.fs), **self.options}
        return FsspecStore.from_url(str(self), storage_options=options, read_only=mode == "r")

    def check(self) -> None:
        """Refuse a remote location whose bucket cannot be reached, naming the URL and the fix (local: nothing)."""
        if self.local:
            return
        bucket = self.key.split("/", 1)[0]
        url = str(self)
        try:
            self.fs.info(bucket)
        except FileNotFoundError:
            raise StorageError(f"{url}: the bucket {bucket!r} does not exist at {self._endpoint()}. Create it "
                               f"(`aws s3 mb s3://{bucket}`), or point AWS_ENDPOINT_URL / --storage-option "
                               "endpoint_url=... at the server that has it") from None
        except Exception as e:  # credentials, network, endpoint: the service's own words, and where to look
            raise StorageError(f"{url}: cannot reach the bucket {bucket!r} at {self._endpoint()} "
                               f"({type(e).__name__}: {e}). Check AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / "
                               "AWS_SECRET_ACCESS_KEY, or pass --storage-option KEY=VALUE") from None

    def _endpoint(self) -> str:
        return str(self.options.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint")
