"""Which codec for the float16 patch arrays: compression MB/s, decompression MB/s and ratio, one thread.

The tokens are real backbone outputs (final-layer patch tokens after the final norm) of coco_like
images: random-init ViT-B-16 by default (a trained CLIP's tokens have a few large channels; the low
mantissa bits, which no lossless codec can shrink, are noise either way). Each codec compresses the
unit the store writes: one inner chunk of `chunk_rows` rows (16 x 196 x 768 float16 = 4.8 MB). One
thread each, since the extraction's writers supply the parallelism.

    .venv/bin/python benchmarks/patch_codec.py [--model ViT-B-16] [--n 32] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

import numcodecs
import numpy as np
import torch
from common import coco_like_image, log

from compalign.extract.backbones import load_backbone

CODECS = {
    "none": None,
    "zstd-1": numcodecs.Zstd(level=1),
    "zstd-3 (zarr default)": numcodecs.Zstd(level=3),
    "zstd-5": numcodecs.Zstd(level=5),
    "blosc-lz4-shuffle-5": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
    "blosc-zstd-shuffle-1": numcodecs.Blosc("zstd", 1, numcodecs.Blosc.SHUFFLE),
    "blosc-zstd-shuffle-3": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.SHUFFLE),
}


def tokens(model: str, n: int, batch: int = 8) -> np.ndarray:
    """(n, P, W) float16 final-layer patch tokens of n coco_like images."""
    bb = load_backbone(model, "none")
    out = []
    with torch.no_grad():
        for b in range(0, n, batch):
            px = torch.stack([bb.preprocess(coco_like_image(i)) for i in range(b, min(n, b + batch))])
            out.append(bb.encode_images(px, [-1]).patches[-1].float().numpy().astype(np.float16))
    return np.concatenate(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--n", type=int, default=32, help="images (a multiple of --chunk-rows)")
    ap.add_argument("--chunk-rows", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    numcodecs.blosc.set_nthreads(1)
    log("encoding", args.n, "images with", args.model)
    x = tokens(args.model, args.n)
    chunks = [np.ascontiguousarray(x[i:i + args.chunk_rows]) for i in range(0, len(x), args.chunk_rows)]
    raw = sum(c.nbytes for c in chunks)
    print(f"{args.model} (random init) patch tokens {x.shape[1:]} float16, {len(chunks)} chunks of {args.chunk_rows} rows "
          f"({chunks[0].nbytes / 1e6:.1f} MB each), 1 thread, best of {args.repeat}")
    print("| codec | ratio (stored / raw) | compress MB/s | decompress MB/s |")
    print("|---|---|---|---|")
    for name, codec in CODECS.items():
        if codec is None:
            print(f"| {name} | 1.000 | - | - |")
            continue
        enc, dec = [], []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            packed = [codec.encode(c) for c in chunks]
            t1 = time.perf_counter()
            for p in packed:
                codec.decode(p)
            t2 = time.perf_counter()
            enc.append(t1 - t0)
            dec.append(t2 - t1)
        size = sum(len(p) for p in packed)
        print(f"| {name} | {size / raw:.3f} | {raw / 1e6 / min(enc):.0f} | {raw / 1e6 / min(dec):.0f} |")


if __name__ == "__main__":
    main()
