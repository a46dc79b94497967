"""Is tflocal training ever input-bound? The cache reader's batch rate vs the training step's rate.

Both run in this process on the same cache, head and batch plan: first the reader alone produces N
training batches (images, captions and hard negatives gathered from the store through a fresh reader, so
shard decodes are included), then the training step alone consumes N pre-read batches (forward, loss,
backward, AdamW). Target: input rate >= 5x the step rate. Prints the ratio.

    .venv/bin/python benchmarks/train_input.py [--cache TRAIN.zarr] [--head tflocal] [--batch-size 64] [--steps 100]
        [--device cuda [--amp]]

On a GPU the step is timed on the device (fp32 as training runs it; --amp: bf16 autocast); the reader
always runs on the CPU, so this is where training can become input-bound.

Without --cache it makes a 1,000-scene shapes world and extracts it with the `tiny` backbone (cached).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import log

from compalign.cache.reader import CacheReader
from compalign.core.training import param_groups
from compalign.heads import create_head
from compalign.heads.data import Planner, gather_batch, load_pairs
from compalign.heads.losses import get_loss
from compalign.heads.train import TrainConfig, batch_scores


def default_cache(work: Path) -> Path:
    from compalign.extract.runner import ExtractConfig, extract
    from compalign.shapes import WorldConfig, write_world

    store = work / "train.zarr"
    if not (store / "zarr.json").exists():
        log("making a 1,000-scene world and extracting it with tiny (once)")
        world = write_world(WorldConfig(n_train=1000, n_test_id=10, n_test_ood=10), work / "world").path
        extract(ExtractConfig(model="tiny", data="pairs", root=str(world / "train"), out=str(store), workers=0))
    return store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--head", default="tflocal")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--n-hard", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100)  # > one pass over a 5,000-image store: every shard decoded once
    ap.add_argument("--work", type=Path, default=Path("/tmp/compalign-train-input"))
    ap.add_argument("--device", default="cpu", help="where the step runs: cpu | cuda")
    ap.add_argument("--amp", action="store_true", help="bf16 autocast step on CUDA (training's default is fp32)")
    args = ap.parse_args()
    cache = args.cache or default_cache(args.work)
    cfg = TrainConfig(batch_size=args.batch_size, n_hard=args.n_hard)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # what training uses
    dev = torch.device(args.device)
    use_amp = dev.type == "cuda" and args.amp
    head = create_head(args.head)
    steps = range(args.steps)

    def read_rates(resident_mb: int) -> tuple[float, float, list, int]:
        """(cold, warm) seconds to gather every batch through a fresh reader, the batches, the number of pairs."""
        reader = CacheReader(cache, cache_bytes=cfg.reader_cache_mb * 2**20, resident_bytes=resident_mb * 2**20)
        head.attach(reader)
        pairs = load_pairs(reader)
        plan = Planner(pairs, args.batch_size, args.n_hard, seed=0, shard_rows=reader.layout.shard_rows)
        t0 = time.perf_counter()
        batches = [gather_batch(reader, head, pairs, plan.plan(s).items, plan.plan(s).negs) for s in steps]
        cold = time.perf_counter() - t0  # every shard decoded (or every array loaded) for the first time
        t0 = time.perf_counter()
        for s in steps:
            gather_batch(reader, head, pairs, plan.plan(s).items, plan.plan(s).negs)
        return cold, time.perf_counter() - t0, batches, len(pairs)

    # reference: shards through the LRU alone; then what training uses (whole arrays while they fit)
    lru_cold, lru_warm, _, _ = read_rates(0)
    t_input, t_warm, batches, n_pairs = read_rates(cfg.reader_resident_mb)

    needs = frozenset().union(*(get_loss(n)[1] for n in cfg.losses))
    head.to(dev).train()
    opt = torch.optim.AdamW(param_groups(head, cfg.weight_decay), lr=cfg.lr)

    def step(b) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            sc = batch_scores(head, b, needs, dev)
            loss = sum(w * get_loss(n)[0](sc) for n, w in cfg.losses.items())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for b in batches[:3]:  # warm-up (CUDA: kernels, allocator)
        step(b)
    sync()
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    sync()
    t_step = time.perf_counter() - t0

    n = len(batches)
    log(f"cache {cache}: {n_pairs} pairs, head {args.head}, batch {args.batch_size} + {args.n_hard} hard negatives each, "
        f"{torch.get_num_threads()} torch threads, step on {dev}{' (bf16 autocast)' if use_amp else ''}")
    log(f"reader, shard LRU only ({cfg.reader_cache_mb} MB): {n / lru_cold:8.1f} batches/s cold, {n / lru_warm:8.1f} warm "
        f"({lru_cold / n * 1e3:.1f} / {lru_warm / n * 1e3:.1f} ms per batch)")
    log(f"reader, as training ({cfg.reader_resident_mb} MB resident): {n / t_input:8.1f} batches/s cold (the arrays' "
        f"one-time load included), {n / t_warm:8.1f} warm ({t_input / n * 1e3:.1f} / {t_warm / n * 1e3:.1f} ms per batch)")
    log(f"step:   {n / t_step:8.1f} batches/s ({t_step / n * 1e3:.1f} ms per step, forward + backward + AdamW)")
    print(f"train_input ratio (reader rate / step rate): {t_step / t_warm:.1f}x as training reads "
          f"({t_step / t_input:.1f}x in the first {n} batches, load included); shard LRU only: "
          f"{t_step / lru_warm:.1f}x warm, {t_step / lru_cold:.1f}x cold (target >= 5x)")


if __name__ == "__main__":
    main()
