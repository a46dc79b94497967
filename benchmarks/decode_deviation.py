"""How far `--decode fast` (and `gpu`, on CUDA) move each backbone's features from the exact preprocessing.

The figures every extraction with `--decode fast|gpu` prints for its own images (extract/decode_check.py),
here on JPEGs of the sizes photos come in (SIZES; or pre-resized ones, `--image-size 224`) for several
backbones side by side, as a markdown table. Random-init weights (offline): a trained checkpoint's cosines
are its own, which is why a real run measures them on its data.

    .venv/bin/python benchmarks/decode_deviation.py [--models ViT-B-16,PE-Core-B-16,tiny] [--n 64]
        [--device cuda --precision bf16] [--image-size 224] [--crops]

`--crops`: also the pixels of `--crops grid`'s 18 boxes of each image (the first 16), fast against exact.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
from common import coco_like_image, log

from compalign.core.memory import keep_freed_memory
from compalign.core.regions import region_boxes
from compalign.extract.backbones import load_backbone
from compalign.extract.decode_check import check_decode
from compalign.extract.image_rows import ImageRows
from compalign.extract.runner import _autocast
from compalign.extract.sources import ImageRef

# (height, width) of photos as they come: COCO's two commonest, sides that are no multiple of 8, larger ones
SIZES = [(480, 640), (427, 640), (683, 1024), (1365, 2048), (900, 901), (375, 500), (640, 480), (1200, 1600)]


def jpegs(n: int, image_size: int | None) -> list[ImageRef]:
    refs = []
    for i in range(n):
        img = coco_like_image(i, SIZES[i % len(SIZES)])
        if image_size:  # short side `image_size`, as img2dataset writes pre-resized images
            img = img.resize((round(img.width * image_size / img.height), image_size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        refs.append(ImageRef(key=str(i), origin=f"{i:05d}.jpg", data=buf.getvalue()))
    return refs


def crops_moved(bb, refs: list[ImageRef]) -> str:
    """Mean / max |diff| of the normalised pixels of every grid crop, fast against exact."""
    boxes = [np.asarray(region_boxes(), dtype=np.float32)] * len(refs)
    exact, fast = (ImageRows(refs, bb.preprocess, boxes=boxes, decode=d) for d in ("exact", "fast"))
    d = np.concatenate([(exact[i][2] - fast[i][2]).abs().flatten().numpy() for i in range(len(refs))])
    return f"{d.mean():.4f} / {d.max():.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ViT-B-16,PE-Core-B-16,tiny", help="comma-separated; random init but tiny")
    ap.add_argument("--n", type=int, default=64, help="images compared per backbone")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--image-size", type=int, default=None, help="pre-resize the JPEGs to this short side")
    ap.add_argument("--crops", action="store_true", help="also the grid crops' pixels, fast vs exact")
    args = ap.parse_args()
    keep_freed_memory()
    refs = jpegs(args.n, args.image_size)
    decodes = ["fast", *(["gpu"] if args.device.startswith("cuda") else [])]
    size = f"short side {args.image_size}" if args.image_size else ", ".join(f"{w}x{h}" for h, w in SIZES)
    print(f"{args.n} coco_like JPEGs ({size}, quality 90), device {args.device}, precision {args.precision}")
    print("| backbone | decode | pixels mean / max \\|diff\\| | global cosine min / mean | patch cosine mean | s |")
    print("|---|---|---:|---:|---:|---:|")
    for model in args.models.split(","):
        bb = load_backbone(model, None if model == "tiny" else "none", device=args.device)
        for decode in decodes:
            log(model, decode)
            t0 = time.perf_counter()
            with _autocast(args.device, args.precision):
                c = check_decode(bb, refs, decode, args.device, n=len(refs))
            s = time.perf_counter() - t0
            print(f"| {model} | {decode} | {c.pixel_mean:.4f} / {c.pixel_max:.3f} | {c.global_min:.5f} / "
                  f"{c.global_mean:.5f} | {c.patch_mean:.5f} | {s:.1f} |")
        if args.crops:
            print(f"| {model} | fast, grid crops of {min(16, len(refs))} images | {crops_moved(bb, refs[:16])} | | | |")


if __name__ == "__main__":
    main()
