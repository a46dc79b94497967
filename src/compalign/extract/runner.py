"""The extraction runner: plan the source, preallocate the store, encode pending shards, resume.

Texts first (cheap), then images. Images are decoded and preprocessed in DataLoader workers; the
model runs in this process; a single writer thread writes whole shards so the model never waits
on disk. Batches never cross a shard, so a resumed shard is computed exactly as before.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from ..cache.store import (
    FAILED,
    OK,
    CacheError,
    Layout,
    create_store,
    damaged_shards,
    done_shards,
    n_shards,
    open_store,
    write_shard,
)
from ..core import InputError, tree_bytes
from ..core.decode import DecodeError, decode_image
from ..core.device import resolve_device
from .backbones import Backbone, load_backbone
from .sources import ImageRef, Plan, plan_source, text_key
from .target import NOT_WRITABLE, check_target, is_store, remove_store, writer_lock

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (stage, rows done, rows total)


@dataclass
class ExtractConfig:
    model: str  # preset, open_clip name, `local-dir:` folder
    data: str  # data source kind: pairs | sugarcrepe | bivlc
    root: str  # where the source lives
    out: str  # the store to create or resume
    pretrained: str | None = None  # open_clip pretrained tag (presets bring their own)
    batch_size: int = 64  # images / captions per forward pass
    device: Literal["auto", "cpu", "cuda"] = "auto"
    workers: int = 1  # image decoding processes (0 = in this process)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype for the forward pass
    layers: list[int] = field(default_factory=lambda: [-1])  # token layers kept; -1 = final
    shard_rows: int = 256  # rows per shard (the unit of writing and of resume)
    chunk_rows: int = 16  # rows per inner chunk of token arrays (the unit of a random read)
    overwrite: bool = False  # start again instead of resuming
    seed: int = 0  # for random-init backbones
    exif_transpose: bool = False  # rotate by the EXIF orientation tag (off: open_clip's own pipeline ignores it too)
    split: str | None = None  # the split to read, for sources that have splits (karpathy: test by default)

    def __post_init__(self) -> None:
        if -1 not in self.layers:
            self.layers = [-1, *self.layers]
        self.layers = sorted(set(self.layers), key=lambda x: (x != -1, -x))
        for flag, value, least in (("--batch-size", self.batch_size, 1), ("--shard-rows", self.shard_rows, 1),
                                   ("--workers", self.workers, 0), ("chunk_rows", self.chunk_rows, 1)):
            if value < least:
                raise InputError(f"{flag} must be at least {least} (got {value})")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise InputError(f"--precision is fp32, bf16 or fp16 (got {self.precision!r})")


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

    @property
    def images_ok(self) -> int:
        return self.images - len(self.image_failures)


def _autocast(device: str, precision: str):
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and device == "cpu":
        raise InputError("fp16 autocast is not supported on CPU; use --precision bf16 or fp32")
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


class _ImageRows(Dataset):
    """Row -> (row, pixels or None, error or None). Bad data becomes an error string, never an exception."""

    def __init__(self, refs: list[ImageRef], preprocess: Any, exif_transpose: bool = False):
        self.refs, self.preprocess, self.exif_transpose = refs, preprocess, exif_transpose

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str | None]:
        ref = self.refs[row]
        if ref.error:
            return row, None, ref.error
        try:
            data = ref.data if ref.data is not None else Path(ref.path).read_bytes()
            return row, self.preprocess(decode_image(data, self.exif_transpose)), None
        except DecodeError as e:
            return row, None, f"{ref.origin}: {e}"
        except Exception as e:  # unreadable file, transform failure: recorded, the run goes on
            return row, None, f"{ref.origin}: {type(e).__name__}: {e}"


def _collate(batch: list[tuple[int, torch.Tensor | None, str | None]]):
    rows = [r for r, _, _ in batch]
    good = [(r, x) for r, x, _ in batch if x is not None]
    errors = {r: e for r, _, e in batch if e is not None}
    pixels = torch.stack([x for _, x in good]) if good else None
    return rows, [r for r, _ in good], pixels, errors


class _Writer:
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


def _shape_probe(bb: Backbone, layers: list[int], device: str) -> tuple[int, int, int]:
    size = bb.meta["image_size"]
    out = bb.encode_images(torch.zeros(1, 3, *size, device=device), layers[:1])
    p = out.patches[layers[0]]
    return p.shape[1], out.prefix[layers[0]].shape[1], p.shape[2]


def _fits(layers: list[int], depth: int) -> list[int]:
    return [l for l in layers if -depth <= l < depth]


def _tower_layers(cfg: ExtractConfig, bb: Backbone) -> tuple[list[int], list[int]]:
    """Each tower keeps the requested layers it has (a 12-block image tower, a 3-block text tower)."""
    img, txt = _fits(cfg.layers, bb.image_depth), _fits(cfg.layers, bb.text_depth)
    missing = [l for l in cfg.layers if l not in img and l not in txt]
    if missing:
        raise InputError(f"--layers {missing} exceed both towers (image {bb.image_depth} blocks, text {bb.text_depth})")
    for l in cfg.layers:
        if l not in img or l not in txt:
            log.warning("layer %d is kept for the %s tower only", l, "image" if l in img else "text")
    return img, txt


def _settings(cfg: ExtractConfig, text_len: int) -> dict[str, Any]:
    # Everything that changes stored values; a resume must match it exactly.
    out = {"layers": cfg.layers, "precision": cfg.precision, "batch_size": cfg.batch_size,
           "shard_rows": cfg.shard_rows, "chunk_rows": cfg.chunk_rows, "text_len": text_len}
    if cfg.exif_transpose:  # only when on, so stores made before the option existed still resume
        out["exif_transpose"] = True
    return out


def _diff(have: Any, want: Any, at: str = "") -> str:
    """The first field where two attr dicts differ, as `field: stored vs now`."""
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want)):
            if json.dumps(have.get(k)) != json.dumps(want.get(k)):
                return _diff(have.get(k), want.get(k), f"{at}{k}.")
    return f"{at.rstrip('.')} is {have!r} in the store, {want!r} now"


def _drop_damaged(out: Path) -> list[str]:
    """Verify every done shard against its marker's checksums; a damaged one loses its marker and is redone."""
    notes = []
    for (kind, s), problems in damaged_shards(out).items():
        (out / ".done" / kind / f"{s:06d}").unlink()
        notes.append(f"{kind} shard {s} was damaged ({'; '.join(problems)}): rewritten")
        log.warning("%s", notes[-1])
    return notes


