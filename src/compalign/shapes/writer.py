"""Write a shapes world folder: train pairs, SugarCrepe-style and BiVLC-style test splits.

Layout (see ``write_world``)::

    DIR/world.json                              config, held-out pairs, version, counts (written last)
    DIR/train/images/NNNNNN.png                 DIR/train/pairs.jsonl   DIR/train/scenes.jsonl
    DIR/{test_id,test_ood}/sugarcrepe/{kind}.json + val2017/NNNNNNNNNNNN.png
    DIR/{test_id,test_ood}/bivlc/test.parquet   (+ negative_scenes.jsonl: the scene of each negative image)
    DIR/{test_id,test_ood}/retrieval/dataset_shapes.json + images/   (Karpathy layout, several captions per image)
    DIR/{test_id,test_ood}/scenes.jsonl

Every file is a pure function of the config: per-scene seeded streams, sorted JSON keys, fixed
PNG and parquet settings, no timestamps -- so the same config gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compalign.core import CompalignError, InputError, MissingFileError, atomic_write
from compalign.shapes.captions import (
    NEGATIVE_KINDS,
    Caption,
    NegativeKind,
    canonical,
    caption_is_false,
    caption_is_true,
    caption_text,
    find_witness,
    make_negative,
    sample_caption,
)
from compalign.shapes.config import WorldConfig
from compalign.shapes.render import SHAPE_DRAWERS, list_shapes, render_png
from compalign.shapes.scene import (
    SPLITS,
    Pair,
    Scene,
    SceneObject,
    Split,
    all_pairs,
    box_around,
    choose_held_out,
    derive_rng,
    is_valid,
    place,
    random_box,
    sample_scene,
    sample_side,
)

logger = logging.getLogger(__name__)

SCHEMA = "compalign.shapes/2"  # bump when the folder layout or generation changes meaning (2: retrieval split)
RETRIEVAL_CAPTIONS = 5  # captions drawn per test image for the retrieval split (duplicates dropped)
SPLIT_CODES: dict[Split, int] = {"train": 0, "test_id": 1, "test_ood": 2}
ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)

_IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF datasets Image storage
_BIVLC_SCHEMA = pa.schema(
    [
        ("image", _IMAGE_STRUCT),
        ("caption", pa.string()),
        ("negative_caption", pa.string()),
        ("negative_image", _IMAGE_STRUCT),
        ("type", pa.string()),
        ("subtype", pa.string()),
    ],
    # The features record HF `datasets` writes, so load_dataset("parquet", ...) decodes Images.
    metadata={
        b"huggingface": json.dumps(
            {
                "info": {
                    "features": {
                        "image": {"_type": "Image"},
                        "caption": {"dtype": "string", "_type": "Value"},
                        "negative_caption": {"dtype": "string", "_type": "Value"},
                        "negative_image": {"_type": "Image"},
                        "type": {"dtype": "string", "_type": "Value"},
                        "subtype": {"dtype": "string", "_type": "Value"},
                    }
                }
            },
            sort_keys=True,
        ).encode()
    },
)


class WorldExistsError(CompalignError, FileExistsError):
    """The output folder already holds a world built from a different config."""


@dataclass(frozen=True)
class WorldResult:
    path: Path  # the world folder
    status: Literal["written", "cached"]  # cached: an identical world was already there
    counts: dict[str, Any]  # scenes / rows per split, as stored in world.json


@dataclass(frozen=True)
class _SplitRules:
    allowed: list[Pair]  # pairs a scene (and a negative image) may render
    must_name: frozenset[Pair]  # every positive caption names one of these (test_ood only)
    forbidden: frozenset[Pair]  # pairs a negative caption may not name


def _rules(split: Split, cfg: WorldConfig, held: frozenset[Pair]) -> _SplitRules:
    seen = [p for p in all_pairs(cfg) if p not in held]
    if split == "test_ood":
        return _SplitRules(all_pairs(cfg), held, frozenset())
    # test_id stays fully in-distribution; only training negatives may leak, and only on request.
    leak = split == "train" and cfg.leak_negatives
    return _SplitRules(seen, frozenset(), frozenset() if leak else held)


def _scene(split: Split, index: int, cfg: WorldConfig, rules: _SplitRules) -> Scene:
    rng = derive_rng(cfg.seed, SPLIT_CODES[split], index, 0)
    return sample_scene(cfg, rng, rules.allowed, sorted(rules.must_name) or None)


# -- negative images (BiVLC) -------------------------------------------------------------------


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


# -- files -------------------------------------------------------------------------------------


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(_dump(r) + "\n" for r in rows), encoding="utf-8")


# -- splits, written in chunks of scenes -------------------------------------------------------
# A chunk is a pure function of (config, split, index range): it writes its images and returns its rows.
# Scenes use per-index seeded streams, so chunks can run in any order, in any process; merging their
# rows in index order gives the same files as one pass (`workers` changes the speed, never a byte).

_CHUNK = 250  # scenes per task: small enough to balance 16 workers on 5k scenes, large enough to amortise a task


def _train_chunk(cfg: WorldConfig, out: Path, held: frozenset[Pair], start: int, stop: int) -> dict[str, list]:
    rules = _rules("train", cfg, held)
    pairs: list[dict[str, Any]] = []
    scenes: list[dict[str, Any]] = []
    for i in range(start, stop):
        scene = _scene("train", i, cfg, rules)
        name = f"images/{i:06d}.png"
        (out / name).write_bytes(render_png(scene, cfg))
        scenes.append(scene.to_json(name))
        rng = derive_rng(cfg.seed, SPLIT_CODES["train"], i, 1)
        want = int(rng.integers(cfg.captions_per_train_scene[0], cfg.captions_per_train_scene[1] + 1))
        seen: set[tuple] = set()
        for _ in range(5 * want):  # small scenes admit few distinct captions: stop trying eventually
            if len(seen) == want:
                break
            cap = sample_caption(scene, cfg, rng)
            if canonical(cap) in seen:
                continue
            seen.add(canonical(cap))
            negs = {k: make_negative(k, cap, scene, cfg, rng, rules.forbidden) for k in NEGATIVE_KINDS}
            pairs.append(
                {
                    "image": name,
                    "caption": caption_text(cap),
                    "negatives": {k: caption_text(n) for k, n in negs.items() if n},
                }
            )
    return {"pairs": pairs, "scenes": scenes}


def _test_chunk(split: Split, cfg: WorldConfig, out: Path, held: frozenset[Pair], start: int, stop: int) -> dict[str, list]:
    """Rows of test scenes [start, stop): sugarcrepe (kind, item), bivlc rows, their negative scenes, scenes."""
    rules = _rules(split, cfg, held)
    image_dir = out / "sugarcrepe" / "val2017"
    sugarcrepe: list[tuple[str, dict[str, str]]] = []
    bivlc: list[dict[str, Any]] = []
    neg_scenes: list[dict[str, Any]] = []  # "row" indexes this chunk's bivlc rows; the merge offsets it
    scenes: list[dict[str, Any]] = []
    retrieval: list[dict[str, Any]] = []  # Karpathy-layout image records
    # In-distribution negative images must not render held-out pairs either.
    neg_allowed = None if split == "test_ood" else rules.allowed
    for i in range(start, stop):
        scene = _scene(split, i, cfg, rules)
        name = f"{i:012d}.png"
        png = render_png(scene, cfg)
        (image_dir / name).write_bytes(png)
        scenes.append(scene.to_json(name))
        retrieval.append(_retrieval_record(split, i, name, png, scene, cfg, rules, out))
        for kind_index, kind in enumerate(NEGATIVE_KINDS):
            # One stream per (scene, kind): each SugarCrepe subset is drawn independently.
            rng = derive_rng(cfg.seed, SPLIT_CODES[split], i, 10 + kind_index)
            for _ in range(cfg.test_caption_tries):
                cap = sample_caption(scene, cfg, rng, rules.must_name)
                neg = make_negative(kind, cap, scene, cfg, rng, rules.forbidden)
                if neg is not None:
                    break
            else:
                continue
            pos_text, neg_text = caption_text(cap), caption_text(neg)
            sugarcrepe.append((kind, {"caption": pos_text, "filename": name, "negative_caption": neg_text}))
            if kind.startswith("add_"):
                # An add negative entails its positive, so the positive stays true on the negative
                # image and BiVLC's Ineg2T (s(C1,I1) > s(C0,I1)) would have no right answer.
                continue
            neg_scene = negative_scene(kind, cap, neg, scene, cfg, rng, neg_allowed)
            if neg_scene is None:
                continue
            neg_name = f"{i:012d}_{kind}.png"
            typ, sub = kind.split("_")
            bivlc.append(
                {
                    "image": {"bytes": png, "path": name},
                    "caption": pos_text,
                    "negative_caption": neg_text,
                    "negative_image": {"bytes": render_png(neg_scene, cfg), "path": neg_name},
                    "type": typ,
                    "subtype": sub,
                }
            )
            neg_scenes.append(
                {"row": len(bivlc) - 1, "kind": kind, "image": name, "negative_scene": neg_scene.to_json(neg_name)}
            )
    return {"sugarcrepe": sugarcrepe, "bivlc": bivlc, "neg_scenes": neg_scenes, "scenes": scenes, "retrieval": retrieval}


def _retrieval_record(split: Split, i: int, name: str, png: bytes, scene: Scene, cfg: WorldConfig,
                      rules: _SplitRules, out: Path) -> dict[str, Any]:
    """One image of the retrieval split: its own copy of the PNG and up to RETRIEVAL_CAPTIONS true captions."""
    (out / "retrieval" / "images" / name).write_bytes(png)
    rng = derive_rng(cfg.seed, SPLIT_CODES[split], i, 30)  # a stream of its own: the other benchmarks are unchanged
    texts = list(dict.fromkeys(caption_text(sample_caption(scene, cfg, rng, rules.must_name))
                               for _ in range(RETRIEVAL_CAPTIONS)))
    return {"filepath": "images", "filename": name, "split": "test", "imgid": i,
            "sentences": [{"raw": t, "sentid": RETRIEVAL_CAPTIONS * i + j} for j, t in enumerate(texts)]}


def _finish_train(out: Path, chunks: list[dict[str, list]]) -> dict[str, int]:
    pairs = [r for c in chunks for r in c["pairs"]]
    scenes = [r for c in chunks for r in c["scenes"]]
    _write_jsonl(out / "pairs.jsonl", pairs)
    _write_jsonl(out / "scenes.jsonl", scenes)
    return {"scenes": len(scenes), "pairs": len(pairs)}


def _finish_test(out: Path, chunks: list[dict[str, list]]) -> dict[str, Any]:
    sugarcrepe: dict[str, dict[str, dict[str, str]]] = {k: {} for k in NEGATIVE_KINDS}
    bivlc: list[dict[str, Any]] = []
    neg_scenes: list[dict[str, Any]] = []
    for c in chunks:
        for kind, item in c["sugarcrepe"]:
            sugarcrepe[kind][str(len(sugarcrepe[kind]))] = item
        neg_scenes += [{**r, "row": r["row"] + len(bivlc)} for r in c["neg_scenes"]]
        bivlc += c["bivlc"]
    for kind, items in sugarcrepe.items():
        # Numeric id order like the real files (so no sort_keys at the top level).
        text = json.dumps({k: dict(sorted(v.items())) for k, v in items.items()}, ensure_ascii=True)
        (out / "sugarcrepe" / f"{kind}.json").write_text(text, encoding="utf-8")
    table = pa.Table.from_pylist(bivlc, schema=_BIVLC_SCHEMA)
    pq.write_table(table, out / "bivlc" / "test.parquet", compression="snappy")
    _write_jsonl(out / "bivlc" / "negative_scenes.jsonl", neg_scenes)
    _write_jsonl(out / "scenes.jsonl", [r for c in chunks for r in c["scenes"]])
    images = [r for c in chunks for r in c["retrieval"]]
    (out / "retrieval" / "dataset_shapes.json").write_text(_dump({"dataset": "shapes", "images": images}), encoding="utf-8")
    types = {t: sum(r["type"] == t for r in bivlc) for t in ("replace", "swap", "add")}
    return {
        "scenes": sum(len(c["scenes"]) for c in chunks),
        "retrieval": {"images": len(images), "captions": sum(len(r["sentences"]) for r in images)},
        "sugarcrepe": {k: len(v) for k, v in sugarcrepe.items()},
        "bivlc": {"rows": len(bivlc), **types},
    }


def _chunk(task: tuple[Split, WorldConfig, Path, frozenset[Pair], int, int]) -> dict[str, list]:
    split, cfg, out, held, start, stop = task
    if split == "train":
        return _train_chunk(cfg, out, held, start, stop)
    return _test_chunk(split, cfg, out, held, start, stop)


def _write_splits(
    cfg: WorldConfig, out: Path, held: frozenset[Pair], workers: int, progress: ProgressFn | None
) -> dict[str, Any]:
    sizes: dict[Split, int] = {"train": cfg.n_train, "test_id": cfg.n_test_id, "test_ood": cfg.n_test_ood}
    tasks = []
    for split, n in sizes.items():
        if split == "train":
            (out / split / "images").mkdir(parents=True)
        else:
            (out / split / "sugarcrepe" / "val2017").mkdir(parents=True)
            (out / split / "bivlc").mkdir()
            (out / split / "retrieval" / "images").mkdir(parents=True)
        tasks += [(split, cfg, out / split, held, s, min(n, s + _CHUNK)) for s in range(0, n, _CHUNK)]
    done: dict[Split, int] = dict.fromkeys(sizes, 0)
    results: dict[Split, list[dict[str, list]]] = {s: [] for s in sizes}

    def collect(task: tuple, rows: dict[str, list]) -> None:
        split = task[0]
        results[split].append(rows)
        done[split] += task[5] - task[4]
        if progress:
            progress(split, done[split], sizes[split])

    if workers <= 1:
        for t in tasks:
            collect(t, _chunk(t))
    else:
        # spawn, not fork: the caller may hold threads (torch, a progress bar) that fork would copy mid-state
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for t, rows in zip(tasks, pool.map(_chunk, tasks)):  # map yields in task order: rows merge in index order
                collect(t, rows)
    counts: dict[str, Any] = {"train": _finish_train(out / "train", results["train"])}
    for split in ("test_id", "test_ood"):
        counts[split] = _finish_test(out / split, results[split])
    return counts


def _version() -> str:
    try:
        from compalign import __version__

        return str(__version__)
    except ImportError:
        return "0"


def _same_config(meta: dict[str, Any], cfg: WorldConfig) -> bool:
    if meta.get("schema") != SCHEMA:
        return False
    try:
        return WorldConfig.from_dict(meta["config"]) == cfg
    except (KeyError, TypeError, ValueError):
        return False


def write_world(
    cfg: WorldConfig,
    out_dir: str | Path,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    workers: int = 1,
) -> WorldResult:
    """Generate the world for ``cfg`` into ``out_dir``; reuse it if ``world.json`` matches.

    ``workers`` > 1 renders chunks of scenes in that many processes; the files are the same bytes.

    ``world.json`` is written last, so its presence means the folder is complete. A folder
    holding a world from another config raises WorldExistsError unless ``force``.
    """
    unknown = sorted(set(cfg.shapes) - set(SHAPE_DRAWERS))
    if unknown:
        raise InputError(f"shapes {unknown} cannot be drawn; known shapes: {list_shapes()}")
    out = Path(out_dir)
    meta_path = out / "world.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            meta = {}
        if _same_config(meta, cfg) and not force:
            logger.info("world at %s already matches this config; skipping (cached)", out)
            return WorldResult(out, "cached", meta.get("counts", {}))
        older = meta.get("schema") != SCHEMA and _same_config({**meta, "schema": SCHEMA}, cfg)
        if older:  # our own output, in an earlier layout: regenerating it loses nothing
            logger.warning("world at %s has the older layout %s; writing it again as %s", out, meta.get("schema"), SCHEMA)
        elif not force:
            raise WorldExistsError(
                f"{out} holds a world built from a different config; pass force=True (CLI: --force) to overwrite it"
            )
    # Remove only what this writer owns (an earlier, possibly interrupted, run).
    meta_path.unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    held = choose_held_out(cfg)
    logger.info("writing shapes world to %s (%d held-out pairs, %d workers)", out, len(held), workers)
    counts = _write_splits(cfg, out, held, workers, progress)
    meta = {
        "schema": SCHEMA,
        "version": _version(),
        "config": cfg.to_dict(),
        "held_out_pairs": sorted([list(p) for p in held]),
        "counts": counts,
    }
    atomic_write(meta_path, json.dumps(meta, sort_keys=True, indent=2) + "\n")  # last, whole: the world is done
    logger.info("wrote shapes world to %s: %s", out, counts)
    return WorldResult(out, "written", counts)


def _world_meta(world_dir: str | Path) -> tuple[Path, dict[str, Any]]:
    """(path, parsed world.json) of a written world; a missing or damaged file is the user's to fix."""
    path = Path(world_dir) / "world.json"
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: {world_dir} is not a shapes world; "
                               f"build it with `compalign shapes make --out {world_dir}`")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e}); rebuild the world with "
                         f"`compalign shapes make --out {world_dir} --force`") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} is not a shapes world record (a JSON object); rebuild the world with "
                         f"`compalign shapes make --out {world_dir} --force`")
    return path, meta


