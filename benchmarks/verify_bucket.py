"""What a resume of a store in a bucket checks before it starts: every done shard against its marker's sizes.

Starts moto's S3 server on 127.0.0.1 (as plan_bucket.py does), writes `--shards` small text shards through the
writers extraction uses, then checks them twice in the same process: shard by shard (`verify_shard`, each file
asked on its own, as a resume did before) and as a resume does now (`damaged_shards`: one listing of the store
for every size, the markers read at once). Each line gives the time and the S3 requests by method. The check's
cost is per shard and per file, not per byte, so small shards show it; a COCO-size store has thousands.

    .venv/bin/python benchmarks/verify_bucket.py [--shards 40] [--delay-ms 20] [--rows 8]

A last line times `cache info --verify`'s check (`damaged_shards` with checksums: every chunk downloaded).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from common import log
from plan_bucket import slowed, start_moto

from compalign.cache.store import Layout, create_store, damaged_shards, done_shards, open_store, verify_shard
from compalign.extract.shards import ShardWriter


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shards", type=int, default=40)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    a = ap.parse_args()
    server, _ = start_moto()
    n, calls, url = a.rows * a.shards, Counter(), "s3://bench/verify.zarr"
    lay = Layout(n_images=0, n_texts=n, embed_dim=8, n_patches=4, n_prefix=1, image_width=8, text_len=4,
                 text_width=8, layers=[-1], shard_rows=a.rows, chunk_rows=a.rows)
    keys = [f"k{i}" for i in range(n)]
    create_store(url, lay, {}, {}, [], [], keys, keys, {})
    w = ShardWriter(open_store(url, "r+", digests=True), url, 4)
    r = a.rows
    for s in range(a.shards):
        w.put("texts", s, s * r, {"global": np.ones((r, 8), np.float32), "tokens": np.ones((r, 4, 8), np.float16),
                                  "status": np.ones(r, np.int8), "error": np.full(r, "", dtype=str),
                                  "lengths": np.ones(r, np.int16), "truncated": np.zeros(r, bool)})
    w.close()
    slowed(a.delay_ms, calls)
    log(f"{a.shards} done text shards (6 chunk files each) in a bucket on 127.0.0.1, +{a.delay_ms:g} ms per request")
    ways = {"shard by shard (before)": lambda: [verify_shard(url, "texts", s, False) for s in sorted(done_shards(url, "texts"))],
            "one listing, markers at once (now)": lambda: damaged_shards(url, checksums=False),
            "with checksums (cache info --verify)": lambda: damaged_shards(url, checksums=True)}
    for what, check in ways.items():
        calls.clear()
        t = time.perf_counter()
        found = check()
        took = time.perf_counter() - t
        assert not any(found), found
        print(f"{what}: {took:.2f} s, {took / a.shards * 1e3:,.0f} ms per shard, requests {dict(sorted(calls.items()))}")
    server.stop()


if __name__ == "__main__":
    main()
