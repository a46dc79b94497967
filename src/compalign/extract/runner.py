"""The extraction runner: plan the source, open or create the store, encode the pending shards.

Texts first (cheap), then images. Images are decoded and preprocessed in DataLoader workers
(image_rows.py; with `--decode gpu` the workers read bytes and the device decodes, gpu_decode.py), with
`--crops` their boxes cut and preprocessed there too (crops.py); the model runs in this process, its
inputs and outputs crossing to and from the device beside the forward pass (transfer.py); `--writers`
threads write whole shards (shards.py) so the model never waits on disk.
Batches never cross a shard, so a resumed shard is computed exactly as before; which store is resumed
and which shards are left is store_setup.py's.
This file is the loop itself: what runs on the model, in what order, and the summary of a run.
Under torchrun each rank encodes only the shards it owns, into the store rank 0 made (ranks.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..cache.location import Location, StorageError, is_url, location, unreachable
from ..cache.store import FAILED, OK, CacheError, Layout, n_shards, open_store
from ..core import InputError
from ..core.device import resolve_device
from ..core.host import processes_here
from .backbones import load_backbone
from .captions import content_lengths, in_chunks, measurer
from .config import ExtractConfig
from .crops import CropPlan, plan_crops
from .decode_check import DecodeCheck, check_decode, record_check
from .gpu_decode import GpuPreprocess, check_gpu_decode, tensor_steps
from .image_rows import GPU_ROW_BYTES, PREFETCH, SHM, ImageRows, collate_rows, prefetch_batches, shm_free
from .ranks import Job, job_progress, join_job, rank_zero_warns
from .segments import add_segments
from .shards import ShardWriter, finish_image_shard, new_image_shard
from .sources import Plan, PlanCache, cache_path, plan_source
from .store_setup import open_or_create, pending_shards
from .target import NOT_WRITABLE, ObjectLock, WriterLock, check_target, writer_lock
from .timing import Clock, StageTime
from .transfer import HostCopies, image_features, to_device, to_device_async

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (stage, rows done, rows total)
TOKENIZE_ROWS = 1024  # captions tokenised at once to measure their lengths (1024 x 78 int64 ids: 0.6 MB)

__all__ = ["ExtractConfig", "ExtractSummary", "Progress", "extract"]


@dataclass
class ExtractSummary:
    out: str
    images: int
    texts: int
    items: int
    image_failures: list[tuple[str, str]]
    text_failures: list[tuple[str, str]]
    problems: list[str]
    shards_written: int
    shards_skipped: int
    seconds: float
    bytes_on_disk: int
    replaced: str | None = None  # what --overwrite removed
    repaired: list[str] = field(default_factory=list)  # done shards that failed verification and were rewritten
    rank: int = 0  # under torchrun: the other ranks' summaries hold no failures and no sizes (rank 0 reads those)
    decode_check: DecodeCheck | None = None  # --decode fast|gpu against exact on this run's images (decode_check.py)
    image_time: StageTime | None = None  # where the image stage's wall time went (timing.py); None if nothing to do
    text_time: StageTime | None = None  # likewise for the captions

    @property
    def images_ok(self) -> int:
        return self.images - len(self.image_failures)


def _autocast(device: str, precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device == "cpu":
        raise InputError("fp16 autocast is not supported on CPU; use --precision bf16 or fp32")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def extract(cfg: ExtractConfig, progress: Progress | None = None) -> ExtractSummary:
    out = location(cfg.out, cfg.storage_options)  # a local folder or an object-storage prefix
    job = join_job()  # rank 0 of 1 without torchrun
    if job.rank == 0:
        # before loading anything: nothing is touched if refused
        check_target(out, cfg.root if is_url(cfg.root) else Path(cfg.root), cfg.overwrite)
    if job.world > 1:
        progress = job_progress(progress, out, cfg.shard_rows) if progress and job.rank == 0 else None
    # the other ranks take theirs once the store is ready
    with writer_lock(out, take=job.rank == 0, processes=job.processes) as lock:
        try:
            return _extract(cfg, out, progress, job, lock)
        except KeyboardInterrupt:
            if getattr(lock, "lost", False):  # the lease's renewer interrupted us (object_lock.py)
                raise CacheError(f"stopped: this run lost its lock {lock.lock} (it could not renew it for "
                                 f"{lock.lease:.0f} s, and another extract took it over). The shards it finished are "
                                 "done; once the other run ends, run this command again to finish the rest") from None
            raise
        except Exception as e:
            why = None if out.local else unreachable(e)
            if why is None:
                raise
            log.info("the store went out of reach", exc_info=True)  # --verbose shows the whole chain
            raise StorageError(f"lost the connection to {out} ({why}). The shards finished before it are done: once "
                               "it can be reached again, run this command again to finish the rest") from None


def _extract(cfg: ExtractConfig, out: Location, progress: Progress | None, job: Job, lock: WriterLock | ObjectLock
             ) -> ExtractSummary:
    t0 = time.perf_counter()
    with rank_zero_warns(job):
        plan = _plan(cfg, out, job)
        if cfg.segments != "none":
            plan = add_segments(plan)
        for p in plan.problems:
            log.warning("%s", p)
    crops = plan_crops(cfg.crops, plan)  # before the model loads: a root without oracle boxes fails now
    device = str(resolve_device(cfg.device))
    _autocast(device, cfg.precision)  # refuse an impossible precision before a store is made
    if cfg.decode == "gpu":
        check_gpu_decode(device)
    bb = load_backbone(cfg.model, cfg.pretrained, device=device, seed=cfg.seed)
    if cfg.decode == "gpu":
        tensor_steps(bb.preprocess)  # a preprocessing the device cannot run is refused before a store is made
    ahead = _prefetch(cfg, bb) if cfg.workers else None  # so is a /dev/shm too small for the workers' batches
    lengths, truncated, measuring = _token_lengths(bb, plan.texts, cfg.workers)  # (M,), (M,): ids come shard by shard
    # Causal towers: sort captions by length so each batch is cut at its own longest caption.
    order = np.argsort(lengths, kind="stable") if bb.causal_text else np.arange(len(plan.texts))
    text_len = int(lengths.max(initial=1)) if bb.causal_text else bb.context_length
    if job.rank == 0:
        try:
            notes = open_or_create(cfg, bb, plan, order, text_len, device, crops)
        except OSError as e:
            if e.errno not in NOT_WRITABLE:
                raise
            raise CacheError(f"cannot write {e.filename or out} ({e.strerror}). Pass an --out you can write.") from None
    if job.world > 1:  # the store is made and checked: every rank shares the lock from now on (ranks.py says why)
        if job.rank == 0:
            lock.take(shared=True)
        job.barrier()
        if job.rank:
            lock.take(shared=True)
            notes = []
    # the writers' own handle on the store: checksums of the chunks as written, not read back (store.DigestStore)
    writer = ShardWriter(open_store(out, "r+", digests=True), out, cfg.writers)
    try:
        with _autocast(device, cfg.precision):
            texts = _extract_texts(cfg, bb, plan, (lengths, truncated, measuring), order, text_len, out, writer,
                                   device, progress, job)
            images = _extract_images(cfg, bb, plan, out, writer, device, progress, crops, job, ahead)
    finally:
        writer.close()
    written, skipped = texts.written + images.written, texts.skipped + images.skipped
    if job.world > 1:  # every rank's shards are durable past this point; the store is read only then
        job.barrier()
        written = job.total(written)
        skipped = n_shards(len(plan.texts), cfg.shard_rows) + n_shards(len(plan.images), cfg.shard_rows) - written
        if job.rank:
            return ExtractSummary(out=str(out), images=len(plan.images), texts=len(plan.texts),
                                  items=len(next(iter(plan.items.values()), [])),
                                  image_failures=[], text_failures=[], problems=plan.problems, shards_written=written,
                                  shards_skipped=skipped, seconds=time.perf_counter() - t0, bytes_on_disk=0, rank=job.rank)
    if images.check is not None:  # every rank is done: nobody reads the root while it changes
        record_check(out, images.check)
    from ..cache.reader import CacheReader  # local: the reader is only needed for the summary

    reader = CacheReader(out)
    return ExtractSummary(
        out=str(out), images=len(plan.images), texts=len(plan.texts),
        items=len(next(iter(plan.items.values()), [])),
        image_failures=[(o, e) for _, o, e in reader.failures("images")],
        text_failures=[(o, e) for _, o, e in reader.failures("texts")],
        problems=plan.problems, shards_written=written, shards_skipped=skipped,
        seconds=time.perf_counter() - t0, bytes_on_disk=out.size(),
        replaced=next((n for n in notes if n.startswith("replaced")), None),
        repaired=[n for n in notes if not n.startswith("replaced")], decode_check=images.check,
        image_time=images.time, text_time=texts.time,
    )


def _plan(cfg: ExtractConfig, out: Location, job: Job) -> Plan:
    """The source's plan, with the planning cache unless --no-plan-cache (plan_cache.py): beside a local store,
    in the user's cache folder for a store in a bucket. A root's objects are known by URL, size and ETag."""
    if not cfg.plan_cache:
        return plan_source(cfg.data, cfg.root, cfg.split, options=cfg.root_options)
    # Under torchrun only rank 0 records. Where every rank reads the file it writes (beside a local store, or a
    # bucket store's per-machine file with all ranks on one machine), the others wait for it and replay what it
    # hashed: a first run then reads each image once, not once per rank. Elsewhere they plan at once.
    first = job.world > 1 and (out.local or job.world == processes_here())
    if first and job.rank:
        job.barrier()
    hashes = PlanCache(cache_path(out.path if out.local else str(out)), record=job.rank == 0)
    try:
        plan = plan_source(cfg.data, cfg.root, cfg.split, hashes, cfg.root_options)
    finally:
        hashes.close()
    if first and job.rank == 0:
        job.barrier()
    if hashes.hits or hashes.misses:
        log.info("planning cache: %d files known, %d hashed", hashes.hits, hashes.misses)
    return plan


@dataclass
class Stage:
    """What the text or the image stage did: shards written and skipped, where its time went, the decode check."""

    written: int
    skipped: int
    time: StageTime | None = None  # None: nothing to encode
    check: DecodeCheck | None = None  # images with --decode fast|gpu, on rank 0


def _token_lengths(bb, texts: list[str], workers: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(lengths (M,) int64, truncated (M,) bool) of every caption, measured TOKENIZE_ROWS at a time in `workers`
    processes (captions.py), and the seconds it took.

    The lengths are needed before any shard (causal towers sort captions by length, and the stored token
    width is the longest), the (M, C) id matrix is not: ids are made again per shard in _extract_texts, so
    memory holds a few chunks of ids whatever the number of captions. Tokenisers treat each caption alone, so
    a chunk's rows are exactly the whole table's (tests/unit/test_text_stream.py compares the stores)."""
    t0 = time.perf_counter()
    lengths, truncated = np.zeros(len(texts), np.int64), np.zeros(len(texts), bool)
    chunks = [range(lo, min(len(texts), lo + TOKENIZE_ROWS)) for lo in range(0, len(texts), TOKENIZE_ROWS)]
    for rows, (n, cut) in zip(chunks, in_chunks(measurer(bb.tokenizer, bb.context_length), texts, chunks, workers)):
        lengths[rows.start:rows.stop], truncated[rows.start:rows.stop] = n, cut
    return lengths, truncated, time.perf_counter() - t0


