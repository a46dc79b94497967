"""Training-free structured heads: each caption segment matched to its best image region (the crop method).

The caption's segments (objects, attribute phrases, relations; `extract --segments rules`) are encoded by the
frozen text tower like any caption. Each segment takes its best region by cosine, the matched cosines are
averaged, and the result is mixed with the global cosine:
    s = (1 - mix) * cos(g_I, g_C) + mix * mean_seg max_region cos(r, seg).
A caption without segments, or an image without regions, scores its global cosine. The three heads share this
scoring and differ only in where an image's regions come from:

`regions_roi`: the boxes of a multi-scale grid (core.regions); a region is the mean of the cached patch tokens
inside its box, mapped to the joint space by the tower's own linear projection (as `maxsim` maps tokens): one
backbone pass serves every box. Towers whose pooling is an attention head (SigLIP2, PE) have no such map and are
refused.
`regions_crops`: the same grid's boxes cropped from the image and encoded alone by the image tower at extraction
(`extract --crops grid`): a region is a crop's global embedding, read from the cache (any tower).
`regions_oracle`: the synthetic world's true object boxes, cropped and encoded the same way (`extract --crops
oracle`); images have different numbers of objects, so a mask says which regions exist.
Text–text scores: no.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from ..core.regions import patch_pooling, region_boxes
from .base import CacheSpec, TorchHead, config_of, make_config, register_head, register_variant

if TYPE_CHECKING:
    from ..cache.reader import CacheReader

NEVER = -2.0  # below any cosine: a masked region is never a segment's best


@dataclass
class RegionsConfig:
    mix: float = 0.5  # weight of the region-segment score (0: global alone, 1: regions alone)
    chunk: int = 256  # images per block when scoring a matrix (memory: block x Bt x R x S)


@dataclass
class ROIConfig(RegionsConfig):
    grid: tuple[int, ...] = (1, 2, 3)  # k x k tiles for each k (1: the whole image)
    halves: bool = True  # and the four overlapping halves


class RegionHead(TorchHead, nn.Module):
    """The shared scoring: subclasses say where regions come from (`regions`: (B, R, E), (B, R) bool)."""

    needs_texts = ("global", "segments")
    config_class: ClassVar[type] = RegionsConfig

    def __init__(self, **kwargs: Any):
        nn.Module.__init__(self)
        self.cfg = make_config(self.config_class, self.name, kwargs)
        if not 0 <= self.cfg.mix <= 1 or self.cfg.chunk < 1:
            raise InputError(f"{self.name}: mix must lie in [0, 1] and chunk be at least 1")

    def config(self) -> dict[str, Any]:
        return config_of(self.cfg)

    def build(self, spec: CacheSpec) -> None:
        self.spec = spec

    # Scoring gathers the representations once per pair (evaluate.scoring._take), so they are numpy arrays: on 2
    # busy cores numpy gathered 4,172 rows of a (300, 128) array in 0.07 ms, torch (2 threads) in 6 ms.
    def embed_images(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in super().embed_images(batch).items()}

    def embed_texts(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v.cpu().numpy() for k, v in super().embed_texts(batch).items()}

    def _as_torch(self, rep: dict[str, Any]) -> dict[str, torch.Tensor]:
        dev = self._device()
        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(dev) if isinstance(v, np.ndarray) else v for k, v in rep.items()}

    def score_pairs(self, images: Any, texts: Any) -> np.ndarray:
        return super().score_pairs(self._as_torch(images), self._as_torch(texts))

    def score_matrix(self, images: Any, texts: Any) -> np.ndarray:
        return super().score_matrix(self._as_torch(images), self._as_torch(texts))

    def regions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, R, E) regions in the joint space (any norm) and (B, R) bool: which exist."""
        raise NotImplementedError

    def encode_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        regions, mask = self.regions(batch)
        return {"global": F.normalize(batch["global"].float(), dim=-1), "regions": F.normalize(regions.float(), dim=-1),
                "region_mask": mask.bool()}

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask = batch["segment_mask"].float()  # (B, S)
        return {"global": F.normalize(batch["global"].float(), dim=-1),
                "segments": F.normalize(batch["segments"].float(), dim=-1), "w": mask / mask.sum(-1, keepdim=True).clamp(min=1)}

    def _mix(self, g: torch.Tensor, best: torch.Tensor, w: torch.Tensor, has_regions: torch.Tensor) -> torch.Tensor:
        """g (...,) global cosines, best (..., S) each segment's best region cosine, w (..., S) segment weights,
        has_regions (...,) whether the image has any region."""
        has = (w.sum(-1) > 0) & has_regions
        local = torch.where(has, (best * w).sum(-1), g)
        return (1 - self.cfg.mix) * g + self.cfg.mix * local

    def pair_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = images["region_mask"]  # (B, R)
        cos = texts["segments"] @ images["regions"].transpose(1, 2)  # (B, S, E) @ (B, E, R) -> (B, S, R)
        best = (cos if mask.all() else cos.masked_fill(~mask[:, None, :], NEVER)).amax(-1)  # (B, S)
        return self._mix((images["global"] * texts["global"]).sum(-1), best, texts["w"], mask.any(-1))  # (B,)

    def matrix_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        blocks = []
        for s in range(0, images["regions"].shape[0], self.cfg.chunk):
            reg, mask = images["regions"][s:s + self.cfg.chunk], images["region_mask"][s:s + self.cfg.chunk]  # (bi, R, E)
            cos = torch.einsum("tse,ire->itsr", texts["segments"], reg)  # (bi, Bt, S, R)
            best = (cos if mask.all() else cos.masked_fill(~mask[:, None, None, :], NEVER)).amax(-1)  # (bi, Bt, S)
            g = images["global"][s:s + self.cfg.chunk] @ texts["global"].T  # (bi, Bt)
            blocks.append(self._mix(g, best, texts["w"][None].expand_as(best), mask.any(-1)[:, None].expand_as(g)))
        return torch.cat(blocks) if blocks else images["global"].new_zeros(0, texts["global"].shape[0])


