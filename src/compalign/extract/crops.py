"""Image regions cropped and encoded at extraction (`extract --crops SPEC`): which boxes, and their pixels.

SPEC `grid` is core.regions' default multi-scale grid (1x1, 2x2, 3x3 and the four overlapping halves: the
boxes `regions_roi` pools patch tokens over); `1,2` or `1,2,3+halves` another grid; `oracle` the synthetic
world's true object boxes, read from the boxes.jsonl that `compalign shapes make` writes beside each benchmark
(a line {"image": file name, "boxes": [[x0, y0, x1, y1], ...]} per image, in fractions). Each box is cut
from the decoded image in the decode workers and preprocessed exactly as the whole image is; the image
tower encodes it, and its global embedding is stored with the image's shard (`images/regions/crops`, or
`images/regions/oracle` + `_mask` + `_boxes`).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..cache.location import is_url
from ..core import InputError, MissingFileError
from ..core.regions import region_boxes

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .image_rows import Cut
    from .sources import Plan

DEFAULT_GRID, DEFAULT_HALVES = (1, 2, 3), True  # what `grid` means: region_boxes()' defaults
BOXES_FILE = "boxes.jsonl"
SPEC_FORMS = "none, grid, oracle, grid+oracle, or grid sizes such as 1,2 or 1,2,3+halves (+oracle)"
Grid = tuple[tuple[int, ...], bool]  # (k for each k x k grid, the four overlapping halves too)


def parse_crops(spec: str) -> tuple[Grid | None, bool]:
    """(the grid of SPEC or None, whether it asks for the oracle boxes too); anything else is an error listing the forms.

    `grid`, `1,2`, `1,2,3+halves`: a grid; `oracle`: the world's object boxes; `grid+oracle`, `1,2+oracle`: both."""
    parts = spec.strip().lower().split("+")
    oracle, rest = parts.count("oracle"), [p for p in parts if p != "oracle"]
    if oracle == 1 and not rest:
        return None, True
    if oracle <= 1 and rest == ["grid"]:
        return (DEFAULT_GRID, DEFAULT_HALVES), bool(oracle)
    try:
        grid = tuple(int(k) for k in rest[0].split(",")) if oracle <= 1 and rest[1:] in ([], ["halves"]) else ()
    except ValueError:
        grid = ()
    if not grid or min(grid) < 1 or len(set(grid)) < len(grid):
        raise InputError(f"--crops is {SPEC_FORMS} (got {spec!r})")
    return (grid, len(rest) == 2), bool(oracle)


def canonical_spec(spec: str) -> str:
    """One name per set of boxes (`1,2,3+halves` is `grid`, `oracle+grid` is `grid+oracle`), so equal boxes give
    equal store settings."""
    grid, oracle = parse_crops(spec)
    if grid is None:
        return "oracle"
    sizes, halves = grid
    name = "grid" if grid == (DEFAULT_GRID, DEFAULT_HALVES) else ",".join(map(str, sizes)) + ("+halves" if halves else "")
    return name + ("+oracle" if oracle else "")


def pixel_box(box: Any, width: int, height: int) -> tuple[int, int, int, int]:
    """A box in fractions as PIL crop pixels (x0, y0, x1, y1; x1, y1 exclusive): rounded, at least 1 px, inside."""
    x0, y0, x1, y1 = (math.floor(v * side + 0.5) for v, side in zip(box, (width, height, width, height)))
    x0, y0 = min(max(x0, 0), width - 1), min(max(y0, 0), height - 1)
    return x0, y0, max(x0 + 1, min(x1, width)), max(y0 + 1, min(y1, height))


def crop_pixels(image: Image.Image | Cut, boxes: np.ndarray, preprocess: Any) -> torch.Tensor | None:
    """(R, 3, H, W): each box cut from `image` and preprocessed like the whole image; None without boxes.
    A box's pixels are those of the full decode: `--decode fast` passes its draft as a Cut (image_rows.py)."""
    import torch

    if not len(boxes):
        return None
    return torch.stack([preprocess(image.crop(pixel_box(b, *image.size))) for b in boxes])


