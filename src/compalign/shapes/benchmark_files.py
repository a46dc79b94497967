"""The per-benchmark files of a shapes world, merged from the chunks' rows (samples.py) in index order.

Each test split is written in the layouts the real benchmarks ship in, so the real readers
(`--data sugarcrepe | bivlc | karpathy`) read it unchanged: SugarCrepe's {kind}.json, BiVLC's HF
parquet, a Karpathy dataset_*.json. Bytes depend on the rows alone -- sorted JSON keys, fixed
parquet settings -- so one pass and many workers give the same files.

Each benchmark folder also gets boxes.jsonl, one {"image": file name, "boxes": [[x0, y0, x1, y1], ...]} per
image: every object's box of the scene it renders, in fractions of the canvas, in the scene's object order.
It is what `compalign extract --crops oracle` crops; the real benchmarks have no such file (and a SugarCrepe
folder's *.json stay its subsets alone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from compalign.shapes.captions import NEGATIVE_KINDS

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


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=True)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(_dump(r) + "\n" for r in rows), encoding="utf-8")


def write_train_files(out: Path, chunks: list[dict[str, list]]) -> dict[str, int]:
    """train/pairs.jsonl (what `--data pairs` and pretraining read) and train/scenes.jsonl; the split's counts."""
    pairs = [r for c in chunks for r in c["pairs"]]
    scenes = [r for c in chunks for r in c["scenes"]]
    _write_jsonl(out / "pairs.jsonl", pairs)
    _write_jsonl(out / "scenes.jsonl", scenes)
    return {"scenes": len(scenes), "pairs": len(pairs)}


def _write_boxes(folder: Path, scenes: list[dict[str, Any]]) -> None:
    """boxes.jsonl of the scenes rendered into `folder` (scene rows as scenes.jsonl holds them)."""
    _write_jsonl(folder / "boxes.jsonl", [{"image": r["image"], "boxes": [[v / c for v, c in zip(o["box"], r["canvas"] * 2)]
                                                                          for o in r["objects"]]} for r in scenes])


def _write_sugarcrepe(folder: Path, chunks: list[dict[str, list]]) -> dict[str, int]:
    """{kind}.json per negative kind, items numbered "0", "1", ... in index order; items per kind."""
    sugarcrepe: dict[str, dict[str, dict[str, str]]] = {k: {} for k in NEGATIVE_KINDS}
    for c in chunks:
        for kind, item in c["sugarcrepe"]:
            sugarcrepe[kind][str(len(sugarcrepe[kind]))] = item
    for kind, items in sugarcrepe.items():
        # Numeric id order like the real files (so no sort_keys at the top level).
        text = json.dumps({k: dict(sorted(v.items())) for k, v in items.items()}, ensure_ascii=True)
        (folder / f"{kind}.json").write_text(text, encoding="utf-8")
    _write_boxes(folder, [r for c in chunks for r in c["scenes"]])  # every scene's image is in val2017/
    return {k: len(v) for k, v in sugarcrepe.items()}


def _write_bivlc(folder: Path, chunks: list[dict[str, list]]) -> dict[str, int]:
    """test.parquet + negative_scenes.jsonl (each chunk's "row" offset by the rows before it); rows per type."""
    bivlc: list[dict[str, Any]] = []
    neg_scenes: list[dict[str, Any]] = []
    for c in chunks:
        neg_scenes += [{**r, "row": r["row"] + len(bivlc)} for r in c["neg_scenes"]]
        bivlc += c["bivlc"]
    table = pa.Table.from_pylist(bivlc, schema=_BIVLC_SCHEMA)
    pq.write_table(table, folder / "test.parquet", compression="snappy")
    _write_jsonl(folder / "negative_scenes.jsonl", neg_scenes)
    used = {r["image"]["path"] for r in bivlc}
    _write_boxes(folder, [r for c in chunks for r in c["scenes"] if r["image"] in used]
                 + [r["negative_scene"] for r in neg_scenes])
    types = {t: sum(r["type"] == t for r in bivlc) for t in ("replace", "swap", "add")}
    return {"rows": len(bivlc), **types}


def _write_retrieval(folder: Path, chunks: list[dict[str, list]]) -> dict[str, int]:
    """dataset_shapes.json, the Karpathy layout (its images were copied by the chunks); images and captions."""
    images = [r for c in chunks for r in c["retrieval"]]
    (folder / "dataset_shapes.json").write_text(_dump({"dataset": "shapes", "images": images}), encoding="utf-8")
    _write_boxes(folder, [r for c in chunks for r in c["scenes"]])  # every scene has its copy in images/
    return {"images": len(images), "captions": sum(len(r["sentences"]) for r in images)}


def write_test_files(out: Path, chunks: list[dict[str, list]]) -> dict[str, Any]:
    """A test split's benchmark files and scenes.jsonl; the split's counts, as world.json stores them."""
    _write_jsonl(out / "scenes.jsonl", [r for c in chunks for r in c["scenes"]])
    return {
        "scenes": sum(len(c["scenes"]) for c in chunks),
        "retrieval": _write_retrieval(out / "retrieval", chunks),
        "sugarcrepe": _write_sugarcrepe(out / "sugarcrepe", chunks),
        "bivlc": _write_bivlc(out / "bivlc", chunks),
    }
