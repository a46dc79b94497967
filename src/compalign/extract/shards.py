"""Shards on their way to disk: the image shard buffer the batch loop fills, and the one writer thread.

A shard is the unit of writing and of resume, so it is assembled whole in memory and handed over
whole: the writer thread owns every write (in order, one Zarr handle per array), which lets the
model keep encoding the next shard while the last one is written, and means a killed run leaves
either a finished shard with its done marker or nothing that counts.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.store import OK, Layout, write_shard


class ShardWriter:
    """One thread owns every write: shards are queued whole and written in order."""

    def __init__(self, root: Any, path: Path):
        self.root, self.path = root, path
        self.opened: dict[str, Any] = {}  # Zarr arrays, opened once by the writer thread
        self.q: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self) -> None:
        while (job := self.q.get()) is not None:
            if self.error is None:
                try:
                    write_shard(self.root, self.path, *job, opened=self.opened)
                except BaseException as e:  # surfaced in the main thread by put/close
                    self.error = e

    def put(self, *job: Any) -> None:
        if self.error:
            raise self.error
        self.q.put(job)

    def close(self) -> None:
        self.q.put(None)
        self.t.join()
        if self.error:
            raise self.error


def new_image_shard(s: int, lo: int, n: int, lay: Layout, layers: list[int],
                    regions: dict[str, np.ndarray] | None = None) -> dict[Any, Any]:
    """Zeroed buffers for image shard `s` (rows lo .. lo + n): global, status, error, per layer
    ("patches", l) / ("prefix", l), and `regions` ({store path under images/: buffer}, `--crops`)."""
    sh: dict[Any, Any] = {"s": s, "lo": lo, "global": np.zeros((n, lay.embed_dim), np.float32),
                          "status": np.full(n, OK, np.int8), "error": np.full(n, "", dtype=object),
                          "regions": regions or {}}
    for l in layers:
        sh["patches", l] = np.zeros((n, lay.n_patches, lay.image_width), np.float16)
        sh["prefix", l] = np.zeros((n, lay.n_prefix, lay.image_width), np.float16)
    return sh


def finish_image_shard(sh: dict[Any, Any]) -> tuple[int, int, dict[str, np.ndarray]]:
    """(shard, first row, arrays by store name) of a filled `new_image_shard`: what `ShardWriter.put` takes."""
    arrays = {"global": sh["global"], "status": sh["status"], "error": sh["error"].astype(str), **sh["regions"]}
    for key, val in sh.items():
        if isinstance(key, tuple):
            name, l = key
            arrays[name if l == -1 else f"layers/{l}/{name}"] = val
    return sh["s"], sh["lo"], arrays
