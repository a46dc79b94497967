"""Batches to the device and features back, overlapped with the forward pass (CUDA); plain calls on CPU.

On a GPU the model's stream should never wait on a copy. `to_device` starts the next batch's
host->device copy (and, with `--decode gpu`, its JPEG decode) on a side stream while the current
batch is encoded; `HostCopies` copies a batch's features into pinned host buffers without blocking,
so the CPU places batch k in its shard while the GPU runs batch k + 1. On CPU both are no-ops: the
tensors are already host memory, and the values are exactly those of a plain `.cpu().numpy()`.
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


class HostCopies:
    """Features of one batch on their way to host memory: `start` queues the copies, `wait` gives numpy arrays.

    CUDA: two sets of pinned buffers, used in turn; the caller waits for batch k before starting batch
    k + 2, so a set is never overwritten while its copy is read. Token arrays are cast to float16 on the
    device (the store's dtype; the same rounding numpy's cast does) to halve what crosses the bus."""

    def __init__(self, device: str, batch_size: int):
        self.cuda, self.batch_size = device.startswith("cuda"), batch_size
        self.buffers: list[dict[str, torch.Tensor]] = [{}, {}]
        self.turn = 0

    def _pinned(self, key: str, t: torch.Tensor) -> torch.Tensor:
        bufs = self.buffers[self.turn]
        if key not in bufs or bufs[key].shape[1:] != t.shape[1:] or bufs[key].dtype != t.dtype:
            bufs[key] = torch.empty((self.batch_size, *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        return bufs[key][: len(t)]

    def start(self, enc: ImageOut, layers: list[int]) -> tuple[dict[str, torch.Tensor], torch.cuda.Event | None]:
        named = {"global": enc.global_.float()}
        for l in layers:
            named[f"patches/{l}"], named[f"prefix/{l}"] = enc.patches[l], enc.prefix[l]
        if not self.cuda:
            return named, None
        host = {}
        for key, t in named.items():
            t = t if key == "global" else t.to(torch.float16)
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
        return {k: v.float().numpy() if done is None else v.numpy() for k, v in host.items()}
