"""`global_mlp`: a trainable MLP on the global embeddings only — capacity without locality (the control).

Each side maps its backbone embedding through its own residual MLP, `z = g + MLP(g)`, and the score
is a learned-temperature cosine. It sees exactly what `global` sees, so whatever it gains over
`global` is capacity and training data, not locality; whatever `tflocal` gains over it is locality.
Text–text scores: yes (cosine of the text side's outputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from .base import CacheSpec, TorchHead, config_of, make_config, register_head, register_variant, seed_from


@dataclass
class GlobalMLPConfig:
    hidden: int = 512  # hidden width of each side's MLP
    depth: int = 2  # linear layers per side (>= 1)
    residual: bool = True  # z = g + MLP(g): starts close to the backbone's own cosine
    init_logit_scale: float = 10.0  # initial 1/temperature of the cosine


def _mlp(width: int, hidden: int, depth: int) -> nn.Sequential:
    dims = [width] + [hidden] * (depth - 1) + [width]
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < depth - 1:
            layers.append(nn.GELU())
    # A small last layer keeps the residual head near `global` at init, but not at zero (every weight gets a gradient).
    nn.init.normal_(layers[-1].weight, std=0.01 / math.sqrt(dims[-2]))
    nn.init.zeros_(layers[-1].bias)
    return nn.Sequential(*layers)


@register_head("global_mlp", about="trainable residual MLP on global embeddings only (capacity without locality)")
class GlobalMLP(TorchHead, nn.Module):
    trainable = True
    text_text = True
    needs_images = ("global",)
    needs_texts = ("global",)

    def __init__(self, **kwargs: Any):
        nn.Module.__init__(self)
        self.cfg = make_config(GlobalMLPConfig, "global_mlp", kwargs)
        if self.cfg.depth < 1:
            raise InputError("global_mlp: depth must be >= 1")

    def config(self) -> dict[str, Any]:
        return config_of(self.cfg)

    def build(self, spec: CacheSpec) -> None:
        torch.manual_seed(seed_from("global_mlp", self.config()))
        c = self.cfg
        self.img = _mlp(spec.embed_dim, c.hidden, c.depth)
        self.txt = _mlp(spec.embed_dim, c.hidden, c.depth)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(c.init_logit_scale)))
        self.spec = spec

    def _side(self, mlp: nn.Module, g: torch.Tensor) -> torch.Tensor:
        g = F.normalize(g.float(), dim=-1)  # (B, E)
        return F.normalize(g + mlp(g) if self.cfg.residual else mlp(g), dim=-1)

    def encode_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._side(self.img, batch["global"])

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._side(self.txt, batch["global"])

    def pair_logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * (images * texts).sum(-1)  # (B,)

    def matrix_logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * images @ texts.T  # (Bi, Bt)

    def text_logits(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp() * (a * b).sum(-1)


register_variant("global_mlp_tiny", GlobalMLP, "global_mlp, 1 hidden layer of 16 (tests)", hidden=16, depth=2)