@dataclass(frozen=True)
class CropPlan:
    """What `--crops` adds to one extraction: the boxes of each image row and the arrays their crops fill.

    A row's crops are its grid boxes (the same for every row) followed by its own oracle boxes."""

    spec: str  # canonical: grid | 1,2 | 1,2,3+halves | oracle | grid+oracle ...
    grid: np.ndarray | None  # (G, 4) grid boxes in fractions, or None
    oracle: list[np.ndarray] | None  # per image row, (n_i, 4) true object boxes in fractions, or None

    @property
    def n_grid(self) -> int:
        return 0 if self.grid is None else len(self.grid)

    @property
    def n_oracle(self) -> int:
        """R of the oracle arrays: the most boxes any image has (at least 1)."""
        return max([1, *(len(b) for b in self.oracle)]) if self.oracle is not None else 0

    def row_boxes(self, n_rows: int) -> list[np.ndarray]:
        """Every row's boxes in crop order, for the decode workers (a grid alone: one array shared by every row)."""
        if self.oracle is None:
            return [self.grid] * n_rows  # type: ignore[list-item]
        if self.grid is None:
            return self.oracle
        return [np.concatenate([self.grid, b]) for b in self.oracle]

    def settings(self) -> dict[str, Any]:
        """The store's `extraction.crops`: the grid's boxes themselves, the oracle boxes' digest."""
        out: dict[str, Any] = {"spec": self.spec}
        if self.grid is not None:
            out["boxes"] = self.grid.tolist()
        if self.oracle is not None:
            digest = hashlib.sha256(json.dumps([b.tolist() for b in self.oracle]).encode()).hexdigest()[:16]
            out["oracle"] = {"boxes_file": BOXES_FILE, "max_boxes": self.n_oracle, "boxes_sha256": digest}
        return out

    def arrays(self, embed_dim: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """Arrays under images/: path -> (shape of one row, dtype)."""
        out: dict[str, tuple[tuple[int, ...], str]] = {}
        if self.grid is not None:
            out["regions/crops"] = ((self.n_grid, embed_dim), "float32")
        if self.oracle is not None:
            R = self.n_oracle
            out |= {"regions/oracle": ((R, embed_dim), "float32"), "regions/oracle_mask": ((R,), "bool"),
                    "regions/oracle_boxes": ((R, 4), "float64")}
        return out

    def shard_buffers(self, lo: int, n: int, embed_dim: int) -> dict[str, np.ndarray]:
        """Zeroed buffers of rows lo .. lo + n, the oracle's boxes already filled in (they come from the plan)."""
        out = {name: np.zeros((n, *shape), dtype) for name, (shape, dtype) in self.arrays(embed_dim).items()}
        for i in range(n) if self.oracle is not None else ():
            b = self.oracle[lo + i]  # type: ignore[index]
            out["regions/oracle_boxes"][i, :len(b)] = b
        return out

    def record(self, buffers: dict[str, np.ndarray], at: np.ndarray, counts: list[int], emb: np.ndarray) -> None:
        """Put the crops' embeddings `emb` (sum(counts), E) of shard rows `at` (counts[i] crops each, grid first) in place."""
        counts_ = np.asarray(counts, dtype=np.int64)
        start = np.cumsum(counts_) - counts_  # each row's first crop in `emb`
        G = self.n_grid
        if G:
            buffers["regions/crops"][at] = emb[start[:, None] + np.arange(G)[None, :]]  # (B, G, E)
        if self.oracle is not None:
            own = counts_ - G  # each row's oracle crops
            rows = np.repeat(at, own)
            cols = np.concatenate([np.arange(c) for c in own]) if len(own) else np.zeros(0, np.int64)
            src = np.repeat(start + G, own) + cols
            buffers["regions/oracle"][rows, cols] = emb[src]
            buffers["regions/oracle_mask"][rows, cols] = True


def plan_crops(spec: str, plan: Plan) -> CropPlan | None:
    """The boxes of every image row of `plan` for `--crops spec` (None for `none`)."""
    if spec == "none":
        return None
    grid, oracle = parse_crops(spec)
    return CropPlan(canonical_spec(spec), region_boxes(*grid) if grid is not None else None,
                    oracle_boxes(plan) if oracle else None)


def read_boxes(path: Path) -> dict[str, Any]:
    """{image file name: its boxes as written} of a world's boxes.jsonl; a damaged line is named."""
    table: dict[str, Any] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            table[row["image"]] = row["boxes"]
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise InputError(f"{path} line {n} is not an {{\"image\", \"boxes\"}} row ({type(e).__name__}: {e}); "
                             "rebuild the world with `compalign shapes make --out WORLD --force`") from None
    return table


def oracle_boxes(plan: Plan) -> list[np.ndarray]:
    """(R_i, 4) true object boxes of each image row, from ROOT/boxes.jsonl; an image that failed to resolve has none."""
    if is_url(plan.root):
        raise InputError(f"--crops oracle reads {BOXES_FILE} from a local --root (the synthetic world's folder), not "
                         f"{plan.root}; copy the world here, or use --crops grid")
    path = Path(plan.root) / BOXES_FILE
    if not path.is_file():
        raise MissingFileError(
            f"--crops oracle needs the true object boxes in {path}, which only the synthetic world writes "
            f"(`compalign shapes make`: each benchmark folder has one; rebuild a world made before {BOXES_FILE} existed "
            f"with `compalign shapes make --out WORLD --force`). For other data use `--crops grid`.")
    table = read_boxes(path)
    out = []
    for ref in plan.images:
        if ref.error:
            out.append(np.zeros((0, 4)))
            continue
        if ref.file_name not in table:
            raise InputError(f"{path} has no boxes for image {ref.file_name!r} ({ref.origin}): it belongs to another "
                             "world or split; point --root at the benchmark folder the image came from")
        try:
            b = np.asarray(table[ref.file_name], dtype=np.float64).reshape(-1, 4)
        except (TypeError, ValueError):
            b = np.full((1, 4), np.nan)
        if not (np.isfinite(b).all() and (b[:, :2] >= 0).all() and (b[:, 2:] <= 1).all() and (b[:, :2] < b[:, 2:]).all()):
            raise InputError(f"{path}: the boxes of {ref.file_name!r} are not [[x0, y0, x1, y1], ...] with "
                             f"0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (got {table[ref.file_name]!r})")
        out.append(b)
    return out
