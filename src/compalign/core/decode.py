"""Turn image bytes into an RGB PIL image, or a reason why not. Never raises on bad data.

Covers what real folders contain: truncated or zero-byte files, grayscale, palette, CMYK,
alpha, 16-bit PNGs (scaled, not clipped) and decompression bombs (refused, not decoded). The bomb
limit is PIL's own (`Image.MAX_IMAGE_PIXELS`, about 89 megapixels): its warning is raised as an error
here, so a larger image is refused from its header before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ORIENTATION = 0x0112  # the EXIF tag


class DecodeError(ValueError):
    pass


Fit = Callable[[int, int], tuple[int, int]]  # an image's (width, height) -> the (width, height) it is resized to


class Draft(NamedTuple):
    """Where a JPEG decoded at reduced scale lies in its own pixels. The DCT scales whole 8x8 blocks, so a side
    that is not a multiple of the scale decodes to a partial pixel more (640x425 at 1/4: 160x107 for 160x106.25).
    Resized over `box` (PIL's `resize(box=...)`), the draft keeps the full decode's geometry: resized over all of
    its pixels, it would be stretched by that partial pixel, and a centre crop shifted."""

    size: tuple[int, int]  # (width, height) of the full decode
    box: tuple[float, float, float, float]  # the full image's extent in the draft's pixels: (0, 0, W/s, H/s)


def decode_image(data: bytes, exif_transpose: bool = False) -> Image.Image:
    """RGB image of `data`; `exif_transpose` applies the EXIF orientation tag (open_clip's pipeline does not)."""
    return _decode(data, exif_transpose, None)[0]


def decode_draft(data: bytes, fit: Fit, exif_transpose: bool = False) -> tuple[Image.Image, Draft | None]:
    """As decode_image, but a JPEG decodes at 1/2, 1/4 or 1/8 scale (PIL's draft mode: the DCT drops the detail a
    resize would drop) as long as both sides stay >= `fit(width, height)`, the size it will be resized to. Draft
    is None when it decoded in full (another format, too small to scale, or an EXIF rotation to apply)."""
    return _decode(data, exif_transpose, fit)


def _decode(data: bytes, exif_transpose: bool, fit: Fit | None) -> tuple[Image.Image, Draft | None]:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    draft = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # checks the header's size against PIL's limit
            if fit and img.format == "JPEG" and not (exif_transpose and img.getexif().get(ORIENTATION, 1) != 1):
                size = img.size
                _, box = img.draft(img.mode, fit(*size))  # the largest scale keeping both sides >= the request
                draft = Draft(size, box) if img.size != size else None
            img.load()  # truncated files fail here, not later in a worker's transform
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb refused: {e}") from None
    except UnidentifiedImageError:  # PIL's message names its in-memory buffer, not the file
        raise DecodeError("not an image PIL can identify (corrupt, or not an image file)") from None
    except Exception as e:  # PIL raises many types for corrupt data; all mean "not an image"
        raise DecodeError(f"cannot decode image: {type(e).__name__}: {e}") from None
    return to_rgb(ImageOps.exif_transpose(img) if exif_transpose else img), draft


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0  # 16-bit data: scale, don't clip to white
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB") if img.mode != "RGB" else img
