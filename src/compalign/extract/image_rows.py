"""Image rows as a torch Dataset: decoded and preprocessed in DataLoader workers, bad data as values.

One unreadable file must not stop a run of a million images, and an exception raised in a worker
would: so a row comes back as (row, pixels or None, error or None), and the collate splits a batch
into the rows that encode and the errors the runner records in the shard's status.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..core.decode import DecodeError, decode_image
from .sources import ImageRef


class ImageRows(Dataset):
    """Row -> (row, pixels or None, error or None). Bad data becomes an error string, never an exception."""

    def __init__(self, refs: list[ImageRef], preprocess: Any, exif_transpose: bool = False):
        self.refs, self.preprocess, self.exif_transpose = refs, preprocess, exif_transpose

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str | None]:
        ref = self.refs[row]
        if ref.error:
            return row, None, ref.error
        try:
            data = ref.data if ref.data is not None else Path(ref.path).read_bytes()
            return row, self.preprocess(decode_image(data, self.exif_transpose)), None
        except DecodeError as e:
            return row, None, f"{ref.origin}: {e}"
        except Exception as e:  # unreadable file, transform failure: recorded, the run goes on
            return row, None, f"{ref.origin}: {type(e).__name__}: {e}"


def collate_rows(batch: list[tuple[int, torch.Tensor | None, str | None]]):
    """(all rows, rows that decoded, their (B, 3, H, W) pixels or None, {row: error})."""
    rows = [r for r, _, _ in batch]
    good = [(r, x) for r, x, _ in batch if x is not None]
    errors = {r: e for r, _, e in batch if e is not None}
    pixels = torch.stack([x for _, x in good]) if good else None
    return rows, [r for r, _ in good], pixels, errors
