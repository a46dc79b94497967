"""Image regions as boxes in fractions of the image: a multi-scale grid plus overlapping halves.

One definition for every region kind, so `roi` (patch tokens pooled over a box) and `crops` (the box cropped
and encoded) cover the same boxes. A box is (x0, y0, x1, y1) with 0 <= x0 < x1 <= 1, y down.
"""

from __future__ import annotations

import numpy as np

HALF = 0.6  # an overlapping half spans 60% of the side: the middle fifth is in both halves of a pair


def region_boxes(grid: tuple[int, ...] = (1, 2, 3), halves: bool = True) -> np.ndarray:
    """(R, 4) boxes: for each k in `grid` the k x k tiles (row by row), then left, right, top, bottom halves."""
    boxes = [(j / k, i / k, (j + 1) / k, (i + 1) / k) for k in grid for i in range(k) for j in range(k)]
    if halves:
        boxes += [(0, 0, HALF, 1), (1 - HALF, 0, 1, 1), (0, 0, 1, HALF), (0, 1 - HALF, 1, 1)]
    return np.asarray(boxes, dtype=np.float64)


def patch_pooling(boxes: np.ndarray, side: int) -> np.ndarray:
    """(R, side*side) row-stochastic weights: region r averages the patches (row-major) whose centres lie in box r.

    A box too small to hold a centre takes the patch under its own centre, so no region is empty."""
    c = (np.arange(side) + 0.5) / side  # patch centres, in fractions
    x, y = np.meshgrid(c, c)  # (side, side), row-major like the patch sequence
    x, y = x.reshape(-1), y.reshape(-1)
    inside = ((x[None] >= boxes[:, :1]) & (x[None] < boxes[:, 2:3]) & (y[None] >= boxes[:, 1:2]) & (y[None] < boxes[:, 3:4]))
    for r in np.flatnonzero(~inside.any(1)):
        cx, cy = (boxes[r, 0] + boxes[r, 2]) / 2, (boxes[r, 1] + boxes[r, 3]) / 2
        inside[r, min(side - 1, int(cy * side)) * side + min(side - 1, int(cx * side))] = True
    return inside / inside.sum(1, keepdims=True)
