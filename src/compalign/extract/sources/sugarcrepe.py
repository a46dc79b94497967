"""SugarCrepe: 7 JSON files `{id: {filename, caption, negative_caption}}` + COCO val2017 images.

Also reads SugarCrepe++-style lists (`[{id, filename, caption, caption2, negative_caption}]`).
"""

from __future__ import annotations

import json
from pathlib import Path

from .base import Plan, PlanBuilder, SourceError, register_source

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
REQUIRED = ("filename", "caption", "negative_caption")


def find_image_dir(root: Path) -> Path:
    for name in ("val2017", "images"):
        if (root / name).is_dir():
            return root / name
    return root


def load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: malformed JSON at line {e.lineno}, column {e.colno} ({e.msg}). "
                          "Re-download the file or fix it; compalign reads the official SugarCrepe JSON.") from None
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e}). Re-download the file.") from None


@register_source("sugarcrepe")
def plan_sugarcrepe(root: Path) -> Plan:
    files = [root / f"{s}.json" for s in SUBSETS if (root / f"{s}.json").exists()]
    if not files:
        raise SourceError(f"{root}: none of the SugarCrepe files ({', '.join(s + '.json' for s in SUBSETS)}) are there; "
                          "point --root at the folder holding them and val2017/")
    images = find_image_dir(root)
    b = PlanBuilder("sugarcrepe", root)
    for path in files:
        data = load_json(path)
        entries = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
        if entries is None:
            raise SourceError(f"{path}: expected an object {{id: {{filename, caption, negative_caption}}}}, "
                              f"got {type(data).__name__}")
        for ident, row in entries:
            where = f"{path.name} item {ident!r}"
            if not isinstance(row, dict):
                b.problem(f"{where}: not an object; skipped")
                continue
            missing = [k for k in REQUIRED if not isinstance(row.get(k), str)]
            if missing:
                b.problem(f"{where}: missing or non-text field(s) {', '.join(missing)}; skipped")
                continue
            cols = dict(
                id=f"{path.stem}/{row.get('id', ident)}",
                subset=path.stem,
                image=b.image_file(row["filename"], images),
                caption=b.text(row["caption"]),
                negative_caption=b.text(row["negative_caption"]),
            )
            if isinstance(row.get("caption2"), str):  # SugarCrepe++
                cols["caption2"] = b.text(row["caption2"])
            b.item(**cols)
    return b.build()
