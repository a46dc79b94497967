"""BiVLC's negative images: a scene edited as little as possible so that the negative caption is true.

SugarCrepe needs only a negative caption; BiVLC also needs the image that caption describes. Reusing
the positive scene and changing only what the edit names (the witnesses' attributes, one added object,
one moved object for a relation) keeps the pair a minimal contrast, like the real benchmark's images;
every candidate is checked with the caption evaluator, so a negative image is never wrong, only missing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from compalign.shapes.captions import Caption, NegativeKind, caption_is_false, caption_is_true, caption_text, find_witness
from compalign.shapes.config import WorldConfig
from compalign.shapes.scene import Pair, Scene, SceneObject, box_around, is_valid, place, random_box, sample_side


def _clamped_box(centre: tuple[float, float], side: int, canvas: int, grid: int = 1) -> tuple[int, int, int, int]:
    """A ``side`` box near ``centre``, inside the canvas and on the world's position grid."""
    x0, y0, _, _ = box_around(centre, side)
    hi = (canvas - side) // grid * grid
    x0, y0 = (min(max(grid * round(v / grid), 0), hi) for v in (x0, y0))
    return (x0, y0, x0 + side, y0 + side)


def _search(
    base: Scene,
    movable: list[list[int]],
    accept: Callable[[Scene], bool],
    cfg: WorldConfig,
    rng: np.random.Generator,
) -> Scene | None:
    """``base`` if accepted, else random free spots for the ``movable`` groups, in order.

    Edits that grow an object, add one or change a relation often do not fit in place; trying
    the smallest group of moved objects first keeps the negative image as close to the original
    as the edit allows (moving everything is the last resort).
    """
    if accept(base):
        return base
    for group in movable:
        for _ in range(cfg.placement_tries):
            objs = list(base.objects)
            boxes = [o.box for i, o in enumerate(objs) if i not in group]
            sides = [objs[i].side for i in group]
            placed = place(sides, cfg, rng, fixed=boxes)  # rejection-samples each object in turn
            if placed is None:
                continue
            for i, box in zip(group, placed, strict=True):
                objs[i] = replace(objs[i], box=box)
            cand = replace(base, objects=tuple(objs))
            if accept(cand):
                return cand
    return None


def negative_scene(
    kind: NegativeKind,
    positive: Caption,
    negative: Caption,
    scene: Scene,
    cfg: WorldConfig,
    rng: np.random.Generator,
    allowed: list[Pair] | None = None,
) -> Scene | None:
    """Edit ``scene`` minimally so that ``negative`` is true; None if the edit cannot be made clean.

    The objects that witness ``positive`` take the attributes ``negative`` gives their mention
    (that realises swap/replace/add_att), an add_obj mention gets a new object, and replace_rel
    moves one object of the related pair; objects are moved only if the edit does not fit in place.
    Checked: ``negative`` strictly true, only ``allowed`` pairs rendered, and ``positive`` clearly
    false -- except for add_att/add_obj, whose negative *entails* the positive (adding can only
    make a caption more specific), so there the positive stays true on the negative image, as
    in the real BiVLC "add" items.
    """
    witness = find_witness(positive, scene, cfg)
    if witness is None:
        raise ValueError(f"positive {caption_text(positive)!r} is false for its scene")
    objs = list(scene.objects)
    resized: list[int] = []
    for k, m in enumerate(negative.mentions[: len(positive.mentions)]):
        o = objs[witness[k]]
        size = m.size or o.size
        box = o.box
        if size != o.size:
            box = _clamped_box(o.centre, sample_side(size, cfg, rng), scene.canvas, cfg.position_grid)
            resized.append(witness[k])
        objs[witness[k]] = SceneObject(m.shape, m.colour or o.colour, size, box)
    for m in negative.mentions[len(positive.mentions) :]:  # add_obj: the new object, placed by _search
        colours = [
            c for c in ([m.colour] if m.colour else sorted(cfg.colours)) if allowed is None or (c, m.shape) in allowed
        ]
        if not colours:
            return None
        size = m.size or cfg.size_words[int(rng.integers(2))]
        box = random_box(sample_side(size, cfg, rng), cfg, rng)
        resized.append(len(objs))
        objs.append(SceneObject(m.shape, colours[int(rng.integers(len(colours)))], size, box))
    if allowed is not None and any(o.pair not in allowed for o in objs):
        return None
    everything = list(range(len(objs)))
    movable = [resized, everything] if resized else []
    if kind == "replace_rel":  # a vertical relation between two big objects may need both moved
        movable = [[witness[0]], [witness[1]], [witness[0], witness[1]], everything]

    def accept(s: Scene) -> bool:
        if not is_valid(s, cfg) or not caption_is_true(negative, s, cfg):
            return False
        return kind in ("add_att", "add_obj") or caption_is_false(positive, s, cfg)

    return _search(replace(scene, objects=tuple(objs)), movable, accept, cfg, rng)
