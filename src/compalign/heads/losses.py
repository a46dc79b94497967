"""The loss registry: the seeds' end-to-end objectives, brought to frozen features.

Every loss reads a `Scores` of one batch of B (image, caption) pairs with up to K hard negatives each.
A head's scores are logits (its own learned temperature), so losses apply no extra scale.

- `infonce`  symmetric InfoNCE over the in-batch (B, B) matrix (CLIP).
- `hardneg`  2-way cross-entropy, positive vs each of its hard negatives, s(I, pos) vs s(I, neg) (CLIC).
- `igc`      image-grounded contrast (DeGLA IGC): the image picks its caption among its own hard negatives
             and the batch's other captions, one (1 + K + B - 1)-way softmax per image.
- `tgc`      text-grounded contrast (DeGLA TGC): the caption, as anchor, must be closer to its image than to
             its own hard negatives in text space: softmax over [s(I, c), t(c, n_1..K)]. Needs a head with a
             text-text score; it is what makes a caption's representation sensitive to its negatives' edits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core import InputError
from ..core.registry import Registry
from ..core.training import hardneg_loss, igc_loss, symmetric_infonce, tgc_loss


@dataclass
class Scores:
    pos: torch.Tensor  # (B,) s(I_b, c_b)
    matrix: torch.Tensor | None = None  # (B, B) s(I_i, c_j); diagonal == pos
    hard: torch.Tensor | None = None  # (B, K) s(I_b, n_bk)
    hard_mask: torch.Tensor | None = None  # (B, K) bool, False where item b has no k-th negative
    text_hard: torch.Tensor | None = None  # (B, K) t(c_b, n_bk), text-text


LossFn = Callable[[Scores], torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss")


def register_loss(name: str, needs: set[str]) -> Callable[[LossFn], LossFn]:
    """`needs`: which `Scores` fields the trainer must compute (matrix, hard, text_hard)."""
    return LOSSES.decorator(name, needs=frozenset(needs))


def list_losses() -> list[str]:
    return LOSSES.names()


def get_loss(name: str) -> tuple[LossFn, frozenset[str]]:
    return LOSSES.get(name), LOSSES.meta(name)["needs"]


@register_loss("infonce", {"matrix"})
def infonce(s: Scores) -> torch.Tensor:
    return symmetric_infonce(s.matrix)


@register_loss("hardneg", {"hard"})
def hardneg(s: Scores) -> torch.Tensor:
    # 2-way CE with the positive as the target: -log σ(pos - neg) = softplus(neg - pos)
    return hardneg_loss(s.pos, s.hard, s.hard_mask)


@register_loss("igc", {"matrix", "hard"})
def igc(s: Scores) -> torch.Tensor:
    return igc_loss(s.matrix, s.hard, s.hard_mask)  # (B, B + K) softmax per image; column b is the positive


@register_loss("tgc", {"text_hard"})
def tgc(s: Scores) -> torch.Tensor:
    return tgc_loss(s.pos, s.text_hard, s.hard_mask)  # (B, 1 + K) softmax per caption; column 0 is s(I, c)


def parse_losses(spec: str) -> dict[str, float]:
    """'infonce=1,hardneg=0.5' (or 'infonce,hardneg': weight 1) -> {name: weight}, names checked."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition("=")
        get_loss(name.strip())
        out[name.strip()] = float(w) if w else 1.0
    if not out:
        raise InputError("no loss given; e.g. --loss infonce=1,hardneg=1")
    return out