def _extract_texts(cfg, bb, plan, measured, order, text_len, out, writer, device, progress,
                   job: Job = Job()) -> Stage:
    """`measured`: every caption's (lengths, truncated) from _token_lengths, and the seconds that took (the stage's
    time includes them: on a GPU, tokenising can be what the text stage waits on). Each shard's ids are made in
    the workers while the model encodes the shard before (captions.py)."""
    all_lengths, all_truncated, measuring = measured
    M, R = len(plan.texts), cfg.shard_rows
    lay = Layout(**dict(open_store(out).attrs)["layout"])
    layers = lay.layers_text
    todo, skipped = pending_shards(out, "texts", M, R)
    todo = job.mine(todo)
    mine = sum(min(R, M - s * R) for s in todo)  # the rows this run encodes
    done_rows = M - mine
    if progress:
        progress("texts", done_rows, M)
    if not todo:
        return Stage(0, skipped)
    B = cfg.batch_size
    copies = HostCopies(device, {"global": (B, lay.embed_dim), **{f"tokens/{l}": (B, text_len, lay.text_width) for l in layers}})
    landing: tuple[dict[str, np.ndarray], np.ndarray, int, Any] | None = None  # (shard buffers, rows, L, copies)

    def land() -> None:  # the previous batch's features, now on the host, into their shard
        nonlocal landing
        if landing is not None:
            sh, at, L, started = landing
            with clock.part("model"):
                got = copies.wait(started)
            sh["global"][at] = got["global"]
            for l in layers:
                sh[f"tokens/{l}"][at, :L] = got[f"tokens/{l}"]
            landing = None

    clock = Clock("texts", earlier={"input": measuring})
    shard_ids = in_chunks(bb.tokenizer, plan.texts, [order[s * R:(s + 1) * R] for s in todo], cfg.workers)
    for s, ids_all in zip(todo, clock.each(shard_ids, "input")):  # ids_all (n, C): this shard's captions only
        lo, hi = s * R, min(M, (s + 1) * R)
        src = order[lo:hi]
        lengths = all_lengths[src]
        n = hi - lo
        ids_all = to_device_async(ids_all, device)  # (n, C); no copy below makes the host wait for the device
        buf: dict[str, np.ndarray] = {
            "global": np.zeros((n, lay.embed_dim), np.float32),
            "status": np.full(n, OK, np.int8),
            "error": np.full(n, "", dtype=object),
            "lengths": lengths.astype(np.int16),
            "truncated": all_truncated[src],
            **{f"tokens/{l}": np.zeros((n, text_len, lay.text_width), np.float16) for l in layers},
        }
        empty = np.array([not plan.texts[i].strip() for i in src], dtype=bool)
        buf["status"][empty] = FAILED
        buf["error"][empty] = "empty caption"
        for b in range(0, n, B):
            idx = np.arange(b, min(n, b + B))
            idx = idx[~empty[idx]]
            if not len(idx):
                continue
            L = int(lengths[idx].max()) if bb.causal_text else bb.context_length
            with clock.part("model"):
                ids = ids_all[to_device_async(torch.from_numpy(idx), device), :L]  # (B, L): positions after EOT
                enc = bb.encode_texts(ids, layers)  # cannot change a causal tower
                ends = content_lengths(ids)  # (B,): lengths[idx], from the ids on the device
                past = torch.arange(L, device=ids.device)[None, :] >= ends[:, None]  # (B, L): zeroed
                started = copies.start({"global": enc.global_,
                                        **{f"tokens/{l}": enc.tokens[l][:, :L].masked_fill(past[..., None], 0)
                                           for l in layers}})
            land()  # batch k - 1 lands while the device runs batch k
            landing = (buf, idx, L, started)
        land()
        for l in layers:
            buf["tokens" if l == -1 else f"layers/{l}/tokens"] = buf.pop(f"tokens/{l}")
        buf["error"] = buf["error"].astype(str)
        with clock.part("writers"):
            writer.put("texts", s, lo, buf)
        done_rows += n
        if progress:
            progress("texts", done_rows, M)
    # not drained: the last text shards are written while the image stage starts (its drain waits for them)
    return Stage(len(todo), skipped, clock.stop(mine))


