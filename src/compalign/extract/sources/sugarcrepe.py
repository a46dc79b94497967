"""SugarCrepe: 7 JSON files `{id: {filename, caption, negative_caption}}` + COCO val2017 images.

Also reads SugarCrepe++-style lists (`[{id, filename, caption, caption2, negative_caption}]`).
"""

from __future__ import annotations

from pathlib import Path

from .base import Plan, PlanBuilder, SourceError, read_json, register_source

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")
REQUIRED = ("filename", "caption", "negative_caption")


def find_image_dir(root: Path) -> Path:
    for name in ("val2017", "images"):
        if (root / name).is_dir():
            return root / name
    return root


def load_json(path: Path) -> object:
    return read_json(path, "Re-download the file or fix it; compalign reads the official SugarCrepe JSON.")


@register_source("sugarcrepe")
def plan_sugarcrepe(root: Path) -> Plan:
    files = [root / f"{s}.json" for s in SUBSETS if (root / f"{s}.json").exists()]
    if not files:
        raise SourceError(f"{root}: none of the SugarCrepe files ({', '.join(s + '.json' for s in SUBSETS)}) are there; "
                          "point --root at the folder holding them and val2017/")
    images = find_image_dir(root)
    b = PlanBuilder("sugarcrepe", root)
    absent = [f"{s}.json" for s in SUBSETS if not (root / f"{s}.json").exists()]
    if absent:  # not an error (one subset is a fine smoke test), but the macro mean changes meaning
        b.note(f"sugarcrepe: {len(absent)} of {len(SUBSETS)} subset files absent ({', '.join(absent)}): "
               "the macro mean covers only the subsets present")
    for path in files:
        seen: dict[str, object] = {}  # item id -> where it was first seen (list-form files can repeat ids)
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
            item_id = f"{path.stem}/{row.get('id', ident)}"
            if item_id in seen:
                b.problem(f"{where}: duplicate of item {seen[item_id]!r} (same id {row.get('id', ident)!r}); skipped")
                continue
            seen[item_id] = ident
            cols = dict(
                id=item_id,
                subset=path.stem,
                image=b.image_file(row["filename"], images),
                caption=b.text(row["caption"]),
                negative_caption=b.text(row["negative_caption"]),
            )
            if isinstance(row.get("caption2"), str):  # SugarCrepe++
                cols["caption2"] = b.text(row["caption2"])
            b.item(**cols)
    return b.build(root)
