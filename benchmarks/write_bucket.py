"""Extraction's writes to a bucket: whole shards by 1, 2 and 4 writer threads, and the requests each shard costs.

Starts moto's S3 server on 127.0.0.1 (as plan_bucket.py does) and writes `--shards` image shards of a
ViT-B/16-sized layout (256 rows x 196 patches x 768 float16; `--kind texts`: 256 captions x 77 tokens x 512
float16 and the five small text arrays) into `s3://bench/wN.zarr` through the writers
extraction uses (ShardWriter over the checksumming DigestStore), then writes them all again with their done
markers deleted, as a rerun after a crash does. Each line gives the time per shard, the MB/s of raw rows and
the S3 requests per shard by method; before them, what creating the store cost (its metadata and key columns).

    .venv/bin/python benchmarks/write_bucket.py [--kind images|texts] [--shards 8] [--delay-ms 20] [--writers 1,2,4]

`--delay-ms D` adds D ms to every request (a real bucket's round trip is tens of ms; loopback about one).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from common import log
from plan_bucket import slowed, start_moto

from compalign.cache.location import location
from compalign.cache.store import Layout, create_store, open_store
from compalign.extract.shards import ShardWriter


def write_all(url: str, kind: str, shards: list[dict[str, np.ndarray]], rows: int, writers: int) -> float:
    t = time.perf_counter()
    w = ShardWriter(open_store(url, "r+", digests=True), url, writers)
    for s, arrays in enumerate(shards):
        w.put(kind, s, s * rows, arrays)
    w.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kind", choices=["images", "texts"], default="images")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--writers", default="1,2,4")
    a = ap.parse_args()
    server, fs = start_moto()
    n, calls = a.rows * a.shards, Counter()
    texts = a.kind == "texts"
    lay = Layout(n_images=0 if texts else n, n_texts=n if texts else 0, embed_dim=512, n_patches=196, n_prefix=1,
                 image_width=768, text_len=77, text_width=512, layers=[-1], shard_rows=a.rows, chunk_rows=16)
    rng = np.random.default_rng(0)
    f16 = lambda *shape: rng.standard_normal((a.rows, *shape), dtype=np.float32).astype(np.float16)  # noqa: E731
    small = {"global": rng.standard_normal((a.rows, 512), dtype=np.float32), "status": np.ones(a.rows, np.int8),
             "error": np.full(a.rows, "", dtype=str)}
    if texts:
        shards = [{**small, "tokens": f16(77, 512), "lengths": np.full(a.rows, 12, np.int16),
                   "truncated": np.zeros(a.rows, bool)} for _ in range(a.shards)]
    else:
        shards = [{**small, "patches": f16(196, 768), "prefix": f16(1, 768)} for _ in range(a.shards)]
    mb = sum(x.nbytes for sh in shards for x in sh.values()) / 2**20
    slowed(a.delay_ms, calls)
    log(f"{a.shards} {a.kind} shards of {a.rows} ViT-B/16 rows ({mb:.0f} MiB) to a bucket on 127.0.0.1, "
        f"+{a.delay_ms:g} ms per request")
    for writers in map(int, a.writers.split(",")):
        url = f"s3://bench/w{writers}.zarr"
        keys = [f"k{i}" for i in range(n)]
        calls.clear()
        t = time.perf_counter()
        create_store(url, lay, {}, {}, *(([], [], keys, keys) if texts else (keys, keys, [], [])), {})
        print(f"writers {writers}, creating the store: {time.perf_counter() - t:.2f} s, "
              f"requests {dict(sorted(calls.items()))}")
        for run in ("new store", "rewrite (markers deleted)"):
            if run != "new store":
                (location(url) / ".done").rmtree()
            calls.clear()
            took = write_all(url, a.kind, shards, a.rows, writers)
            per = {k: round(v / a.shards, 1) for k, v in sorted(calls.items())}
            print(f"writers {writers}, {run}: {took / a.shards * 1e3:,.0f} ms/shard, {mb / took:,.0f} MB/s, "
                  f"requests per shard {per}")
        fs.rm(url.removeprefix("s3://"), recursive=True)
    server.stop()


if __name__ == "__main__":
    main()