def _encode_crops(bb, crops: torch.Tensor, batch_size: int, device: str) -> np.ndarray:
    """(C, E) global embeddings of (C, 3, H, W) preprocessed crops, `batch_size` crops per forward pass."""
    out = [bb.encode_images(crops[c:c + batch_size].to(device, non_blocking=True), [-1]).global_.float().cpu().numpy()
           for c in range(0, len(crops), batch_size)]
    return np.concatenate(out)


def _prefetch(cfg: ExtractConfig, bb) -> int:
    """Batches each worker keeps ready, fewer than PREFETCH when they would not fit in /dev/shm (a container's
    is 64 MB unless `--shm-size` says otherwise: 15 workers x 4 batches of 256 ViT-B-16 images need 9 GB)."""
    h, w = bb.meta["image_size"]
    row = GPU_ROW_BYTES if cfg.decode == "gpu" else 3 * h * w * 4  # float32 pixels (crops come on top)
    need, free = cfg.batch_size * row, shm_free()
    ahead = prefetch_batches(cfg.workers, need, free)
    if not ahead:
        raise InputError(f"{SHM} has {free / 2**20:,.1f} MiB free; {cfg.workers} decoding workers need at least "
                         f"{cfg.workers * need / 2**20:,.1f} MiB there (one batch of {cfg.batch_size} each). Give it "
                         "more (docker run --shm-size=16g), or pass fewer --workers or a smaller --batch-size")
    if ahead < PREFETCH:
        log.warning("%s has %.0f MiB free: each of the %d decoding workers keeps %d batches ready instead of %d",
                    SHM, free / 2**20, cfg.workers, ahead, PREFETCH)
    return ahead


