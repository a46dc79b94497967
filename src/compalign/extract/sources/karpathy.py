"""Image-text retrieval splits (COCO 5k / Flickr30k 1k test): one item per (image, caption) annotation.

Three layouts, found in a folder (--root) or given as the file itself:
  karpathy       dataset_{coco,flickr30k,flickr8k}.json: {"dataset", "images": [{"filepath"?, "filename", "split",
                 "imgid", "cocoid"?, "sentences": [{"raw", "sentid"}]}]}; only images of the requested split are read
                 (COCO's "restval" is training data).
  coco-captions  captions_val2014.json: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption", "id"}]};
                 no split field, so the whole file is the test split.
  flickr-txt     flickr30k_test_karpathy.txt: `image,caption` (or `image#n<TAB>caption`) lines, optional header.
Items: id, image, caption, image_id (the dataset's own id: cocoid or the file stem, so per-image grouping
survives dedup of identical image files and the three layouts agree). Captions are whitespace-stripped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Plan, PlanBuilder, SourceError, read_json, read_text, register_source

KARPATHY = ("dataset_coco.json", "dataset_flickr30k.json", "dataset_flickr8k.json")
GLOBS = ("dataset_*.json", "captions_val*.json", "annotations/captions_val*.json", "*karpathy*.txt")
IMAGE_DIRS = ("images", "flickr30k-images", "Flicker8k_Dataset", "")  # searched after the image's own filepath
HEADER_NAMES = {"image", "image_name", "filename", "file_name"}
# (image_id, item-id prefix, image folder inside the root, file name, [(sentence id, caption)])
Record = tuple[str, str, str, str, list[tuple[str, Any]]]


def _find(root: Path) -> tuple[Path, Path, list[Path]]:
    """(annotation file, folder the image paths are relative to, the other candidate files)."""
    if root.is_file():
        return root, root.parent, []
    found = [root / n for n in KARPATHY if (root / n).is_file()] + [p for g in GLOBS for p in sorted(root.glob(g))]
    found = list(dict.fromkeys(found))  # dataset_coco.json is matched by a name and by the glob
    if not found:
        raise SourceError(f"{root}: no {', '.join(KARPATHY)}, captions_val*.json or *karpathy*.txt; point --root at "
                          "the folder holding the Karpathy split JSON (and the images)")
    return found[0], root, found[1:]


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path, "Re-download the file (Karpathy's dataset_*.json or COCO's captions_*.json).")
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object with an 'images' list, got {type(data).__name__}")
    return data


def _list(path: Path, data: dict[str, Any], field: str) -> list[Any]:
    value = data.get(field)
    if not isinstance(value, list):
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise SourceError(f"{path}: field {field!r} must be a list of objects ({got}); is this the official file?")
    return value


def _dataset(path: Path) -> str:
    return next((d for d in ("flickr30k", "flickr8k", "coco") if d in path.name.lower()), path.stem)


def _karpathy(path: Path, data: dict[str, Any], split: str) -> list[Record]:
    images = _list(path, data, "images")
    splits = sorted({str(im.get("split")) for im in images if isinstance(im, dict)})
    if split not in splits:
        raise SourceError(f"{path}: no images in split {split!r}; the file has splits {', '.join(splits) or 'none'} "
                          "(pass one of them with --split)")
    out: list[Record] = []
    for im in images:
        if not isinstance(im, dict) or im.get("split") != split:
            continue
        name = str(im.get("filename", ""))
        image_id = str(im.get("cocoid", Path(name).stem))
        sents = im.get("sentences") if isinstance(im.get("sentences"), list) else []
        caps = [(str(s.get("sentid", k)) if isinstance(s, dict) else str(k), s.get("raw") if isinstance(s, dict) else None)
                for k, s in enumerate(sents)]
        out.append((image_id, str(im.get("imgid", image_id)), str(im.get("filepath", "")), name, caps))
    return out


def _coco_captions(path: Path, data: dict[str, Any], b: PlanBuilder) -> list[Record]:
    folder = path.stem.removeprefix("captions_")  # captions_val2014.json -> images in val2014/
    caps: dict[str, list[tuple[str, Any]]] = {}
    records: list[Record] = []
    for im in _list(path, data, "images"):
        if isinstance(im, dict) and "id" in im and isinstance(im.get("file_name"), str):
            caps[str(im["id"])] = []
            records.append((str(im["id"]), str(im["id"]), folder, im["file_name"], caps[str(im["id"])]))
        else:
            b.problem(f"{path.name}: image entry {im!r:.80} lacks 'id' or 'file_name'; skipped")
    for n, ann in enumerate(_list(path, data, "annotations")):
        ident = str(ann.get("image_id")) if isinstance(ann, dict) else None
        if ident not in caps:
            b.problem(f"{path.name} annotation {n}: image_id {ident} is not in 'images'; skipped")
            continue
        caps[ident].append((str(ann.get("id", n)), ann.get("caption")))
    return records


def _flickr_txt(path: Path, b: PlanBuilder) -> list[Record]:
    caps: dict[str, list[tuple[str, Any]]] = {}
    first = True
    for n, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, cap = line.partition("\t" if "\t" in line else ",")  # captions may hold commas: first one only
        name, cap = name.strip(), cap.strip()
        if first and name.lower() in HEADER_NAMES:  # `image,caption` header
            first = False
            continue
        first = False
        if not sep:
            b.problem(f"{path.name} line {n}: no ',' or tab between the image and the caption; skipped")
            continue
        if len(cap) > 1 and cap[0] == cap[-1] == '"':  # a CSV-quoted caption
            cap = cap[1:-1].replace('""', '"')
        name, _, num = name.partition("#")  # Flickr's `1000092795.jpg#0`
        got = caps.setdefault(name, [])
        got.append((num or str(len(got)), cap))
    return [(Path(name).stem, Path(name).stem, "", name, c) for name, c in caps.items()]


def _image(b: PlanBuilder, base: Path, folder: str, name: str) -> str:
    """The first candidate path that exists, else the first (so the image is recorded as not found)."""
    rels = [str(Path(d, name)) for d in dict.fromkeys((folder, *IMAGE_DIRS))]
    return b.image_file(next((r for r in rels if (base / r).is_file()), rels[0]))


@register_source("karpathy", splits=True)
def plan_karpathy(root: Path, split: str = "test") -> Plan:
    split = split or "test"
    path, base, others = _find(root)
    b = PlanBuilder("karpathy", base)
    if others:
        b.note(f"karpathy: read {path.name}; also there, not read: {', '.join(p.name for p in others)}")
    if path.suffix.lower() == ".txt":
        layout, dataset, records = "flickr-txt", _dataset(path), _flickr_txt(path, b)
    else:
        data = _load_json(path)
        if "annotations" in data:
            layout, dataset, records = "coco-captions", "coco", _coco_captions(path, data, b)
        else:
            layout, dataset = "karpathy", str(data.get("dataset") or _dataset(path).removeprefix("dataset_"))
            records = _karpathy(path, data, split)
    if layout != "karpathy":
        if split != "test":
            raise SourceError(f"{path}: a {layout} file has no split field (it is one split); drop --split {split} "
                              "or use a Karpathy dataset_*.json, which has train / val / test")
        b.note(f"karpathy: {path.name} has no split field, so all {len(records)} images are used as the test split")
    for image_id, prefix, folder, name, caps in records:
        where = f"{path.name} image {image_id!r} ({name})"
        if not name or not caps:
            b.problem(f"{where}: {'no file name' if not name else 'no captions'}; skipped")
            continue
        key = None  # resolved on the first usable caption, so an image with none is not encoded
        for sid, cap in caps:
            if not isinstance(cap, str) or not cap.strip():
                b.problem(f"{where} caption {sid}: empty or not text; skipped")
                continue
            key = key or _image(b, base, folder, name)
            b.item(id=f"{prefix}/{sid}", image=key, caption=b.text(cap.strip()), image_id=image_id)
    b.info = {"dataset": dataset, "split": split, "layout": layout}
    return b.build(path)
