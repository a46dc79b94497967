"""Extraction throughput vs a bare forward loop of the same backbone on pre-decoded tensors.

Both run in this process on the same images, model and batch size (random-init ViT-B-16 at 224
by default). The bare loop is what the model alone costs; extraction adds decoding, resizing,
writing float16 tokens and done-markers, which should hide behind the forward pass. Target: a
ratio >= 0.90. Also prints bytes on disk per image / caption against raw float16 bytes.

    .venv/bin/python benchmarks/extract_overhead.py [--n 256] [--batch-size 32] [--workers auto]
        [--decode exact|fast|gpu] [--writers 2] [--device cuda] [--precision bf16] [--image-size 224]
    .venv/bin/python benchmarks/extract_overhead.py --zero-backbone [--n 256] [--shard-rows 32]

Both run under the heap policy the CLI sets for every command (core/memory.py; `--heap default` for
glibc's own, under which the same forward runs at two speeds depending on what freed memory before it).

The images are COCO-size (640x480) JPEGs; `--image-size 224` writes them pre-resized instead (short side
224, as img2dataset stores them), so the checkpoint's resize has nothing left to do. After the timed runs
the stored global embeddings are compared with the bare loop's forward of the same pixels: each row must
be closest to its own image (a batch's features landing in another batch's rows would show here).

On a GPU the bare loop times the same forward on the device under the same autocast as extraction
(pixels already there, synchronised at the end), so the ratio shows what decoding and writing cost.
The captions (5 per image, as COCO's) get the same comparison: the text tower alone on pre-tokenised ids,
batched as the text stage batches them, against the text stage's rate, tokenising included.

`--zero-backbone` measures what the extraction can feed and write when the model costs nothing: the
data path alone (DataLoader workers decoding + preprocessing, no model, no writing) in images/s per
worker count and decode mode, how far `fast` (and `gpu`, on CUDA) move the pixels from `exact`, the
captions tokenised per second per worker count (lengths, then each shard's ids), the
shard writers in MB/s per writer count, and a whole `extract` call whose backbone is a stand-in
returning stored real outputs (so the writers get realistic float16 tokens).

`--sync-check` (CUDA) runs one extraction under torch.cuda.set_sync_debug_mode("warn") instead of the timed
runs and counts every call that made the host wait for the device (a blocking copy, `.item()`, `nonzero`...)
by the compalign line it came from. A site counted once per batch is one the loop waits on; loading the model
waits by design. HostCopies.wait's event wait is deliberate, and torch does not flag it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from common import coco_like_image, log
from PIL import Image

import compalign.extract.runner as runner
from compalign.cache import open_cache
from compalign.cache.store import open_store
from compalign.core.host import usable_cores
from compalign.core.memory import keep_freed_memory
from compalign.extract.backbones import ImageOut, TextOut, load_backbone
from compalign.extract.captions import content_lengths, in_chunks, measure
from compalign.extract.decode_check import check_decode
from compalign.extract.gpu_decode import GpuPreprocess
from compalign.extract.image_rows import ImageRows, collate_rows
from compalign.extract.runner import ExtractConfig, _autocast, extract
from compalign.extract.shards import ShardWriter
from compalign.extract.sources import ImageRef
from compalign.extract.transfer import to_device


def image_shape(short: int) -> tuple[int, int]:
    """(H, W) of the test JPEGs: COCO's typical 640x480, or landscape 4:3 with short side `short`."""
    return (480, 640) if not short else (short, round(short * 4 / 3))


def _save_image(job: tuple[str, int, tuple[int, int]]) -> None:
    path, seed, shape = job
    coco_like_image(seed, shape).save(path + ".part", "JPEG", quality=90)
    os.replace(path + ".part", path)  # a run killed mid-write leaves no truncated JPEG for the next to take


