"""Locality probe: can a linear map read each object's colour and shape from the cached patches?

For every object of a split's ``scenes.jsonl`` the probe pools the cached patch tokens of its
image two ways -- the mean over the patches whose centres fall inside the object's box, and the
single patch under the box centre -- and fits closed-form ridge classifiers (one-vs-all least
squares on standardised features, the ridge picked on a validation slice of the training part)
for colour, shape, size and the (colour, shape) pair, per cached layer. Train and test parts
are split by *image*, so no scene is seen on both sides. A head that binds attributes to objects
needs both read at the same place; this tells whether the backbone put them there.

``text_to_image_recall`` adds the vocabulary check: text->image R@1 over the split's gallery
from the cached global embeddings, strict (the query's own image) and valid (any image whose
scene graph makes the caption true -- the world's captions are often true of several images).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compalign.cache.reader import CacheReader
from compalign.core import InputError, MissingFileError
from compalign.shapes.captions import caption_is_true, parse_caption
from compalign.shapes.config import WorldConfig
from compalign.shapes.load import load_held_out, load_scenes, load_world_config
from compalign.shapes.scene import Scene

logger = logging.getLogger(__name__)

Pool = Literal["box", "centre"]
POOLS: tuple[Pool, ...] = ("box", "centre")
TARGETS: tuple[str, ...] = ("colour", "shape", "size", "pair")


@dataclass(frozen=True)
class ProbeConfig:
    """How the probes are fitted."""

    # fraction of images whose objects train the probe (the rest are the held-out test part)
    train_fraction: float = 0.6
    # candidate ridge strengths, as a multiple of the number of training objects
    ridges: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
    # fraction of the training part held back to pick the ridge
    val_fraction: float = 0.25
    # seed of the image split
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "ridges", tuple(self.ridges))
        if not 0.0 < self.train_fraction < 1.0 or not 0.0 < self.val_fraction < 1.0:
            raise InputError("ProbeConfig: train_fraction and val_fraction must be in (0, 1)")
        if not self.ridges or min(self.ridges) <= 0:
            raise InputError("ProbeConfig: ridges must be positive")


@dataclass
class ProbeRow:
    layer: int  # cached layer (-1 = final)
    pool: Pool
    target: str  # colour | shape | size | pair
    accuracy: float  # held-out accuracy, 0..1
    chance: float  # held-out accuracy of always answering the most frequent training class
    ridge: float  # the ridge strength chosen on the validation slice
    n_train: int
    n_test: int


@dataclass
class ProbeResult:
    rows: list[ProbeRow]
    n_images: int
    n_objects: int
    grid: int  # patches per side

    def table(self) -> dict[tuple[int, Pool], dict[str, float]]:
        """{(layer, pool): {target: accuracy}}"""
        out: dict[tuple[int, Pool], dict[str, float]] = {}
        for r in self.rows:
            out.setdefault((r.layer, r.pool), {})[r.target] = r.accuracy
        return out

    def chance(self) -> dict[str, float]:
        return {r.target: r.chance for r in self.rows}


# -- geometry --------------------------------------------------------------------------------


def box_cells(box: tuple[int, int, int, int], canvas: int, grid: int) -> tuple[np.ndarray, int]:
    """(patch indices whose centre lies in ``box``, index of the patch under the box centre).

    Patches are numbered row-major over a ``grid`` x ``grid`` layout of the ``canvas``; boxes
    are (x0, y0, x1, y1) with exclusive ends. A box too small to hold a patch centre falls back
    to its centre patch.
    """
    x0, y0, x1, y1 = box
    cell = canvas / grid
    centres = (np.arange(grid) + 0.5) * cell
    cols = np.flatnonzero((centres >= x0) & (centres < x1))
    rows = np.flatnonzero((centres >= y0) & (centres < y1))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    centre = min(int(cy // cell), grid - 1) * grid + min(int(cx // cell), grid - 1)
    inside = (rows[:, None] * grid + cols[None, :]).ravel()
    return (inside if len(inside) else np.array([centre])), centre


def pool_objects(
    patches: np.ndarray, objects: list[tuple[int, tuple[int, int, int, int]]], canvas: int
) -> dict[Pool, np.ndarray]:
    """patches (N, P, W) and (image row, box) per object -> {pool: (n_objects, W) float32}."""
    n, p, w = patches.shape
    grid = int(round(p**0.5))
    if grid * grid != p:
        raise InputError(f"the probe needs a square patch grid, got {p} patches")
    box = np.empty((len(objects), w), dtype=np.float32)
    centre = np.empty((len(objects), w), dtype=np.float32)
    for k, (row, b) in enumerate(objects):
        inside, mid = box_cells(b, canvas, grid)
        tokens = patches[row].astype(np.float32)  # (P, W)
        box[k] = tokens[inside].mean(axis=0)
        centre[k] = tokens[mid]
    return {"box": box, "centre": centre}


# -- the linear probe ------------------------------------------------------------------------


def fit_ridge(x: np.ndarray, y: np.ndarray, n_classes: int, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares one-vs-all classifier with an L2 penalty (closed form, float64).

    x (n, W) standardised features, y (n,) class ids -> (weights (W, C), bias (C,)).
    """
    x = x.astype(np.float64)
    target = np.eye(n_classes)[y]  # (n, C)
    mean_x, mean_t = x.mean(0), target.mean(0)
    xc, tc = x - mean_x, target - mean_t
    gram = xc.T @ xc + ridge * len(x) * np.eye(x.shape[1])  # (W, W)
    weights = np.linalg.solve(gram, xc.T @ tc)  # (W, C)
    return weights, mean_t - mean_x @ weights