def _open_or_create(cfg: ExtractConfig, bb: Backbone, plan: Plan, order: np.ndarray,
                    text_len: int, device: str) -> tuple[Any, list[str]]:
    out = Path(cfg.out)
    attrs = {
        "compalign_version": __version__,
        "backbone": bb.meta,
        "extraction": _settings(cfg, text_len),
        "source": {"kind": plan.kind, "root": plan.root, "fingerprint": plan.fingerprint,
                   "problems": plan.problems, "notes": plan.notes, "info": plan.info,
                   "n_items": len(next(iter(plan.items.values()), []))},
    }
    notes: list[str] = []
    if is_store(out) and not cfg.overwrite:
        root = open_store(out, "r+")
        have = dict(root.attrs)
        same = lambda k: json.loads(json.dumps(have.get(k))) == json.loads(json.dumps(attrs[k]))  # noqa: E731
        differs = [k for k in ("backbone", "extraction") if not same(k)]
        if have["source"]["fingerprint"] != plan.fingerprint:
            differs.append("source")
        if differs and not (done_shards(out, "images") or done_shards(out, "texts")):
            # Nothing was extracted into it yet (a start that failed): replacing it loses nothing.
            notes.append(remove_store(out) + ": it held no finished shard and was made with other settings")
        elif differs:
            k = differs[0]
            what = (f"another version of the data (source fingerprint {have['source']['fingerprint']} vs {plan.fingerprint})"
                    if k == "source" else f"a different {k}: " + _diff(have.get(k), attrs[k]))
            raise CacheError(f"{out} holds {what}; pass --overwrite to start again, or --out a new store")
        else:
            # A run killed mid-write leaves zarr's temporary '*.partial' chunk files behind; the chunk they
            # were meant to become is rewritten by this run, so they are garbage (one writer per store).
            for stale in out.rglob("*.partial"):
                stale.unlink()
            notes += _drop_damaged(out)
            return root, notes
    elif is_store(out):
        notes.append(remove_store(out))
    n_patches, n_prefix, width = _shape_probe(bb, cfg.layers, device)
    img_layers, txt_layers = _tower_layers(cfg, bb)
    lay = Layout(n_images=len(plan.images), n_texts=len(plan.texts), embed_dim=bb.meta["embed_dim"],
                 n_patches=n_patches, n_prefix=n_prefix, image_width=width, text_len=text_len,
                 text_width=bb.meta["text_width"], layers=img_layers, shard_rows=cfg.shard_rows,
                 chunk_rows=cfg.chunk_rows, text_layers=txt_layers)
    proj = {{"image_proj": "image", "text_proj": "text", "text_proj_bias": "text_bias"}[k]: v.numpy()
            for k, v in bb.projections().items()}
    attrs["projections"] = {"image": "image" in proj, "text": "text" in proj,
                            "note": "towers pooled by an attention head (MAP) have no linear token map"}
    attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # Build in a side folder and rename: a crash during creation leaves no half-made store behind.
    tmp = out.with_name(out.name + ".creating")
    if tmp.exists():
        shutil.rmtree(tmp)
    texts = [plan.texts[i] for i in order]
    create_store(tmp, lay, attrs, plan.items, [r.key for r in plan.images], [r.origin for r in plan.images],
                 [text_key(t) for t in texts], texts, proj)
    tmp.rename(out)  # an empty folder at `out` is replaced by the rename
    return open_store(out, "r+"), notes


