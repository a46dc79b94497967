"""Planning a pairs folder in a bucket: the objects read one at a time vs READ_AHEAD at once.

Starts moto's S3 server on 127.0.0.1 (what tests/e2e/test_s3.py uses), uploads N COCO-size JPEGs and a
pairs.jsonl, and plans `--data pairs --root s3://...` with READ_AHEAD = 1 (one GET in flight, as planning
read objects before) and at its default. Both plans must be equal. A loopback server answers in about a
millisecond; a real bucket takes tens, so the gain there is larger than the one printed here.

    .venv/bin/python benchmarks/plan_bucket.py [--n 500] [--delay-ms 0]

`--delay-ms D` adds D ms to every GET the server answers (a stand-in for a real bucket's latency).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import socket
import time

from common import coco_like_image, log

import compalign.extract.sources.remote as remote
from compalign.extract.sources import plan_source


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args()
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
    rows = []
    for i in range(args.n):
        buf = io.BytesIO()
        coco_like_image(i).save(buf, format="JPEG", quality=90)
        fs.pipe_file(f"bench/pairs/img/{i:06d}.jpg", buf.getvalue())
        rows.append({"image": f"img/{i:06d}.jpg", "caption": f"picture {i}"})
    fs.pipe_file("bench/pairs/pairs.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    if args.delay_ms:
        real = fs._cat_file

        async def slow(*a, **k):
            import asyncio

            await asyncio.sleep(args.delay_ms / 1000)
            return await real(*a, **k)

        fs._cat_file = slow  # the instance planning uses (fsspec keeps one per set of options)
    default, plans, times = remote.READ_AHEAD, {}, {}
    for ahead in (1, default):
        remote.READ_AHEAD = ahead
        t = time.perf_counter()
        plans[ahead] = plan_source("pairs", "s3://bench/pairs")
        times[ahead] = time.perf_counter() - t
        log(f"READ_AHEAD {ahead}: planned {len(plans[ahead].images)} images in {times[ahead]:.2f} s")
    assert [r.key for r in plans[1].images] == [r.key for r in plans[default].images]
    print(f"{args.n} COCO-size JPEGs in a bucket on 127.0.0.1 (+{args.delay_ms:g} ms per GET): one GET at a time "
          f"{times[1]:.2f} s, {default} at a time {times[default]:.2f} s ({times[1] / times[default]:.1f}x)")
    server.stop()


if __name__ == "__main__":
    main()
