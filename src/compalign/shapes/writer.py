"""Write a shapes world folder: train pairs, SugarCrepe-style and BiVLC-style test splits.

Layout (see ``write_world``)::

    DIR/world.json                              config, held-out pairs, version, counts (written last)
    DIR/train/images/NNNNNN.png                 DIR/train/pairs.jsonl   DIR/train/scenes.jsonl
    DIR/{test_id,test_ood}/sugarcrepe/{kind}.json + val2017/NNNNNNNNNNNN.png
    DIR/{test_id,test_ood}/bivlc/test.parquet   (+ negative_scenes.jsonl: the scene of each negative image)
    DIR/{test_id,test_ood}/retrieval/dataset_shapes.json + images/   (Karpathy layout, several captions per image)
    DIR/{test_id,test_ood}/scenes.jsonl
    DIR/{test_id,test_ood}/{sugarcrepe,bivlc,retrieval}/boxes.jsonl  every object box of each image, in fractions

Every file is a pure function of the config: per-scene seeded streams, sorted JSON keys, fixed
PNG and parquet settings, no timestamps -- so the same config gives byte-identical files.

The parts: samples.py draws the scenes, captions and negatives of a chunk of scene indices and renders
its images (negative_image.py edits a scene for BiVLC's negative image); benchmark_files.py merges the
chunks' rows into each benchmark's files; load.py reads a written world back. This file owns the folder:
when a world is reused or replaced, the process pool, and world.json.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from compalign.core import CompalignError, InputError, atomic_write
from compalign.shapes.benchmark_files import write_test_files, write_train_files
from compalign.shapes.config import WorldConfig
from compalign.shapes.load import load_held_out as load_held_out  # re-exported: imported from here by tests
from compalign.shapes.load import load_world_config as load_world_config
from compalign.shapes.render import SHAPE_DRAWERS, list_shapes
from compalign.shapes.samples import ChunkTask, render_chunk
from compalign.shapes.scene import SPLITS, Pair, Split, choose_held_out

logger = logging.getLogger(__name__)

SCHEMA = "compalign.shapes/2"  # bump when the folder layout or generation changes meaning (2: retrieval split)
ProgressFn = Callable[[str, int, int], None]  # (stage, done, total)


class WorldExistsError(CompalignError, FileExistsError):
    """The output folder already holds a world built from a different config."""


@dataclass(frozen=True)
class WorldResult:
    path: Path  # the world folder
    status: Literal["written", "cached"]  # cached: an identical world was already there
    counts: dict[str, Any]  # scenes / rows per split, as stored in world.json


# Chunk rows depend only on their index range (samples.py): the size changes the speed, never a byte.
_CHUNK = 250  # scenes per task: small enough to balance 16 workers on 5k scenes, large enough to amortise a task


def _write_splits(
    cfg: WorldConfig, out: Path, held: frozenset[Pair], workers: int, progress: ProgressFn | None
) -> dict[str, Any]:
    sizes: dict[Split, int] = {"train": cfg.n_train, "test_id": cfg.n_test_id, "test_ood": cfg.n_test_ood}
    tasks: list[ChunkTask] = []
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
            collect(t, render_chunk(t))
    else:
        # spawn, not fork: the caller may hold threads (torch, a progress bar) that fork would copy mid-state
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            for t, rows in zip(tasks, pool.map(render_chunk, tasks)):  # map yields in task order: rows merge in index order
                collect(t, rows)
    counts: dict[str, Any] = {"train": write_train_files(out / "train", results["train"])}
    for split in ("test_id", "test_ood"):
        counts[split] = write_test_files(out / split, results[split])
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
