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


def breakdown(scores: dict[str, Any], sugarcrepe_dir: str | Path, cfg: WorldConfig) -> dict[str, dict[str, list[int]]]:
    """{subset: {word class: [correct, n]}} over the valid swap items of a score file."""
    root = Path(sugarcrepe_dir)
    kinds: dict[str, dict[str, str]] = {}
    for subset in SWAP_SUBSETS:
        path = root / f"{subset}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: pass the world's split whose items were scored")
        rows = json.loads(path.read_text(encoding="utf-8"))
        kinds[subset] = {k: swapped_words(r["caption"], r["negative_caption"], cfg) for k, r in rows.items()}
    out: dict[str, dict[str, list[int]]] = {}
    for item in scores["items"]:
        subset, _, key = item["id"].partition("/")
        if subset not in kinds or not item.get("valid", True):
            continue
        if key not in kinds[subset]:
            raise ValueError(f"item {item['id']} is not in {root / (subset + '.json')}: the score file is from another split")
        tally = out.setdefault(subset, {}).setdefault(kinds[subset][key], [0, 0])
        tally[0] += bool(item["correct"])
        tally[1] += 1
    return out


__all__ = ["SWAP_SUBSETS", "breakdown", "swapped_words"]
