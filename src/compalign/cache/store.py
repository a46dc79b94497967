"""Create a store, write whole shards, mark them done, and resume.

Layout (N images, M texts, E joint width, P patches, K prefix tokens, W tower widths, L tokens):
    attrs                      schema, backbone, extraction settings, source (fingerprint, problems), versions
    images/keys      (N,)      content hash of the image bytes
    images/origin    (N,)      where it came from (path, or parquet file#row:column)
    images/status    (N,)      int8: 0 pending, 1 ok, 2 failed
    images/error     (N,)      reason when failed
    images/global    (N, E)    float32, the backbone's own image embedding
    images/patches   (N, P, W) float16, final layer, final norm applied
    images/prefix    (N, K, W) float16, class/register tokens of the same layer
    images/layers/<l>/{patches,prefix}   other requested layers (l < 0 counts from the top)
    images/regions/crops        (N, R, E) float32, optional (`extract --crops grid`): the global embedding of each
                               box cropped from the image and encoded alone; the R boxes are attrs
                               extraction.crops.boxes ([x0, y0, x1, y1] in fractions, y down)
    images/regions/oracle       (N, R, E) float32, optional (`extract --crops oracle`, or `grid+oracle` for both): the
                               same for the synthetic world's true object boxes, R = the most objects any image has
    images/regions/oracle_mask  (N, R) bool, the slots holding an encoded crop: a row's own boxes (none if it failed)
    images/regions/oracle_boxes (N, R, 4) float64, each row's boxes in fractions, zero past its own
    texts/keys, strings, status, error, lengths (int16), truncated (bool)
    texts/global     (M, E)    float32
    texts/tokens     (M, L, W) float16, zero after `lengths`
    texts/layers/<l>/tokens
    proj/{image,text,text_bias}  linear token -> joint maps, where the tower has them
    items/<column>   (n_items,) str, the source's items referencing rows by key
    segments/{caption,segment,kind}  (S,) str, optional (`extract --segments`): segment `segment` (a text key,
                               its string encoded as a row of texts/ like any caption) of caption `caption`
    .done/{images,texts}/<shard>  marker files: a shard is done only after its data is durable;
                               each lists its chunk files with their size and sha256 (`verify_shard`)

A store is a local folder or a prefix in object storage (`s3://bucket/x.zarr`): every function here takes
either, as a path, a URL or a `location.Location`, and reaches the files through the Location.

A shard is a block of `shard_rows` consecutive rows, stored as one Zarr shard per array and
written by exactly one writer (Zarr loses data when two writers touch one shard).

Every chunk is written, even one equal to the fill value (`write_empty_chunks`): Zarr reads an absent
chunk as its fill value, so only a store where absence never means "zeros" can tell a deleted chunk
file from a zero one. Readers refuse an absent chunk (`chunk_file`, `reader.CacheReader`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shlex
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
from zarr.codecs import ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore, WrapperStore

from ..core import CompalignError
from .location import Location, location

SCHEMA = "compalign.cache/1"
CREATING = "creating"  # root attr of a store being sent (`_send`): a creation cut short, if it is still there
COMPLETE_CHUNKS = "complete_chunks"  # root attr: every chunk of a written shard exists (absent = damaged)
EVERY_CHUNK = {"write_empty_chunks": True}
PENDING, OK, FAILED = 0, 1, 2
_OPENING = threading.Lock()  # write_shard's arrays are opened under a process-wide Zarr config
Kind = Literal["images", "texts"]


class CacheError(CompalignError, RuntimeError):
    """A store that is missing, incompatible or from another schema; the message names the fix."""


@dataclass
class Layout:
    n_images: int
    n_texts: int
    embed_dim: int
    n_patches: int
    n_prefix: int
    image_width: int
    text_len: int  # stored token positions (longest caption for causal towers, else the context)
    text_width: int
    layers: list[int]  # image tower layers kept, -1 first
    shard_rows: int
    chunk_rows: int  # rows per inner chunk: the unit a random read decodes
    text_layers: list[int] | None = None  # text tower layers kept (None: same as `layers`)

    @property
    def layers_text(self) -> list[int]:
        return self.layers if self.text_layers is None else self.text_layers


def token_codec_level(spec: str) -> int | None:
    """The zstd level of a token codec spec `zstd:LEVEL` (1..22), None for `none`.

    The float16 token arrays are most of a store's bytes and nearly incompressible: zstd keeps 0.92 of
    ViT-B-16 patch tokens at ~600 MB/s per thread to write and ~700 MB/s to read (benchmarks/patch_codec.py),
    so the default stores them raw and `zstd:LEVEL` trades that CPU time for 8% of the disk."""
    if spec == "none":
        return None
    kind, _, level = spec.partition(":")
    if kind == "zstd" and level.isdigit() and 1 <= int(level) <= 22:
        return int(level)
    raise CacheError(f"--token-codec is none or zstd:LEVEL with LEVEL 1..22 (got {spec!r})")


def _array(g: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any, lay: Layout, big: bool = False,
           token_codec: str = "none") -> None:
    rows = lay.shard_rows  # a shard may overhang the array's end; Zarr stores only what exists
    if big:  # token arrays: small inner chunks inside one shard per writer
        chunk = math.gcd(rows, lay.chunk_rows)  # inner chunks must tile the shard exactly
        rest = tuple(max(1, d) for d in shape[1:])  # towers without a class token have K = 0 prefix rows
        level = token_codec_level(token_codec)
        g.create_array(name, shape=shape, dtype=dtype, chunks=(chunk, *rest), shards=(rows, *rest), fill_value=0,
                       compressors=None if level is None else ZstdCodec(level=level), config=EVERY_CHUNK)
    else:
        fill = "" if dtype is str else 0
        g.create_array(name, shape=shape, dtype=dtype, chunks=(rows, *shape[1:]), fill_value=fill, config=EVERY_CHUNK)


def create_store(path: Path | Location, lay: Layout, attrs: dict[str, Any], items: dict[str, list[str]],
                 image_keys: list[str], image_origins: list[str], text_keys: list[str], texts: list[str],
                 projections: dict[str, np.ndarray], segments: dict[str, list[str]] | None = None,
                 regions: dict[str, tuple[tuple[int, ...], str]] | None = None, token_codec: str = "none") -> zarr.Group:
    """Preallocate every array; key/string columns, items and segments are written now, features later by shard.

    `regions`: extra image arrays {path under images/: (shape of one row, dtype)}, written with the image shards.
    `token_codec`: the float16 token arrays' compression (`token_codec_level`); the other arrays keep Zarr's zstd.
    The store is made in memory and then sent whole (`_send`): zarr creating it in place asks after every new
    array's parents and reopens each column it fills, a round trip apiece in a bucket, one after another.
    The root attributes are written last: only then is the folder a store (`extract.target.is_store`), so a
    creation cut short is never taken for one (a local store is also built aside and renamed into place). Until
    then the root says `creating`, so a creation cut short in a bucket is known for one and replaced."""
    loc = location(path)
    made = MemoryStore()
    root = zarr.open_group(made, mode="w")
    N, M = lay.n_images, lay.n_texts
    im, tx = root.create_group("images"), root.create_group("texts")
    for g, n, keys, extra_name, extra in ((im, N, image_keys, "origin", image_origins), (tx, M, text_keys, "strings", texts)):
        _array(g, "keys", (n,), str, lay)
        _array(g, extra_name, (n,), str, lay)
        _array(g, "status", (n,), "int8", lay)
        _array(g, "error", (n,), str, lay)
        if n:
            g["keys"][:] = np.asarray(keys, dtype=str)
            g[extra_name][:] = np.asarray(extra, dtype=str)
    _array(tx, "lengths", (M,), "int16", lay)
    _array(tx, "truncated", (M,), "bool", lay)
    _array(im, "global", (N, lay.embed_dim), "float32", lay)
    _array(tx, "global", (M, lay.embed_dim), "float32", lay)
    for layer in lay.layers:
        gi = im if layer == -1 else im.require_group(f"layers/{layer}")
        _array(gi, "patches", (N, lay.n_patches, lay.image_width), "float16", lay, True, token_codec)
        _array(gi, "prefix", (N, lay.n_prefix, lay.image_width), "float16", lay, True, token_codec)
    for name, (shape, dtype) in (regions or {}).items():
        folder, _, leaf = name.rpartition("/")
        _array(im.require_group(folder) if folder else im, leaf, (N, *shape), dtype, lay)
    for layer in lay.layers_text:
        gt = tx if layer == -1 else tx.require_group(f"layers/{layer}")
        _array(gt, "tokens", (M, lay.text_len, lay.text_width), "float16", lay, True, token_codec)
    pg = root.create_group("proj")
    for name, mat in projections.items():
        pg.create_array(name, data=np.asarray(mat, dtype="float32"), config=EVERY_CHUNK)
    for name, table in (("items", items), *((("segments", segments),) if segments else ())):
        _table(root.create_group(name), table)
    root.attrs.update({"schema": SCHEMA, **attrs, "layout": lay.__dict__, COMPLETE_CHUNKS: True})
    _send(made, loc.zarr_store("w", as_object=True))
    for kind in ("images", "texts"):
        (loc / ".done" / kind).mkdir()
    loc.fsync()
    return zarr.open_group(loc.zarr_store("r+"), mode="r+", zarr_format=3)


SENDING = 64  # objects in flight at once while a new store is sent (a bucket's round trips overlap)


def _send(made: MemoryStore, to: Any) -> None:
    """Every object of the store made in memory, written to `to` (whatever was there removed first): all at once,
    between a root zarr.json that says `creating` and the real one (it makes the folder a store)."""
    creating = MemoryStore()
    zarr.open_group(creating, mode="w", attributes={CREATING: SCHEMA})

    async def copy(key: str) -> None:
        await to.set(key, await made.get(key, default_buffer_prototype()))

    async def at_once(step: Any, keys: list[str]) -> None:
        gate = asyncio.Semaphore(SENDING)

        async def one(key: str) -> None:
            async with gate:
                await step(key)

        await asyncio.gather(*(one(k) for k in keys))

    async def send() -> None:
        # from one listing: zarr's delete_dir asks after the prefix itself too, five round trips in a row
        await at_once(to.delete, [k async for k in to.list()])
        await to.set("zarr.json", await creating.get("zarr.json", default_buffer_prototype()))
        await at_once(copy, [k async for k in made.list() if k != "zarr.json"])
        await copy("zarr.json")

    sync(send())


def _table(g: zarr.Group, columns: dict[str, list[str]]) -> None:
    """String columns of one length, each one chunk (written once, at creation)."""
    n = len(next(iter(columns.values()))) if columns else 0
    for col, values in columns.items():
        a = g.create_array(col, shape=(n,), dtype=str, chunks=(max(1, n),), fill_value="", config=EVERY_CHUNK)
        if n:
            a[:] = np.asarray(values, dtype=str)


def n_shards(n_rows: int, shard_rows: int) -> int:
    return (n_rows + shard_rows - 1) // shard_rows


def done_shards(path: Path | Location, kind: Kind) -> set[int]:
    return {int(name) for name in (location(path) / ".done" / kind).names() if name.isdigit()}


def chunk_file(path: Path | Location, array: str, shape: tuple[int, ...], shard: int) -> Location | None:
    """The file holding shard `shard` of a row array (None: an array with a zero dimension stores none)."""
    if 0 in shape:
        return None
    return location(path) / "/".join([array, "c", str(shard), *["0"] * (len(shape) - 1)])


def _digest(p: Location) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DigestStore(WrapperStore):
    """A Zarr store that keeps (bytes, sha256) of every object written through it until `take` collects them.

    A done marker checksums its shard's chunk files. Taken from the bytes as they are handed to the store,
    the checksums cost no second read; read back from the store they cost a download of every chunk in
    object storage. Both give the same digests: the store keeps exactly the bytes it is given.

    It also knows the shards being written whole (`replacing`). Zarr reads a sharded array's stored shard
    before writing into it, even when the write replaces every inner chunk: for a new shard in object storage
    that is a HEAD and a LIST that find nothing, for a shard rewritten after a crash a download of it, and what
    it read is then thrown away. A read of a key being replaced answers "absent"."""

    def __init__(self, store: Any):
        super().__init__(store)
        self.written: dict[str, list[Any]] = {}
        self._replacing: frozenset[str] = frozenset()  # swapped whole under the lock: zarr's thread reads it
        self._lock = threading.Lock()

    async def set(self, key: str, value: Any) -> None:
        data = value.as_numpy_array()  # (n,) uint8, a view of the encoded chunk
        self.written[key] = [int(data.nbytes), hashlib.sha256(data).hexdigest()]
        await self._store.set(key, value)

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        if _under(key, self._replacing):
            return None
        return await self._store.get(key, prototype, byte_range)

    @contextmanager
    def replacing(self, prefixes: set[str]) -> Iterator[None]:
        """While writing the chunks under `prefixes` whole (one writer thread's shard; writers never share one)."""
        with self._lock:
            self._replacing |= prefixes
        try:
            yield
        finally:
            with self._lock:
                self._replacing -= prefixes

    def take(self, prefix: str) -> dict[str, list[Any]]:
        """{key: [bytes, sha256]} of the objects written under `prefix` (a shard's chunks), forgotten here."""
        return {k: self.written.pop(k) for k in list(self.written) if _under(k, {prefix})}


def _under(key: str, prefixes: frozenset[str] | set[str]) -> bool:
    return any(key == p or key.startswith(p + "/") for p in prefixes)


def _shard_files(path: Path | Location, kind: Kind, names: list[str], shard: int,
                 written: DigestStore | None = None) -> dict[str, list[Any]]:
    """{relative path: [bytes, sha256]} of every chunk file of `shard` in the named arrays: what `written`
    recorded as it wrote them (no listing: in object storage a LIST per array), else listed and read back."""
    loc = location(path)
    out: dict[str, list[Any]] = {}
    for name in names:
        prefix = f"{kind}/{name}/c/{shard}"
        if mine := (written.take(prefix) if written is not None else None):
            out.update(mine)
            continue
        for f in (loc / prefix).files():
            out[f.relative_to(loc)] = [f.size(), _digest(f)]
    return out


def write_shard(root: zarr.Group, path: Path | Location, kind: Kind, shard: int, lo: int, arrays: dict[str, np.ndarray],
                opened: dict[str, zarr.Array] | None = None) -> None:
    """Write one whole shard (rows lo..lo+n of every named array), make it durable, then mark it done.

    `opened` keeps the Zarr arrays between calls: opening one reads its metadata, which cost a third of a
    text shard's write time (7 arrays of 256 rows: 69 -> 48 ms here). The marker lists the shard's files
    with their checksums, so a later `verify_shard` can tell a damaged shard from a good one.
    """
    opened, loc = {} if opened is None else opened, location(path)
    store = root.store if isinstance(root.store, DigestStore) else None
    whole = store.replacing({f"{kind}/{name}/c/{shard}" for name in arrays}) if store is not None else nullcontext()
    for name in arrays:
        key = f"{kind}/{name}"
        if key not in opened:
            # Zarr takes it when the array opens, from its process-wide config: one writer thread leaving the
            # `set` block restores that config under another thread still opening (measured: 1 of 240 opens
            # by 8 threads; a shard's all-empty `error` chunk would then be skipped, a hole in the store), so
            # threads open their arrays one at a time.
            with _OPENING, zarr.config.set({"array.write_empty_chunks": True}):
                opened[key] = root[key]

    def put(name: str) -> None:
        opened[f"{kind}/{name}"][lo:lo + len(arrays[name])] = arrays[name]

    with whole:  # every row of the shard is written: what is stored there now is not needed
        if loc.local:
            for name in arrays:
                put(name)
        else:  # each array's shard is one PUT: sent together, not one round trip after another
            with ThreadPoolExecutor(len(arrays)) as pool:
                list(pool.map(put, arrays))
    # Durability before the marker: a crash after this loop cannot lose the shard. In object storage each chunk
    # is one PUT, durable when it returns, so the marker PUT after them is the same contract with nothing to fsync.
    for name in arrays:
        (loc / f"{kind}/{name}/c/{shard}").fsync()
    files = _shard_files(loc, kind, sorted(arrays), shard, store)
    marker = loc / ".done" / kind / f"{shard:06d}"
    marker.write_atomic(json.dumps({"rows": [lo, lo + len(next(iter(arrays.values())))], "files": files}))


def verify_shard(path: Path | Location, kind: Kind, shard: int, checksums: bool = True) -> list[str]:
    """What is wrong with a done shard's files ([] when it is intact); sizes only when `checksums` is off."""
    loc = location(path)
    marker = json.loads((loc / ".done" / kind / f"{shard:06d}").read_text())
    return _problems(loc, marker, lambda rel: (loc / rel).size() if (loc / rel).is_file() else None, checksums)


def _problems(loc: Location, marker: dict[str, Any], size_of: Any, checksums: bool) -> list[str]:
    """What is wrong with the files a marker lists; `size_of(rel)`: a file's bytes, None when it is not there."""
    files = marker.get("files")
    if files is None:
        return []  # a marker written before checksums existed: nothing to compare against
    problems, to_hash = {}, []
    for rel, (size, _) in files.items():
        got = size_of(rel)
        if got is None:
            problems[rel] = f"{rel} is missing"
        elif got != size:
            problems[rel] = f"{rel} has {got} bytes, {size} were written"
        elif checksums:
            to_hash.append(rel)
    # In a bucket a shard's files are downloaded together (a ViT-B/16 image shard: about 80 MB), not in turn.
    digests = {rel: _digest(loc / rel) for rel in to_hash} if loc.local else \
        {rel: hashlib.sha256(data).hexdigest() for rel, data in loc.read_many(to_hash).items()}
    problems.update({rel: f"{rel} does not match its checksum" for rel in to_hash if digests[rel] != files[rel][1]})
    return [problems[rel] for rel in sorted(problems)]


MARKERS_AT_ONCE = 1000  # markers read together: about a kilobyte each


def damaged_shards(path: Path | Location, checksums: bool = True) -> dict[tuple[str, int], list[str]]:
    """{(kind, shard): problems} over every done shard of a store. The files' sizes come from one listing of the
    store and the markers are read many at once: in a bucket, asking each file and marker in turn cost 750 ms
    per shard at 20 ms a request, so a resume of a store of thousands of shards waited most of an hour to start."""
    out, loc = {}, location(path)
    sizes = loc.file_sizes()
    for kind in ("images", "texts"):
        shards = sorted(done_shards(loc, kind))  # type: ignore[arg-type]
        for at in range(0, len(shards), MARKERS_AT_ONCE):
            part = {s: f".done/{kind}/{s:06d}" for s in shards[at:at + MARKERS_AT_ONCE]}
            markers = loc.read_many(list(part.values()))
            for s, rel in part.items():
                if problems := _problems(loc, json.loads(markers[rel]), sizes.get, checksums):
                    out[kind, s] = problems
    return out


def resume_command(attrs: dict[str, Any], out: Path | Location | str) -> str:
    """The `compalign extract` command that finishes (or re-checks) the store `out`, from its own attrs."""
    b, src, ext = attrs["backbone"], attrs["source"], attrs["extraction"]
    # Quoted for the shell: a webdataset root is a brace pattern (`shards/{00000..00009}.tar`) the shell would expand.
    root, dest = shlex.quote(src["root"]), shlex.quote(str(out))
    cmd = f"compalign extract --model {b['name']} --data {src['kind']} --root {root} --out {dest}"
    if b.get("pretrained") and b["name"] == b["model_name"]:
        cmd += f" --pretrained {b['pretrained']}"
    layers = [l for l in ext["layers"] if l != -1]
    extra = {"--batch-size": (ext["batch_size"], 64), "--shard-rows": (ext["shard_rows"], 256),
             "--precision": (ext["precision"], "fp32"), "--layers": (",".join(map(str, layers)), ""),
             "--segments": (ext.get("segments", "none"), "none"), "--decode": (ext.get("decode", "exact"), "exact"),
             "--crops": ((ext.get("crops") or {}).get("spec", "none"), "none")}
    return cmd + "".join(f" {flag} {v}" for flag, (v, default) in extra.items() if v != default)


def open_store(path: Path | Location, mode: Literal["r", "r+"] = "r", digests: bool = False) -> zarr.Group:
    """The store's root group; `digests`: written through a DigestStore, whose checksums `write_shard` takes."""
    path = location(path)
    if not (path / "zarr.json").exists():
        path.check()  # a remote store in a bucket that is not there: say that, not "does not exist"
        what = "does not exist" if not path.exists() else "is not a compalign cache (no zarr.json)"
        raise CacheError(f"{path} {what}. Create one with "
                         f"`compalign extract --model MODEL --data KIND --root DATA --out {path}`, "
                         "or pass the folder an earlier extraction wrote.")
    # zarr_format=3: else zarr probes for a Zarr v2 group too (.zgroup, .zattrs, .zmetadata), a round trip each
    # in a bucket, at every open
    root = zarr.open_group(DigestStore(path.zarr_store(mode, as_object=True)) if digests else path.zarr_store(mode),
                           mode=mode, zarr_format=3)
    schema = root.attrs.get("schema")
    if schema is None and CREATING in root.attrs:
        raise CacheError(f"{path} is a store whose creation was cut short. Run the `compalign extract` that made it "
                         "again: it replaces it.")
    if schema != SCHEMA:
        raise CacheError(f"{path} has schema {schema!r}; this compalign reads {SCHEMA!r}. Re-extract it with this version.")
    return root
