"""`maxsim`: training-free late interaction over projected tokens (FILIP / ColBERT style).

Patch tokens and caption tokens are mapped to the joint space with the tower's *own* linear
token -> joint maps stored in the cache (CLIP ViT `proj`, `text_projection`), normalised, and each
caption token takes its best-matching patch: score = mean over caption tokens of max over patches of
the cosine. The start-of-text token is left out (identical for every caption); end-of-text, which
carries the caption's pooled meaning in causal towers, stays in.

Towers whose pooling is an attention head (SigLIP2 MAP, PE) have no such map; their tokens are not in
the joint space, and `maxsim` refuses them (a trained local head learns its own projections instead).
Text–text scores: yes (symmetric token-level MaxSim between two captions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from .base import CacheSpec, TorchHead, config_of, make_config, register_head, register_variant


@dataclass
class MaxSimConfig:
    layer: int = -1  # which extracted token layer (the final norm is applied to every layer)
    chunk: int = 256  # images per block when scoring a matrix (bounds memory: block x Bt x L x P)


def token_mask(lengths: torch.Tensor, L: int, skip_first: bool = True) -> torch.Tensor:
    """(B, L) True on the tokens that carry content (SOT..EOT), without SOT if `skip_first`.

    Never empty: a row with nothing else keeps position 0 (a failed caption must give a number, not NaN;
    scoring marks it invalid anyway)."""
    pos = torch.arange(L, device=lengths.device)
    mask = pos[None, :] < lengths[:, None]
    if skip_first:
        mask = mask & (pos[None, :] > 0)
    return mask | ((pos[None, :] == 0) & ~mask.any(-1, keepdim=True))


def trim(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, L', W) float tokens cut after the longest caption of the batch (zeros beyond `lengths` change nothing)."""
    L = max(1, int(batch["lengths"].max())) if len(batch["lengths"]) else 1
    return batch["tokens"][:, :L].float()


@register_head("maxsim", about="training-free late interaction on tokens projected by the tower's own linear maps")
class MaxSim(TorchHead, nn.Module):
    needs_images = ("patches",)
    needs_texts = ("tokens",)
    text_text = True

    def __init__(self, **kwargs: Any):
        nn.Module.__init__(self)
        self.cfg = make_config(MaxSimConfig, "maxsim", kwargs)
        self.layer = self.cfg.layer

    def config(self) -> dict[str, Any]:
        return config_of(self.cfg)

    def build(self, spec: CacheSpec) -> None:
        if "image" not in spec.projections or "text" not in spec.projections:
            missing = [k for k in ("image", "text") if k not in spec.projections]
            raise InputError(
                f"maxsim needs the tower's linear token->joint projections, and the cache of backbone {spec.backbone!r} "
                f"has none for {missing}: its pooling is an attention head (SigLIP2 MAP, PE), so its tokens are not in "
                f"the joint space. Train a local head on this cache instead: `compalign-heads train tflocal --cache ...`")
        self.register_buffer("proj_image", torch.tensor(spec.projections["image"], dtype=torch.float32))  # (Wi, E)
        self.register_buffer("proj_text", torch.tensor(spec.projections["text"], dtype=torch.float32))  # (Wt, E)
        bias = spec.projections.get("text_bias")
        self.register_buffer("proj_text_bias", torch.tensor(bias, dtype=torch.float32) if bias is not None
                             else torch.zeros(self.proj_text.shape[1]))
        self.spec = spec

    def encode_images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"tok": F.normalize(batch["patches"].float() @ self.proj_image, dim=-1)}  # (B, P, E)

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tok = F.normalize(trim(batch) @ self.proj_text + self.proj_text_bias, dim=-1)  # (B, L, E)
        mask = token_mask(batch["lengths"], tok.shape[1])
        return {"tok": tok, "w": mask.float() / mask.sum(-1, keepdim=True).clamp(min=1)}  # weights over tokens

    @staticmethod
    def _late(q: torch.Tensor, w: torch.Tensor, k: torch.Tensor, kmask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over q's tokens (weights w) of the max over k's tokens; leading dims broadcast."""
        sim = q @ k.transpose(-1, -2)  # (..., Lq, Lk)
        if kmask is not None:  # padding must never be the best match
            sim = sim.masked_fill(~kmask[..., None, :], float("-inf"))
        return (sim.amax(-1) * w).sum(-1)

    def pair_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._late(texts["tok"], texts["w"], images["tok"])  # (B,)

    def matrix_logits(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor]) -> torch.Tensor:
        blocks = []
        for s in range(0, images["tok"].shape[0], self.cfg.chunk):
            k = images["tok"][s:s + self.cfg.chunk, None]  # (bi, 1, P, E)
            blocks.append(self._late(texts["tok"][None], texts["w"][None], k))  # (bi, Bt)
        return torch.cat(blocks) if blocks else images["tok"].new_zeros(0, texts["tok"].shape[0])

    def text_logits(self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        ma, mb = a["w"] > 0, b["w"] > 0
        return 0.5 * (self._late(a["tok"], a["w"], b["tok"], mb) + self._late(b["tok"], b["w"], a["tok"], ma))


register_variant("maxsim_l2", MaxSim, "maxsim on the second-to-last layer's tokens (needs --layers -1,-2)", layer=-2)
