"""`blind`: the text-only control. It scores a caption alone, s(I, c) = f(c), and never reads an image's features.

f is a small MLP on the backbone's own caption embedding (the cached text global), trained to put each positive
caption above its hard negatives. Whatever it gets right on a benchmark is solvable without vision: the
negatives read wrong on their own (an implausible or ungrammatical caption, a word pattern of the generator).
Two ways to fit it, both from the cache alone:

- on a train cache's pairs and negatives, like any head: `compalign-heads train blind --loss hardneg`;
- cross-validated on the benchmark's own items: `compalign-heads score --head blind --folds 5` (evaluate.blind).

By construction it ties every comparison of two images under one caption, so it scores 0 on image-side metrics
(BiVLC T2I, Winoground image and group) and on any metric that needs one caption to win for one image and lose
for the other (BiVLC I2T, Winoground text): those benchmarks are blind-proof, and the number says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core import InputError
from .base import CacheSpec, TorchHead, config_of, make_config, register_head, seed_from


@dataclass
class BlindConfig:
    hidden: int = 256  # hidden width of the caption scorer (0: a linear score)
    dropout: float = 0.1


@register_head("blind", about="text-only control: a learned score of the caption alone, never reading the image")
class Blind(TorchHead, nn.Module):
    trainable = True
    needs_images = ("status",)  # only to know how many image rows a batch has: no feature of the image is read
    needs_texts = ("global",)

    def __init__(self, **kwargs: Any):
        nn.Module.__init__(self)
        self.cfg = make_config(BlindConfig, "blind", kwargs)
        if self.cfg.hidden < 0 or not 0 <= self.cfg.dropout < 1:
            raise InputError("blind: hidden must be >= 0 and dropout in [0, 1)")

    def config(self) -> dict[str, Any]:
        return config_of(self.cfg)

    def build(self, spec: CacheSpec) -> None:
        torch.manual_seed(seed_from("blind", self.config()))
        h = self.cfg.hidden
        # no output bias: only differences of scores are ever compared, and a shift of all of them changes none
        self.score = (nn.Linear(spec.embed_dim, 1, bias=False) if h == 0 else
                      nn.Sequential(nn.Linear(spec.embed_dim, h), nn.GELU(), nn.Dropout(self.cfg.dropout),
                                    nn.Linear(h, 1, bias=False)))
        self.spec = spec

    def encode_images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["status"].new_zeros(len(batch["status"]), 0, dtype=torch.float32)  # (B, 0): rows, no content

    def encode_texts(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score(F.normalize(batch["global"].float(), dim=-1)).squeeze(-1)  # (B,)

    def pair_logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return texts  # (B,): the image plays no part

    def matrix_logits(self, images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
        return texts[None, :].expand(len(images), -1)  # (Bi, Bt), every row the same

    def fit(self, positive: np.ndarray, negative: np.ndarray, steps: int = 300, lr: float = 3e-3,
            weight_decay: float = 1e-4, seed: int = 0) -> float:
        """Full-batch AdamW on (n, E) caption embeddings: softplus(f(neg) - f(pos)), the `hardneg` loss.

        For cross-validation, where the train set is a benchmark's other folds (thousands of pairs, one matrix).
        Returns the final train loss.
        """
        if not self.built:
            raise RuntimeError("blind.fit: build(spec) or attach(reader) first")
        torch.manual_seed(seed)
        both = torch.from_numpy(np.ascontiguousarray(np.concatenate([positive, negative]), dtype=np.float32))  # (2n, E)
        n = len(positive)
        opt = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        self.train()
        loss = torch.zeros(())
        for _ in range(steps):
            s = self.encode_texts({"global": both})  # one pass over positives and negatives: (2n,)
            loss = F.softplus(s[n:] - s[:n]).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        self.eval()
        return float(loss.detach())
