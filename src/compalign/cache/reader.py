"""Read a cache: rows by key, gathered reads, shuffled batches.

Random row reads through Zarr cost a chunk decode each; `read` therefore decodes whole shards,
keeps the most recent ones in a byte-bounded LRU and gathers rows from them in the caller's order.
A reader given a `resident_bytes` budget instead loads each array it reads whole while the budget
lasts (training: a batch's captions and negatives are scattered over every text shard, and an LRU
smaller than the text tokens decodes a shard per row); arrays beyond the budget use the LRU.

Zarr reads an absent chunk file as zeros. Every read of a row array therefore first checks that the
chunk files of the shards it touches exist (one stat per shard and array, remembered), and refuses
with the shard named and the command that rewrites it; `require_complete` refuses an unfinished store.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from ..core import NotFoundError
from .export import H5Group, open_hdf5
from .location import Location, StorageError, location
from .store import COMPLETE_CHUNKS, FAILED, OK, CacheError, Layout, chunk_file, done_shards, n_shards, open_store, resume_command

Kind = Literal["images", "texts"]
TOKEN_FIELDS = ("patches", "prefix", "tokens")  # fields stored once per extracted layer
SEGMENTS = "segments"  # a text field gathered from the segments table, not stored per row
# Image fields gathered from images/regions/ (`extract --crops`): field -> (array, the --crops that makes it).
REGIONS = {"regions_crops": ("crops", "grid"), "regions_oracle": ("oracle", "oracle")}



def _weights(backbone: dict[str, Any]) -> dict[str, Any]:
    """A `local-dir:` backbone is its weights (`checkpoint_sha`), not the folder they were read from: the shipped
    `tiny` of two checkouts, or a fine-tuned backbone copied elsewhere, is the same backbone."""
    name = str(backbone.get("model_name") or "")
    return {"model_name": "local-dir"} if name.startswith("local-dir:") and backbone.get("checkpoint_sha") else {}

class CacheReader:
    def __init__(self, path: str | Path | Location, cache_bytes: int = 512 * 2**20, resident_bytes: int = 0):
        self.path = location(path)  # a local folder or file, or an object-storage URL (read as it streams)
        self.cache_bytes = cache_bytes  # decoded shards kept for scattered reads (bounded memory)
        self.resident_bytes = resident_bytes  # whole decoded arrays kept once read (0: none)
        self._lru: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._lru_bytes = 0
        self._whole: dict[str, np.ndarray | None] = {}  # array path -> whole decoded array (None: over budget)
        self._whole_bytes = 0
        self._arrays: dict[str, Any] = {}
        # A Zarr store, or its single-file HDF5 export (same interface, read-only).
        if self.path.suffix in (".h5", ".hdf5") and not self.path.local:
            raise StorageError(f"{self.path}: HDF5 exports are read from a local file; copy it here, or read the Zarr store "
                               "in object storage directly")
        self.root: Any = open_hdf5(self.path.path) if self.path.suffix in (".h5", ".hdf5") else open_store(self.path, "r")
        self.attrs: dict[str, Any] = dict(self.root.attrs)
        self.layout = Layout(**self.attrs["layout"])
        self.is_zarr = not isinstance(self.root, H5Group)
        self._present: set[tuple[str, int]] = set()  # (array, shard) whose chunk file was seen
        self._listed: set[str] = set()  # arrays in object storage whose chunks were listed at once

    # ---- completeness ----------------------------------------------------------------------
    def shards_done(self) -> dict[str, tuple[int, int]]:
        """kind -> (shards done, shards in all); an HDF5 export is complete by construction."""
        lay = self.layout
        total = {"images": n_shards(lay.n_images, lay.shard_rows), "texts": n_shards(lay.n_texts, lay.shard_rows)}
        if not self.is_zarr:
            return {k: (n, n) for k, n in total.items()}
        return {k: (len(done_shards(self.path, k)), n) for k, n in total.items()}  # type: ignore[arg-type]

    def require_complete(self) -> None:
        """Refuse a store whose extraction has not finished (its pending rows would read as zeros)."""
        left = {k: (d, n) for k, (d, n) in self.shards_done().items() if d < n}
        if left:
            what = ", ".join(f"{k} {d}/{n} shards done" for k, (d, n) in left.items())
            raise CacheError(f"{self.path} is unfinished ({what}): its extraction was stopped before the end. "
                             f"Finish it with `{resume_command(self.attrs, self.path)}` (it resumes where it stopped).")

    def _check_chunks(self, arr: Any, lo: int, hi: int) -> None:
        """Refuse to read rows lo..hi of `arr` if a chunk file they live in is absent (Zarr would give zeros)."""
        if not self.is_zarr or not self.attrs.get(COMPLETE_CHUNKS) or not arr.path.startswith(("images/", "texts/")):
            return
        step = self.layout.shard_rows
        if not self.path.local and arr.path not in self._listed:
            # One listing per array instead of a HEAD per shard. An object store has no folders: a shard's prefix
            # `c/S` is listed only while an object (its one chunk file: the shards are whole chunks) is under it.
            self._listed.add(arr.path)
            self._present.update((arr.path, int(n)) for n in (self.path / arr.path / "c").names() if n.isdigit())
        for s in range(lo // step, (hi - 1) // step + 1 if hi > lo else lo // step):
            if (arr.path, s) in self._present:
                continue
            f = chunk_file(self.path, arr.path, arr.shape, s)
            if f is not None and not f.is_file():
                kind = arr.path.split("/")[0]
                done = s in done_shards(self.path, kind)  # type: ignore[arg-type]
                why = "is marked done but its chunk file is gone" if done else "has not been extracted yet"
                raise CacheError(f"{self.path}: {kind} shard {s} {why} ({f.relative_to(self.path)} is missing). "
                                 f"Rewrite it with `{resume_command(self.attrs, self.path)}`"
                                 + (" (resume verifies every done shard and rewrites the damaged ones)." if done else "."))
            self._present.add((arr.path, s))

    def column(self, name: str) -> np.ndarray:
        """A whole row array by path (`texts/strings`), its chunk files checked first."""
        arr = self.root[name]
        self._check_chunks(arr, 0, arr.shape[0])
        return arr[:]

    def columns(self, names: list[str]) -> list[np.ndarray]:
        """`column` of each name, read at once: in a bucket a column is its metadata, a listing and its chunks,
        three round trips in turn, so columns read one after another wait for each other's."""
        with ThreadPoolExecutor(max(1, len(names))) as pool:
            return list(pool.map(self.column, names))

    # ---- identity ------------------------------------------------------------------------
    @property
    def backbone(self) -> dict[str, Any]:
        return self.attrs["backbone"]

    @property
    def fingerprint(self) -> str:
        """Identifies (backbone, source, extraction): heads trained on one cache check it on another."""
        ident = {"backbone": {**self.attrs["backbone"], **_weights(self.backbone)}, "extraction": self.attrs["extraction"]}
        ident["source"] = self.attrs["source"]["fingerprint"]
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def backbone_id(self) -> str:
        """Identifies the backbone alone (same weights ⇒ same id, whatever the data)."""
        b = self.backbone
        ident = {**{k: b.get(k) for k in ("model_name", "pretrained", "checkpoint_sha", "seed")}, **_weights(b)}
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

    # ---- keys and status -----------------------------------------------------------------
    @cached_property
    def _keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(image keys, text keys): every lookup of rows by key needs both."""
        images, texts = self.columns(["images/keys", "texts/keys"])
        return images, texts

    @property
    def image_keys(self) -> np.ndarray:
        return self._keys[0]

    @property
    def text_keys(self) -> np.ndarray:
        return self._keys[1]

    @cached_property
    def _index(self) -> dict[str, dict[str, int]]:
        return {
            "images": {k: i for i, k in enumerate(self.image_keys.tolist())},
            "texts": {k: i for i, k in enumerate(self.text_keys.tolist())},
        }

    def rows(self, kind: Kind, keys: Any) -> np.ndarray:
        """Row numbers of `keys`; a key not in the store raises with the key named."""
        index = self._index[kind]
        try:
            return np.fromiter((index[k] for k in keys), dtype=np.int64)
        except KeyError as e:
            raise NotFoundError(f"{kind} key {e.args[0]!r} is not in the cache {self.path}") from None

    def status(self, kind: Kind) -> np.ndarray:
        return self.column(f"{kind}/status")

    def ok(self, kind: Kind) -> np.ndarray:
        return self.status(kind) == OK

    def ok_many(self, kinds: list[Kind]) -> list[np.ndarray]:
        """`ok` of each kind, their status columns read at once (`columns`)."""
        return [status == OK for status in self.columns([f"{kind}/status" for kind in kinds])]

    def failures(self, kind: Kind) -> list[tuple[int, str, str]]:
        """(row, origin, reason) of every failed row."""
        st = self.status(kind)
        bad = np.flatnonzero(st == FAILED)
        if not len(bad):
            return []
        err = self.column(f"{kind}/error")
        origin = self.column("images/origin" if kind == "images" else "texts/strings")
        return [(int(i), str(origin[i]), str(err[i])) for i in bad]

    @cached_property
    def items(self) -> dict[str, np.ndarray]:
        return _read_all(self.root["items"])

    @cached_property
    def segments(self) -> dict[str, np.ndarray]:
        """The segments table ({caption, segment, kind}: text keys, kinds), empty for a store without segments."""
        if "segments" not in self.root:
            return {}
        return _read_all(self.root["segments"])

    @cached_property
    def _segment_index(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR of text row -> segment text rows: (offsets (M + 1,), rows (S,)), segments in caption order.

        Built once per reader; a segment whose string failed to encode is left out here, so no batch reads the
        status column again."""
        seg = self.segments
        if not seg:
            raise NotFoundError(f"{self.path} has no caption segments; re-extract with `--segments rules`")
        cap, rows = self.rows("texts", seg["caption"]), self.rows("texts", seg["segment"])
        good = self.ok("texts")[rows]
        cap, rows = cap[good], rows[good]
        order = np.argsort(cap, kind="stable")
        counts = np.bincount(cap, minlength=self.layout.n_texts)
        return np.concatenate([[0], np.cumsum(counts)]), rows[order]

    def segment_rows(self, rows: np.ndarray) -> np.ndarray:
        """(B, S) text rows of each caption's encoded segments, -1 padded; S = the most segments any of them has."""
        offsets, seg = self._segment_index
        lo, n = offsets[rows], offsets[rows + 1] - offsets[rows]
        width = int(n.max(initial=0))
        out = np.full((len(rows), width), -1, dtype=np.int64)
        mask = np.arange(width)[None, :] < n[:, None]
        out[mask] = seg[(lo[:, None] + np.arange(width)[None, :])[mask]]
        return out

    def select_items(self, rows: np.ndarray) -> CacheReader:
        """The same store with only items `rows` (in that order): a benchmark scores a subset of its items, e.g. one
        fold of a cross-validation. The open store and arrays are shared; the decoded-shard caches are its own."""
        view = copy.copy(self)
        view._lru, view._lru_bytes, view._whole, view._whole_bytes = OrderedDict(), 0, {}, 0
        view.__dict__["items"] = {k: v[rows] for k, v in self.items.items()}
        return view

    def projection(self, name: Literal["image", "text", "text_bias"]) -> np.ndarray | None:
        key = f"proj/{name}"
        return self.root[key][:] if key in self.root else None

    # ---- features --------------------------------------------------------------------------
    def array(self, kind: Kind, field: str, layer: int = -1) -> zarr.Array:
        name = f"{kind}/{field}" if layer == -1 else f"{kind}/layers/{layer}/{field}"
        if name not in self._arrays:  # opening a Zarr array reads its metadata (~1 ms): once per reader
            if name not in self.root:
                have = self.layout.layers if kind == "images" else self.layout.layers_text
                raise NotFoundError(f"{name} is not in {self.path} ({kind} layers extracted: {have}); re-extract with --layers")
            self._arrays[name] = self.root[name]
        return self._arrays[name]

    def read(self, kind: Kind, field: str, rows: np.ndarray, layer: int = -1) -> np.ndarray:
        """Rows in the caller's order (repeats allowed).

        Whole shards are decoded and kept in a small LRU (bounded by `cache_bytes`), so scattered
        reads (a training batch's captions and negatives) cost one decode per shard, not per row.
        """
        arr = self.array(kind, field, layer)
        rows = np.asarray(rows, dtype=np.int64)
        whole = self._resident(arr)
        if whole is not None:
            return whole[rows]
        out = np.empty((len(rows), *arr.shape[1:]), dtype=arr.dtype)
        if not len(rows):
            return out
        step = self.layout.shard_rows
        shard_of = rows // step
        for s in np.unique(shard_of):
            at = np.flatnonzero(shard_of == s)
            out[at] = self._shard(arr, int(s))[rows[at] - s * step]
        return out

    def has_regions(self, field: str) -> bool:
        """Does the store hold the image regions of `field` (`regions_crops`, `regions_oracle`)?"""
        return f"images/regions/{REGIONS[field][0]}" in self.root

    def require_regions(self, field: str) -> None:
        """Refuse a store without the regions of `field`, naming the extraction flag that makes them."""
        if not self.has_regions(field):
            name, flag = REGIONS[field]
            more = " (a shapes world's benchmark folder: its true object boxes)" if flag == "oracle" else ""
            raise NotFoundError(f"{self.path} has no {name} regions (images/regions/{name}); re-extract with "
                                f"`--crops {flag}`{more}")

    def gather(self, kind: Kind, fields: tuple[str, ...], rows: np.ndarray, layer: int = -1) -> dict[str, np.ndarray]:
        """`fields` of `rows` as one batch: token fields from `layer`, the rest from the top; `lengths` with tokens.

        `segments` (texts) is each caption's segments' global embeddings, (B, S, E) zero-padded, with
        `segment_mask` (B, S) bool. `regions_crops` (images) is the (B, R, E) global embeddings of each image's
        grid crops (`extract --crops grid`); `regions_oracle` the (B, R, E) embeddings of its true object boxes,
        zero-padded, with `regions_oracle_mask` (B, R) bool (`extract --crops oracle`)."""
        stored = [f for f in fields if f != SEGMENTS and not (kind == "images" and f in REGIONS)]
        batch = {f: self.read(kind, f, rows, layer if f in TOKEN_FIELDS else -1) for f in stored}
        if kind == "texts" and "tokens" in fields:
            batch["lengths"] = self.read("texts", "lengths", rows)
        if kind == "texts" and SEGMENTS in fields:
            seg = self.segment_rows(rows)  # (B, S)
            mask = seg >= 0
            emb = np.zeros((*seg.shape, self.layout.embed_dim), dtype=np.float32)
            emb[mask] = self.read("texts", "global", seg[mask])
            batch[SEGMENTS], batch["segment_mask"] = emb, mask
        for f in fields:
            if kind == "images" and f in REGIONS:
                self.require_regions(f)
                name = REGIONS[f][0]
                batch[f] = self.read("images", f"regions/{name}", rows)
                if name == "oracle":
                    batch[f + "_mask"] = self.read("images", "regions/oracle_mask", rows)
        return batch

    def _resident(self, arr: zarr.Array) -> np.ndarray | None:
        """The whole decoded array if it is (or now fits) in the resident budget, else None."""
        if arr.path not in self._whole:
            size = int(np.prod(arr.shape)) * arr.dtype.itemsize
            fits = self._whole_bytes + size <= self.resident_bytes
            if fits:
                self._check_chunks(arr, 0, arr.shape[0])
            self._whole[arr.path] = arr[...] if fits else None
            self._whole_bytes += size if fits else 0
        return self._whole[arr.path]

    def _shard(self, arr: zarr.Array, s: int) -> np.ndarray:
        key = (arr.path, s)
        hit = self._lru.pop(key, None)
        if hit is None:
            step = self.layout.shard_rows
            self._check_chunks(arr, s * step, min(arr.shape[0], (s + 1) * step))
            hit = arr[s * step:min(arr.shape[0], (s + 1) * step)]
            self._lru_bytes += hit.nbytes
            while self._lru and self._lru_bytes > self.cache_bytes:
                _, old = self._lru.popitem(last=False)
                self._lru_bytes -= old.nbytes
        self._lru[key] = hit  # most recently used last
        return hit

    def batches(self, kind: Kind, field: str, batch_size: int, shuffle: bool = False, seed: int = 0,
                layer: int = -1, buffer_shards: int = 4) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, values) batches streaming shard by shard; shuffled across a buffer of shards.

        Memory is bounded by `buffer_shards` shards whatever the store size.
        """
        arr = self.array(kind, field, layer)
        n, step = arr.shape[0], self.layout.shard_rows
        order = np.arange((n + step - 1) // step)
        rng = np.random.default_rng(seed)
        if shuffle:
            rng.shuffle(order)
        for g in range(0, len(order), buffer_shards):
            group = order[g:g + buffer_shards]
            rows = np.concatenate([np.arange(s * step, min(n, (s + 1) * step)) for s in group])
            for s in group:
                self._check_chunks(arr, s * step, min(n, (s + 1) * step))
            vals = np.concatenate([arr[s * step:min(n, (s + 1) * step)] for s in group])
            perm = rng.permutation(len(rows)) if shuffle else np.arange(len(rows))
            for b in range(0, len(perm), batch_size):
                sel = perm[b:b + batch_size]
                yield rows[sel], vals[sel]


def open_cache(path: str | Path | Location) -> CacheReader:
    return CacheReader(path)


def _read_all(group: zarr.Group) -> dict[str, np.ndarray]:
    """Every array of a table group, whole, by name. The arrays come open from the group's listing (opening one
    again by name would fetch its metadata twice: a round trip each in a bucket) and are read all at once."""
    arrays = sorted(group.arrays(), key=lambda na: na[0])
    with ThreadPoolExecutor(max(1, len(arrays))) as pool:
        return dict(zip([n for n, _ in arrays], pool.map(lambda na: na[1][:], arrays)))