def make_data(root: Path, n: int, short: int = 0, captions: int = 5) -> Path:
    """`n` JPEGs (made once, by all cores: thousands of 640x480 ones take a core minutes) + pairs.jsonl with
    `captions` rows per image (COCO has 5)."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    missing = [(str(root / "img" / f"{i:05d}.jpg"), i, image_shape(short)) for i in range(n)
               if not (root / "img" / f"{i:05d}.jpg").exists()]
    if missing:
        log("writing", len(missing), "test JPEGs to", root / "img")
        with multiprocessing.Pool(usable_cores()) as pool:
            pool.map(_save_image, missing, chunksize=16)
    rows = [{"image": f"img/{i:05d}.jpg", "caption": caption(i, k)} for i in range(n) for k in range(captions)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return root


WORDS = "a photo of small red blue dog cat sitting on the table next to wooden chair in room with two people".split()


def caption(i: int, k: int) -> str:
    """Caption k of image i: 8 to 19 words, as COCO's run (so causal towers cut batches at different lengths)."""
    rng = np.random.default_rng([i, k])
    return " ".join(rng.choice(WORDS, 8 + (i * 5 + k) % 12)) + f" {i}"


class Predecoded(torch.utils.data.Dataset):
    """Image i of `root` through `preprocess` (exact decoding), for the bare loop's pixels."""

    def __init__(self, root: Path, n: int, preprocess):
        self.root, self.n, self.preprocess = root, n, preprocess

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.preprocess(Image.open(self.root / "img" / f"{i:05d}.jpg"))


def predecode(root: Path, n: int, preprocess, workers: int, batch_size: int) -> torch.Tensor:
    """(n, 3, H, W) pixels, decoded by `workers` processes (one process takes ~7 ms an image)."""
    loader = torch.utils.data.DataLoader(Predecoded(root, n, preprocess), batch_size=batch_size, num_workers=workers)
    return torch.cat(list(loader))


def bare_loop(bb, pixels: torch.Tensor, batch_size: int, precision: str) -> tuple[float, torch.Tensor]:
    """(seconds, (n, E) global embeddings) of the forward alone, batch by batch."""
    dev = pixels.device
    out = []
    t0 = time.perf_counter()
    with torch.no_grad(), _autocast(dev.type, precision):  # the autocast extraction runs under
        for b in range(0, len(pixels), batch_size):
            out.append(bb.encode_images(pixels[b:b + batch_size], [-1]).global_)  # kept on the device: no sync
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, torch.cat(out).float()


def bare_text_loop(bb, ids: torch.Tensor, lengths: np.ndarray, batch_size: int, precision: str, device: str) -> float:
    """Seconds of the text tower alone on pre-tokenised captions, batched as the text stage batches them: sorted
    by length and cut at each batch's longest for a causal tower, the full context otherwise."""
    order = np.argsort(lengths, kind="stable") if bb.causal_text else np.arange(len(lengths))
    ids, lengths = ids[order].to(device), lengths[order]
    t0 = time.perf_counter()
    with torch.no_grad(), _autocast(device, precision):
        for b in range(0, len(ids), batch_size):
            L = int(lengths[b:b + batch_size].max()) if bb.causal_text else ids.shape[1]
            bb.encode_texts(ids[b:b + batch_size, :L], [-1])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def same_rows(store: Path, direct: torch.Tensor) -> str:
    """Stored global embeddings against the bare loop's (n, E) `direct` ones: the cosine of each row with its
    own image's forward, and how many rows are closer to another image's (pinned buffers reused too early,
    rows written to the wrong shard). Random-init globals of different images are close too, hence the count."""
    r = open_cache(store)
    image = torch.tensor([int(Path(o).stem) for o in r.column("images/origin").tolist()])  # row -> image number
    stored = torch.from_numpy(r.read("images", "global", np.arange(len(image)))).to(direct.device)
    a = torch.nn.functional.normalize(stored, dim=-1)
    b = torch.nn.functional.normalize(direct, dim=-1)
    own = (a * b[image.to(direct.device)]).sum(-1)
    closest = torch.cat([(a[i:i + 1024] @ b.T).argmax(-1) for i in range(0, len(a), 1024)]).cpu()
    wrong = int((closest != image).sum())
    other = (a * b[(image.to(direct.device) + 1) % len(b)]).sum(-1)
    return (f"stored global vs the bare loop's forward of the same pixels: cosine min {float(own.min()):.6f}, "
            f"mean {float(own.mean()):.6f} (the next image's: mean {float(other.mean()):.6f}); "
            f"rows closest to another image's forward: {wrong} of {len(image)}")


