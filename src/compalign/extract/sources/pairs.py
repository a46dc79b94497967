"""A folder of images plus a JSONL or CSV of (image, caption[, negatives]) rows.

JSONL rows: {"image": "rel/path.jpg", "caption": "...", "id"?: "...",
             "negatives"?: {"swap_att": "...", ...}, "negative_caption"?: "..."}
CSV: columns image, caption (id, negative_caption optional). Paths are relative to the file's folder.
The format follows the suffix, in any case (PAIRS.CSV is a CSV); .json is read as JSONL.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import Plan, PlanBuilder, SourceError, read_text, register_source

NAMES = ("pairs.jsonl", "pairs.csv", "captions.jsonl", "captions.csv")
SUFFIXES = (".jsonl", ".json", ".csv")


def _rows(path: Path, b: PlanBuilder) -> Iterator[tuple[int, Any]]:
    text = read_text(path)
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
            raise SourceError(f"{path}: a pairs CSV needs a header with 'image' and 'caption' (has {reader.fieldnames})")
        for n, row in enumerate(reader, start=2):
            yield n, row
        return
    for n, line in enumerate(io.StringIO(text), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            b.problem(f"{path.name} line {n}: malformed JSON ({e.msg}); skipped")
            continue
        yield n, row


def _find(root: Path) -> Path:
    if not root.is_dir():
        if root.suffix.lower() not in SUFFIXES:
            raise SourceError(f"{root}: pairs are read from {' / '.join(SUFFIXES)} files (any case); "
                              "rename it or pass --root pointing at a JSONL or CSV of image,caption rows")
        return root
    # Case-insensitive, an exact-case name first, so Pairs.JSONL from a Windows export is found too.
    by_lower: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.is_file():
            by_lower.setdefault(p.name.lower(), p)
    found = [root / n if (root / n).is_file() else by_lower.get(n) for n in NAMES]
    if not any(found):
        raise SourceError(f"{root}: no {' / '.join(NAMES)}; pass --root pointing at a JSONL or CSV of image,caption rows")
    return next(p for p in found if p)


@register_source("pairs")
def plan_pairs(root: Path) -> Plan:
    path = _find(root)
    b = PlanBuilder("pairs", path.parent)
    seen_ids: dict[str, int] = {}
    seen_rows: dict[str, int] = {}
    for n, row in _rows(path, b):
        where = f"{path.name} line {n}"
        if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("caption"), str):
            b.problem(f"{where}: needs text fields 'image' and 'caption'; skipped")
            continue
        negs = row.get("negatives") or {}
        if isinstance(row.get("negative_caption"), str) and row["negative_caption"]:
            negs = {**negs, "negative": row["negative_caption"]} if isinstance(negs, dict) else negs
        if not isinstance(negs, dict):
            b.problem(f"{where}: 'negatives' must be an object {{kind: caption}}; negatives ignored")
            negs = {}
        negs = {k: t for k, t in sorted(negs.items()) if isinstance(t, str) and t}
        # A row pasted twice would count twice in every metric: keep the first, name the second.
        ident = None if row.get("id") in (None, "") else str(row["id"])
        same = json.dumps([row["image"], row["caption"], negs])
        if ident is not None and ident in seen_ids:
            b.problem(f"{where}: duplicate of line {seen_ids[ident]} (same id {ident!r}); skipped")
            continue
        if ident is None and same in seen_rows:
            b.problem(f"{where}: duplicate of line {seen_rows[same]} (same image, caption and negatives); skipped")
            continue
        if ident is not None:
            seen_ids[ident] = n
        seen_rows.setdefault(same, n)
        cols = dict(id=ident or str(n), image=b.image_file(row["image"]), caption=b.text(row["caption"]))
        for kind, text in negs.items():
            cols[f"neg:{kind}"] = b.text(text)
        b.item(**cols)
    return b.build(path)