def _extract_images(cfg, bb, plan, out, writer, device, progress, crops: CropPlan | None = None,
                    job: Job = Job(), prefetch: int | None = None) -> Stage:
    N, R = len(plan.images), cfg.shard_rows
    todo, skipped = pending_shards(out, "images", N, R)
    todo = job.mine(todo)
    mine = sum(min(R, N - s * R) for s in todo)  # the rows this run encodes
    done_rows = N - mine
    if progress:
        progress("images", done_rows, N)
    if not todo:
        return Stage(0, skipped)
    check = None
    if cfg.decode != "exact" and job.rank == 0:  # before the long part: what the faster decode costs on these images
        check = check_decode(bb, plan.images, cfg.decode, device, cfg.exif_transpose)
        log.info("%s", check)
    batches = [list(range(b, min(min(N, (s + 1) * R), b + cfg.batch_size)))
               for s in todo for b in range(s * R, min(N, (s + 1) * R), cfg.batch_size)]
    rows_ds = ImageRows(plan.images, bb.preprocess, cfg.exif_transpose, crops.row_boxes(N) if crops is not None else None,
                        cfg.decode)
    loader = DataLoader(rows_ds, batch_sampler=batches, collate_fn=collate_rows,
                        num_workers=cfg.workers, pin_memory=device.startswith("cuda"),
                        persistent_workers=False, prefetch_factor=(prefetch or PREFETCH) if cfg.workers else None)
    gpu = GpuPreprocess(bb.preprocess, device, cfg.exif_transpose) if cfg.decode == "gpu" else None
    lay = Layout(**dict(open_store(out).attrs)["layout"])
    B = cfg.batch_size
    copies = HostCopies(device, {"global": (B, lay.embed_dim),
                                 **{f"patches/{l}": (B, lay.n_patches, lay.image_width) for l in lay.layers},
                                 **{f"prefix/{l}": (B, lay.n_prefix, lay.image_width) for l in lay.layers}})
    shard: dict[str, Any] | None = None
    landing: tuple[dict[str, Any], np.ndarray, Any] | None = None  # (shard, its rows, copies in flight)

    def land() -> None:  # the previous batch's features, now on the host, into their shard
        nonlocal landing
        if landing is not None:
            sh, at, started = landing
            with clock.part("model"):  # on a GPU: until its forward and copies are done; placing them is the loop's
                got = copies.wait(started)
            sh["global"][at] = got["global"]
            for l in lay.layers:
                sh["patches", l][at] = got[f"patches/{l}"]
                sh["prefix", l][at] = got[f"prefix/{l}"]
            landing = None

    clock = Clock()  # after the decode check: its forwards are not the stage's
    for rows, good, pixels, errors, (crop_pixels, counts), _ in clock.each(to_device(loader, device, gpu), "input"):
        s = rows[0] // R
        if shard is None or shard["s"] != s:
            if shard is not None:
                land()
                with clock.part("writers"):
                    writer.put("images", *finish_image_shard(shard))
            lo, hi = s * R, min(N, (s + 1) * R)
            regions = crops.shard_buffers(lo, hi - lo, lay.embed_dim) if crops is not None else None
            shard = new_image_shard(s, lo, hi - lo, lay, lay.layers, regions)
        for r, e in errors.items():
            shard["status"][r - shard["lo"]] = FAILED
            shard["error"][r - shard["lo"]] = e
        if pixels is not None:
            at = np.asarray(good) - shard["lo"]
            with clock.part("model"):
                enc = bb.encode_images(pixels.to(device, non_blocking=True), lay.layers)
                started = copies.start(image_features(enc, lay.layers))  # CUDA: queued behind the forward
                if crops is not None and crop_pixels is not None:  # (C, 3, H, W): every decoded row's crops
                    crops.record(shard["regions"], at, counts, _encode_crops(bb, crop_pixels, cfg.batch_size, device))
            land()  # batch k - 1 lands while the device runs batch k
            landing = (shard, at, started)
        done_rows += len(rows)
        if progress:
            progress("images", done_rows, N)
    land()
    with clock.part("writers"):
        if shard is not None:
            writer.put("images", *finish_image_shard(shard))
        writer.drain()  # the stage ends when its last shard is durable
    return Stage(len(todo), skipped, clock.stop(mine), check)
