"""What `compalign cache info` shows: backbone, counts, array shapes/dtypes, bytes on disk, failures."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import zarr

from .reader import CacheReader
from .store import done_shards, n_shards


def _bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0


def cache_info(path: str | Path) -> dict[str, Any]:
    r = CacheReader(path)
    arrays = []

    def walk(g: zarr.Group, prefix: str) -> None:
        for name, a in sorted(g.arrays()):
            arrays.append({"name": prefix + name, "shape": list(a.shape), "dtype": str(a.dtype),
                           "bytes": _bytes(r.path / (prefix + name))})
        for name, sub in sorted(g.groups()):
            walk(sub, prefix + name + "/")

    with warnings.catch_warnings():  # the .done marker folder is not a Zarr node; zarr warns about it
        warnings.simplefilter("ignore")
        walk(r.root, "")
    lay = r.layout
    ok_i, ok_t = int(r.ok("images").sum()), int(r.ok("texts").sum())
    return {
        "path": str(r.path),
        "schema": r.attrs["schema"],
        "backbone": r.backbone,
        "extraction": r.attrs["extraction"],
        "source": {k: v for k, v in r.attrs["source"].items() if k != "problems"},
        "problems": r.attrs["source"].get("problems", []),
        "counts": {"images": lay.n_images, "images_ok": ok_i, "texts": lay.n_texts, "texts_ok": ok_t,
                   "items": r.attrs["source"]["n_items"],
                   "image_shards_done": len(done_shards(r.path, "images")),
                   "image_shards": n_shards(lay.n_images, lay.shard_rows),
                   "text_shards_done": len(done_shards(r.path, "texts")), "text_shards": n_shards(lay.n_texts, lay.shard_rows)},
        "arrays": arrays,
        "bytes_on_disk": _bytes(r.path),
        "failures": {"images": r.failures("images"), "texts": r.failures("texts")},
    }
