"""WorldConfig: every knob of the synthetic shapes world, validated at construction.

The config travels inside ``world.json`` so a world can be rebuilt from its own folder;
``from_dict`` therefore rejects unknown keys instead of silently ignoring a typo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from compalign.core import InputError, config

# Well-separated hues (RGB). Names are single lowercase words so captions parse unambiguously.
DEFAULT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 200),
    "cyan": (40, 200, 210),
}

# Reference canvas for the default pixel sizes; ``for_canvas`` scales them from here.
_REFERENCE_CANVAS = 64


@dataclass(frozen=True)
class WorldConfig:
    """Configuration of a shapes world. All sizes are in pixels of the (square) canvas."""

    # side of the square image; 64 px = an 8x8 grid of 8-px patches
    canvas_size: int = 64
    # plain background RGB; mid grey keeps every default hue clearly visible
    background: tuple[int, int, int] = (128, 128, 128)
    # colour name -> RGB; sampling iterates names in sorted order so dict order never matters
    colours: dict[str, tuple[int, int, int]] = field(default_factory=lambda: dict(DEFAULT_COLOURS))
    # shape nouns, each a key of render.SHAPE_DRAWERS (list_shapes() shows them all)
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")
    # the two size words (small, large), in that order
    size_words: tuple[str, str] = ("small", "large")
    # inclusive range of a small object's box side; >= 16 px so it spans at least 2x2 patches
    small_size_range: tuple[int, int] = (16, 22)
    # inclusive range of a large object's box side; a clear gap above the small range
    large_size_range: tuple[int, int] = (26, 32)
    # inclusive range of the number of objects in a scene
    objects_per_scene: tuple[int, int] = (3, 5)
    # object boxes start on multiples of this many px (1 = anywhere). At the tiny backbone's patch
    # size (8) every object meets the patch grid the same way, and the tiny ViT learns shape within
    # its training budget; anywhere, it learns colour only (measured: README, "The synthetic world")
    position_grid: int = 8
    # minimum empty pixels between two object boxes (objects never touch)
    min_gap: int = 2
    # random positions tried per object before a placement attempt restarts
    placement_tries: int = 100
    # a relation is asserted only if the centre offset along its axis is at least this many px ...
    relation_min_offset: int = 8
    # ... and at least this many times the offset along the other axis (unambiguous direction)
    relation_dominance: float = 2.0
    # probability that a caption mentions 1, 2, 3 objects (capped by the scene's object count)
    mention_probs: tuple[float, float, float] = (0.3, 0.55, 0.15)
    # probability that a caption with >= 2 mentions states a relation between two of them
    p_relation: float = 0.5
    # probability that a mention names the object's size
    p_mention_size: float = 0.5
    # probability that a mention omits the colour ("a large circle"); lets add_att add colour too
    # (0.3: a third of mentions must be told apart by shape and size alone, not colour)
    p_omit_colour: float = 0.3
    # inclusive range of positive captions per training scene
    captions_per_train_scene: tuple[int, int] = (2, 3)
    # captions drawn per (test scene, negative kind) before that kind is given up for the scene
    test_caption_tries: int = 20
    # training scenes (each with captions_per_train_scene captions and their negatives)
    n_train: int = 5000
    # in-distribution test scenes (no held-out pair rendered or named, negatives included)
    n_test_id: int = 1000
    # out-of-distribution test scenes (every positive names a held-out pair)
    n_test_ood: int = 1000
    # fraction of (colour, shape) pairs held out of train/test_id (rendered and named) for test_ood
    held_out_fraction: float = 0.2
    # if True, training *negatives* may name held-out pairs (reproduces the hard-negative collapse);
    # positives and images never contain them either way
    leak_negatives: bool = False
    # std of seeded per-pixel Gaussian noise (0 = flat colours)
    noise_std: float = 0.0
    # master seed; every scene derives its own stream from (seed, split, index)
    seed: int = 0

    def __post_init__(self) -> None:
        # Frozen dataclass: normalise JSON lists back to tuples via object.__setattr__.
        for name in (
            "background",
            "shapes",
            "size_words",
            "small_size_range",
            "large_size_range",
            "objects_per_scene",
            "mention_probs",
            "captions_per_train_scene",
        ):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "colours", {k: tuple(v) for k, v in self.colours.items()})
        self._validate()

    def _validate(self) -> None:
        def fail(msg: str) -> None:
            raise InputError(f"WorldConfig: {msg}")

        if len(self.colours) < 2 or len(self.shapes) < 2:
            fail("need at least 2 colours and 2 shapes")
        if len(set(self.shapes)) != len(self.shapes):
            fail(f"duplicate shapes in {self.shapes}")
        if len(self.size_words) != 2:
            fail("size_words must be (small_word, large_word)")
        words = [*self.colours, *self.shapes, *self.size_words]
        if len(set(words)) != len(words):
            fail("colour, shape and size words must be distinct")
        for w in words:
            if not w.isalpha() or not w.islower():
                fail(f"word {w!r} must be a single lowercase word (captions are parsed back)")
        for name, rgb in self.colours.items():
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                fail(f"colour {name!r} must be an RGB triple in 0..255")
        (s0, s1), (l0, l1) = self.small_size_range, self.large_size_range
        if not (1 <= s0 <= s1 < l0 <= l1):
            fail(f"need 1 <= small range < large range, got {self.small_size_range}, {self.large_size_range}")
        if l1 > self.canvas_size:
            fail(f"large objects ({l1} px) do not fit a {self.canvas_size} px canvas; use WorldConfig.for_canvas")
        if not 1 <= self.position_grid <= self.canvas_size - l1 + 1:
            fail(f"position_grid must be in 1..{self.canvas_size - l1 + 1} (the largest object must still fit)")
        o0, o1 = self.objects_per_scene
        if not 1 <= o0 <= o1:
            fail(f"objects_per_scene must be 1 <= lo <= hi, got {self.objects_per_scene}")
        # Rough feasibility: the smallest objects plus gaps must fit well within the canvas area,
        # otherwise rejection sampling would spin forever.
        if o1 * (s0 + self.min_gap) ** 2 > 0.6 * self.canvas_size**2:
            fail(f"{o1} objects of >= {s0} px cannot be placed without overlap on {self.canvas_size} px")
        if len(self.mention_probs) != 3 or abs(sum(self.mention_probs) - 1.0) > 1e-6:
            fail("mention_probs must be 3 probabilities summing to 1")
        for name in ("p_relation", "p_mention_size", "p_omit_colour"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                fail(f"{name} must be in [0, 1]")
        if not 0.0 < self.held_out_fraction < 1.0:
            fail("held_out_fraction must be in (0, 1)")
        if self.relation_dominance <= 1.0:
            fail("relation_dominance must be > 1 so at most one relation holds per ordered pair")
        c0, c1 = self.captions_per_train_scene
        if not 1 <= c0 <= c1:
            fail("captions_per_train_scene must be 1 <= lo <= hi")
        if min(self.n_train, self.n_test_id, self.n_test_ood) < 0 or self.noise_std < 0:
            fail("scene counts and noise_std must be >= 0")

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Inverse of ``to_dict``; unknown keys are an error, missing keys take defaults."""
        return config.from_dict(cls, data, "WorldConfig")

    @classmethod
    def for_canvas(cls, canvas_size: int, **overrides: Any) -> WorldConfig:
        """Defaults with the pixel sizes scaled from the 64-px reference to ``canvas_size``.

        Keeps objects the same fraction of the image (and so the same number of patches for a
        backbone whose patch size scales with the image), which is what ``--size`` means.
        """
        scale = canvas_size / _REFERENCE_CANVAS
        d = cls()

        def sc(r: tuple[int, int]) -> tuple[int, int]:
            return (max(1, round(r[0] * scale)), max(1, round(r[1] * scale)))

        scaled: dict[str, Any] = dict(
            canvas_size=canvas_size,
            small_size_range=sc(d.small_size_range),
            large_size_range=sc(d.large_size_range),
            min_gap=max(1, round(d.min_gap * scale)),
            relation_min_offset=max(1, round(d.relation_min_offset * scale)),
            position_grid=max(1, round(d.position_grid * scale)),
        )
        scaled.update(overrides)
        return cls(**scaled)
