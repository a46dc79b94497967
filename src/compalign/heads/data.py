"""Training pairs and their hard negatives, from a cache's items alone.

A cache extracted from a pairs source (`compalign extract --data pairs`) has items with columns
`image`, `caption` and `neg:<kind>` (text keys; "" where a row has no negative of that kind); a
SugarCrepe- or TROHN-style source has `negative_caption` (kind "negative"). Every negative's tokens are
in the same cache, so training never needs the backbone.

Batches are planned, not sampled on the fly: the plan of step s is a pure function of (seed, epoch,
step), so a resumed run reads exactly the batches an uninterrupted run reads. An epoch visits every
training image once, with one of its captions drawn at random, so a batch holds distinct images and
no caption is contrasted against its own image. Images are visited shard group by shard group (like
`CacheReader.batches`), so memory stays bounded by a few decoded shards whatever the store size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ..cache.reader import CacheReader
from ..core import InputError
from .base import Head

log = logging.getLogger(__name__)


@dataclass
class Pairs:
    """Training items resolved to cache rows."""

    image: np.ndarray  # (n,) image rows
    caption: np.ndarray  # (n,) text rows of the positive caption
    negs: np.ndarray  # (n, K) text rows of hard negatives, -1 where the item has none of that kind
    kinds: tuple[str, ...]  # the K negative kinds, column order of `negs`

    def __len__(self) -> int:
        return len(self.image)

    def take(self, idx: np.ndarray) -> Pairs:
        return Pairs(self.image[idx], self.caption[idx], self.negs[idx], self.kinds)


def negative_columns(items: dict[str, np.ndarray]) -> dict[str, str]:
    """kind -> items column holding negatives of that kind."""
    cols = {c[4:]: c for c in items if c.startswith("neg:")}
    if "negative_caption" in items:
        cols["negative"] = "negative_caption"
    return dict(sorted(cols.items()))


def load_pairs(reader: CacheReader, kinds: Sequence[str] = ()) -> Pairs:
    """Every item of the cache whose image and caption extracted, with its negatives of `kinds` (all if empty)."""
    items = reader.items
    for col in ("image", "caption"):
        if col not in items:
            raise InputError(f"{reader.path} has no items column {col!r} (columns: {sorted(items)}); training needs "
                             f"(image, caption[, negatives]) items: extract with `compalign extract --data pairs`")
    cols = negative_columns(items)
    unknown = sorted(set(kinds) - set(cols))
    if unknown:
        raise InputError(f"{reader.path} has no negatives of kind(s) {unknown}; it has {sorted(cols) or 'none'}")
    use = {k: c for k, c in cols.items() if not kinds or k in kinds}
    img_ok, txt_ok = reader.ok_many(["images", "texts"])
    image = reader.rows("images", items["image"])
    caption = reader.rows("texts", items["caption"])
    negs = np.full((len(image), len(use)), -1, dtype=np.int64)
    for j, col in enumerate(use.values()):
        keys = items[col]
        have = np.flatnonzero(keys != "")
        rows = reader.rows("texts", keys[have])
        good = txt_ok[rows]
        negs[have[good], j] = rows[good]
    keep = img_ok[image] & txt_ok[caption]
    if (~keep).any():
        log.warning("%d training items use a failed image or caption and are left out", int((~keep).sum()))
    return Pairs(image[keep], caption[keep], negs[keep], tuple(use))


def split_by_image(pairs: Pairs, val_fraction: float, seed: int) -> tuple[Pairs, Pairs]:
    """(train, val) with no image on both sides; the same seed gives the same split."""
    imgs = np.unique(pairs.image)
    rng = np.random.default_rng([seed, 0x5A1])
    n_val = int(round(val_fraction * len(imgs)))
    if not len(imgs):
        raise InputError("no item survived extraction (every item uses a failed image or caption): nothing to train on; "
                         "see why with `compalign cache info CACHE`")
    if val_fraction > 0 and (n_val < 1 or n_val >= len(imgs)):
        raise InputError(f"val_fraction {val_fraction} of {len(imgs)} images leaves an empty split; change it")
    val_imgs = rng.permutation(imgs)[:n_val]
    is_val = np.isin(pairs.image, val_imgs)
    return pairs.take(np.flatnonzero(~is_val)), pairs.take(np.flatnonzero(is_val))


def subset_images(pairs: Pairs, n_images: int, seed: int) -> Pairs:
    """The items of a seeded subset of at most `n_images` of the images (all items of each kept image)."""
    imgs = np.unique(pairs.image)
    if len(imgs) <= n_images:
        return pairs
    keep = np.random.default_rng([seed, 0x5A2]).permutation(imgs)[:n_images]
    return pairs.take(np.flatnonzero(np.isin(pairs.image, keep)))


@dataclass
class StepPlan:
    items: np.ndarray  # (B,) indices into Pairs, distinct images
    negs: np.ndarray  # (B, n_hard) text rows, -1 = none


class Planner:
    """The deterministic batch plan: `plan(step)` depends only on (pairs, seed, step)."""

    def __init__(self, pairs: Pairs, batch_size: int, n_hard: int, seed: int, shard_rows: int, buffer_shards: int = 16):
        self.pairs, self.batch_size, self.n_hard, self.seed = pairs, batch_size, n_hard, seed
        self.shard_rows, self.buffer_shards = shard_rows, buffer_shards
        self.images, inv = np.unique(pairs.image, return_inverse=True)
        order = np.argsort(inv, kind="stable")
        self.by_image = np.split(order, np.cumsum(np.bincount(inv, minlength=len(self.images)))[:-1])  # items of each image
        if len(self.images) < 2:
            raise InputError(f"training needs at least 2 distinct images, the training split has {len(self.images)}")
        self.steps_per_epoch = max(1, len(self.images) // batch_size)  # the last partial batch is dropped
        self._epoch, self._plans = -1, []

    def _epoch_plans(self, epoch: int) -> list[StepPlan]:
        rng = np.random.default_rng([self.seed, epoch])
        shard = self.images // self.shard_rows
        groups = rng.permutation(np.unique(shard))
        order = []
        for g in range(0, len(groups), self.buffer_shards):  # shuffle within a bounded group of shards
            members = np.flatnonzero(np.isin(shard, groups[g:g + self.buffer_shards]))
            order.append(rng.permutation(members))
        order = np.concatenate(order)
        items = np.array([self.by_image[i][rng.integers(len(self.by_image[i]))] for i in order])
        negs = np.full((len(items), self.n_hard), -1, dtype=np.int64)
        if self.n_hard:
            avail = self.pairs.negs[items]  # (n, K)
            keys = rng.random(avail.shape) + (avail < 0)  # absent kinds sort last
            pick = np.argsort(keys, axis=1)[:, :self.n_hard]
            negs[:, :pick.shape[1]] = np.take_along_axis(avail, pick, axis=1)
        B = min(self.batch_size, len(items))
        return [StepPlan(items[s * B:(s + 1) * B], negs[s * B:(s + 1) * B]) for s in range(self.steps_per_epoch)]

    def plan(self, step: int) -> StepPlan:
        epoch, at = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._plans = epoch, self._epoch_plans(epoch)
        return self._plans[at]


@dataclass
class TrainBatch:
    """Numpy inputs of one step: unique rows gathered once, indices into them."""

    images: dict[str, np.ndarray]  # head fields, (B, ...)
    texts: dict[str, np.ndarray]  # head fields, (T, ...) unique captions + negatives
    cap: np.ndarray  # (B,) caption b's row in `texts`
    neg: np.ndarray  # (B, n_hard) negative's row in `texts` (0 where absent)
    neg_mask: np.ndarray  # (B, n_hard) bool


def gather_batch(reader: CacheReader, head: Head, pairs: Pairs, items: np.ndarray, negs: np.ndarray) -> TrainBatch:
    """Read one batch's rows (images distinct; captions and negatives deduplicated)."""
    mask = negs >= 0
    rows = np.concatenate([pairs.caption[items], negs[mask]])
    uniq, inv = np.unique(rows, return_inverse=True)
    neg = np.zeros(negs.shape, dtype=np.int64)
    neg[mask] = inv[len(items):]
    return TrainBatch(reader.gather("images", head.needs_images, pairs.image[items], head.layer),
                      reader.gather("texts", head.needs_texts, uniq, head.layer),
                      inv[:len(items)], neg, mask)


def prefetch(make: Callable[[int], TrainBatch], steps: range, depth: int) -> Iterator[tuple[int, TrainBatch]]:
    """Yield (step, make(step)) in order, computed `depth` steps ahead in a background thread.

    Reads are numpy/zarr work that releases the GIL, so they overlap the training step. The thread stops
    when the consumer stops (break, exception): nothing is left running.
    """
    if depth <= 0:
        for s in steps:
            yield s, make(s)
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def work() -> None:
        try:
            for s in steps:
                if stop.is_set():
                    return
                put((s, make(s)))
        except BaseException as e:  # surface reader errors in the consumer
            put(e)
        put(None)

    t = threading.Thread(target=work, name="compalign-prefetch", daemon=True)
    t.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # unblock a worker waiting on a full queue, then wait for it
            try:
                q.get_nowait()
            except queue.Empty:
                pass
            t.join(timeout=0.05)
