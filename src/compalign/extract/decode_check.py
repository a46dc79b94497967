"""How far `--decode fast|gpu` moves this run's own features from the exact preprocessing, printed with every run.

The two opt-in decodes trade exactness for speed (image_rows.py, gpu_decode.py). How much they cost depends on
the images (their size against the resize target, how many are JPEGs) and on the backbone, so a figure measured
once on other data says little about a user's run. Before its images are encoded, a run with `fast` or `gpu`
decodes CHECK_IMAGES of its own images, spread over the whole plan, both ways, and encodes both with its own
backbone at its own precision; the summary then says how far the normalised pixels moved and the cosine of each
image's global embedding and patch tokens with their exact counterparts. It costs 2 x CHECK_IMAGES forwards.
The store keeps the figures in its root attributes (`decode_check`, written once every rank is done, so no
rank reads the root while it changes), and `compalign cache info` shows them with the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..cache.location import Location
from ..cache.store import open_store
from .gpu_decode import GpuPreprocess
from .image_rows import Decode, ImageRows, collate_rows
from .sources import ImageRef

CHECK_IMAGES = 16


@dataclass(frozen=True)
class DecodeCheck:
    decode: Decode
    images: int  # the images compared (those that decode both ways)
    pixel_mean: float  # mean |difference| of the normalised pixels
    pixel_max: float
    global_min: float  # cosine of an image's global embedding with its exact one: least over the images
    global_mean: float
    patch_mean: float  # cosine of a patch token with its exact one: mean over tokens and images

    def __str__(self) -> str:
        return self.line("these")

    def line(self, whose: str) -> str:
        return (f"--decode {self.decode} vs exact on {self.images} of {whose} images: normalised pixels moved by "
                f"{self.pixel_mean:.4f} on average (at most {self.pixel_max:.3f}); cosine with the exact features: "
                f"global embedding min {self.global_min:.5f}, mean {self.global_mean:.5f}; "
                f"patch tokens mean {self.patch_mean:.5f}")


def record_check(out: Location, check: DecodeCheck) -> None:
    """Keep `check` in the store's root attributes (a rerun that encodes images again replaces it: it samples the
    same rows of the same plan). Not compared on resume: it is what a run measured, not how the store is made."""
    open_store(out, "r+").attrs.update({"decode_check": asdict(check)})


def sample_rows(refs: list[ImageRef], n: int = CHECK_IMAGES) -> list[int]:
    """Up to `n` readable rows spread evenly over the plan (the first rows of a source are often alike)."""
    readable = [r for r, ref in enumerate(refs) if not ref.error]
    if len(readable) <= n:
        return readable
    return [readable[i] for i in np.linspace(0, len(readable) - 1, n).round().astype(int)]


def _pixels(rows: ImageRows, idx: list[int], gpu: GpuPreprocess | None, device: str) -> dict[int, torch.Tensor]:
    """Row -> its (3, H, W) preprocessed pixels on `device`; rows that failed to decode are left out."""
    batch = collate_rows(rows.__getitems__(idx))
    out = {} if batch.pixels is None else dict(zip(batch.good, batch.pixels.to(device)))
    if gpu is not None and batch.jpegs:
        good, decoded, _ = gpu(batch.jpegs)
        out.update(zip(good, decoded))
    return out


def check_decode(bb, refs: list[ImageRef], decode: Decode, device: str, exif_transpose: bool = False,
                 n: int = CHECK_IMAGES) -> DecodeCheck | None:
    """`decode` against exact on up to `n` of `refs`, under the caller's autocast; None when none decodes both ways."""
    sub = [refs[r] for r in sample_rows(refs, n)]
    idx = list(range(len(sub)))
    exact = _pixels(ImageRows(sub, bb.preprocess, exif_transpose), idx, None, device)
    other = _pixels(ImageRows(sub, bb.preprocess, exif_transpose, decode=decode), idx,
                    GpuPreprocess(bb.preprocess, device, exif_transpose) if decode == "gpu" else None, device)
    both = sorted(exact.keys() & other.keys())
    if not both:
        return None
    a = torch.stack([exact[r] for r in both]).float()  # (n, 3, H, W)
    b = torch.stack([other[r] for r in both]).float()
    diff = (a - b).abs()
    with torch.no_grad():
        ea, eb = bb.encode_images(a, [-1]), bb.encode_images(b, [-1])
    cos = torch.nn.functional.cosine_similarity
    g = cos(ea.global_.float(), eb.global_.float(), dim=-1)  # (n,)
    p = cos(ea.patches[-1].float(), eb.patches[-1].float(), dim=-1)  # (n, P)
    return DecodeCheck(decode, len(both), float(diff.mean()), float(diff.max()), float(g.min()), float(g.mean()),
                       float(p.mean()))