def _predict(x: np.ndarray, model: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    w, b = model
    return np.argmax(x.astype(np.float64) @ w + b, axis=1)


def fit_linear_probe(
    x_train: np.ndarray, y_train: np.ndarray, cfg: ProbeConfig
) -> tuple[Callable[[np.ndarray], np.ndarray], float, Any]:
    """(predict: features -> labels, chosen ridge, most frequent training label); labels of any kind.

    Features are standardised on the train part; the ridge is picked on a slice of it.
    """
    classes, y_tr = np.unique(y_train, return_inverse=True)
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_tr = (x_train - mu) / sd
    n_val = max(1, int(round(len(x_tr) * cfg.val_fraction)))
    fit_part, val_part = slice(0, len(x_tr) - n_val), slice(len(x_tr) - n_val, None)
    best, best_acc = cfg.ridges[0], -1.0
    for ridge in cfg.ridges:  # ascending order; ties keep the smaller ridge
        model = fit_ridge(x_tr[fit_part], y_tr[fit_part], len(classes), ridge)
        acc = float(np.mean(_predict(x_tr[val_part], model) == y_tr[val_part]))
        if acc > best_acc:
            best, best_acc = ridge, acc
    model = fit_ridge(x_tr, y_tr, len(classes), best)
    return (lambda x: classes[_predict((x - mu) / sd, model)]), best, classes[np.bincount(y_tr).argmax()]


def linear_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, cfg: ProbeConfig
) -> tuple[float, float, float]:
    """(held-out accuracy, chance, chosen ridge); the ridge is picked on a slice of the train part.

    Labels may be any integers; a test class never seen in training counts as an error.
    """
    predict, best, majority = fit_linear_probe(x_train, y_train, cfg)
    accuracy = float(np.mean(predict(x_test) == y_test))
    chance = float(np.mean(y_test == majority))
    return accuracy, chance, best


# -- the probe over a cache ------------------------------------------------------------------


def _labels(objects: list[dict[str, Any]], cfg: WorldConfig) -> dict[str, np.ndarray]:
    colours, shapes = sorted(cfg.colours), list(cfg.shapes)
    c = np.array([colours.index(o["colour"]) for o in objects])
    s = np.array([shapes.index(o["shape"]) for o in objects])
    size = np.array([list(cfg.size_words).index(o["size"]) for o in objects])
    return {"colour": c, "shape": s, "size": size, "pair": c * len(shapes) + s}


def image_rows(reader: CacheReader) -> dict[str, int]:
    """Image file name (without folders) -> cache row, for the rows that were encoded."""
    origin = reader.root["images/origin"][:]
    ok = reader.ok("images")
    return {Path(str(o)).name: i for i, o in enumerate(origin) if ok[i]}


