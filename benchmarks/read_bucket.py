"""Extraction's reads from a bucket: a batch's images one request at a time vs together (sources/reads.py).

Starts moto's S3 server on 127.0.0.1 (as plan_bucket.py does), uploads N COCO-size JPEGs as a pairs folder
(`--data pairs`: one object per image) or as tar shards (`--data webdataset`), plans them, and then reads the
plan's images in batches as a decoding worker does: each image by its own request (`ImageRef.read`, how the
workers read before), and a batch at once (`read_refs`: the objects concurrently, a shard's members as one
range). Then the same with each row decoded and preprocessed for ViT-B-16 (224 px), in this one process: the
rate of one decoding worker. The bytes must be equal.

    .venv/bin/python benchmarks/read_bucket.py [--data pairs|webdataset] [--n 512] [--batch-size 128] [--delay-ms 20]

`--delay-ms D` adds D ms to every request (a real bucket's first byte takes tens of ms; loopback about one).
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from common import log
from plan_bucket import jpegs, slowed, start_moto, upload_pairs, upload_shards

from compalign.extract.image_rows import ImageRows
from compalign.extract.sources import plan_source
from compalign.extract.sources.reads import read_refs


def timed(batches, fn) -> tuple[float, list]:
    t, out = time.perf_counter(), []
    for b in batches:
        out += fn(b)
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["pairs", "webdataset"], default="pairs")
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=256, help="webdataset: samples per tar shard")
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args()
    import open_clip

    server, fs = start_moto()
    images = jpegs(args.n)
    root = upload_pairs(fs, images) if args.data == "pairs" else upload_shards(fs, images, args.shard_size)
    plan = plan_source(args.data, root)
    calls = Counter()
    slowed(args.delay_ms, calls)
    refs, n = plan.images, len(plan.images)
    batches = [refs[i:i + args.batch_size] for i in range(0, n, args.batch_size)]
    what = (f"{n} COCO-size JPEGs ({args.data}) in a bucket on 127.0.0.1, +{args.delay_ms:g} ms per request, "
            f"batch {args.batch_size}")

    rates = {}
    for how, fn in (("one request per image", lambda b: [r.read() for r in b]), ("a batch at once", read_refs)):
        calls.clear(), fs.invalidate_cache()  # a decoding worker has not listed the bucket: it knows no sizes
        rates[how], got = timed(batches, fn)
        assert got == images[:n] if args.data == "pairs" else len(got) == n
        log(f"read, {how}: {n / rates[how]:,.0f} img/s, {dict(calls)}")
    print(f"{what}: reads {n / rates['one request per image']:,.0f} -> {n / rates['a batch at once']:,.0f} img/s "
          f"({rates['one request per image'] / rates['a batch at once']:.1f}x)")

    preprocess = open_clip.image_transform(224, is_train=False)
    ds = ImageRows(refs, preprocess)
    rows = [list(range(i, min(n, i + args.batch_size))) for i in range(0, n, args.batch_size)]
    for how, fn in (("one request per image", lambda b: [ds[r] for r in b]), ("a batch at once", ds.__getitems__)):
        fs.invalidate_cache()
        rates[how], got = timed(rows, fn)
        assert all(err is None for _, _, _, err, _ in got)
    print(f"{what}: read + decode + preprocess (one worker) {n / rates['one request per image']:,.0f} -> "
          f"{n / rates['a batch at once']:,.0f} img/s ({rates['one request per image'] / rates['a batch at once']:.1f}x)")
    server.stop()


if __name__ == "__main__":
    main()
