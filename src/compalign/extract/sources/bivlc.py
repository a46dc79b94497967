"""BiVLC as Hugging Face stores it: parquet with image / negative_image as struct<bytes, path>."""

from __future__ import annotations

from pathlib import Path

from .base import (
    Plan,
    PlanBuilder,
    SourceError,
    UrlPath,
    parquet_image_bytes,
    parquet_image_name,
    read_parquet,
    register_source,
)

COLUMNS = ("image", "caption", "negative_caption", "negative_image", "type", "subtype")


@register_source("bivlc")
def plan_bivlc(root: Path | UrlPath) -> Plan:
    files = [root] if root.is_file() else sorted(root.rglob("*.parquet"))
    if not files:
        raise SourceError(f"{root}: no .parquet files. Download BiVLC with "
                          "`huggingface-cli download imirandam/BiVLC --repo-type dataset --local-dir {root}`.")
    b = PlanBuilder("bivlc", root if root.is_dir() else root.parent)
    for path in files:
        try:
            table = read_parquet(path)
        except Exception as e:
            raise SourceError(f"{path}: not a readable parquet file ({type(e).__name__}: {e}). Re-download it.") from None
        missing = [c for c in COLUMNS if c not in table.column_names]
        if missing:
            raise SourceError(f"{path}: missing column(s) {', '.join(missing)}; BiVLC parquet has {', '.join(COLUMNS)}")
        for r, row in enumerate(table.select(list(COLUMNS)).to_pylist()):
            where = f"{path.name}#{r}"
            texts = [row.get(c) for c in ("caption", "negative_caption")]
            if not all(isinstance(t, str) for t in texts):
                b.problem(f"{where}: caption or negative_caption is missing; skipped")
                continue
            b.item(
                id=f"{path.stem}/{r}",
                type=str(row.get("type") or ""),
                subtype=str(row.get("subtype") or ""),
                **{col: b.image_bytes(parquet_image_bytes(row[col]), f"{where}:{col}", parquet_image_name(row[col]))
                   for col in ("image", "negative_image")},
                caption=b.text(texts[0]),
                negative_caption=b.text(texts[1]),
            )
    return b.build(root)