def cached_layers(reader: CacheReader) -> list[int]:
    return [int(x) for x in reader.attrs["extraction"]["layers"]]


def probe_cache(
    reader: CacheReader,
    world: str | Path,
    split: str = "test_id",
    cfg: ProbeConfig = ProbeConfig(),
    layers: list[int] | None = None,
) -> ProbeResult:
    """Fit and score the probes for every (cached layer, pool, target) on ``world``'s ``split``."""
    wcfg = load_world_config(world)
    objs = _split_objects(reader, world, split)
    names, objects = objs.names, objs.objects
    perm = np.random.default_rng(cfg.seed).permutation(len(names))
    n_train = int(round(len(names) * cfg.train_fraction))
    part = np.zeros(len(names), dtype=bool)
    part[perm[:n_train]] = True  # True = train part
    train_mask = np.array([bool(part[k]) for k, _ in objects])
    attrs, cache_rows = objs.attrs, objs.cache_rows
    # Order the train part for the validation slice by the seeded image order, not by name.
    rank = np.empty(len(names), dtype=np.int64)
    rank[perm] = np.arange(len(names))
    obj_rank = np.array([rank[k] for k, _ in objects])
    tr = np.flatnonzero(train_mask)[np.argsort(obj_rank[train_mask], kind="stable")]
    te = np.flatnonzero(~train_mask)
    labels = _labels(attrs, wcfg)
    canvas = objs.canvas
    out: list[ProbeRow] = []
    grid = 0
    for layer in layers if layers is not None else cached_layers(reader):
        patches = reader.read("images", "patches", cache_rows, layer=layer)  # (N, P, W)
        grid = int(round(patches.shape[1] ** 0.5))
        pooled = pool_objects(patches, objects, canvas)
        for pool in POOLS:
            x = pooled[pool]
            for target in TARGETS:
                y = labels[target]
                acc, chance, ridge = linear_probe(x[tr], y[tr], x[te], y[te], cfg)
                out.append(ProbeRow(layer, pool, target, acc, chance, ridge, len(tr), len(te)))
                logger.info("probe layer %d %s %s: %.3f (chance %.3f)", layer, pool, target, acc, chance)
    return ProbeResult(out, len(names), len(objects), grid)


@dataclass
class _Objects:
    names: list[str]  # scene names of the split that are in the cache, sorted
    cache_rows: np.ndarray  # (N,) cache row of each image
    objects: list[tuple[int, tuple[int, int, int, int]]]  # (index into names, box) per object
    attrs: list[dict[str, Any]]  # colour / shape / size per object
    canvas: int


def _split_objects(reader: CacheReader, world: str | Path, split: str) -> _Objects:
    """Every object of ``split``'s scenes whose image is in the cache."""
    world = Path(world)
    scenes_path = world / split / "scenes.jsonl"
    if not scenes_path.is_file():
        raise MissingFileError(f"{scenes_path} is missing: is {world} a shapes world (`compalign shapes make --out {world}`) "
                               f"and {split!r} one of its splits (train, test_id, test_ood)?")
    scenes = load_scenes(scenes_path)
    rows_of = image_rows(reader)
    names = sorted(n for n in scenes if Path(n).name in rows_of)
    if len(names) < 10:
        raise InputError(
            f"only {len(names)} images of {scenes_path} are in the cache {reader.path}: "
            f"extract the same split (e.g. --data sugarcrepe --root {world / split / 'sugarcrepe'})"
        )
    objects, attrs = [], []
    for k, name in enumerate(names):
        scene: Scene = scenes[name]
        for o in scene.objects:
            objects.append((k, o.box))
            attrs.append({"colour": o.colour, "shape": o.shape, "size": o.size})
    rows = np.array([rows_of[Path(n).name] for n in names])
    return _Objects(names, rows, objects, attrs, scenes[names[0]].canvas)