def extract(cfg: ExtractConfig, progress: Progress | None = None) -> ExtractSummary:
    out = Path(cfg.out)
    check_target(out, Path(cfg.root), cfg.overwrite)  # before loading anything: nothing is touched if refused
    with writer_lock(out):
        return _extract(cfg, out, progress)


def _extract(cfg: ExtractConfig, out: Path, progress: Progress | None) -> ExtractSummary:
    t0 = time.perf_counter()
    plan = plan_source(cfg.data, cfg.root, cfg.split)
    for p in plan.problems:
        log.warning("%s", p)
    device = str(resolve_device(cfg.device))
    _autocast(device, cfg.precision)  # refuse an impossible precision before a store is made
    bb = load_backbone(cfg.model, cfg.pretrained, device=device, seed=cfg.seed)
    tok = bb.tokenize(plan.texts) if plan.texts else None
    lengths = tok.lengths.numpy() if tok is not None else np.zeros(0, dtype=np.int64)
    # Causal towers: sort captions by length so each batch is cut at its own longest caption.
    order = np.argsort(lengths, kind="stable") if bb.causal_text else np.arange(len(plan.texts))
    text_len = int(lengths.max(initial=1)) if bb.causal_text else bb.context_length
    try:
        root, notes = _open_or_create(cfg, bb, plan, order, text_len, device)
    except OSError as e:
        if e.errno not in NOT_WRITABLE:
            raise
        raise CacheError(f"cannot write {e.filename} ({e.strerror}). Pass an --out you can write.") from None
    writer = _Writer(root, out)
    written = skipped = 0
    try:
        with _autocast(device, cfg.precision):
            w, s = _extract_texts(cfg, bb, plan, tok, order, text_len, out, writer, device, progress)
            written, skipped = written + w, skipped + s
            w, s = _extract_images(cfg, bb, plan, out, writer, device, progress)
            written, skipped = written + w, skipped + s
    finally:
        writer.close()
    from ..cache.reader import CacheReader  # local: the reader is only needed for the summary

    reader = CacheReader(out)
    return ExtractSummary(
        out=str(out), images=len(plan.images), texts=len(plan.texts),
        items=len(next(iter(plan.items.values()), [])),
        image_failures=[(o, e) for _, o, e in reader.failures("images")],
        text_failures=[(o, e) for _, o, e in reader.failures("texts")],
        problems=plan.problems, shards_written=written, shards_skipped=skipped,
        seconds=time.perf_counter() - t0, bytes_on_disk=tree_bytes(out),
        replaced=next((n for n in notes if n.startswith("replaced")), None),
        repaired=[n for n in notes if not n.startswith("replaced")],
    )


def _pending(out: Path, kind: str, n_rows: int, shard_rows: int) -> tuple[list[int], int]:
    done = done_shards(out, kind)  # type: ignore[arg-type]
    todo = [s for s in range(n_shards(n_rows, shard_rows)) if s not in done]
    return todo, n_shards(n_rows, shard_rows) - len(todo)


