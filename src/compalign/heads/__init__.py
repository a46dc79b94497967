"""Alignment heads: registry names are stable; every head scores aligned pairs and full matrices.

`global` (no training), `global_mlp` (trainable, global embeddings only), `maxsim` (training-free late
interaction), `tflocal` (trainable transformer over patch + token embeddings), and their variants.
Checkpoints: `save_head` / `load_head` (safetensors + JSON); training: `heads.train.train_head`.
"""

from . import global_head, global_mlp, maxsim, tflocal  # noqa: F401  (register the heads)
from .base import CacheSpec, Head, TorchHead, create_head, describe_head, list_heads, register_head, register_variant
from .checkpoint import load_head, save_head

__all__ = ["CacheSpec", "Head", "TorchHead", "create_head", "describe_head", "list_heads", "load_head",
           "register_head", "register_variant", "save_head"]
