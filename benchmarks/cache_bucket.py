"""Training's reads from a cache in a bucket: what a request per chunk costs, with and without s3fs's size HEAD.

Uploads the 1,000-scene train cache of train_input.py (made once with the `tiny` backbone) to moto's S3 server
on 127.0.0.1 and gathers `--steps` tflocal training batches from it through a fresh CacheReader, with the shard
LRU only and with arrays resident (what training uses), local and in the bucket. In the bucket twice: with
s3fs's default `max_concurrency=10` (a HEAD before every whole-object GET: how readers ran before) and with the
reader's default now (`max_concurrency=1`: one GET per chunk). Each line gives the S3 requests by method.

    .venv/bin/python benchmarks/cache_bucket.py [--steps 30] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from common import log
from plan_bucket import slowed, start_moto
from train_input import default_cache

from compalign.cache.location import location
from compalign.cache.reader import CacheReader
from compalign.heads import create_head
from compalign.heads.data import Planner, gather_batch, load_pairs
from compalign.heads.train import TrainConfig


def gather(where, steps: int, resident_mb: int, cfg: TrainConfig) -> tuple[float, float]:
    """(seconds to open the reader and load the pairs, seconds to gather `steps` batches)."""
    t = time.perf_counter()
    reader = CacheReader(where, cache_bytes=cfg.reader_cache_mb * 2**20, resident_bytes=resident_mb * 2**20)
    head = create_head("tflocal")
    head.attach(reader)
    pairs = load_pairs(reader)
    plan = Planner(pairs, cfg.batch_size, cfg.n_hard, seed=0, shard_rows=reader.layout.shard_rows)
    opened = time.perf_counter()
    for s in range(steps):
        gather_batch(reader, head, pairs, plan.plan(s).items, plan.plan(s).negs)
    return opened - t, time.perf_counter() - opened


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/compalign-train-input"))
    a = ap.parse_args()
    cache = default_cache(a.work)
    server, fs = start_moto()
    fs.put(str(cache), "bench/train.zarr", recursive=True)
    calls, cfg = Counter(), TrainConfig(batch_size=64, n_hard=2)
    slowed(a.delay_ms, calls)
    url = "s3://bench/train.zarr"
    log(f"{a.steps} tflocal batches of 64 (+2 hard negatives) from the tiny train cache; +{a.delay_ms:g} ms per request")
    for what, where in (("local", cache), ("bucket, s3fs default (before)", location(url, {"max_concurrency": 10})),
                        ("bucket, reader default (now)", url)):
        for resident in (0, cfg.reader_resident_mb):
            calls.clear()
            opened, took = gather(where, a.steps, resident, cfg)
            print(f"{what}, {'arrays resident' if resident else 'shard LRU only'}: open {opened:.2f} s, {a.steps} "
                  f"batches {took:.2f} s, requests {dict(sorted(calls.items()))}")
    server.stop()


if __name__ == "__main__":
    main()
