"""Helpers shared by the benchmark scripts (stand-in data, a fixed random-init checkpoint).

The SugarCrepe stand-in itself is the tests' (tests/standin.py, beside the JSONs it reads): one writer of
the annotation files, whichever images go with them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from standin import SUGARCREPE_JSONS as SUGARCREPE_JSONS  # noqa: E402  (re-exported for text_cut.py)
from standin import sugarcrepe_standin as _standin  # noqa: E402


def coco_like_image(seed: int, size: tuple[int, int] = (480, 640)) -> Image.Image:
    """Smooth random content at COCO's typical size, so JPEG size and decode cost are realistic."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size[0] // 16, size[1] // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size[1], size[0]), Image.BICUBIC)
    noise = rng.integers(-12, 13, (*size, 3))
    return Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8))


def sugarcrepe_standin(root: Path, size: tuple[int, int] = (480, 640)) -> Path:
    """The 7 real SugarCrepe JSONs + a distinct `coco_like_image` JPEG at every COCO file name (cached)."""
    return _standin(root, lambda i: coco_like_image(i, size), keep_existing=True)


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
