"""What the done-marker checksums cost: hashing a shard's files vs writing the shard, in this process.

Writes `--shards` image shards of a ViT-B/16-sized layout (256 rows x 196 patches x 768 float16 by
default) through `write_shard` and times the sha256 of their files (`_shard_files`) separately, so the
ratio says what share of a shard's write the checksums add; then writes the same shards again through the
DigestStore extraction uses (`open_store(..., digests=True)`: checksums of the bytes as they are handed to
the store, no read back). Resume verifies every done shard: the last line times `damaged_shards` over the
whole store against reading it back.

    .venv/bin/python benchmarks/shard_checksum.py [--rows 256] [--patches 196] [--width 768] [--shards 4]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from common import log

from compalign.cache.store import Layout, _shard_files, create_store, damaged_shards, open_store, write_shard


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--patches", type=int, default=196)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--shards", type=int, default=4)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    n = a.rows * a.shards
    lay = Layout(n_images=n, n_texts=0, embed_dim=512, n_patches=a.patches, n_prefix=1, image_width=a.width,
                 text_len=1, text_width=512, layers=[-1], shard_rows=a.rows, chunk_rows=16)
    root = create_store(tmp / "s.zarr", lay, {}, {}, [f"k{i}" for i in range(n)], [f"o{i}" for i in range(n)], [], [], {})
    rng = np.random.default_rng(0)
    write_s = hash_s = 0.0
    opened: dict = {}
    shards = [{"global": rng.standard_normal((a.rows, 512), dtype=np.float32),
               "patches": rng.standard_normal((a.rows, a.patches, a.width), dtype=np.float32).astype(np.float16),
               "prefix": rng.standard_normal((a.rows, 1, a.width), dtype=np.float32).astype(np.float16),
               "status": np.ones(a.rows, np.int8), "error": np.full(a.rows, "", dtype=str)} for _ in range(a.shards)]
    for s, arrays in enumerate(shards):
        t = time.perf_counter()
        write_shard(root, tmp / "s.zarr", "images", s, s * a.rows, arrays, opened)  # includes the checksums
        write_s += time.perf_counter() - t
        t = time.perf_counter()
        _shard_files(tmp / "s.zarr", "images", sorted(arrays), s)  # the checksums alone, again
        hash_s += time.perf_counter() - t
    as_written, opened, digest_s = open_store(tmp / "s.zarr", "r+", digests=True), {}, 0.0
    for s, arrays in enumerate(shards):
        t = time.perf_counter()
        write_shard(as_written, tmp / "s.zarr", "images", s, s * a.rows, arrays, opened)
        digest_s += time.perf_counter() - t
    mb = sum(f.stat().st_size for f in (tmp / "s.zarr").rglob("*") if f.is_file()) / 2**20
    t = time.perf_counter()
    assert not damaged_shards(tmp / "s.zarr")
    verify_s = time.perf_counter() - t
    t = time.perf_counter()
    root["images/patches"][:]
    read_s = time.perf_counter() - t
    log(f"{a.shards} shards of {a.rows} rows, {mb:.0f} MiB: write_shard {write_s / a.shards * 1e3:.0f} ms/shard, "
        f"of which checksums {hash_s / a.shards * 1e3:.0f} ms ({hash_s / write_s:.0%}); with the checksums taken as "
        f"written (DigestStore) {digest_s / a.shards * 1e3:.0f} ms/shard ({digest_s / write_s:.2f} of reading back)")
    log(f"resume's verification of the whole store {verify_s:.2f} s vs reading its patches back {read_s:.2f} s "
        f"(ratio {verify_s / read_s:.2f})")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
