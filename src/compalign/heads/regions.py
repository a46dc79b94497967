"""Training-free structured heads: each caption segment matched to its best image region (the crop method).

The caption's segments (objects, attribute phrases, relations; `extract --segments rules`) are encoded by the
frozen text tower like any caption; the image's regions are boxes of a multi-scale grid (core.regions). Each
segment takes its best region by cosine, the matched cosines are averaged, and the result is mixed with the
global cosine: s = (1 - mix) * cos(g_I, g_C) + mix * mean_seg max_region cos(r, seg). A caption without
segments scores its global cosine.

`regions_roi`: a region is the mean of the cached patch tokens inside its box, mapped to the joint space by
the tower's own linear projection (as `maxsim` maps tokens): one backbone pass serves every box. Towers whose
pooling is an attention head (SigLIP2, PE) have no such map and are refused.
Text–text scores: no.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from ..core.regions import patch_pooling, region_boxes
from .base import CacheSpec, TorchHead, config_of, make_config, register_head, register_variant


@dataclass
class RegionsConfig:
    grid: tuple[int, ...] = (1, 2, 3)  # k x k tiles for each k (1: the whole image)
    halves: bool = True  # and the four overlapping halves
    mix: float = 0.5  # weight of the region-segment score (0: global alone, 1: regions alone)
    chunk: int = 256  # images per block when scoring a matrix (memory: block x Bt x R x S)


@register_head("regions_roi", about="training-free: each caption segment's best region of pooled patch tokens, "
                                    "averaged, mixed with the global cosine")
class RegionsROI(TorchHead, nn.Module):
    needs_images = ("global", "patches")
    needs_texts = ("global", "segments")

    def __init__(self, **kwargs: Any):
        nn.Module.__init__(self)
        self.cfg = make_config(RegionsConfig, "regions_roi", kwargs)
        if not 0 <= self.cfg.mix <= 1 or not self.cfg.grid or min(self.cfg.grid) < 1:
            raise InputError("regions_roi: mix must lie in [0, 1] and grid hold sizes >= 1, e.g. grid=[1,2,3]")

    def config(self) -> dict[str, Any]:
        return config_of(self.cfg)

    def build(self, spec: CacheSpec) -> None:
        if "image" not in spec.projections:
            raise InputError(f"regions_roi maps pooled patch tokens with the tower's linear projection, and backbone "
                             f"{spec.backbone!r} has none (its pooling is an attention head). Use a CLIP-style tower.")
        side = math.isqrt(spec.n_patches)
        if side * side != spec.n_patches:
            raise InputError(f"regions_roi needs a square patch grid; {spec.backbone!r} has {spec.n_patches} patches")
        pool = patch_pooling(region_boxes(tuple(self.cfg.grid), self.cfg.halves), side)
        self.register_buffer("pool", torch.tensor(pool, dtype=torch.float32))  # (R, P)
        self.register_buffer("proj_image", torch.tensor(spec.projections["image"], dtype=torch.float32))  # (W, E)
        self.spec = spec

    def encode_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        regions = self.pool @ batch["patches"].float() @ self.proj_image  # (R, P) @ (B, P, W) @ (W, E) -> (B, R, E)
        return {"global": F.normalize(batch["global"].float(), dim=-1), "regions": F.normalize(regions, dim=-1)}

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = batch["segment_mask"].float()  # (B, S)
        return {"global": F.normalize(batch["global"].float(), dim=-1),
                "segments": F.normalize(batch["segments"].float(), dim=-1), "w": mask / mask.sum(-1, keepdim=True).clamp(min=1)}

    def _mix(self, g: torch.Tensor, best: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """g (...,) global cosines, best (..., S) each segment's best region cosine, w (..., S) segment weights."""
        has = w.sum(-1) > 0
        local = torch.where(has, (best * w).sum(-1), g)
        return (1 - self.cfg.mix) * g + self.cfg.mix * local

    def pair_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        best = (texts["segments"] @ images["regions"].transpose(1, 2)).amax(-1)  # (B, S, E) @ (B, E, R) -> (B, S)
        return self._mix((images["global"] * texts["global"]).sum(-1), best, texts["w"])  # (B,)

    def matrix_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        blocks = []
        for s in range(0, images["regions"].shape[0], self.cfg.chunk):
            reg = images["regions"][s:s + self.cfg.chunk]  # (bi, R, E)
            best = torch.einsum("tse,ire->itsr", texts["segments"], reg).amax(-1)  # (bi, Bt, S)
            g = images["global"][s:s + self.cfg.chunk] @ texts["global"].T  # (bi, Bt)
            blocks.append(self._mix(g, best, texts["w"][None].expand_as(best)))
        return torch.cat(blocks) if blocks else images["global"].new_zeros(0, texts["global"].shape[0])


register_variant("regions_roi_only", RegionsROI, "regions_roi without the global cosine (mix=1)", mix=1.0)
