"""Planning data in a bucket: a folder's objects one at a time vs READ_AHEAD at once; webdataset shards read vs
replayed from the planning cache.

Starts moto's S3 server on 127.0.0.1 (what tests/e2e/test_s3.py uses) and uploads N COCO-size JPEGs.
`--data pairs` (with a pairs.jsonl) and `--data aro` (a visual_genome_relation.json, a box per image): planned
with READ_AHEAD = 1 (one GET in flight, as planning read objects before) and at its default.
`--data webdataset`: as tar shards of `--shard-size` samples, planned with no planning cache, filling one, and
from it (an unchanged shard is replayed, not read). The plans must be equal.
Each line gives the S3 requests made. A loopback server answers in about a millisecond; a real bucket takes
tens, so the gain there is larger than the one printed here.

    .venv/bin/python benchmarks/plan_bucket.py [--data pairs|aro|webdataset] [--n 500] [--delay-ms 0]

`--delay-ms D` adds D ms to every request the client makes (a stand-in for a real bucket's latency).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import coco_like_image, log

import compalign.extract.sources.remote as remote
from compalign.extract.sources import PlanCache, plan_source


def start_moto():
    """(moto's S3 server on a free 127.0.0.1 port, an s3fs client of it with the bucket `bench` made); the
    AWS_* variables point at it, so compalign's own clients (and forked workers) reach it too."""
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x",
                      AWS_DEFAULT_REGION="us-east-1")
    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    return server, fs


def jpegs(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        coco_like_image(i).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def upload_pairs(fs, images: list[bytes]) -> str:
    rows = []
    for i, data in enumerate(images):
        fs.pipe_file(f"bench/pairs/img/{i:06d}.jpg", data)
        rows.append({"image": f"img/{i:06d}.jpg", "caption": f"picture {i}"})
    fs.pipe_file("bench/pairs/pairs.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    return "s3://bench/pairs"


def upload_aro(fs, images: list[bytes]) -> str:
    rows = []
    for i, data in enumerate(images):
        fs.pipe_file(f"bench/aro/images/{i:06d}.jpg", data)
        rows.append({"image_path": f"{i:06d}.jpg", "bbox_x": 40, "bbox_y": 30, "bbox_w": 300, "bbox_h": 200,
                     "relation_name": "on", "true_caption": f"the cup is on table {i}",
                     "false_caption": f"the table is on cup {i}"})
    fs.pipe_file("bench/aro/visual_genome_relation.json", json.dumps(rows).encode())
    return "s3://bench/aro"


def upload_shards(fs, images: list[bytes], per_shard: int) -> str:
    shards = (len(images) + per_shard - 1) // per_shard
    for s in range(shards):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            for i in range(s * per_shard, min(len(images), (s + 1) * per_shard)):
                for ext, data in (("jpg", images[i]), ("txt", f"picture {i}".encode())):
                    info = tarfile.TarInfo(f"{i:09d}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
        fs.pipe_file(f"bench/wds/{s:05d}.tar", buf.getvalue())
    return f"s3://bench/wds/{{00000..{shards - 1:05d}}}.tar"


def slowed(delay_ms: float, calls: Counter) -> None:
    """Count every request any s3fs client of this process makes (compalign's, zarr's) by its S3 method, and add
    `delay_ms` to each. Patched on the class: fsspec keeps an instance per set of options, and zarr makes its own."""
    import s3fs

    real = s3fs.S3FileSystem._call_s3

    async def call(self, method, *a, **k):
        import asyncio

        calls[method] += 1
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        return await real(self, method, *a, **k)

    s3fs.S3FileSystem._call_s3 = call


def bench_read_ahead(fs, kind: str, root: str, calls: Counter, what: str) -> None:
    default, plans, times = remote.READ_AHEAD, {}, {}
    for ahead in (1, default):
        remote.READ_AHEAD, _, _ = ahead, calls.clear(), fs.invalidate_cache()  # listed anew, as by a new process
        t = time.perf_counter()
        plans[ahead] = plan_source(kind, root)
        times[ahead] = time.perf_counter() - t
        log(f"READ_AHEAD {ahead}: planned {len(plans[ahead].images)} images in {times[ahead]:.2f} s, {dict(calls)}")
    assert [r.key for r in plans[1].images] == [r.key for r in plans[default].images]
    print(f"{what}, {kind}: one GET at a time {times[1]:.2f} s, {default} at a time {times[default]:.2f} s "
          f"({times[1] / times[default]:.1f}x)")


def bench_shards(fs, root: str, calls: Counter, what: str) -> None:
    db, plans, times = Path(tempfile.mkdtemp()) / "plan-cache.sqlite", {}, {}
    for run in ("no cache", "filling the cache", "from the cache"):
        hashes, _, _ = (None if run == "no cache" else PlanCache(db)), calls.clear(), fs.invalidate_cache()
        t = time.perf_counter()
        plans[run] = plan_source("webdataset", root, hashes=hashes)
        times[run] = time.perf_counter() - t
        if hashes is not None:
            hashes.close()
        log(f"{run}: planned {len(plans[run].images)} images in {times[run]:.2f} s, requests {dict(calls)}")
    assert all(p.items == plans["no cache"].items for p in plans.values())
    print(f"{what}: " + ", ".join(f"{run} {t:.2f} s" for run, t in times.items())
          + f" ({times['no cache'] / times['from the cache']:.0f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", choices=["pairs", "aro", "webdataset"], default="pairs")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--shard-size", type=int, default=100, help="webdataset: samples per tar shard")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
    server, fs = start_moto()
    images, calls = jpegs(args.n), Counter()
    upload = {"pairs": upload_pairs, "aro": upload_aro, "webdataset": lambda fs, im: upload_shards(fs, im, args.shard_size)}
    root = upload[args.data](fs, images)
    slowed(args.delay_ms, calls)
    what = f"{args.n} COCO-size JPEGs in a bucket on 127.0.0.1 (+{args.delay_ms:g} ms per request)"
    if args.data != "webdataset":
        bench_read_ahead(fs, args.data, root, calls, what)
    else:
        mb = fs.du("bench/wds") / 2**20
        bench_shards(fs, root, calls, f"{what}, {args.data} shards of {args.shard_size} ({mb:.0f} MiB)")
    server.stop()


if __name__ == "__main__":
    main()
