"""Helpers shared by the benchmark scripts (stand-in data, a fixed random-init checkpoint)."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SUGARCREPE_JSONS = REPO / "tests" / "data" / "sugarcrepe"


def coco_like_image(seed: int, size: tuple[int, int] = (480, 640)) -> Image.Image:
    """Smooth random content at COCO's typical size, so JPEG size and decode cost are realistic."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC)
    noise = rng.integers(-12, 13, (*size, 3))
    return Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8))


def sugarcrepe_standin(root: Path, size: tuple[int, int] = (480, 640)) -> Path:
    """The 7 real SugarCrepe JSONs + a distinct generated JPEG at every COCO file name (cached)."""
    images = root / "val2017"
    names: set[str] = set()
    root.mkdir(parents=True, exist_ok=True)
    for gz in sorted(SUGARCREPE_JSONS.glob("*.json.gz")):
        text = gzip.decompress(gz.read_bytes()).decode()
        (root / gz.name[:-3]).write_text(text)
        names.update(r["filename"] for r in json.loads(text).values())
    images.mkdir(exist_ok=True)
    for i, name in enumerate(sorted(names)):
        if not (images / name).exists():
            coco_like_image(i, size).save(images / name, quality=90)
    return root


def random_checkpoint(model: str, path: Path, seed: int = 0) -> Path:
    """Save a seeded random-init open_clip model as a checkpoint file both tools can load offline."""
    import open_clip
    import torch

    if not path.exists():
        torch.manual_seed(seed)
        m = open_clip.create_model(model, pretrained=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": m.state_dict()}, path)
    return path


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)