class ZeroCost:
    """A backbone whose forwards cost nothing: its preprocess and tokenizer are the real backbone's;
    `encode_images` and `encode_texts` hand back stored outputs of real forwards, cycled, correctly shaped."""

    def __init__(self, bb, pool: ImageOut, texts: TextOut):
        self.bb, self.pool, self.texts, self.at = bb, pool, texts, 0

    def __getattr__(self, name: str):
        return getattr(self.bb, name)

    def encode_images(self, pixels: torch.Tensor, layers: list[int]) -> ImageOut:
        idx = (self.at + torch.arange(len(pixels))) % len(self.pool.global_)
        self.at += len(pixels)
        p = self.pool
        return ImageOut(p.global_[idx], {l: p.patches[-1][idx] for l in layers}, {l: p.prefix[-1][idx] for l in layers})

    def encode_texts(self, ids: torch.Tensor, layers: list[int]) -> TextOut:
        idx = torch.arange(len(ids)) % len(self.texts.global_)
        L = ids.shape[1]
        return TextOut(self.texts.global_[idx], {l: self.texts.tokens[-1][idx, :L] for l in layers})


def _refs(root: Path, n: int) -> list[ImageRef]:
    return [ImageRef(key=str(i), origin=f"{i:05d}.jpg", path=str(root / "img" / f"{i:05d}.jpg")) for i in range(n)]


def data_path(root: Path, n: int, bb, decode: str, workers: int, batch_size: int, device: str) -> float:
    """Images/s of the loader alone (decode + preprocess in `workers` processes; pixels on the device)."""
    ds = ImageRows(_refs(root, n), bb.preprocess, decode=decode)
    batches = [list(range(b, min(n, b + batch_size))) for b in range(0, n, batch_size)]
    loader = torch.utils.data.DataLoader(ds, batch_sampler=batches, collate_fn=collate_rows, num_workers=workers,
                                         pin_memory=device.startswith("cuda"), prefetch_factor=4 if workers else None)
    gpu = GpuPreprocess(bb.preprocess, device) if decode == "gpu" else None
    t0 = time.perf_counter()
    for _batch in to_device(loader, device, gpu):
        pass
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def deviation(refs: list[ImageRef], bb, decode: str, device: str, precision: str) -> str:
    """How far `decode` moves the pixels and the backbone's features from exact: the check every run with
    `--decode fast|gpu` prints (extract/decode_check.py), here on more images."""
    with _autocast(device, precision):
        return str(check_decode(bb, refs, decode, device, n=len(refs)))


