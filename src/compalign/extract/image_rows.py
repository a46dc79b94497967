"""Image rows as a torch Dataset: decoded and preprocessed in DataLoader workers, bad data as values.

One unreadable file must not stop a run of a million images, and an exception raised in a worker
would: so a row comes back as (row, pixels or None, crops or None, error or None), and the collate
splits a batch into the rows that encode and the errors the runner records in the shard's status.
With `--crops`, each row's boxes are cut from the same decoded image and preprocessed here too
(extract.crops), so the main process only runs forward passes. The DataLoader asks for a batch at
once: its bytes are read together (sources/reads.py: a bucket's objects concurrently, neighbouring tar
members as one range), then each row is decoded.

`--decode`: `exact` runs the checkpoint's preprocess on the full decode; `fast` lets PIL decode a JPEG at
1/2, 1/4 or 1/8 scale first (draft mode: the DCT drops the detail the resize would drop anyway) as long
as both sides stay at or above the size the preprocess resizes to, and resizes it to that size over the
full image's exact extent (Cut); `gpu` sends a plain RGB/grey JPEG's bytes on (gpu_decode.py decodes them
on the device) and decodes anything else here, exactly.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from ..core.decode import ORIENTATION, DecodeError, Draft, Fit, decode_draft, decode_image
from .crops import crop_pixels, pixel_box
from .sources import ImageRef
from .sources.reads import read_refs

Decode = Literal["exact", "fast", "gpu"]
PREFETCH = 4  # batches each DataLoader worker keeps ready: a worker's pace varies with the images it draws
SHM = "/dev/shm"  # where DataLoader workers hand their batches over (torch's shared-memory tensors)
GPU_ROW_BYTES = 1 << 19  # --decode gpu: a JPEG's bytes cross instead of pixels; 512 KiB bounds a COCO-size one
# (row, pixels, crops (R, 3, H, W), error, (JPEG bytes (n,) uint8, origin) for the device to decode)
Row = tuple[int, torch.Tensor | None, torch.Tensor | None, str | None, tuple[torch.Tensor, str] | None]


def resize_of(preprocess: Any) -> T.Resize | None:
    """The preprocess's Resize step (None without one: `--decode fast` then decodes in full, as it cannot know
    what size the draft must keep)."""
    return next((t for t in getattr(preprocess, "transforms", []) if isinstance(t, T.Resize)), None)


@dataclass(frozen=True)
class ResizeRule:
    """(width, height) -> the size torchvision's Resize gives an image of that size: the shorter side to `size[0]`,
    the longer in proportion, truncated, then capped by `max_size`; or exactly `size` = (h, w). A plain object,
    not a closure: the dataset that holds it is pickled into each DataLoader worker where processes spawn."""

    size: tuple[int, ...]
    max_size: int | None = None

    def __call__(self, w: int, h: int) -> tuple[int, int]:
        if len(self.size) == 2:
            return self.size[1], self.size[0]
        short, long = min(w, h), max(w, h)
        new_short, new_long = self.size[0], int(self.size[0] * long / short)
        if self.max_size is not None and new_long > self.max_size:
            new_short, new_long = int(self.max_size * new_short / new_long), self.max_size
        return (new_short, new_long) if w <= h else (new_long, new_short)


def fit_of(resize: T.Resize) -> Fit:
    """What `resize` makes of an image's (width, height)."""
    return ResizeRule((resize.size,) if isinstance(resize.size, int) else tuple(resize.size), resize.max_size)


