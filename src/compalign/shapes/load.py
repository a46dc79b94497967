"""Read a written shapes world back: its config, its held-out pairs, its scenes and JSONL rows.

Everything after `shapes make` (pretraining, the probes, the breakdown by split) starts from a world
folder someone may have moved, truncated or hand-edited, so every reader here fails with a message
that names the file, the line and the command that rebuilds it, never with a KeyError.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compalign.core import InputError, MissingFileError
from compalign.shapes.config import WorldConfig
from compalign.shapes.scene import Pair, Scene


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
