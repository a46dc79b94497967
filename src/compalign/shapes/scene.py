"""Scene graphs: objects with shape, colour, size and a box; relations from box centres; sampling.

A scene is the ground truth every caption is judged against, so everything here is exact
integer geometry and every random draw comes from a numpy Generator the caller seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import numpy as np

from compalign.core import CompalignError, InputError
from compalign.shapes.config import WorldConfig

logger = logging.getLogger(__name__)

Relation = Literal["left_of", "right_of", "above", "below"]
RELATIONS: tuple[Relation, ...] = get_args(Relation)
Pair = tuple[str, str]  # (colour, shape)

Split = Literal["train", "test_id", "test_ood"]
SPLITS: tuple[Split, ...] = get_args(Split)

# Bump when sampling changes meaning; part of every derived seed so old and new worlds differ.
_STREAM_VERSION = 1


class PlacementError(CompalignError, RuntimeError):
    """The config's objects cannot be placed on its canvas without overlap (sizes, counts or gaps too large)."""


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str  # one of cfg.size_words
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, x1/y1 exclusive, square

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)

    @property
    def side(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def pair(self) -> Pair:
        return (self.colour, self.shape)


@dataclass(frozen=True)
class Scene:
    canvas: int
    objects: tuple[SceneObject, ...]
    noise_seed: int  # seeds the optional per-pixel noise so re-rendering is byte-exact

    def to_json(self, image: str) -> dict[str, Any]:
        """Row of scenes.jsonl (``image`` is the file name the scene was rendered to)."""
        return {
            "image": image,
            "canvas": [self.canvas, self.canvas],
            "noise_seed": self.noise_seed,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "box": list(o.box)} for o in self.objects
            ],
        }

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> Scene:
        w, h = row["canvas"]
        if w != h:
            raise InputError(f"scene canvas must be square, got {row['canvas']}")
        objs = tuple(SceneObject(o["shape"], o["colour"], o["size"], tuple(o["box"])) for o in row["objects"])
        return cls(canvas=w, objects=objs, noise_seed=int(row["noise_seed"]))


def derive_rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per (seed, keys): scene i of a split never depends on scene i-1."""
    return np.random.default_rng(np.random.SeedSequence([_STREAM_VERSION, seed, *keys]))


# -- relations -----------------------------------------------------------------------------------


def relation_holds(
    rel: Relation, a: SceneObject, b: SceneObject, cfg: WorldConfig, mode: Literal["strict", "lax"]
) -> bool:
    """Does ``a <rel> b`` hold?  (Image y grows downwards, so "above" means smaller y.)

    strict: the offset along the relation's axis is at least ``relation_min_offset`` and dominates
    the other axis by ``relation_dominance`` -- what a positive caption may assert.
    lax: ``a`` is displaced in that direction at all. A negative must be false even under lax,
    so it is *clearly* false, never "slightly true".
    """
    (ax, ay), (bx, by) = a.centre, b.centre
    along, across = {
        "left_of": (bx - ax, by - ay),
        "right_of": (ax - bx, ay - by),
        "above": (by - ay, bx - ax),
        "below": (ay - by, ax - bx),
    }[rel]
    if mode == "lax":
        return along > 0
    return along >= cfg.relation_min_offset and along >= cfg.relation_dominance * abs(across)


def clear_relation(a: SceneObject, b: SceneObject, cfg: WorldConfig) -> Relation | None:
    """The one relation that strictly holds for ``a`` w.r.t. ``b``, if any (dominance > 1 => <= 1)."""
    for rel in RELATIONS:
        if relation_holds(rel, a, b, cfg, "strict"):
            return rel
    return None


# -- geometry ----------------------------------------------------------------------------------


def boxes_clear(box: tuple[int, int, int, int], others: Iterable[tuple[int, int, int, int]], gap: int) -> bool:
    """True if ``box`` keeps at least ``gap`` empty pixels to every box in ``others``."""
    x0, y0, x1, y1 = box
    for ox0, oy0, ox1, oy1 in others:
        if x0 < ox1 + gap and ox0 < x1 + gap and y0 < oy1 + gap and oy0 < y1 + gap:
            return False
    return True


def fits_canvas(box: tuple[int, int, int, int], canvas: int) -> bool:
    x0, y0, x1, y1 = box
    return 0 <= x0 and 0 <= y0 and x1 <= canvas and y1 <= canvas


def sample_side(size: str, cfg: WorldConfig, rng: np.random.Generator) -> int:
    lo, hi = cfg.small_size_range if size == cfg.size_words[0] else cfg.large_size_range
    return int(rng.integers(lo, hi + 1))


def n_starts(side: int, cfg: WorldConfig) -> int:
    """How many grid positions a ``side``-px box can start at along one axis (multiples of ``position_grid``)."""
    return (cfg.canvas_size - side) // cfg.position_grid + 1


def random_box(side: int, cfg: WorldConfig, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Uniform position on the canvas, on multiples of ``position_grid`` px (1: anywhere)."""
    g = cfg.position_grid
    x0 = g * int(rng.integers(0, n_starts(side, cfg)))
    y0 = g * int(rng.integers(0, n_starts(side, cfg)))
    return (x0, y0, x0 + side, y0 + side)


