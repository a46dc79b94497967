"""Deterministic PIL rendering of a Scene: flat background, aliased (non-antialiased) shapes.

PIL's ImageDraw rasterises polygons and ellipses without antialiasing and without any
randomness, and PNG encoding with a fixed compression level and no metadata is byte-stable,
so the same scene always yields the same PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

from compalign.core import InputError
from compalign.shapes.config import WorldConfig
from compalign.shapes.scene import Scene

Box = tuple[int, int, int, int]
Fill = tuple[int, int, int]
Drawer = Callable[[ImageDraw.ImageDraw, Box, Fill], None]

PNG_COMPRESS_LEVEL = 6  # fixed: part of the byte-identity guarantee


def _polygon(d: ImageDraw.ImageDraw, box: Box, fill: Fill, unit_points: list[tuple[float, float]]) -> None:
    """Draw a polygon given in unit coordinates ([0,1] x [0,1] of the box)."""
    x0, y0, x1, y1 = box
    w, h = x1 - 1 - x0, y1 - 1 - y0  # PIL coordinates are pixel centres, inclusive
    d.polygon([(x0 + u * w, y0 + v * h) for u, v in unit_points], fill=fill)


def _circle(d: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    x0, y0, x1, y1 = box
    d.ellipse([x0, y0, x1 - 1, y1 - 1], fill=fill)


def _square(d: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    # Inset 10% so a square's area is close to a circle's: size words describe the box, and a
    # full-box square would look "larger" than a circle of the same size class.
    _polygon(d, box, fill, [(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.1, 0.9)])


def _triangle(d: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    _polygon(d, box, fill, [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)])


def _diamond(d: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    _polygon(d, box, fill, [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)])


def _cross(d: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    a, b = 1 / 3, 2 / 3  # arm thickness one third of the box
    _polygon(
        d, box, fill, [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    )


def _regular(n: int, inner: float | None = None, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    """Unit-box vertices of a regular n-gon (or an n-pointed star with inner radius ``inner``)."""
    pts = []
    k = 2 * n if inner is not None else n
    for i in range(k):
        r = 0.5 if inner is None or i % 2 == 0 else 0.5 * inner
        t = phase + 2 * math.pi * i / k
        pts.append((0.5 + r * math.cos(t), 0.5 + r * math.sin(t)))
    return pts


_STAR = _regular(5, inner=0.45)
_HEXAGON = _regular(6, phase=0.0)


def _star(d: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    _polygon(d, box, fill, _STAR)


def _hexagon(d: ImageDraw.ImageDraw, box: Box, fill: Fill) -> None:
    _polygon(d, box, fill, _HEXAGON)


# Registry: a shape noun is valid in a WorldConfig iff it is a key here.
SHAPE_DRAWERS: dict[str, Drawer] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "cross": _cross,
    "star": _star,
    "hexagon": _hexagon,
}


def list_shapes() -> list[str]:
    """Shape nouns the renderer can draw."""
    return sorted(SHAPE_DRAWERS)


def render_scene(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """RGB image of ``scene``; optional seeded Gaussian noise on top of the flat colours."""
    unknown = sorted({o.shape for o in scene.objects} - set(SHAPE_DRAWERS))
    if unknown:
        raise InputError(f"no drawer for shapes {unknown}; known: {list_shapes()}")
    img = Image.new("RGB", (scene.canvas, scene.canvas), tuple(cfg.background))
    d = ImageDraw.Draw(img)
    for o in scene.objects:
        SHAPE_DRAWERS[o.shape](d, o.box, tuple(cfg.colours[o.colour]))
    if cfg.noise_std > 0:
        rng = np.random.default_rng(scene.noise_seed)
        arr = np.asarray(img, dtype=np.float32)  # (H, W, 3)
        arr = arr + rng.normal(0.0, cfg.noise_std, size=arr.shape).astype(np.float32)
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    return img


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding with fixed settings and no metadata chunks (no timestamps)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def render_png(scene: Scene, cfg: WorldConfig) -> bytes:
    """``render_scene`` then ``png_bytes``."""
    return png_bytes(render_scene(scene, cfg))
