"""`global`: cosine of the backbone's own global embeddings. No training; every table's baseline."""

from __future__ import annotations

import numpy as np

from .base import Batch, Head, register_head


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@register_head("global", about="cosine of the backbone's own global embeddings (no training; the baseline)")
class GlobalHead(Head):
    text_text = True

    def embed_images(self, batch: Batch) -> np.ndarray:
        return _unit(batch["global"])  # (B, E)

    def embed_texts(self, batch: Batch) -> np.ndarray:
        return _unit(batch["global"])  # (B, E)

    def score_pairs(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        return np.einsum("be,be->b", images, texts)

    def score_matrix(self, images: np.ndarray, texts: np.ndarray) -> np.ndarray:
        return images @ texts.T

    def score_text_pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.einsum("be,be->b", a, b)
