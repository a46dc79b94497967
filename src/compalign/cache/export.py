"""Export a Zarr cache to one HDF5 file, and read such a file through the same CacheReader.

HDF5 suits tools and clusters that prefer a single file. The export streams shard by shard
(memory stays flat) and keeps the attributes as one JSON string, so the file rebuilds itself
like the store does. Strings become UTF-8 variable-length datasets.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from .location import Location, location
from .store import SCHEMA, CacheError, damaged_shards, open_store, resume_command


def _walk(g: zarr.Group, prefix: str = "") -> Iterator[tuple[str, zarr.Array]]:
    for name, a in sorted(g.arrays()):
        yield prefix + name, a
    for name, sub in sorted(g.groups()):
        yield from _walk(sub, prefix + name + "/")


def export_hdf5(store: str | Path | Location, out: str | Path) -> Path:
    store, out = location(store), Path(out)  # the store may be in object storage; the export is a local file
    root = open_store(store, "r")
    from .reader import CacheReader  # local: the reader imports this module

    CacheReader(store).require_complete()  # an export is complete by construction
    if damaged := damaged_shards(store, checksums=False):
        (kind, s), problems = next(iter(damaged.items()))
        raise CacheError(f"{store}: {kind} shard {s} is damaged ({'; '.join(problems)}); "
                         f"rewrite it with `{resume_command(dict(root.attrs), store)}` before exporting")
    if not out.parent.is_dir():
        raise CacheError(f"{out.parent} does not exist; create it (mkdir -p {out.parent}) or pass another output file")
    if out.is_dir():
        raise CacheError(f"{out} is a folder; pass the path of the .h5 file to write")
    attrs = dict(root.attrs)
    step = int(attrs["layout"]["shard_rows"])
    tmp = out.with_name(out.name + ".partial")
    with h5py.File(tmp, "w") as f, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the .done marker folder is not a Zarr node
        f.attrs["compalign"] = json.dumps(attrs)
        for name, a in _walk(root):
            text = a.dtype.kind in ("T", "U", "O")
            dtype = h5py.string_dtype("utf-8") if text else a.dtype
            rows = max(1, min(step, a.shape[0])) if a.ndim else None
            chunks = (rows, *a.shape[1:]) if a.ndim and a.size and 0 not in a.shape else None
            d = f.create_dataset(name, shape=a.shape, dtype=dtype, chunks=chunks)
            for lo in range(0, a.shape[0] if a.ndim else 0, step):
                block = a[lo:lo + step]
                d[lo:lo + len(block)] = block.astype(object) if text else block
    tmp.rename(out)
    return out


class H5Array:
    """The slice of zarr.Array's interface the reader uses, over an h5py dataset."""

    def __init__(self, d: h5py.Dataset):
        self.d, self.path, self.shape = d, d.name, d.shape
        self._text = h5py.check_string_dtype(d.dtype) is not None
        self.dtype = np.dtypes.StringDType() if self._text else d.dtype

    @property
    def stored_bytes(self) -> int:
        return self.d.id.get_storage_size()

    def __getitem__(self, key: Any) -> np.ndarray:
        if self._text:
            return np.asarray(self.d.asstr()[key], dtype=str)
        return self.d[key]


class H5Group:
    def __init__(self, f: h5py.Group, attrs: dict[str, Any] | None = None):
        self.f = f
        self.attrs = attrs if attrs is not None else {}

    def __contains__(self, name: str) -> bool:
        return name in self.f

    def __getitem__(self, name: str) -> H5Array | H5Group:
        obj = self.f[name]
        return H5Array(obj) if isinstance(obj, h5py.Dataset) else H5Group(obj)

    def arrays(self) -> Iterator[tuple[str, H5Array]]:
        for name, obj in self.f.items():
            if isinstance(obj, h5py.Dataset):
                yield name, H5Array(obj)

    def groups(self) -> Iterator[tuple[str, H5Group]]:
        for name, obj in self.f.items():
            if isinstance(obj, h5py.Group):
                yield name, H5Group(obj)


def open_hdf5(path: Path) -> H5Group:
    f = h5py.File(path, "r")
    if "compalign" not in f.attrs:
        raise CacheError(f"{path} is not a compalign HDF5 export; make one with `compalign cache export STORE {path}`")
    attrs = json.loads(f.attrs["compalign"])
    if attrs.get("schema") != SCHEMA:
        raise CacheError(f"{path} has schema {attrs.get('schema')!r}; this compalign reads {SCHEMA!r}")
    return H5Group(f, attrs)
