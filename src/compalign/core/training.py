"""Training scaffolding that knows nothing of heads: schedule, AdamW groups, optimizer state, data parallel.

- `cosine_lr`          linear warmup to `lr`, then a cosine down to `min_lr` (held there after `steps`).
- `param_groups`       AdamW groups: weight decay on matrices, none on vectors, scalars and positions (or on
  whichever names the caller spares).
- `optimizer_tensors`  an optimizer's state as flat tensors + JSON (safetensors-friendly: nothing pickled),
  `load_optimizer_tensors` its inverse.
- `init_distributed`   (rank, world) under `torchrun`, (0, 1) without it.
- `data_parallel`      a module wrapped in `DistributedDataParallel`: gradients are averaged over ranks in
  buckets, overlapped with backward, for whatever runs through the wrapper's forward.
- `deterministic_cpu`  deterministic kernels and a thread count while training on CPU, restored after.
- `symmetric_infonce`, `hardneg_loss`, `igc_loss`, `tgc_loss`  the contrastive losses over logits that the heads'
  loss registry and the tiny backbone's end-to-end fine-tuning (shapes/finetune.py) share.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F


def cosine_lr(step: int, steps: int, warmup: int, lr: float, min_lr: float = 0.0) -> float:
    """The learning rate at `step` (0-based): `lr * (step + 1) / warmup` while warming up, then a cosine from
    `lr` at step `warmup` to `min_lr` at step `steps`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def param_groups(module: torch.nn.Module, weight_decay: float, spare: tuple[str, ...] = ("pos",)) -> list[dict[str, Any]]:
    """AdamW groups: `weight_decay` on trainable parameters with ndim >= 2 whose name contains none of `spare`
    (matrices), 0 on the rest (norms, biases, scales, and by default learned positions); both in
    `named_parameters` order."""
    decay, rest = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and not any(s in name for s in spare) else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """`opt`'s state dict as ({"opt.<param>.<key>": tensor}, JSON-able metadata); non-tensor state is not kept."""
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "state_keys": {str(i): sorted(st) for i, st in sd["state"].items()}}


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Restore what `optimizer_tensors` gave into `opt` (built over the same parameters)."""
    state = {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys} for i, keys in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def init_distributed() -> tuple[int, int]:
    """(rank, world). Under `torchrun` (WORLD_SIZE > 1) the default process group is set up once: nccl where
    CUDA is available, gloo otherwise. With CUDA the current device becomes cuda:LOCAL_RANK (the one
    `resolve_device` gives), so nothing of this rank (NCCL, pinned memory) lands on GPU 0 by default."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def data_parallel(module: torch.nn.Module, dev: torch.device) -> torch.nn.Module:
    """`module` (already on `dev`) in `DistributedDataParallel`: call the wrapper, not `module`, for the forward
    whose backward must average gradients over the ranks. Every trainable parameter must get a gradient each
    step (no unused-parameter search)."""
    from torch.nn.parallel import DistributedDataParallel

    if dev.type == "cuda":
        return DistributedDataParallel(module, device_ids=[dev.index if dev.index is not None else torch.cuda.current_device()])
    return DistributedDataParallel(module)


@contextmanager
def deterministic_cpu(dev: torch.device, threads: int) -> Iterator[None]:
    """On CPU: deterministic algorithms (warn only) and `threads` torch threads (0: leave as is), restored after.
    Elsewhere nothing changes."""
    det, n = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    if dev.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads:
            torch.set_num_threads(threads)
    try:
        yield
    finally:
        if dev.type == "cpu":
            torch.use_deterministic_algorithms(det)
            torch.set_num_threads(n)


def symmetric_infonce(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's loss over a (B, B) matrix of logits whose diagonal holds the matching pairs."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


# -- hard-negative contrasts: the pure math the heads' losses and the end-to-end fine-tuning share ------------


def hardneg_loss(pos: torch.Tensor, hard: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """2-way cross-entropy of each positive against each of its hard negatives, averaged over the valid ones:
    mean_{b,k: mask} -log(e^pos_b / (e^pos_b + e^hard_bk)) = mean softplus(hard_bk - pos_b).
    pos (B,) and hard (B, K) are logits; mask (B, K) bool is False where item b has no k-th negative."""
    m = mask.float()
    return (F.softplus(hard - pos[:, None]) * m).sum() / m.sum().clamp(min=1)


def igc_loss(matrix: torch.Tensor, hard: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Image-grounded contrast (DeGLA's IGC): image b picks its caption among the batch's captions and its own
    hard negatives, one (B + K)-way softmax per image: -log(e^M_bb / (sum_j e^M_bj + sum_{k: mask} e^hard_bk)).
    matrix (B, B) image-caption logits (diagonal = matching pairs), hard (B, K) logits, mask (B, K) bool."""
    logits = torch.cat([matrix, hard.masked_fill(~mask, float("-inf"))], dim=1)  # (B, B + K); column b is the positive
    return F.cross_entropy(logits, torch.arange(matrix.shape[0], device=logits.device))


def tgc_loss(pos: torch.Tensor, text_hard: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Text-grounded contrast (DeGLA's TGC): the caption is the anchor, and its positive must beat its own hard
    negatives in text space, one (1 + K)-way softmax per caption: -log(e^pos_b / (e^pos_b + sum_{k: mask} e^th_bk)).
    pos (B,) the positive's logit, text_hard (B, K) t(c_b, n_bk) logits, mask (B, K) bool."""
    logits = torch.cat([pos[:, None], text_hard.masked_fill(~mask, float("-inf"))], dim=1)  # (B, 1 + K); column 0 is the positive
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))
