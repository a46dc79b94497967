"""The head contract and its registry.

A head reads what it needs from the cache (`needs`), turns image rows and text rows into its own
representations once (`embed_images`, `embed_texts`), and scores them: aligned pairs -> (B,),
all against all -> (Bi, Bt). `score_pairs(i, t)` must equal the diagonal of `score_matrix(i, t)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

Batch = dict[str, np.ndarray]  # cache field -> rows, e.g. {"global": (B, E)}


class Head:
    name: ClassVar[str]
    needs_images: ClassVar[tuple[str, ...]] = ("global",)  # cache fields read per image row
    needs_texts: ClassVar[tuple[str, ...]] = ("global",)
    text_text: ClassVar[bool] = False  # can score caption against caption (SugarCrepe++ TOT)

    def embed_images(self, batch: Batch) -> Any:
        raise NotImplementedError

    def embed_texts(self, batch: Batch) -> Any:
        raise NotImplementedError

    def score_pairs(self, images: Any, texts: Any) -> np.ndarray:
        """(B,) scores of image b with text b."""
        raise NotImplementedError

    def score_matrix(self, images: Any, texts: Any) -> np.ndarray:
        """(Bi, Bt) scores of every image with every text."""
        raise NotImplementedError

    def score_text_pairs(self, a: Any, b: Any) -> np.ndarray:
        raise NotImplementedError(f"head {self.name!r} has no text-text score")

    def config(self) -> dict[str, Any]:
        return {"name": self.name}


_HEADS: dict[str, Callable[..., Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    def wrap(cls: type[Head]) -> type[Head]:
        cls.name = name
        _HEADS[name] = cls
        return cls
    return wrap


def list_heads() -> list[str]:
    return sorted(_HEADS)


def create_head(name: str, **kwargs: Any) -> Head:
    if name not in _HEADS:
        raise KeyError(f"unknown head {name!r}; available: {', '.join(list_heads())}")
    return _HEADS[name](**kwargs)