def _meta_field(path: Path, meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise InputError(f"{path} has no {key!r}: it is not a shapes world record; rebuild the world with "
                         f"`compalign shapes make --out {path.parent} --force`")
    return meta[key]


def load_held_out(world_dir: str | Path) -> frozenset[Pair]:
    """Held-out (colour, shape) pairs of a written world."""
    path, meta = _world_meta(world_dir)
    try:
        return frozenset((c, s) for c, s in _meta_field(path, meta, "held_out_pairs"))
    except (TypeError, ValueError) as e:  # not a list of [colour, shape] pairs
        raise InputError(f"{path}: held_out_pairs is not a list of [colour, shape] pairs ({e})") from None


def load_world_config(world_dir: str | Path) -> WorldConfig:
    """The WorldConfig a world folder was written with."""
    path, meta = _world_meta(world_dir)
    data = _meta_field(path, meta, "config")
    if not isinstance(data, dict):
        raise InputError(f"{path}: config is not a JSON object; rebuild the world with "
                         f"`compalign shapes make --out {world_dir} --force`")
    try:
        return WorldConfig.from_dict(data)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None


def read_jsonl(path: Path, world: str | Path = "WORLD") -> list[tuple[int, Any]]:
    """(line number, row) of a world's JSONL file; a damaged line is named with the command that rewrites it."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {n} is not valid JSON ({e}); rebuild the world with "
                             f"`compalign shapes make --out {world} --force`") from None
    return rows


def load_scenes(path: str | Path) -> dict[str, Scene]:
    """scenes.jsonl (or negative_scenes.jsonl's ``negative_scene`` rows) -> {image name: Scene}."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path} is missing: pass a split folder of a shapes world "
                               "(written by `compalign shapes make --out WORLD`)")
    out: dict[str, Scene] = {}
    for n, row in read_jsonl(path):
        try:
            row = row.get("negative_scene", row) if isinstance(row, dict) else row
            out[row["image"]] = Scene.from_json(row)
        except InputError as e:
            raise InputError(f"{path} line {n}: {e}") from None
        except (KeyError, TypeError) as e:  # a row without the scene fields
            raise InputError(f"{path} line {n} is not a scene row ({type(e).__name__}: {e}); rebuild the world with "
                             "`compalign shapes make --out WORLD --force`") from None
    return out