def transfer_probe(
    fit_reader: CacheReader,
    reader: CacheReader,
    world: str | Path,
    fit_split: str = "test_id",
    split: str = "test_ood",
    cfg: ProbeConfig = ProbeConfig(),
) -> dict[int, dict[str, tuple[float, float, int, int]]]:
    """Probes fitted on ``fit_split``'s objects, scored on ``split``'s: {layer: {target: (held, familiar, n, n)}}.

    The question a head trained on familiar pairs meets: fitted where every (colour, shape) pair is a
    familiar one (test_id), does the probe read an object of a held-out pair (test_ood) as well as a
    familiar one? A backbone that codes shape apart from colour does; one that codes the pair does not
    (accuracy on held-out pairs near chance while familiar ones stay high). Box-pooled patches.
    """
    wcfg = load_world_config(world)
    held = load_held_out(world)
    fit, test = _split_objects(fit_reader, world, fit_split), _split_objects(reader, world, split)
    is_held = np.array([(a["colour"], a["shape"]) in held for a in test.attrs])
    if not is_held.any():
        raise InputError(f"no object of {split} is of a held-out pair: score the transfer on test_ood")
    y_fit, y_test = _labels(fit.attrs, wcfg), _labels(test.attrs, wcfg)
    out: dict[int, dict[str, tuple[float, float, int, int]]] = {}
    for layer in cached_layers(fit_reader):
        x_fit = pool_objects(fit_reader.read("images", "patches", fit.cache_rows, layer=layer), fit.objects, fit.canvas)["box"]
        x = pool_objects(reader.read("images", "patches", test.cache_rows, layer=layer), test.objects, test.canvas)["box"]
        row = {}
        for target in ("colour", "shape", "size"):
            right = fit_linear_probe(x_fit, y_fit[target], cfg)[0](x) == y_test[target]  # (n_objects,)
            row[target] = (float(right[is_held].mean()), float(right[~is_held].mean()), int(is_held.sum()), int((~is_held).sum()))
        out[layer] = row
    return out


def text_to_image_recall(reader: CacheReader, world: str | Path, split: str = "test_id", limit: int = 1000) -> dict[str, float]:
    """Text->image R@1 over the split's first ``limit`` images, from the cached global embeddings.

    One query per image: the positive caption of its first SugarCrepe item (items in id order).
    ``r1`` counts the query's own image only; ``r1_valid`` also accepts any image whose scene makes
    the caption true (the world's captions name only some objects, so several images often fit).
    """
    world = Path(world)
    wcfg = load_world_config(world)
    scenes = {Path(k).name: v for k, v in load_scenes(world / split / "scenes.jsonl").items()}
    rows_of = image_rows(reader)
    names = sorted(n for n in scenes if n in rows_of)[:limit]
    it = reader.items
    origin = reader.root["images/origin"][:]
    strings = reader.root["texts/strings"][:]
    img_rows = reader.rows("images", it["image"])
    txt_rows = reader.rows("texts", it["caption"])
    first: dict[str, int] = {}
    for i in np.argsort(it["id"], kind="stable"):
        first.setdefault(Path(str(origin[img_rows[i]])).name, int(txt_rows[i]))
    names = [n for n in names if n in first]
    if not names:
        raise InputError(f"no SugarCrepe items of {split} in {reader.path}")
    gallery = np.array([rows_of[n] for n in names])
    queries = np.array([first[n] for n in names])
    img = reader.read("images", "global", gallery).astype(np.float32)
    txt = reader.read("texts", "global", queries).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    top = np.argmax(txt @ img.T, axis=1)  # (Q,) best gallery image per caption
    strict = top == np.arange(len(names))
    valid = [
        bool(s) or caption_is_true(parse_caption(str(strings[q]), wcfg), scenes[names[t]], wcfg)
        for s, q, t in zip(strict, queries, top)
    ]
    return {"r1": float(np.mean(strict)), "r1_valid": float(np.mean(valid)), "n": float(len(names))}


__all__ = [
    "POOLS",
    "TARGETS",
    "ProbeConfig",
    "ProbeResult",
    "ProbeRow",
    "box_cells",
    "cached_layers",
    "fit_linear_probe",
    "fit_ridge",
    "image_rows",
    "linear_probe",
    "pool_objects",
    "probe_cache",
    "text_to_image_recall",
    "transfer_probe",
]
