"""What `compalign cache info` shows: backbone, counts, array shapes/dtypes, bytes on disk, failures."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from .location import Location
from .reader import CacheReader
from .store import CacheError, damaged_shards, resume_command


def cache_info(path: str | Path | Location, verify: bool = False) -> dict[str, Any]:
    """Everything `compalign cache info` shows; `verify` adds `damaged` ({"kind shard": problems}) and `resume`."""
    r = CacheReader(path)
    arrays = []

    def walk(g: Any, prefix: str) -> None:
        for name, a in sorted(g.arrays()):
            size = (r.path / (prefix + name)).size() if r.is_zarr else a.stored_bytes
            arrays.append({"name": prefix + name, "shape": list(a.shape), "dtype": str(a.dtype), "bytes": size})
        for name, sub in sorted(g.groups()):
            walk(sub, prefix + name + "/")

    with warnings.catch_warnings():  # the .done marker folder is not a Zarr node; zarr warns about it
        warnings.simplefilter("ignore")
        walk(r.root, "")
    lay = r.layout
    done = r.shards_done()
    out: dict[str, Any] = {}
    if verify and r.is_zarr:
        out["damaged"] = {f"{k} shard {s}": p for (k, s), p in damaged_shards(r.path).items()}
        out["resume"] = resume_command(r.attrs, r.path)
    elif verify:
        out["damaged"] = {}  # an HDF5 export has no shard markers; h5py checks its own chunk index
    try:
        ok_i, ok_t = int(r.ok("images").sum()), int(r.ok("texts").sum())
    except CacheError:  # a status chunk is gone: info still shows the rest (and --verify names the shard)
        ok_i = ok_t = -1
    return out | {
        "path": str(r.path),
        "schema": r.attrs["schema"],
        "backbone": r.backbone,
        "extraction": r.attrs["extraction"],
        "decode_check": r.attrs.get("decode_check"),  # --decode fast|gpu against exact, measured by the run
        "source": {k: v for k, v in r.attrs["source"].items() if k != "problems"},
        "problems": r.attrs["source"].get("problems", []),
        "counts": {"images": lay.n_images, "images_ok": ok_i, "texts": lay.n_texts, "texts_ok": ok_t,
                   "items": r.attrs["source"]["n_items"],
                   "image_shards_done": done["images"][0], "image_shards": done["images"][1],
                   "text_shards_done": done["texts"][0], "text_shards": done["texts"][1]},
        "arrays": arrays,
        "bytes_on_disk": r.path.size(),
        "failures": {"images": r.failures("images"), "texts": r.failures("texts")} if ok_i >= 0 else {"images": [], "texts": []},
    }
