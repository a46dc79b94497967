"""Winoground as Hugging Face stores it: parquet rows of two images x two captions, plus linguistic tags.

Columns: id, image_0, image_1 (struct<bytes, path>), caption_0, caption_1, tag, secondary_tag,
num_main_preds, collapsed_tag. Every *.parquet under the root is read (the split may be one file or many).
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    Plan,
    PlanBuilder,
    SourceError,
    UrlPath,
    parquet_image_bytes,
    read_parquet,
    register_source,
)

# What the items need; num_main_preds is in the official files but nothing here reads it, so it is not required.
COLUMNS = ("id", "image_0", "image_1", "caption_0", "caption_1", "tag", "secondary_tag", "collapsed_tag")
# The dataset is gated: accept its terms on the Hub and `huggingface-cli login` first. Older revisions of the
# repo hold examples.jsonl + images.zip instead of parquet; the Hub's parquet conversion then has the layout.
FIX = ("download it with `huggingface-cli download facebook/winoground --repo-type dataset --local-dir {root}` "
       "(add `--revision refs/convert/parquet` if that gives examples.jsonl and images.zip instead of parquet)")


@register_source("winoground")
def plan_winoground(root: Path | UrlPath) -> Plan:
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files:
        raise SourceError(f"{root}: no .parquet files; " + FIX.format(root=root))
    b = PlanBuilder("winoground", root if root.is_dir() else root.parent)
    b.info["dataset"] = "winoground"
    seen: dict[str, str] = {}  # item id -> where it was first read (two copies of a split would double-count)
    for path in files:
        try:
            table = read_parquet(path)
        except Exception as e:
            raise SourceError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}); re-"
                              + FIX.format(root=root)) from None
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)}; Winoground parquet has "
                              f"{', '.join(COLUMNS)} (and num_main_preds); re-" + FIX.format(root=root))
        for r, row in enumerate(table.select(list(COLUMNS)).to_pylist()):
            where = f"{path.name}#{r}"
            bad = [c for c in ("caption_0", "caption_1") if not isinstance(row[c], str) or not row[c]]
            if row["id"] is None:
                bad.insert(0, "id")
            if bad:
                b.problem(f"{where}: {', '.join(bad)} missing or empty; skipped")
                continue
            ident = str(row["id"])
            if ident in seen:
                b.problem(f"{where}: duplicate of {seen[ident]} (same id {ident!r}); skipped")
                continue
            seen[ident] = where
            b.item(
                id=ident,
                # A row without image bytes is kept: the image becomes a recorded extraction failure
                # (`file#row:image_0`) and the benchmark counts the item invalid instead of losing it silently.
                image_0=b.image_bytes(parquet_image_bytes(row["image_0"]), f"{where}:image_0"),
                image_1=b.image_bytes(parquet_image_bytes(row["image_1"]), f"{where}:image_1"),
                caption_0=b.text(row["caption_0"]),
                caption_1=b.text(row["caption_1"]),
                tag=str(row["tag"] or ""),
                secondary_tag=str(row["secondary_tag"] or ""),  # empty for most items
                collapsed_tag=str(row["collapsed_tag"] or ""),
            )
    return b.build(root)
