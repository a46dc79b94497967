"""Extraction into a bucket end to end: a new store, then the same command again (every shard done: a resume's
check of the whole store and nothing to write).

Starts moto's S3 server on 127.0.0.1 (as plan_bucket.py does), makes a pairs folder of `--n` small JPEGs and
runs `compalign extract --model tiny --data pairs --out s3://bench/e.zarr` in this process (decode workers 0,
so every request is counted and delayed by `--delay-ms`). The tiny backbone costs little, so the times are the
store's requests. To compare two versions run it with each one's `src` first on PYTHONPATH.

    .venv/bin/python benchmarks/extract_bucket.py [--n 1024] [--shard-rows 32] [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

from common import coco_like_image, log
from plan_bucket import slowed, start_moto
from typer.testing import CliRunner

import compalign
from compalign.cli.main import app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--shard-rows", type=int, default=32)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    a = ap.parse_args()
    server, _ = start_moto()
    root = Path(tempfile.mkdtemp()) / "pairs"
    (root / "img").mkdir(parents=True)
    for i in range(a.n):
        coco_like_image(i, (96, 128)).save(root / "img" / f"{i:05d}.jpg", quality=85)
    rows = [{"image": f"img/{i:05d}.jpg", "caption": f"picture {i} of a red circle left of a blue square"}
            for i in range(a.n)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    calls = Counter()
    slowed(a.delay_ms, calls)
    log(f"compalign from {Path(compalign.__file__).parent}; {a.n} pairs, shard rows {a.shard_rows}, "
        f"+{a.delay_ms:g} ms per request")
    cmd = ["extract", "--model", "tiny", "--data", "pairs", "--root", str(root), "--out", "s3://bench/e.zarr",
           "--workers", "0", "--shard-rows", str(a.shard_rows), "--device", "cpu"]
    for run in ("new store", "again (every shard done)"):
        calls.clear()
        t = time.perf_counter()
        res = CliRunner().invoke(app, cmd)
        took = time.perf_counter() - t
        assert res.exit_code == 0, res.output
        print(f"{run}: {took:.2f} s, requests {dict(sorted(calls.items()))}")
    server.stop()


if __name__ == "__main__":
    main()
