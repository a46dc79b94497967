"""A SugarCrepe stand-in: the real annotation files, generated images. Shared by the test fixtures and the benchmarks.

The 7 SugarCrepe JSONs ship gzipped in tests/data/sugarcrepe; the COCO val2017 images they name do not. Both
the tests and the benchmark scripts want a root that the real `sugarcrepe` source reads, so this writes the
JSONs and one distinct generated JPEG at every file name they use. Only the images differ between callers,
so the caller passes the image maker: the tests draw small noise (fast), the benchmarks COCO-sized smooth
images (realistic JPEG size and decode cost). It lives here, beside the data; the package never imports it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).parent / "data"
SUGARCREPE_JSONS = DATA / "sugarcrepe"


def noise_image(seed: int, size: tuple[int, int] = (32, 32)) -> Image.Image:
    """Uniform random RGB pixels from `seed`: distinct content per seed, nothing to decode slowly."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def sugarcrepe_standin(root: Path, make_image: Callable[[int], Image.Image] = noise_image,
                       keep_existing: bool = False) -> Path:
    """The 7 real SugarCrepe JSONs + `make_image(i)` as a JPEG at the i-th COCO file name they use (sorted).

    `keep_existing` leaves an image already at its name alone (a benchmark's cached stand-in)."""
    root.mkdir(parents=True, exist_ok=True)
    names: set[str] = set()
    for gz in sorted(SUGARCREPE_JSONS.glob("*.json.gz")):
        text = gzip.decompress(gz.read_bytes()).decode()
        (root / gz.name[:-3]).write_text(text)
        names.update(row["filename"] for row in json.loads(text).values())
    images = root / "val2017"
    images.mkdir(exist_ok=True)
    for i, name in enumerate(sorted(names)):
        if not (keep_existing and (images / name).exists()):
            make_image(i).save(images / name, quality=90)
    return root