def box_around(centre: tuple[float, float], side: int) -> tuple[int, int, int, int]:
    """Box of ``side`` px keeping ``centre`` (used when an edit changes an object's size)."""
    x0 = int(np.floor(centre[0] - side / 2))
    y0 = int(np.floor(centre[1] - side / 2))
    return (x0, y0, x0 + side, y0 + side)


def place(
    sides: list[int], cfg: WorldConfig, rng: np.random.Generator, fixed: Iterable[tuple[int, int, int, int]] = ()
) -> list[tuple[int, int, int, int]] | None:
    """Rejection-sample non-overlapping boxes for ``sides`` next to ``fixed`` boxes; None if stuck."""
    boxes = list(fixed)
    n_fixed = len(boxes)
    g = cfg.min_gap
    for side in sides:
        # All candidate positions at once, then the first that clears every placed box: the same
        # rejection sampling as a loop of random_box + boxes_clear, ~100x fewer Python calls.
        xy = cfg.position_grid * rng.integers(0, n_starts(side, cfg), size=(cfg.placement_tries, 2))  # (T, 2)
        ok = np.ones(len(xy), dtype=bool)
        for ox0, oy0, ox1, oy1 in boxes:
            x0, y0 = xy[:, 0], xy[:, 1]
            ok &= ~((x0 < ox1 + g) & (ox0 < x0 + side + g) & (y0 < oy1 + g) & (oy0 < y0 + side + g))
        hits = np.flatnonzero(ok)
        if len(hits) == 0:
            return None
        x0, y0 = (int(v) for v in xy[hits[0]])
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes[n_fixed:]


# -- held-out pairs and scene sampling ---------------------------------------------------------


def all_pairs(cfg: WorldConfig) -> list[Pair]:
    return [(c, s) for c in sorted(cfg.colours) for s in cfg.shapes]


def choose_held_out(cfg: WorldConfig) -> frozenset[Pair]:
    """Seeded ~held_out_fraction of (colour, shape) pairs, never all partners of a colour or shape.

    Every colour keeps >= 2 seen shapes and every shape >= 2 seen colours, so each word is
    learnable in training and only the *combination* is new at test_ood time.
    """
    pairs = all_pairs(cfg)
    n = max(1, round(cfg.held_out_fraction * len(pairs)))
    rng = derive_rng(cfg.seed, 1_000_003)
    for _ in range(10_000):
        pick = [pairs[i] for i in rng.choice(len(pairs), size=n, replace=False)]
        held = frozenset(pick)
        seen = [p for p in pairs if p not in held]
        if all(sum(c == col for c, _ in seen) >= 2 for col in cfg.colours) and all(
            sum(s == shp for _, s in seen) >= 2 for shp in cfg.shapes
        ):
            return held
    raise InputError(f"cannot hold out {n} pairs and keep 2 partners per word; lower held_out_fraction")


def sample_scene(
    cfg: WorldConfig,
    rng: np.random.Generator,
    allowed: list[Pair],
    must_include: list[Pair] | None = None,
) -> Scene:
    """Draw a scene whose objects use only ``allowed`` pairs, one of them from ``must_include``.

    Sizes are drawn first and placement is retried; a size draw that cannot be placed (e.g. four
    large objects on 64 px) is redrawn, so crowded scenes lean towards small objects.
    """
    lo, hi = cfg.objects_per_scene
    n = int(rng.integers(lo, hi + 1))
    for _ in range(1000):
        pairs = [allowed[i] for i in rng.integers(0, len(allowed), size=n)]
        if must_include:
            pairs[int(rng.integers(0, n))] = must_include[int(rng.integers(0, len(must_include)))]
        sizes = [cfg.size_words[int(rng.integers(0, 2))] for _ in range(n)]
        sides = [sample_side(s, cfg, rng) for s in sizes]
        for _ in range(10):
            boxes = place(sides, cfg, rng)
            if boxes is not None:
                objs = tuple(SceneObject(s, c, z, b) for (c, s), z, b in zip(pairs, sizes, boxes, strict=True))
                return Scene(cfg.canvas_size, objs, int(rng.integers(0, 2**31 - 1)))
        logger.debug("placement failed for sides %s; redrawing sizes", sides)
    raise PlacementError(f"could not place {n} objects on a {cfg.canvas_size} px canvas; check the size ranges")


def with_object(scene: Scene, index: int, **changes: Any) -> Scene:
    """Copy of ``scene`` with object ``index`` changed (dataclasses.replace on that object)."""
    objs = list(scene.objects)
    objs[index] = replace(objs[index], **changes)
    return replace(scene, objects=tuple(objs))


def is_valid(scene: Scene, cfg: WorldConfig) -> bool:
    """All boxes inside the canvas and pairwise separated by ``min_gap``."""
    boxes = [o.box for o in scene.objects]
    return all(fits_canvas(b, scene.canvas) for b in boxes) and all(
        boxes_clear(b, boxes[:i], cfg.min_gap) for i, b in enumerate(boxes)
    )
