"""Which words a swap negative exchanges, and a score file's accuracy split by them.

A shapes-world swap_att item swaps either two colours or two sizes between objects; swap_obj swaps
shapes. A head that binds colour to shape but cannot see size wins the first kind and loses the
second, and the subset's single number hides it. `breakdown` splits the swap subsets of a
`compalign-heads score --json` file (SugarCrepe format, a world's test split) by what was swapped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compalign.core import InputError, MissingFileError
from compalign.shapes.config import WorldConfig

SWAP_SUBSETS = ("swap_att", "swap_obj")


def swapped_words(caption: str, negative: str, cfg: WorldConfig) -> str:
    """'colour', 'size', 'shape' (the word class that differs) or 'other' (word counts differ, or mixed)."""
    a, b = caption.split(), negative.split()
    if len(a) != len(b):
        return "other"
    changed = {w for x, y in zip(a, b) if x != y for w in (x, y)}
    classes = {
        "colour": changed <= set(cfg.colours),
        "size": changed <= set(cfg.size_words),
        "shape": changed <= set(cfg.shapes),
    }
    hits = [k for k, ok in classes.items() if ok and changed]
    return hits[0] if len(hits) == 1 else "other"


def breakdown(
    scores: dict[str, Any], sugarcrepe_dir: str | Path, cfg: WorldConfig, *, source: str = "the score file"
) -> dict[str, dict[str, list[int]]]:
    """{subset: {word class: [correct, n]}} over the valid swap items of a score file (``source`` names it in errors)."""
    root = Path(sugarcrepe_dir)
    kinds: dict[str, dict[str, str]] = {}
    for subset in SWAP_SUBSETS:
        path = root / f"{subset}.json"
        if not path.is_file():
            raise MissingFileError(f"{path} is missing: pass the world and split whose items were scored "
                                   "(a split of a world written by `compalign shapes make --out WORLD`)")
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path} is not valid JSON ({e}); rebuild the world with "
                             "`compalign shapes make --out WORLD --force`") from None
        kinds[subset] = {k: swapped_words(r["caption"], r["negative_caption"], cfg) for k, r in rows.items()}
    out: dict[str, dict[str, list[int]]] = {}
    items = scores.get("items") if isinstance(scores, dict) else None
    if not isinstance(items, list):
        raise InputError(f"{source} has no 'items' list: pass a file written by `compalign-heads score --json`")
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str) or "correct" not in item:
            raise InputError(f"{source}: item {str(item)[:80]} has no 'id' and 'correct': pass a file written by "
                             "`compalign-heads score --json`")
        subset, _, key = item["id"].partition("/")
        if subset not in kinds or not item.get("valid", True):
            continue
        if key not in kinds[subset]:
            raise InputError(f"{source}: item {item['id']} is not in {root / (subset + '.json')}: "
                             "the score file is from another split (pass its --split)")
        tally = out.setdefault(subset, {}).setdefault(kinds[subset][key], [0, 0])
        tally[0] += bool(item["correct"])
        tally[1] += 1
    return out


__all__ = ["SWAP_SUBSETS", "breakdown", "swapped_words"]
