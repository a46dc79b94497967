"""Planning time with and without the planning cache, for a folder of images and for tar shards of the same images.

N COCO-sized JPEGs are written once as a pairs folder and as webdataset shards (mtimes set an hour back, so
the cache records them). Each is planned without the cache, then twice with it (the first run fills it).
The files sit in the page cache here, so the ratio is the hashing and reading saved, not a cold disk's
seek time (on a network filesystem or a cold disk the uncached plan is slower still).

    .venv/bin/python benchmarks/plan_cache.py [--n 1000]

The last line plans the folder without the cache with one hashing thread and with HASH_THREADS (every
core, at most 16): what a first plan costs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

from common import coco_like_image

import compalign.extract.sources.base as base
from compalign.extract.sources import PlanCache, plan_source


def make(root: Path, n: int) -> tuple[Path, str]:
    (root / "pairs" / "img").mkdir(parents=True)
    shards, rows = root / "shards", []
    shards.mkdir()
    for lo in range(0, n, 250):  # 250 samples per shard
        with tarfile.open(shards / f"{lo // 250:05d}.tar", "w") as tf:
            for i in range(lo, min(n, lo + 250)):
                buf = io.BytesIO()
                coco_like_image(i).save(buf, format="JPEG", quality=90)
                (root / "pairs" / "img" / f"{i:06d}.jpg").write_bytes(buf.getvalue())
                rows.append({"image": f"img/{i:06d}.jpg", "caption": f"picture {i}"})
                for ext, data in (("jpg", buf.getvalue()), ("txt", f"picture {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    (root / "pairs" / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    old = time.time() - 3600
    for p in [*(root / "pairs" / "img").iterdir(), *shards.iterdir()]:
        os.utime(p, (old, old))
    return root / "pairs", str(shards / f"{{00000..{(n - 1) // 250:05d}}}.tar")


def timed(kind: str, root, db: Path | None) -> float:
    cache = PlanCache(db) if db else None
    t0 = time.perf_counter()
    plan_source(kind, root, hashes=cache)
    seconds = time.perf_counter() - t0
    if cache:
        cache.close()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1000, help="images")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pairs, pattern = make(Path(tmp), args.n)
        for kind, root in (("pairs", pairs), ("webdataset", pattern)):
            db = Path(tmp) / f"{kind}.sqlite"
            plain, fill, warm = timed(kind, root, None), timed(kind, root, db), timed(kind, root, db)
            print(f"{kind:10s} {args.n} images: no cache {plain:.2f} s, filling {fill:.2f} s, cached {warm:.2f} s "
                  f"(cached / no cache = {warm / plain:.2f})")
        threads, base.HASH_THREADS = base.HASH_THREADS, 1  # a folder's files hashed one at a time, as before
        serial = min(timed("pairs", pairs, None) for _ in range(3))
        base.HASH_THREADS = threads
        parallel = min(timed("pairs", pairs, None) for _ in range(3))
        print(f"pairs      {args.n} images, no cache, best of 3: 1 hashing thread {serial:.2f} s, {threads} threads "
              f"{parallel:.2f} s ({serial / parallel:.2f}x)")


if __name__ == "__main__":
    main()