def writers_mb_s(store: Path, writers: int) -> float:
    """Raw MB/s of rewriting every image shard of `store` with `writers` threads (compression, fsync, checksums)."""
    root = open_store(store, "r+", digests=True)  # as extraction's writers open it
    lay = dict(root.attrs)["layout"]
    R, N = lay["shard_rows"], lay["n_images"]
    names = ["global", "status", "error", "patches", "prefix"]
    shards = [(s, s * R, {k: root[f"images/{k}"][s * R:min(N, (s + 1) * R)] for k in names})
              for s in range((N + R - 1) // R)]
    for s, _, _ in shards:
        (store / ".done" / "images" / f"{s:06d}").unlink()
    w = ShardWriter(root, store, writers)
    t0 = time.perf_counter()
    for s, lo, arrays in shards:
        w.put("images", s, lo, arrays)
    w.close()
    return w.bytes / 1e6 / (time.perf_counter() - t0)


def text_path(bb, texts: list[str], workers: int, shard_rows: int) -> float:
    """Captions/s of tokenising alone, as the text stage does it (captions.py): every caption's length measured
    TOKENIZE_ROWS at a time, then each shard's ids, in `workers` processes."""
    t0 = time.perf_counter()
    runner._token_lengths(bb, texts, workers)
    shards = [range(lo, min(len(texts), lo + shard_rows)) for lo in range(0, len(texts), shard_rows)]
    for _ids in in_chunks(bb.tokenizer, texts, shards, workers):
        pass
    return len(texts) / (time.perf_counter() - t0)


def text_path_two_passes(bb, texts: list[str], shard_rows: int) -> float:
    """The reference: what the text stage did before captions.py, in this process (the tokeniser ran twice per
    caption, at the context and at one more, to measure lengths and truncation, then once more per shard)."""
    C = bb.context_length
    t0 = time.perf_counter()
    for lo in range(0, len(texts), runner.TOKENIZE_ROWS):
        chunk = texts[lo:lo + runner.TOKENIZE_ROWS]
        _lengths = content_lengths(bb.tokenizer(chunk))
        _truncated = content_lengths(bb.tokenizer(chunk, context_length=C + 1)) > C
    for lo in range(0, len(texts), shard_rows):
        bb.token_ids(texts[lo:lo + shard_rows])
    return len(texts) / (time.perf_counter() - t0)


def zero_backbone(args, root: Path) -> None:
    cores = usable_cores()
    bb = load_backbone(args.model, "none", device=args.device)
    decodes = ["exact", "fast", *(["gpu"] if args.device.startswith("cuda") else [])]
    counts = sorted({1, 2, *range(4, cores + 1, 4), cores})
    h, w = image_shape(args.image_size)
    print(f"data path: {args.n} coco_like JPEGs ({w}x{h}) -> {args.model} preprocess, batch {args.batch_size}, "
          f"{cores} cores, device {args.device}; no model, no writing")
    print("| decode | workers | images/s |")
    print("|---|---:|---:|")
    data_path(root, min(args.n, 2 * args.batch_size), bb, "exact", 1, args.batch_size, args.device)  # warm-up
    for decode in decodes:
        for w in counts:
            best = max(data_path(root, args.n, bb, decode, w, args.batch_size, args.device) for _ in range(2))  # best of 2
            print(f"| {decode} | {w} | {best:.0f} |")
    for decode in decodes[1:]:
        print(deviation(_refs(root, min(args.n, 64)), bb, decode, args.device, args.precision))

    texts = [caption(i, k) for i in range(args.n) for k in range(args.captions)]
    print(f"text path: {len(texts):,} captions ({args.captions} per image) -> {args.model} tokeniser, shards of "
          f"{args.shard_rows}; no model, no writing")
    before = max(text_path_two_passes(bb, texts, args.shard_rows) for _ in range(2))
    print("| workers | captions/s |")
    print("|---:|---:|")
    for w in sorted({0, *counts}):
        print(f"| {w} | {max(text_path(bb, texts, w, args.shard_rows) for _ in range(2)):,.0f} |")  # best of 2
    print(f"tokenising before captions.py (this process, lengths measured in two passes): {before:,.0f} captions/s")

    log("encoding a pool of", args.pool, "images for the zero-cost stand-in")
    px = torch.stack([bb.preprocess(Image.open(root / "img" / f"{i:05d}.jpg")) for i in range(args.pool)]).to(args.device)
    with torch.no_grad():
        pool = bb.encode_images(px, [-1])
        ids = bb.token_ids([caption(i, 0) for i in range(args.pool)]).to(args.device)
        texts = bb.encode_texts(ids, [-1])
    zero = ZeroCost(bb, pool, texts)
    runner.load_backbone = lambda *a, **k: zero  # the runner's own loop, minus the model
    store = args.work / "zero.zarr"
    shutil.rmtree(store, ignore_errors=True)
    t0 = time.perf_counter()
    summary = extract(ExtractConfig(model=args.model, pretrained="none", data="pairs", root=str(root), out=str(store),
                                    batch_size=args.batch_size, workers=args.workers, writers=args.writers,
                                    device=args.device, decode=args.decode, shard_rows=args.shard_rows,
                                    token_codec=args.token_codec))
    t_call = time.perf_counter() - t0
    stage = summary.image_time
    cfg = ExtractConfig(model="x", data="pairs", root=".", out=".", workers=args.workers)
    print(f"whole extraction, zero-cost backbone (workers {cfg.workers}, writers {args.writers}, decode {args.decode}, "
          f"token codec {args.token_codec}, shard rows {args.shard_rows}): {args.n / stage.seconds:.0f} images/s "
          "(image stage, worker start and the last shard's write included)")
    print(f"where the time went, zero-cost backbone: {stage}")
    print(f"where the time went, zero-cost backbone's captions ({args.captions} per image): {summary.text_time}")
    print(f"whole extract call, zero-cost backbone: {t_call:.1f} s (planning, lengths, store, both stages)")
    n_shards = (args.n + args.shard_rows - 1) // args.shard_rows
    print(f"writers: {n_shards} image shards of {args.shard_rows} rows ({args.model} float16 tokens, "
          f"codec {args.token_codec}), raw MB / wall time")
    print("| writers | MB/s |")
    print("|---:|---:|")
    for w in (1, 2, 4):  # best of 2: a shared disk's hiccups only ever slow a run down
        print(f"| {w} | {max(writers_mb_s(store, w) for _ in range(2)):.0f} |")


def run_config(args, root: Path, store: Path) -> ExtractConfig:
    """The extraction the timed runs and the sync check make: this script's flags, the random-init backbone."""
    return ExtractConfig(model=args.model, pretrained="none", data="pairs", root=str(root), out=str(store),
                         batch_size=args.batch_size, workers=args.workers, device=args.device, precision=args.precision,
                         decode=args.decode, writers=args.writers, shard_rows=args.shard_rows,
                         token_codec=args.token_codec)


def sync_check(args, root: Path) -> None:
    if not torch.cuda.is_available():
        print("sync check: skipped, it needs CUDA (torch.cuda.set_sync_debug_mode)")
        return
    sites: Counter[str] = Counter()

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in Path(f.filename).name]  # innermost last
        ours = next((f for f in reversed(frames) if "/compalign/" in f.filename), None)
        op = frames[-1]
        where = f"{Path(ours.filename).name}:{ours.lineno} ({ours.name})" if ours else "outside compalign"
        via = f" via {Path(op.filename).parent.name}/{Path(op.filename).name}:{op.lineno}" if op is not ours else ""
        sites[where + via] += 1

    store = args.work / "sync.zarr"
    shutil.rmtree(store, ignore_errors=True)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            extract(run_config(args, root, store))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    batches = -(-args.n // args.batch_size), -(-args.n * args.captions // args.batch_size)
    print(f"sync check: {sum(sites.values())} calls made the host wait for the device, at {len(sites)} sites "
          f"({batches[0]} image batches, {batches[1]} caption batches; decode {args.decode})")
    for site, count in sites.most_common(12):
        print(f"  {count:6d}  {site}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", default="auto", help="auto | a number, as extract's")
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--captions", type=int, default=5, help="captions per image (COCO has 5)")
    ap.add_argument("--decode", default="exact", choices=["exact", "fast", "gpu"])
    ap.add_argument("--token-codec", default="none")
    ap.add_argument("--shard-rows", type=int, default=256)
    ap.add_argument("--zero-backbone", action="store_true", help="the data path and the writers with a model that costs nothing")
    ap.add_argument("--pool", type=int, default=32, help="--zero-backbone: real forwards the stand-in cycles through")
    ap.add_argument("--work", type=Path, default=Path("/tmp/compalign-extract-overhead"))
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="autocast dtype, as extract's")
    ap.add_argument("--heap", default="keep", choices=["keep", "default"], help="the CLI's heap policy or glibc's own")
    ap.add_argument("--image-size", type=int, default=0,
                    help="short side of the test JPEGs, pre-resized as img2dataset writes them (0: COCO's 640x480)")
    ap.add_argument("--sync-check", action="store_true",
                    help="CUDA: one extraction, counting the calls that make the host wait for the device")
    args = ap.parse_args()
    if args.heap == "keep":
        keep_freed_memory()
    args.workers = args.workers if args.workers == "auto" else int(args.workers)
    root = make_data(args.work / (f"data-{args.image_size}" if args.image_size else "data"), args.n, args.image_size,
                     args.captions)
    if args.zero_backbone:
        return zero_backbone(args, root)
    if args.sync_check:
        return sync_check(args, root)
    bb = load_backbone(args.model, "none", device=args.device)
    workers = ExtractConfig(model="x", data="pairs", root=".", out=".", workers=args.workers).workers
    log("pre-decoding", args.n, "images for the bare loop")
    pixels = predecode(root, args.n, bb.preprocess, workers, args.batch_size).to(args.device)
    bare_loop(bb, pixels[: args.batch_size], args.batch_size, args.precision)  # warm-up
    texts = [caption(i, k) for i in range(args.n) for k in range(args.captions)]
    ids, (lengths, _) = bb.token_ids(texts), measure(bb.tokenizer, bb.context_length, texts)
    bare_text_loop(bb, ids[: args.batch_size], lengths[: args.batch_size], args.batch_size, args.precision, args.device)

    runs = []
    for rep in range(2):  # bare, extract, bare, extract: drift on a shared machine hits both
        t_bare, direct = bare_loop(bb, pixels, args.batch_size, args.precision)
        t_text = bare_text_loop(bb, ids, lengths, args.batch_size, args.precision, args.device)
        store = args.work / "store.zarr"
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        summary = extract(run_config(args, root, store))
        t_total = time.perf_counter() - t0
        stage = summary.image_time  # the image stage as the run timed it: workers' start to the last shard written
        t_img = stage.seconds
        runs.append((t_bare, t_img, t_total, stage, summary.text_time, t_text))
        log(f"rep {rep}: bare {args.n / t_bare:.1f} img/s, extraction image stage {args.n / t_img:.1f} img/s, "
            f"whole extract call {t_total:.1f} s")
    t_bare = float(np.mean([r[0] for r in runs]))
    t_img = float(np.mean([r[1] for r in runs]))
    h, w = image_shape(args.image_size)
    print(f"backbone {args.model} (random init), {args.n} images {w}x{h}, batch {args.batch_size}, workers {workers}, "
          f"writers {args.writers}, decode {args.decode}, token codec {args.token_codec}, "
          f"torch threads {torch.get_num_threads()}, device {args.device}, precision {args.precision}, heap {args.heap}")
    print(f"bare forward loop: {args.n / t_bare:.2f} img/s")
    print(f"extraction:        {args.n / t_img:.2f} img/s")
    print(f"ratio extraction / bare: {t_bare / t_img:.3f} (target >= 0.90)")
    print(f"where the time went, last run: {runs[-1][3]}")
    print(f"where the time went, last run's captions: {runs[-1][4]}")
    bare_text = len(texts) / float(np.mean([r[5] for r in runs]))
    stage_text = float(np.mean([r[4].rows / r[4].seconds for r in runs]))
    print(f"captions ({args.captions} per image): bare text forward loop {bare_text:,.0f} captions/s, text stage "
          f"{stage_text:,.0f} captions/s (tokenising included), ratio {stage_text / bare_text:.3f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process (model, pixels, both loops): {peak:,.0f} MiB")
    print(same_rows(store, direct))

    r = open_cache(store)
    lay = r.layout

    def size(prefix: str) -> int:
        return sum(f.stat().st_size for f in (store / prefix).rglob("*") if f.is_file())

    img_raw = lay.n_patches * lay.image_width * 2 + lay.n_prefix * lay.image_width * 2 + lay.embed_dim * 4
    txt_raw = lay.text_len * lay.text_width * 2 + lay.embed_dim * 4
    print(f"bytes on disk per image:   {size('images') / lay.n_images:,.0f} (raw float16 tokens + float32 global: {img_raw:,})")
    print(f"bytes on disk per caption: {size('texts') / lay.n_texts:,.0f} (raw at the stored length {lay.text_len}: {txt_raw:,}; "
          f"at the full context: {bb.context_length * lay.text_width * 2 + lay.embed_dim * 4:,})")


if __name__ == "__main__":
    main()
