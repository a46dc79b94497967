"""`--decode gpu`: JPEG bytes decoded by nvjpeg on the CUDA device, then resized, cropped and normalised there.

On a fast GPU the CPU's JPEG decode + resize (~7 ms per image per worker) is what extraction waits on.
The decode workers then only read the files' bytes; this module turns a batch of them into the same
(B, 3, H, W) pixels the checkpoint's preprocess makes, up to the decoders' and resamplers' rounding
(libjpeg vs nvjpeg, PIL's bicubic vs torch's antialiased bicubic: benchmarks/extract_overhead.py prints
the difference). The steps are read off the backbone's own torchvision pipeline, so a preprocessing this
file does not know is refused, never approximated. A JPEG nvjpeg cannot decode goes back to the CPU path.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image
from torchvision import transforms as T

from ..core import InputError
from ..core.decode import DecodeError, decode_image

Step = Callable[[torch.Tensor], torch.Tensor]


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255)  # what ToTensor does to a PIL image's uint8 values


def tensor_steps(preprocess: Any) -> list[Step]:
    """The checkpoint's preprocess as steps on a (3, H, W) uint8 RGB tensor (on any device)."""
    steps: list[Step] = []
    for t in getattr(preprocess, "transforms", [preprocess]):
        name = type(t).__name__
        if isinstance(t, (T.Resize, T.CenterCrop, T.Normalize)):
            steps.append(t)  # torchvision's own modules run on tensors (Resize: antialiased, as PIL's)
        elif isinstance(t, T.ToTensor):  # open_clip's MaybeToTensor too
            steps.append(_to_float)
        elif name in ("MaybeConvertMode", "_convert_to_rgb") or getattr(t, "__name__", "") == "_convert_to_rgb":
            continue  # the decoder already gives RGB
        else:
            raise InputError(f"--decode gpu runs Resize, CenterCrop, ToTensor and Normalize on the device; this "
                             f"backbone's preprocessing also has {t!r}. Use --decode exact or fast.")
    return steps


def check_gpu_decode(device: str) -> None:
    """Refuse --decode gpu where it cannot run, before anything is loaded: a device that is not CUDA, or a
    torchvision that cannot decode JPEGs there (built without nvJPEG, a driver it cannot use). Found later, the
    latter would not stop the run: every file would go the way of one nvjpeg refuses, decoded by PIL on the
    main process, the slowest path there is."""
    if not device.startswith("cuda"):
        raise InputError(f"--decode gpu decodes JPEGs on the CUDA device, and this run is on {device}; "
                         "use --decode exact (the checkpoint's preprocessing) or --decode fast (JPEG draft mode)")
    from torchvision.io import ImageReadMode, decode_jpeg

    probe = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 30)).save(probe, format="JPEG")
    try:
        got = decode_jpeg([torch.frombuffer(bytearray(probe.getvalue()), dtype=torch.uint8)], mode=ImageReadMode.RGB,
                          device=device)
    except RuntimeError as e:
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"--decode gpu: this torchvision cannot decode JPEGs on {device} ({why}); use --decode fast "
                         "(JPEG draft mode in the CPU workers) or --decode exact") from None
    if tuple(got[0].shape) != (3, 8, 16):  # a decoder that answers, but not with the image: never run with it
        raise RuntimeError(f"torchvision's decode_jpeg on {device} gave shape {tuple(got[0].shape)} for a 16x8 RGB JPEG")


class GpuPreprocess:
    """JPEG bytes -> preprocessed pixels on `device`; a file nvjpeg refuses is decoded by PIL instead."""

    def __init__(self, preprocess: Any, device: str, exif_transpose: bool = False):
        self.preprocess, self.device, self.exif_transpose = preprocess, torch.device(device), exif_transpose
        self.steps = tensor_steps(preprocess)

    def _run(self, image: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return image

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        from torchvision.io import ImageReadMode, decode_jpeg

        on = self.device if self.device.type == "cuda" else "cpu"
        try:  # one batched call: nvjpeg decodes the whole batch together
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=on))
        except RuntimeError:  # one bad file fails the batch: find it one by one
            out: list[torch.Tensor | None] = []
            for d in datas:
                try:
                    out.append(decode_jpeg(d, mode=ImageReadMode.RGB, device=on))
                except RuntimeError:
                    out.append(None)
            return out

    def __call__(self, jpegs: list[tuple[int, torch.Tensor, str]]) -> tuple[list[int], list[torch.Tensor], dict[int, str]]:
        """(rows decoded, their (3, H, W) pixels on the device, {row: error}) of [(row, bytes (n,) uint8, origin)]."""
        rows, pixels, errors = [], [], {}
        decoded = self._decode([d for _, d, _ in jpegs]) if jpegs else []
        for (row, data, origin), image in zip(jpegs, decoded):
            if image is None:  # nvjpeg refused it: PIL decides (and names the error the CPU path would)
                try:
                    pil = decode_image(data.numpy().tobytes(), self.exif_transpose)
                    pixels.append(self.preprocess(pil).to(self.device))
                except DecodeError as e:
                    errors[row] = f"{origin}: {e}"
                    continue
                except Exception as e:  # the same as the CPU workers: recorded, the run goes on
                    errors[row] = f"{origin}: {type(e).__name__}: {e}"
                    continue
            else:
                pixels.append(self._run(image))
            rows.append(row)
        return rows, pixels, errors
