"""What pretraining and fine-tuning the tiny backbone share: the recipe, its batches, its vocabulary trick, its loop.

Both train a whole open_clip model on a world's train split with AdamW, a linear warmup then a cosine to 0,
gradient clipping and CLIP's clamp of the temperature; only the loss of a step differs (pretrain.py: CLIP's,
with its augmentations; finetune.py: one per method). Written once here so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from compalign.core import InputError
from compalign.core.training import cosine_lr, param_groups

if TYPE_CHECKING:
    from compalign.shapes.pretrain import TrainData

logger = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, float], None]  # (step done, total steps, loss of that step)
StepLoss = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]  # (step, image rows, caption rows) -> loss

# Names spared weight decay besides every vector and scalar: the token and positional embeddings (CompactVocab
# relies on unused token rows never moving), the norms ("ln") and, as the recipe always said, biases and the logit
# scale (both vectors or scalars in every open_clip model, so "bias" anywhere in a name spares what a trailing one did).
NO_DECAY = ("embedding", "logit_scale", "ln", "bias")


@dataclass(frozen=True)
class Recipe:
    """The optimisation both trainers run; each config subclasses it with its own defaults and fields."""

    # optimisation steps (one batch each)
    steps: int = 200
    # distinct images per batch; the contrastive task gets harder (and better) with more
    batch_size: int = 128
    # peak AdamW learning rate, reached after `warmup` steps, then a cosine to 0
    lr: float = 1e-4
    # linear warmup steps
    warmup: int = 20
    # AdamW weight decay on matrices (not on norms, biases, embeddings or the logit scale)
    weight_decay: float = 0.1
    # gradient clipping (global L2 norm; 0 = none)
    grad_clip: float = 1.0
    # seed of the initialisation, the batch order and whatever else a method draws
    seed: int = 0
    # CPU threads while training. 1 by default: these matrices are small, and on a busy machine OpenMP
    # threads that wait on each other were measured 18x slower than one thread
    threads: int = 1
    # cpu (seeded and deterministic) | cuda | cuda:N | auto. A GPU runs the same recipe in seconds per
    # thousand steps; its weights differ in float rounding
    device: str = "cpu"
    # log the running loss every this many steps
    log_every: int = 50

    def __post_init__(self) -> None:
        what = type(self).__name__
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise InputError(f"{what}: device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        if self.steps < 1 or self.batch_size < 2:
            raise InputError(f"{what}: steps must be >= 1 and batch_size >= 2 (the loss needs negatives)")
        if self.threads < 1 or self.log_every < 1:
            raise InputError(f"{what}: threads and log_every must be >= 1")
        if self.lr <= 0 or self.warmup < 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise InputError(f"{what}: lr must be > 0, warmup, weight_decay and grad_clip >= 0")


@dataclass
class TrainResult:
    out: Path  # the checkpoint folder
    losses: list[float]  # loss of every step
    seconds: float  # training wall time (data loading excluded)
    n_images: int  # distinct training images
    n_captions: int  # training captions (pretraining) / caption-negative pairs (fine-tuning)
    bytes: int  # size of the weights file


def sample_batches(data: TrainData, batch_size: int, steps: int, gen: torch.Generator
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(image rows (B,), caption rows (B,)) per step: epochs over distinct images, one random caption each.

    Distinct images, so no caption is pushed away from its own image; the ragged tail of an epoch is dropped,
    so every batch has the same size."""
    n = len(data.image_names)
    batch_size = min(batch_size, n)
    caps = data.captions_of()
    counts = torch.tensor([len(c) for c in caps])
    offsets = torch.cumsum(counts, 0) - counts
    flat = torch.cat(caps)
    perm, pos = torch.randperm(n, generator=gen), 0
    for _ in range(steps):
        if pos + batch_size > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        img = perm[pos : pos + batch_size]
        pos += batch_size
        pick = (torch.rand(len(img), generator=gen) * counts[img]).long()
        yield img, flat[offsets[img] + pick]


class CompactVocab:
    """Train only the token-embedding rows the captions use; write them back afterwards.

    Exact: a row no caption uses gets a zero gradient at every step, and AdamW (embeddings carry no
    weight decay here) never moves such a row, so training the used rows alone gives the same
    weights. It spares a dense (49408, W) gradient, clip and AdamW update per step. Ids are remapped
    in sorted order, so the end-of-text token stays the highest id and argmax pooling still finds it;
    a tower that pools at a fixed eos id would lose it, so any other pooling keeps the full vocabulary.
    """

    def __init__(self, model: torch.nn.Module, tokens: torch.Tensor) -> None:
        self.model, self.full = model, model.token_embedding
        self.active = getattr(model, "text_pool_type", None) == "argmax"
        if not self.active:
            return
        self.used = torch.unique(tokens)  # sorted
        self.lut = torch.zeros(self.full.num_embeddings, dtype=torch.long)
        self.lut[self.used] = torch.arange(len(self.used))
        compact = torch.nn.Embedding(len(self.used), self.full.embedding_dim)
        with torch.no_grad():
            compact.weight.copy_(self.full.weight[self.used])
        model.token_embedding = compact.to(self.full.weight.device)

    def remap(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.lut.to(tokens.device)[tokens] if self.active else tokens

    def restore(self) -> None:
        if not self.active:
            return
        compact = self.model.token_embedding
        with torch.no_grad():
            self.full.weight[self.used.to(self.full.weight.device)] = compact.weight.to(self.full.weight.device)
        self.model.token_embedding = self.full


def run_steps(model: torch.nn.Module, cfg: Recipe, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
              step_loss: StepLoss, progress: ProgressFn | None = None, after_step: Callable[[], None] | None = None,
              label: str = "") -> list[float]:
    """Optimise `model` in place, one batch of `batches` a step; returns the loss of every step.

    `after_step` runs once the weights moved (DeGLA's EMA teacher follows the student there)."""
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, spare=NO_DECAY), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    losses: list[float] = []
    for step, (img, cap) in enumerate(batches):
        lr = cosine_lr(step, cfg.steps, cfg.warmup, cfg.lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = step_loss(step, img, cap)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        with torch.no_grad():  # CLIP clamps the temperature at 100
            model.logit_scale.clamp_(0, math.log(100))
        if after_step is not None:
            after_step()
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            recent = losses[-cfg.log_every:]
            logger.info("%sstep %d/%d loss %.4f (lr %.2e)", label, step + 1, cfg.steps, sum(recent) / len(recent), lr)
        if progress:
            progress(step + 1, cfg.steps, losses[-1])
    return losses
