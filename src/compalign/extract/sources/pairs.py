"""A folder of images plus a JSONL or CSV of (image, caption[, negatives]) rows.

JSONL rows: {"image": "rel/path.jpg", "caption": "...", "id"?: "...",
             "negatives"?: {"swap_att": "...", ...}, "negative_caption"?: "..."}
CSV: columns image, caption (id, negative_caption optional). Paths are relative to the file's folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .base import Plan, PlanBuilder, SourceError, register_source

NAMES = ("pairs.jsonl", "pairs.csv", "captions.jsonl", "captions.csv")


def _rows(path: Path, b: PlanBuilder):
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise SourceError(f"{path}: a pairs CSV needs a header with 'image' and 'caption' (has {reader.fieldnames})")
            for n, row in enumerate(reader, start=2):
                yield n, row
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                b.problem(f"{path.name} line {n}: malformed JSON ({e.msg}); skipped")
                continue
            yield n, row


@register_source("pairs")
def plan_pairs(root: Path) -> Plan:
    path = root
    if root.is_dir():
        found = [root / n for n in NAMES if (root / n).is_file()]
        if not found:
            raise SourceError(f"{root}: no {' / '.join(NAMES)}; pass --root pointing at a JSONL or CSV of image,caption rows")
        path = found[0]
    b = PlanBuilder("pairs", path.parent)
    for n, row in _rows(path, b):
        where = f"{path.name} line {n}"
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("caption"), str):
            b.problem(f"{where}: needs text fields 'image' and 'caption'; skipped")
            continue
        cols = dict(id=str(row.get("id") or n), image=b.image_file(row["image"]), caption=b.text(row["caption"]))
        negs = row.get("negatives") or {}
        if isinstance(row.get("negative_caption"), str) and row["negative_caption"]:
            negs = {**negs, "negative": row["negative_caption"]} if isinstance(negs, dict) else negs
        if not isinstance(negs, dict):
            b.problem(f"{where}: 'negatives' must be an object {{kind: caption}}; negatives ignored")
            negs = {}
        for kind, text in sorted(negs.items()):
            if isinstance(text, str) and text:
                cols[f"neg:{kind}"] = b.text(text)
        b.item(**cols)
    return b.build()
