"""Extraction throughput vs a bare forward loop of the same backbone on pre-decoded tensors.

Both run in this process on the same images, model and batch size (random-init ViT-B-16 at 224
by default). The bare loop is what the model alone costs; extraction adds decoding, resizing,
writing float16 tokens and done-markers, which should hide behind the forward pass. Target: a
ratio >= 0.90. Also prints bytes on disk per image / caption against raw float16 bytes.

    .venv/bin/python benchmarks/extract_overhead.py [--n 256] [--batch-size 32] [--workers 1]
        [--device cuda] [--precision bf16]

On a GPU the bare loop times the same forward on the device under the same autocast as extraction
(pixels already there, synchronised at the end), so the ratio shows what decoding and writing cost.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from common import coco_like_image, log
from PIL import Image

from compalign.cache import open_cache
from compalign.extract.backbones import load_backbone
from compalign.extract.runner import ExtractConfig, _autocast, extract


def make_data(root: Path, n: int) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = root / "img" / f"{i:05d}.jpg"
        if not p.exists():
            coco_like_image(i).save(p, quality=90)
        rows.append({"image": f"img/{i:05d}.jpg", "caption": f"a photo of a small object number {i}"})
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


def bare_loop(bb, pixels: torch.Tensor, batch_size: int, precision: str) -> float:
    dev = pixels.device
    t0 = time.perf_counter()
    with torch.no_grad(), _autocast(dev.type, precision):  # the autocast extraction runs under
        for b in range(0, len(pixels), batch_size):
            bb.encode_images(pixels[b:b + batch_size], [-1])
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/compalign-extract-overhead"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype, as extract's")
    args = ap.parse_args()
    root = make_data(args.work / "data", args.n)
    bb = load_backbone(args.model, "none", device=args.device)
    log("pre-decoding", args.n, "images for the bare loop")
    pixels = torch.stack([bb.preprocess(Image.open(root / "img" / f"{i:05d}.jpg")) for i in range(args.n)]).to(args.device)
    bare_loop(bb, pixels[: args.batch_size], args.batch_size, args.precision)  # warm-up

    # image stage time, read off the runner's progress callback
    marks: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, []).append(time.perf_counter())

    runs = []
    for rep in range(2):  # bare, extract, bare, extract: drift on a shared machine hits both
        t_bare = bare_loop(bb, pixels, args.batch_size, args.precision)
        store = args.work / "store.zarr"
        shutil.rmtree(store, ignore_errors=True)
        marks.clear()
        t0 = time.perf_counter()
        extract(ExtractConfig(model=args.model, pretrained="none", data="pairs", root=str(root), out=str(store),
                              batch_size=args.batch_size, workers=args.workers, device=args.device,
                              precision=args.precision), progress)
        t_total = time.perf_counter() - t0
        t_img = marks["images"][-1] - marks["images"][0]
        runs.append((t_bare, t_img, t_total))
        log(f"rep {rep}: bare {args.n / t_bare:.1f} img/s, extraction image stage {args.n / t_img:.1f} img/s, "
            f"whole extract call {t_total:.1f} s")
    t_bare = float(np.mean([r[0] for r in runs]))
    t_img = float(np.mean([r[1] for r in runs]))
    print(f"backbone {args.model} (random init), {args.n} images, batch {args.batch_size}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}, device {args.device}, precision {args.precision}")
    print(f"bare forward loop: {args.n / t_bare:.2f} img/s")
    print(f"extraction:        {args.n / t_img:.2f} img/s")
    print(f"ratio extraction / bare: {t_bare / t_img:.3f} (target >= 0.90)")

    r = open_cache(store)
    lay = r.layout

    def size(prefix: str) -> int:
        return sum(f.stat().st_size for f in (store / prefix).rglob("*") if f.is_file())

    img_raw = lay.n_patches * lay.image_width * 2 + lay.n_prefix * lay.image_width * 2 + lay.embed_dim * 4
    txt_raw = lay.text_len * lay.text_width * 2 + lay.embed_dim * 4
    print(f"bytes on disk per image:   {size('images') / lay.n_images:,.0f} (raw float16 tokens + float32 global: {img_raw:,})")
    print(f"bytes on disk per caption: {size('texts') / lay.n_texts:,.0f} (raw at the stored length {lay.text_len}: {txt_raw:,}; "
          f"at the full context: {bb.context_length * lay.text_width * 2 + lay.embed_dim * 4:,})")


if __name__ == "__main__":
    main()
