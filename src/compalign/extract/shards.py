"""Shards on their way to disk: the image shard buffer the batch loop fills, and the writer threads.

A shard is the unit of writing and of resume, so it is assembled whole in memory and handed over
whole: a writer thread takes a whole shard and writes all of it (compression, fsync, checksums, done
marker), which lets the model keep encoding the next shard while the last ones are written, and means
a killed run leaves either a finished shard with its done marker or nothing that counts. With
`--writers N`, N threads take shards from one queue: two never hold the same shard (Zarr loses data when
two writers touch one shard), and each shard's files are the same bytes whichever thread wrote them.
Threads, not processes: zstd, sha256, file writes and fsync release the GIL, and a shard
(~77 MB for ViT-B-16) is not copied to get to its writer.
"""

from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..cache.store import OK, Layout, write_shard


class ShardWriter:
    """`writers` threads write the queued shards, each shard whole by one thread.

    The queue holds at most `writers` shards besides those being written, so memory stays bounded
    (each queued shard is a full buffer) and a slow disk slows the model instead of filling RAM."""

    def __init__(self, root: Any, path: Path, writers: int = 1):
        self.root, self.path = root, path
        self.q: queue.Queue = queue.Queue(maxsize=max(2, writers))
        self.error: BaseException | None = None
        self.bytes = 0  # raw bytes handed to the writers (what benchmarks divide by the time)
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(writers)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        opened: dict[str, Any] = {}  # this thread's Zarr arrays, opened once
        while (job := self.q.get()) is not None:
            if self.error is None:
                try:
                    write_shard(self.root, self.path, *job, opened=opened)
                except BaseException as e:  # surfaced in the main thread by put/drain/close
                    self.error = e
            self.q.task_done()

    def put(self, *job: Any) -> None:
        if self.error:
            raise self.error
        self.bytes += sum(a.nbytes for a in job[-1].values())
        self.q.put(job)

    def drain(self) -> None:
        """Wait until every shard handed over is written."""
        self.q.join()
        if self.error:
            raise self.error

    def close(self) -> None:
        for _ in self.threads:
            self.q.put(None)
        for t in self.threads:
            t.join()
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
