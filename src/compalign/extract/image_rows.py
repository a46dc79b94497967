"""Image rows as a torch Dataset: decoded and preprocessed in DataLoader workers, bad data as values.

One unreadable file must not stop a run of a million images, and an exception raised in a worker
would: so a row comes back as (row, pixels or None, crops or None, error or None), and the collate
splits a batch into the rows that encode and the errors the runner records in the shard's status.
With `--crops`, each row's boxes are cut from the same decoded image and preprocessed here too
(extract.crops), so the main process only runs forward passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.decode import DecodeError, decode_image
from .crops import crop_pixels
from .sources import ImageRef

Row = tuple[int, torch.Tensor | None, torch.Tensor | None, str | None]  # (row, pixels, crops (R, 3, H, W), error)


class ImageRows(Dataset):
    """Row -> (row, pixels or None, crops or None, error or None). Bad data becomes an error string, never an exception.

    `boxes`: each row's (R, 4) crop boxes in fractions (`--crops`), or None for no crops."""

    def __init__(self, refs: list[ImageRef], preprocess: Any, exif_transpose: bool = False,
                 boxes: Sequence[np.ndarray] | None = None):
        self.refs, self.preprocess, self.exif_transpose, self.boxes = refs, preprocess, exif_transpose, boxes

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, row: int) -> Row:
        ref = self.refs[row]
        if ref.error:
            return row, None, None, ref.error
        try:
            data = ref.read()  # in memory, a file, or a tar member's byte range
            image = decode_image(data, self.exif_transpose)
            crops = crop_pixels(image, self.boxes[row], self.preprocess) if self.boxes is not None else None
            return row, self.preprocess(image), crops, None
        except DecodeError as e:
            return row, None, None, f"{ref.origin}: {e}"
        except Exception as e:  # unreadable file, transform failure: recorded, the run goes on
            return row, None, None, f"{ref.origin}: {type(e).__name__}: {e}"


def collate_rows(batch: list[Row]):
    """(all rows, rows that decoded, their (B, 3, H, W) pixels or None, {row: error}, crops).

    crops: (every decoded row's crops concatenated, (C, 3, H, W) or None; how many each decoded row has)."""
    rows = [r for r, *_ in batch]
    good = [(r, x, c) for r, x, c, _ in batch if x is not None]
    errors = {r: e for r, _, _, e in batch if e is not None}
    pixels = torch.stack([x for _, x, _ in good]) if good else None
    counts = [0 if c is None else len(c) for _, _, c in good]
    crops = torch.cat([c for _, _, c in good if c is not None]) if any(counts) else None
    return rows, [r for r, _, _ in good], pixels, errors, (crops, counts)