@register_head("regions_roi", about="training-free: each caption segment's best region of pooled patch tokens, "
                                    "averaged, mixed with the global cosine")
class RegionsROI(RegionHead):
    needs_images = ("global", "patches")
    config_class = ROIConfig

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if not self.cfg.grid or min(self.cfg.grid) < 1:
            raise InputError("regions_roi: grid holds sizes >= 1, e.g. grid=[1,2,3]")

    def build(self, spec: CacheSpec) -> None:
        if "image" not in spec.projections:
            raise InputError(f"regions_roi maps pooled patch tokens with the tower's linear projection, and backbone "
                             f"{spec.backbone!r} has none (its pooling is an attention head). Use a CLIP-style tower, "
                             "or regions_crops (`extract --crops grid`), which needs no projection.")
        side = math.isqrt(spec.n_patches)
        if side * side != spec.n_patches:
            raise InputError(f"regions_roi needs a square patch grid; {spec.backbone!r} has {spec.n_patches} patches")
        pool = patch_pooling(region_boxes(tuple(self.cfg.grid), self.cfg.halves), side)
        self.register_buffer("pool", torch.tensor(pool, dtype=torch.float32))  # (R, P)
        self.register_buffer("proj_image", torch.tensor(spec.projections["image"], dtype=torch.float32))  # (W, E)
        self.spec = spec

    def regions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        regions = self.pool @ batch["patches"].float() @ self.proj_image  # (R, P) @ (B, P, W) @ (W, E) -> (B, R, E)
        return regions, torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device)


class CachedRegions(RegionHead):
    """Regions read from the cache as they are: crops the image tower encoded at extraction."""

    field: ClassVar[str]  # the reader's image field (cache.reader.REGIONS)

    def attach(self, reader: CacheReader) -> None:
        reader.require_regions(self.field)  # before anything is read: the message names the --crops to extract
        super().attach(reader)

    def regions(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        regions = batch[self.field]  # (B, R, E)
        mask = batch.get(self.field + "_mask")
        return regions, (torch.ones(regions.shape[:2], dtype=torch.bool, device=regions.device) if mask is None
                         else mask.bool())


@register_head("regions_crops", about="training-free: each caption segment's best grid crop (encoded at extraction, "
                                      "`extract --crops grid`), averaged, mixed with the global cosine")
class RegionsCrops(CachedRegions):
    needs_images = ("global", "regions_crops")
    field = "regions_crops"


@register_head("regions_oracle", about="training-free: each caption segment's best true object box of a shapes world "
                                       "(cropped and encoded, `extract --crops oracle`), averaged, mixed with the global cosine")
class RegionsOracle(CachedRegions):
    needs_images = ("global", "regions_oracle")
    field = "regions_oracle"


register_variant("regions_roi_only", RegionsROI, "regions_roi without the global cosine (mix=1)", mix=1.0)
register_variant("regions_crops_only", RegionsCrops, "regions_crops without the global cosine (mix=1)", mix=1.0)
register_variant("regions_oracle_only", RegionsOracle, "regions_oracle without the global cosine (mix=1)", mix=1.0)