def _extract_texts(cfg, bb, plan, tok, order, text_len, out, writer, device, progress) -> tuple[int, int]:
    M, R = len(plan.texts), cfg.shard_rows
    layers = Layout(**dict(open_store(out).attrs)["layout"]).layers_text
    todo, skipped = _pending(out, "texts", M, R)
    done_rows = M - sum(min(R, M - s * R) for s in todo)
    if progress:
        progress("texts", done_rows, M)
    for s in todo:
        lo, hi = s * R, min(M, (s + 1) * R)
        src = order[lo:hi]
        lengths = tok.lengths[src].numpy()
        n = hi - lo
        buf: dict[str, np.ndarray] = {
            "global": np.zeros((n, bb.meta["embed_dim"]), np.float32),
            "status": np.full(n, OK, np.int8),
            "error": np.full(n, "", dtype=object),
            "lengths": lengths.astype(np.int16),
            "truncated": tok.truncated[src].numpy(),
        }
        toks = {l: np.zeros((n, text_len, bb.meta["text_width"]), np.float16) for l in layers}
        empty = np.array([not plan.texts[i].strip() for i in src], dtype=bool)
        buf["status"][empty] = FAILED
        buf["error"][empty] = "empty caption"
        for b in range(0, n, cfg.batch_size):
            idx = np.arange(b, min(n, b + cfg.batch_size))
            idx = idx[~empty[idx]]
            if not len(idx):
                continue
            L = int(lengths[idx].max()) if bb.causal_text else bb.context_length
            ids = tok.ids[src[idx], :L].to(device)  # (B, L): positions after EOT cannot change a causal tower
            enc = bb.encode_texts(ids, layers)
            buf["global"][idx] = enc.global_.float().cpu().numpy()
            keep = np.arange(L)[None, :, None] < lengths[idx][:, None, None]  # (B, L, 1): zero past each EOT
            for l in layers:
                toks[l][idx, :L] = np.where(keep, enc.tokens[l][:, :L].float().cpu().numpy(), 0).astype(np.float16)
        for l in layers:
            buf["tokens" if l == -1 else f"layers/{l}/tokens"] = toks[l]
        buf["error"] = buf["error"].astype(str)
        writer.put("texts", s, lo, buf)
        done_rows += n
        if progress:
            progress("texts", done_rows, M)
    return len(todo), skipped


def _extract_images(cfg, bb, plan, out, writer, device, progress) -> tuple[int, int]:
    N, R = len(plan.images), cfg.shard_rows
    todo, skipped = _pending(out, "images", N, R)
    done_rows = N - sum(min(R, N - s * R) for s in todo)
    if progress:
        progress("images", done_rows, N)
    if not todo:
        return 0, skipped
    batches = [list(range(b, min(min(N, (s + 1) * R), b + cfg.batch_size)))
               for s in todo for b in range(s * R, min(N, (s + 1) * R), cfg.batch_size)]
    loader = DataLoader(_ImageRows(plan.images, bb.preprocess, cfg.exif_transpose), batch_sampler=batches, collate_fn=_collate,
                        num_workers=cfg.workers, pin_memory=device.startswith("cuda"),
                        persistent_workers=False, prefetch_factor=4 if cfg.workers else None)
    lay = Layout(**dict(open_store(out).attrs)["layout"])
    shard: dict[str, Any] | None = None
    for rows, good, pixels, errors in loader:
        s = rows[0] // R
        if shard is None or shard["s"] != s:
            if shard is not None:
                writer.put("images", *_finish(shard))
            lo, hi = s * R, min(N, (s + 1) * R)
            shard = _new_image_shard(s, lo, hi - lo, lay, lay.layers)
        for r, e in errors.items():
            shard["status"][r - shard["lo"]] = FAILED
            shard["error"][r - shard["lo"]] = e
        if pixels is not None:
            enc = bb.encode_images(pixels.to(device, non_blocking=True), lay.layers)
            at = np.asarray(good) - shard["lo"]
            shard["global"][at] = enc.global_.float().cpu().numpy()
            for l in lay.layers:
                shard["patches", l][at] = enc.patches[l].float().cpu().numpy()
                shard["prefix", l][at] = enc.prefix[l].float().cpu().numpy()
        done_rows += len(rows)
        if progress:
            progress("images", done_rows, N)
    if shard is not None:
        writer.put("images", *_finish(shard))
    return len(todo), skipped


def _new_image_shard(s: int, lo: int, n: int, lay: Layout, layers: list[int]) -> dict[Any, Any]:
    sh: dict[Any, Any] = {"s": s, "lo": lo, "global": np.zeros((n, lay.embed_dim), np.float32),
                          "status": np.full(n, OK, np.int8), "error": np.full(n, "", dtype=object)}
    for l in layers:
        sh["patches", l] = np.zeros((n, lay.n_patches, lay.image_width), np.float16)
        sh["prefix", l] = np.zeros((n, lay.n_prefix, lay.image_width), np.float16)
    return sh


def _finish(sh: dict[Any, Any]) -> tuple[int, int, dict[str, np.ndarray]]:
    arrays = {"global": sh["global"], "status": sh["status"], "error": sh["error"].astype(str)}
    for key, val in sh.items():
        if isinstance(key, tuple):
            name, l = key
            arrays[name if l == -1 else f"layers/{l}/{name}"] = val
    return sh["s"], sh["lo"], arrays

