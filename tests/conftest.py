"""Shared fixtures: small generated datasets in every format the sources read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

logging.getLogger().setLevel(logging.ERROR)  # open_clip logs config resolution on the root logger


def make_images(folder: Path, names: list[str], size: tuple[int, int] = (40, 56), seed: int = 0) -> None:
    """Distinct random RGB images (distinct content, so content-hash dedup keeps them all)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / name)


@pytest.fixture
def pairs_dir(tmp_path: Path) -> Path:
    """12 images, 16 captions (some images have two), as pairs.jsonl."""
    root = tmp_path / "pairs"
    names = [f"{i:03d}.png" for i in range(12)]
    make_images(root / "img", names)
    rows = [{"image": f"img/{n}", "caption": f"a picture of thing number {i}"} for i, n in enumerate(names)]
    rows += [{"image": f"img/{names[i]}", "caption": "another caption that is a little longer " * (i + 1)} for i in range(4)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root
