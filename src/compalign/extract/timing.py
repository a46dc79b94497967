"""Where each stage of an extraction spends its wall time, measured in the run itself (the summary prints it).

In the image stage the main process does three things in turn, and each can be what the run waits on:
- input: waiting for the next decoded batch (DataLoader workers; with `--decode gpu` also queueing the device's
  decode). Large when the decoders are the limit: raise `--workers`, try `--decode fast|gpu`.
- model: the forward pass (on a GPU: queueing it, then waiting for the previous batch's features to reach host
  memory), crops' forwards included. Large when the backbone is the limit, which is where a run should be.
- writers: handing a full shard to the writer threads when all of them are busy, and waiting at the end for the
  last shards. Large when the store's disk or bucket is the limit: raise `--writers`.
The rest is the loop's own work: copying each batch's features into its shard's buffers, marking failed rows.
The text stage is the same loop with tokenising as its input: measuring every caption's length before the store
is made, then waiting for each shard's ids from the workers (captions.py). Its last shards are written while the
image stage starts, so it ends at its last hand-over.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

PARTS = ("input", "model", "writers")
_END = object()
SAID = {"model": "the model", "writers": "waiting for the writers"}
KINDS = {"images": ("image", "images", "img/s", "waiting for decoded batches"),
         "texts": ("text", "captions", "captions/s", "tokenising")}  # stage, rows, rate, input

@dataclass
class StageTime:
    """Seconds of one stage, and how much of it went to each of PARTS."""

    kind: str = "images"  # or "texts"
    rows: int = 0
    seconds: float = 0.0
    spent: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))

    @property
    def other(self) -> float:
        return max(0.0, self.seconds - sum(self.spent.values()))

    def __str__(self) -> str:
        stage, rows, per_s, waiting = KINDS[self.kind]
        share = {**{SAID.get(k, waiting): v for k, v in self.spent.items()}, "the loop itself": self.other}
        parts = ", ".join(f"{name} {100 * s / self.seconds:.0f}%" for name, s in
                          sorted(share.items(), key=lambda kv: -kv[1])) if self.seconds else "nothing timed"
        rate = f" ({self.rows / self.seconds:,.0f} {per_s})" if self.seconds else ""
        return f"{stage} stage: {self.rows:,} {rows} in {self.seconds:.1f} s{rate}: {parts}"


class Clock:
    """Charges wall time to PARTS while it runs; `stop` gives the StageTime."""

    def __init__(self, kind: str = "images", earlier: dict[str, float] | None = None) -> None:
        """`earlier`: seconds already spent on this stage's parts before the clock started (the caption lengths
        measured before the store is made), counted in the stage's time."""
        self.time, self.t0 = StageTime(kind), time.perf_counter() - sum((earlier or {}).values())
        for name, seconds in (earlier or {}).items():
            self.time.spent[name] += seconds

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.time.spent[name] += time.perf_counter() - t

    def each(self, items: Iterable, name: str) -> Iterator:
        """`items`, the wait for each one charged to `name`."""
        it = iter(items)
        while True:
            with self.part(name):
                item = next(it, _END)
            if item is _END:
                return
            yield item

    def stop(self, rows: int) -> StageTime:
        self.time.rows, self.time.seconds = rows, time.perf_counter() - self.t0
        return self.time
