"""Train a head from a cache alone: in-batch + hard negatives, a loss mix, AdamW + cosine, early stopping.

    RUN_DIR/head.safetensors + head.json   the best head by validation accuracy (what `score --checkpoint` loads)
    RUN_DIR/last.safetensors + last.json   the resume state: head, optimizer, step, early-stopping state
    RUN_DIR/log.jsonl                      one row per evaluation

Validation holds out a seeded fraction of the *images* (no image on both sides) and measures, per
negative kind, how often s(I, caption) > s(I, negative) over every negative the data has: the number
the benchmarks ask for, on the training distribution. Early stopping keeps the best of those.

Determinism: the batch plan is a function of (seed, step) (`data.Planner`), the head's init a function of
its config, and on CPU the kernels are deterministic, so the same cache + configs give the same weights
and a resumed run equals an uninterrupted one. On CUDA, `amp` runs the step under bf16 autocast (off by default:
the heads' matrices are small, and on an H100 bf16 autocast made tflocal_coloc 1.75x slower per step than fp32).
Under `torchrun` every rank takes a slice of each batch and the loss runs through `DistributedDataParallel`,
which averages gradients over the ranks during backward; in-batch negatives are per rank. Rank 0 alone
writes the run directory. Schedule, parameter groups and the distributed plumbing live in `core.training`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache.reader import CacheReader
from ..core import InputError
from ..core.device import resolve_device
from ..core.training import (
    cosine_lr,
    data_parallel,
    deterministic_cpu,
    init_distributed,
    load_optimizer_tensors,
    optimizer_tensors,
    param_groups,
)
from .base import Head, TorchHead, create_head, list_heads, make_config
from .checkpoint import read_json, read_tensors, save_head, write_json, write_tensors
from .data import Pairs, Planner, TrainBatch, gather_batch, load_pairs, prefetch, split_by_image, subset_images
from .losses import Scores, get_loss

log = logging.getLogger(__name__)
Progress = Callable[[dict[str, Any]], None]  # gets {"step", "steps", "loss", "acc", "pairs_s", "lr"[, "val"]}


@dataclass
class TrainConfig:
    steps: int = 1500  # optimisation steps at most (early stopping may end sooner)
    batch_size: int = 64  # distinct images per step; each has B - 1 in-batch negatives
    losses: dict[str, float] = field(default_factory=lambda: {"infonce": 1.0, "hardneg": 1.0})  # name -> weight
    n_hard: int = 2  # hard negatives drawn per pair from the kinds it has (0: in-batch only)
    hard_kinds: tuple[str, ...] = ()  # restrict hard negatives to these kinds (empty: every kind in the data)
    lr: float = 1e-3  # peak AdamW learning rate, after `warmup` steps, then cosine decay
    min_lr: float = 0.0  # learning rate at the end of the cosine
    warmup: int = 100  # linear warmup steps
    weight_decay: float = 0.05  # on matrices only (not norms, biases, positions, scales)
    grad_clip: float = 1.0  # global gradient L2 norm (0: off)
    val_fraction: float = 0.1  # fraction of images held out for validation (0: no validation, keep the last)
    val_images: int = 2000  # validate on a seeded subset of at most this many held-out images (0: all of them).
    # On a 60k-scene store all 6,000 took as long as the 200 steps between validations on a CPU; 2,000 images
    # (~10k comparisons) still resolve a few tenths of a point
    eval_every: int = 100  # steps between validations
    patience: int = 5  # validations without improvement before stopping (0: never stop early)
    seed: int = 0  # batch plan and split; the head's init follows its own config
    device: str = "auto"  # auto | cpu | cuda[:n]
    amp: bool = False  # bf16 autocast on CUDA (CPU runs fp32). Off: measured slower on an H100 for these heads (casts
    # outweigh the small matmuls: 3,200 vs 5,600 steps in the same 170 s, same 60k-scene cache, runs side by side)
    prefetch: int = 4  # batches read ahead in a background thread (0: read in the loop)
    buffer_shards: int = 16  # image shards shuffled together (bounds memory on big stores)
    reader_cache_mb: int = 1024  # decoded shards kept by the reader for scattered text reads
    reader_resident_mb: int = 4096  # arrays the head reads are loaded whole while they fit in this (0: shards only).
    # A batch's texts hit ~150 text shards: on a 60k-scene store (1.4 GB of text tokens per layer) the 1 GB LRU
    # alone fed tflocal_coloc 1.5x its CPU step rate; whole arrays make a read a numpy gather
    save_every: int = 200  # steps between resume checkpoints
    threads: int = 1  # torch CPU threads while training (0: torch's default). 1 by default: the head's matrices
    # are small, and on a busy 2-core machine 2 threads were measured 5x slower per step than 1

    def __post_init__(self) -> None:
        self.hard_kinds = tuple(self.hard_kinds)
        self.losses = {str(k): float(v) for k, v in dict(self.losses).items()}
        for name in self.losses:
            get_loss(name)
        if self.batch_size < 2 or self.steps < 1 or self.n_hard < 0 or not 0 <= self.val_fraction < 1:
            raise InputError(f"TrainConfig: need batch_size >= 2, steps >= 1, n_hard >= 0, 0 <= val_fraction < 1 ({self})")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return make_config(cls, "train", d)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # steps done
    best_step: int
    best: dict[str, float]  # validation metrics of the kept head
    stopped_early: bool
    seconds: float


# Fields that change where and how fast a run goes, not the experiment (device and amp change rounding, as a
# cpu -> cuda resume does): a resumed run may change them.
_NOT_IDENT = ("device", "amp", "prefetch", "save_every", "threads", "reader_cache_mb", "reader_resident_mb")


def lr_at(cfg: TrainConfig, step: int) -> float:
    return cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr)


def _to(batch: dict[str, np.ndarray], dev: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        out[k] = t.to(dev, torch.float32 if t.is_floating_point() else torch.long, non_blocking=True)
    return out


def _index(rep: Any, idx: torch.Tensor) -> Any:
    return {k: v[idx] for k, v in rep.items()} if isinstance(rep, dict) else rep[idx]


def batch_scores(head: TorchHead, b: TrainBatch, needs: frozenset[str], dev: torch.device) -> Scores:
    """Every score the losses need, from one encoding of each image and each distinct caption."""
    im = head.encode_images(_to(b.images, dev))
    tx = head.encode_texts(_to(b.texts, dev))
    cap = torch.from_numpy(b.cap).to(dev)
    caps = _index(tx, cap)
    out = Scores(pos=head.pair_logits(im, caps))
    if "matrix" in needs:
        out.matrix = head.matrix_logits(im, caps)
    if b.neg.shape[1] and needs & {"hard", "text_hard"}:
        B, K = b.neg.shape
        negs = _index(tx, torch.from_numpy(b.neg.reshape(-1)).to(dev))
        out.hard_mask = torch.from_numpy(b.neg_mask).to(dev)
        if "hard" in needs:
            rep_i = _index(im, torch.arange(B, device=dev).repeat_interleave(K))
            out.hard = head.pair_logits(rep_i, negs).view(B, K)
        if "text_hard" in needs:
            out.text_hard = head.text_logits(_index(caps, torch.arange(B, device=dev).repeat_interleave(K)), negs).view(B, K)
    elif needs & {"hard", "text_hard"}:  # no hard negatives configured: those losses see an empty set
        B = len(b.cap)
        out.hard = out.pos.new_zeros(B, 0)
        out.text_hard = out.pos.new_zeros(B, 0)
        out.hard_mask = torch.zeros(B, 0, dtype=torch.bool, device=dev)
    return out


@torch.no_grad()
def validate(head: TorchHead, reader: CacheReader, val: Pairs, dev: torch.device, batch: int = 512) -> dict[str, float]:
    """Per-kind accuracy s(I, caption) > s(I, negative) over every negative of the validation items; `acc` = their mean."""
    head.eval()
    wins, total = np.zeros(len(val.kinds)), np.zeros(len(val.kinds))
    for s in range(0, len(val), batch):
        items = np.arange(s, min(len(val), s + batch))
        b = gather_batch(reader, head, val, items, val.negs[items])
        sc = batch_scores(head, b, frozenset({"hard"}), dev)
        if sc.hard is None:
            continue
        win = (sc.pos[:, None] > sc.hard).cpu().numpy() & b.neg_mask
        wins += win.sum(0)
        total += b.neg_mask.sum(0)
    head.train()
    per = {k: 100.0 * c / n for k, c, n in zip(val.kinds, wins, total) if n}
    return {"acc": float(np.mean(list(per.values()))) if per else float("nan"), **{f"acc_{k}": float(v) for k, v in per.items()}}


class _Loss(torch.nn.Module):
    """The weighted loss mix of one batch, as a module: what `DistributedDataParallel` wraps when world > 1 (it
    averages gradients only for a forward that runs through the wrapper, not for the head's own calls)."""

    def __init__(self, head: TorchHead, losses: dict[str, float], needs: frozenset[str], dev: torch.device):
        super().__init__()
        self.head, self.losses, self.needs, self.dev = head, losses, needs, dev

    def forward(self, batch: TrainBatch) -> tuple[torch.Tensor, Scores]:
        sc = batch_scores(self.head, batch, self.needs, self.dev)
        return sum(w * get_loss(n)[0](sc) for n, w in self.losses.items()), sc


class _Run:
    """One training run: the head, its optimizer, the data plan, early-stopping state; rank 0 alone writes `run`."""

    def __init__(self, model: TorchHead, reader: CacheReader, cfg: TrainConfig, run: Path, rank: int, world: int,
                 progress: Progress | None):
        self.model, self.reader, self.cfg, self.run = model, reader, cfg, run
        self.rank, self.world, self.progress = rank, world, progress
        needs = frozenset().union(*(get_loss(n)[1] for n in cfg.losses))
        if "text_hard" in needs and not model.text_text:
            raise InputError(f"loss 'tgc' needs a text-text score, which head {model.name!r} does not have")
        if needs & {"hard", "text_hard"} and cfg.n_hard == 0:
            raise InputError(f"losses {sorted(cfg.losses)} need hard negatives; set n_hard >= 1")
        self.dev = dev = resolve_device(cfg.device)
        model.to(dev)
        self.loss = _Loss(model, cfg.losses, needs, dev)
        self.amp = cfg.amp and dev.type == "cuda"
        pairs = load_pairs(reader, cfg.hard_kinds)
        if cfg.n_hard and not pairs.kinds:
            raise InputError(f"{reader.path} has no negatives (no neg:* or negative_caption items column); use n_hard=0 "
                             f"with losses that need none (infonce)")
        self.train, self.val = split_by_image(pairs, cfg.val_fraction, cfg.seed) if cfg.val_fraction else (pairs, None)
        if self.val is not None and cfg.val_images:
            self.val = subset_images(self.val, cfg.val_images, cfg.seed)
        self.planner = Planner(self.train, cfg.batch_size, cfg.n_hard, cfg.seed, reader.layout.shard_rows, cfg.buffer_shards)
        self.opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
        self.trained_on = {"backbone": reader.backbone.get("name"), "backbone_id": reader.backbone_id,
                           "fingerprint": reader.fingerprint, "cache": str(reader.path)}
        self.ident = {"head": model.name, "head_config": model.config(), "fingerprint": reader.fingerprint,
                      "train": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IDENT}}
        self.start, self.best, self.best_step, self.bad = 0, -math.inf, -1, 0
        self.done, self.last_loss, self.pairs, self.t_rate = 0, float("nan"), 0, time.perf_counter()

    def resume(self) -> None:
        """Continue from RUN_DIR/last.*: refused when it holds another head, config or cache."""
        meta = read_json(self.run / "last.json")
        # A run stored before a field joined _NOT_IDENT resumes (test_heads_train's resume stores amp so).
        stored = {**meta["ident"], "train": {k: v for k, v in meta["ident"]["train"].items() if k not in _NOT_IDENT}}
        if stored != self.ident:
            raise InputError(f"{self.run} holds a run of another head, config or cache "
                             f"({_first_difference(stored, self.ident)}); pass another --out, or --no-resume to start over")
        tensors = read_tensors(self.run / "last.safetensors", str(self.dev))
        self.model.load_state_tensors({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer_tensors(self.opt, {k: v for k, v in tensors.items() if k.startswith("opt.")}, meta["opt"])
        self.start, self.best, self.best_step, self.bad = meta["step"], meta["best"], meta["best_step"], meta["bad"]
        self.done = self.start
        log.info("resuming %s at step %d", self.run, self.start)

    def batch(self, s: int) -> TrainBatch:
        p = self.planner.plan(s)
        mine = slice(self.rank, None, self.world)  # this rank's share of the global batch
        return gather_batch(self.reader, self.model, self.train, p.items[mine], p.negs[mine])

    def loop(self) -> bool:
        """Steps from `start` until `steps` or early stopping; True when it stopped early."""
        cfg = self.cfg
        forward = data_parallel(self.loss, self.dev) if self.world > 1 else self.loss
        self.model.train()
        self.t_rate = time.perf_counter()
        for s, batch in prefetch(self.batch, range(self.start, cfg.steps), cfg.prefetch):
            self.step(forward, s, batch)
            if self.done % cfg.eval_every == 0 or self.done == cfg.steps:
                if self.validate(self.done):
                    return self.done < cfg.steps  # patience running out at the last step is not an early stop
            if self.done % cfg.save_every == 0:
                self.save_last(self.done)
        return False

    def step(self, forward: torch.nn.Module, s: int, batch: TrainBatch) -> None:
        cfg = self.cfg
        lr = lr_at(cfg, s)
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            loss, sc = forward(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()  # under DDP: gradients averaged over the ranks here
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.done, self.last_loss = s + 1, float(loss.detach())
        self.pairs += len(batch.cap) * self.world
        if self.progress:
            self.progress({"step": self.done, "steps": cfg.steps, "loss": self.last_loss, "acc": _train_acc(sc), "lr": lr,
                           "pairs_s": self.pairs / max(1e-9, time.perf_counter() - self.t_rate)})

    def validate(self, s: int) -> bool:
        """Validate at step s, keep the best head, log a row; True when early stopping says stop."""
        val, cfg = self.val, self.cfg
        metrics = validate(self.model, self.reader, val, self.dev) if val is not None else {"acc": float("nan")}
        if val is None or metrics["acc"] > self.best:
            self.best, self.best_step, self.bad = (metrics["acc"] if val is not None else self.best), s, 0
            if not self.rank:
                save_head(self.model, self.run, train=cfg.to_dict(), trained_on=self.trained_on,
                          metrics={"step": s, **metrics})
        else:
            self.bad += 1
        if not self.rank:
            with (self.run / "log.jsonl").open("a") as f:
                f.write(json.dumps({"step": s, "loss": self.last_loss, **metrics}) + "\n")
        log.info("step %d: val acc %.2f (best %.2f at step %d)", s, metrics["acc"], self.best, self.best_step)
        if self.progress:
            self.progress({"step": s, "steps": cfg.steps, "val": metrics, "best": self.best, "best_step": self.best_step})
        return bool(cfg.patience) and self.bad >= cfg.patience

    def save_last(self, s: int) -> None:
        if self.rank:
            return
        opt_t, opt_meta = optimizer_tensors(self.opt)
        write_tensors(self.run / "last.safetensors",
                      {**{f"model.{k}": v for k, v in self.model.state_tensors().items()}, **opt_t})
        write_json(self.run / "last.json", {"ident": self.ident, "step": s, "best": self.best, "best_step": self.best_step,
                                            "bad": self.bad, "opt": opt_meta, "train": self.cfg.to_dict()})


def train_head(head: str | Head, cache: str | Path, out: str | Path, cfg: TrainConfig | None = None,
               head_config: dict[str, Any] | None = None, progress: Progress | None = None,
               resume: bool = True) -> TrainResult:
    """Train `head` (a registry name, or an unbuilt head) on the items of `cache`; write RUN_DIR `out`."""
    cfg = cfg or TrainConfig()
    t0 = time.perf_counter()
    rank, world = init_distributed()
    reader = CacheReader(cache, cache_bytes=cfg.reader_cache_mb * 2**20, resident_bytes=cfg.reader_resident_mb * 2**20)
    reader.require_complete()
    model = create_head(head, **(head_config or {})) if isinstance(head, str) else head
    if not isinstance(model, TorchHead) or not model.trainable:
        raise InputError(f"head {model.name!r} has nothing to train; trainable heads: "
                         f"{', '.join(list_heads(trainable=True))}")
    model.attach(reader)  # builds the modules for this cache's widths (seeded by the head config)
    r = _Run(model, reader, cfg, Path(out), rank, world, progress)
    if resume and (r.run / "last.json").is_file():
        r.resume()
    r.run.mkdir(parents=True, exist_ok=True)
    with deterministic_cpu(r.dev, cfg.threads):
        stopped = r.loop()
        r.save_last(r.done)
        if r.best_step < 0:  # nothing validated yet (e.g. resumed at the end): make sure a head exists
            r.validate(r.done)
    meta = read_json(r.run / "head.json") if (r.run / "head.json").is_file() else {"metrics": {}}
    return TrainResult(r.run, r.done, r.best_step, {k: v for k, v in meta["metrics"].items() if k != "step"}, stopped,
                       time.perf_counter() - t0)


def _first_difference(stored: dict[str, Any], now: dict[str, Any], at: str = "") -> str:
    """`train.lr: 0.001 in RUN_DIR, 0.002 now` for the first field where the stored run and this one differ."""
    for k in sorted(set(stored) | set(now)):
        a, b = stored.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and a != b:
            return _first_difference(a, b, f"{at}{k}.")
        if a != b:
            return f"{at}{k}: {a!r} in the stored run, {b!r} now"
    return "no field differs"


def _train_acc(sc: Scores) -> float:
    """In-batch image->caption top-1 when the matrix is computed, else positive-over-hard-negative accuracy."""
    with torch.no_grad():
        if sc.matrix is not None:
            return float((sc.matrix.argmax(1) == torch.arange(len(sc.pos), device=sc.pos.device)).float().mean() * 100)
        if sc.hard is not None and sc.hard_mask.any():
            return float((sc.pos[:, None] > sc.hard).float()[sc.hard_mask].mean() * 100)
    return float("nan")
