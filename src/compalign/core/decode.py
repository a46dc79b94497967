"""Turn image bytes into an RGB PIL image, or a reason why not. Never raises on bad data.

Covers what real folders contain: truncated or zero-byte files, grayscale, palette, CMYK,
alpha, 16-bit PNGs (scaled, not clipped) and decompression bombs (refused, not decoded). The bomb
limit is PIL's own (`Image.MAX_IMAGE_PIXELS`, about 89 megapixels): its warning is raised as an error
here, so a larger image is refused from its header before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


class DecodeError(ValueError):
    pass


def decode_image(data: bytes, exif_transpose: bool = False, draft_short: int | None = None) -> Image.Image:
    """RGB image of `data`; `exif_transpose` applies the EXIF orientation tag (open_clip's pipeline does not).

    `draft_short`: let a JPEG decode at 1/2, 1/4 or 1/8 scale (PIL's draft mode, the DCT does the
    downscaling) as long as its shorter side stays >= `draft_short`; other formats decode in full."""
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # checks the header's size against PIL's limit
            if draft_short and img.format == "JPEG":
                w, h = img.size
                short = min(w, h)  # draft keeps both sides >= the request: ask for the shorter one at draft_short
                img.draft(img.mode, (-(-w * draft_short // short), -(-h * draft_short // short)))
            img.load()  # truncated files fail here, not later in a worker's transform
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DecodeError(f"decompression bomb refused: {e}") from None
    except UnidentifiedImageError:  # PIL's message names its in-memory buffer, not the file
        raise DecodeError("not an image PIL can identify (corrupt, or not an image file)") from None
    except Exception as e:  # PIL raises many types for corrupt data; all mean "not an image"
        raise DecodeError(f"cannot decode image: {type(e).__name__}: {e}") from None
    return to_rgb(ImageOps.exif_transpose(img) if exif_transpose else img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0  # 16-bit data: scale, don't clip to white
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB") if img.mode != "RGB" else img
