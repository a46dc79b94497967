"""Batches to the device and features back, overlapped with the forward pass (CUDA); plain calls on CPU.

On a GPU the model's stream should never wait on a copy. `to_device` starts the next batch's
host->device copy (and, with `--decode gpu`, its JPEG decode) on a side stream while the current
batch is encoded; `HostCopies` copies a batch's features (an image batch's or a text batch's) into
pinned host buffers without blocking, so the CPU places batch k in its shard while the GPU runs batch
k + 1. On CPU nothing is copied: the tensors are already host memory, and the float16 cast is the only
work, with the rounding numpy's cast into the float16 shard buffers would do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

from .backbones import ImageOut
from .gpu_decode import GpuPreprocess
from .image_rows import Batch


def _start(batch: Batch | None, device: str, stream: torch.cuda.Stream, gpu: GpuPreprocess | None) -> Batch | None:
    """The batch with its pixels on the device (copy / decode queued on `stream`, not yet finished)."""
    if batch is None:
        return None
    with torch.cuda.stream(stream):
        pixels = batch.pixels.to(device, non_blocking=True) if batch.pixels is not None else None
        good, errors = batch.good, batch.errors
        if gpu is not None and batch.jpegs:
            rows, decoded, failed = gpu(batch.jpegs)
            if decoded:
                pixels = torch.cat([p for p in (pixels, torch.stack(decoded)) if p is not None])
            good, errors = good + rows, {**errors, **failed}
    return batch._replace(good=good, pixels=pixels, errors=errors, jpegs=[])


def to_device(loader: Iterable[Batch], device: str, gpu: GpuPreprocess | None = None) -> Iterator[Batch]:
    """The loader's batches, pixels on `device`; on CUDA the next batch's copy runs beside this one's forward."""
    if not device.startswith("cuda"):
        yield from loader  # encode_images moves the pixels itself
        return
    stream, it = torch.cuda.Stream(device), iter(loader)
    nxt = _start(next(it, None), device, stream, gpu)
    while nxt is not None:
        here = torch.cuda.current_stream(device)
        here.wait_stream(stream)  # this batch's copy is done before its forward reads it
        cur = nxt
        if cur.pixels is not None:
            cur.pixels.record_stream(here)  # made on the side stream, used on this one: keep it until then
        nxt = _start(next(it, None), device, stream, gpu)
        yield cur


def to_device_async(t: torch.Tensor, device: str) -> torch.Tensor:
    """`t` on `device` without making the host wait: a pageable host->device copy waits for everything queued on
    the stream (the forward of the batch before), a pinned one is queued behind it. On CPU, `t` itself."""
    return t.pin_memory().to(device, non_blocking=True) if device.startswith("cuda") else t


class HostCopies:
    """Features of one batch on their way to host memory: `start` queues the copies, `wait` gives numpy arrays.

    `shapes`: the largest (rows, ...) shape each named feature will have. Every feature but "global" is cast to
    float16 before it leaves the device (the store's dtype; the same rounding numpy's cast does), to halve what
    crosses the bus. CUDA: two sets of pinned buffers, used in turn; the caller waits for batch k before
    starting batch k + 2, so a set is never overwritten while its copy is read. A buffer holds its feature's
    largest shape, so a batch of shorter captions is a view of it, not a new pinned allocation."""

    def __init__(self, device: str, shapes: dict[str, tuple[int, ...]]):
        self.cuda, self.shapes = device.startswith("cuda"), shapes
        self.buffers: list[dict[str, torch.Tensor]] = [{}, {}]
        self.turn = 0

    def _pinned(self, key: str, t: torch.Tensor) -> torch.Tensor:
        bufs = self.buffers[self.turn]
        if key not in bufs:
            bufs[key] = torch.empty(int(np.prod(self.shapes[key])), dtype=t.dtype, pin_memory=True)
        return bufs[key][: t.numel()].view(t.shape)

    def start(self, named: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
        named = {k: t.float() if k == "global" else t.to(torch.float16) for k, t in named.items()}
        if not self.cuda:
            return named, None
        host = {}
        for key, t in named.items():
            host[key] = self._pinned(key, t)
            host[key].copy_(t, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        self.turn ^= 1
        return host, done

    @staticmethod
    def wait(started: tuple[dict[str, torch.Tensor], torch.cuda.Event | None]) -> dict[str, np.ndarray]:
        host, done = started
        if done is not None:
            done.synchronize()
        return {k: v.numpy() for k, v in host.items()}


def image_features(enc: ImageOut, layers: list[int]) -> dict[str, torch.Tensor]:
    """An image batch's features by the names HostCopies and the shard buffers use."""
    named = {"global": enc.global_}
    for l in layers:
        named[f"patches/{l}"], named[f"prefix/{l}"] = enc.patches[l], enc.prefix[l]
    return named