def prefetch_batches(workers: int, batch_bytes: int, shm_free: int | None) -> int:
    """How many batches each of `workers` may keep ready so that all of them fit in `shm_free` bytes of shared
    memory (None: no shared-memory filesystem to measure; the default then). At most PREFETCH; 0 when not even
    one batch per worker fits (the run would die on its first batches with a bus error or ENOSPC, so the
    caller refuses it instead)."""
    if not workers or shm_free is None:
        return PREFETCH
    return max(0, min(PREFETCH, shm_free // max(1, workers * batch_bytes)))


def shm_free() -> int | None:
    """Free bytes of the shared-memory filesystem (None where there is none, e.g. macOS)."""
    import shutil

    try:
        return shutil.disk_usage(SHM).free
    except OSError:
        return None


def _device_can_decode(data: bytes, exif_transpose: bool) -> bool:
    """A complete baseline/progressive RGB or grey JPEG that needs no rotation: nvjpeg's to decode."""
    if not data.rstrip(b"\0").endswith(b"\xff\xd9"):  # no end-of-image marker: truncated, PIL decides
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # the header only; a bomb is refused on the CPU path
        return (img.format == "JPEG" and img.mode in ("RGB", "L")
                and not (exif_transpose and img.getexif().get(ORIENTATION, 1) != 1))
    except Exception:
        return False


class ImageRows(Dataset):
    """Row -> (row, pixels or None, crops or None, error or None, JPEG for the device or None).
    Bad data becomes an error string, never an exception.

    `boxes`: each row's (R, 4) crop boxes in fractions (`--crops`), or None for no crops."""

    def __init__(self, refs: list[ImageRef], preprocess: Any, exif_transpose: bool = False,
                 boxes: Sequence[np.ndarray] | None = None, decode: Decode = "exact"):
        self.refs, self.preprocess, self.exif_transpose, self.boxes = refs, preprocess, exif_transpose, boxes
        self.decode = decode
        resize = resize_of(preprocess) if decode == "fast" else None
        self.fit = fit_of(resize) if resize is not None else None
        self.resample = TF.pil_modes_mapping[resize.interpolation] if resize is not None else None

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, row: int) -> Row:
        return self.__getitems__([row])[0]

    def __getitems__(self, rows: list[int]) -> list[Row]:
        """A batch's rows (the DataLoader asks for a batch at once): their bytes read together (read_refs: a
        bucket's objects concurrently, a tar shard's neighbouring members as one range), then decoded one by one."""
        todo = [r for r in rows if not self.refs[r].error]
        read = dict(zip(todo, read_refs([self.refs[r] for r in todo])))
        return [self._row(r, read.get(r)) for r in rows]

    def _row(self, row: int, data: bytes | Exception | None) -> Row:
        ref = self.refs[row]
        if ref.error:
            return row, None, None, ref.error, None
        try:
            if isinstance(data, Exception):  # unreadable: the same failure as if it raised here
                raise data
            assert data is not None
            if self.decode == "gpu" and _device_can_decode(data, self.exif_transpose):
                return row, None, None, None, (torch.frombuffer(bytearray(data), dtype=torch.uint8), ref.origin)
            cut = self._decode(data, self.boxes[row] if self.boxes is not None else None)
            crops = crop_pixels(cut, self.boxes[row], self.preprocess) if self.boxes is not None else None
            return row, self.preprocess(cut.whole()), crops, None, None
        except DecodeError as e:
            return row, None, None, f"{ref.origin}: {e}", None
        except Exception as e:  # unreadable file, transform failure: recorded, the run goes on
            return row, None, None, f"{ref.origin}: {type(e).__name__}: {e}", None

    def _decode(self, data: bytes, boxes: np.ndarray | None) -> Cut:
        if self.fit is None:
            return Cut(decode_image(data, self.exif_transpose))
        image, draft = decode_draft(data, self._keep(boxes), self.exif_transpose)
        return Cut(image, draft, self.fit, self.resample)

    def _keep(self, boxes: np.ndarray | None) -> Fit:
        """(width, height) -> the least size a draft must keep: what the Resize makes of the whole image, and with
        `--crops` of each box too (a box of a third of the image needs three times the pixels), so that every
        crop is resized down from the draft, as exact resizes it down from the full decode, never up."""
        fit = self.fit
        assert fit is not None
        if boxes is None or not len(boxes):
            return fit

        def keep(w: int, h: int) -> tuple[int, int]:
            kw, kh = fit(w, h)
            for b in boxes:
                x0, y0, x1, y1 = pixel_box(b, w, h)
                tw, th = fit(x1 - x0, y1 - y0)
                kw, kh = max(kw, -(-w * tw // (x1 - x0))), max(kh, -(-h * th // (y1 - y0)))
            return kw, kh

        return keep


class Cut(NamedTuple):
    """A decoded image, and its pixels in a box of the full image, as the preprocess is to get them.

    With `fast`, a draft-decoded JPEG is resized here, to the size the preprocess's Resize gives the same box of
    the full decode and over that box's exact extent in the draft (core.decode's Draft): that Resize then has
    nothing left to do, and the centre crop falls where exact's does, for the whole image and for `--crops`."""

    image: Image.Image
    draft: Draft | None = None
    fit: Fit | None = None
    resample: int | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the full decode."""
        return self.image.size if self.draft is None else self.draft.size

    def crop(self, box: tuple[int, int, int, int]) -> Image.Image:
        """The pixels in `box` (x0, y0, x1, y1 of the full decode, x1 and y1 exclusive)."""
        if self.draft is None:
            return self.image.crop(box)
        assert self.fit is not None
        sx, sy = self.draft.box[2] / self.draft.size[0], self.draft.box[3] / self.draft.size[1]
        x0, y0, x1, y1 = box
        return self.image.resize(self.fit(x1 - x0, y1 - y0), self.resample, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))

    def whole(self) -> Image.Image:
        return self.crop((0, 0, *self.size)) if self.draft is not None else self.image


class Batch(NamedTuple):
    rows: list[int]  # every row of the batch
    good: list[int]  # the rows that decoded, in the order of `pixels`
    pixels: torch.Tensor | None  # (B, 3, H, W) or None
    errors: dict[int, str]  # row -> why it failed
    crops: tuple[torch.Tensor | None, list[int]]  # (every decoded row's crops (C, 3, H, W) or None, count per row)
    jpegs: list[tuple[int, torch.Tensor, str]]  # (row, JPEG bytes, origin) still to decode on the device


def collate_rows(batch: list[Row]) -> Batch:
    rows = [r for r, *_ in batch]
    good = [(r, x, c) for r, x, c, _, _ in batch if x is not None]
    errors = {r: e for r, _, _, e, _ in batch if e is not None}
    pixels = torch.stack([x for _, x, _ in good]) if good else None
    counts = [0 if c is None else len(c) for _, _, c in good]
    crops = torch.cat([c for _, _, c in good if c is not None]) if any(counts) else None
    jpegs = [(r, *j) for r, _, _, _, j in batch if j is not None]
    return Batch(rows, [r for r, _, _ in good], pixels, errors, (crops, counts), jpegs)
