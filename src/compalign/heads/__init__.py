"""Alignment heads: registry names are stable; every head scores aligned pairs and full matrices.

`global` (no training), `blind` (text-only control), `global_mlp` (trainable, global embeddings only),
`maxsim` (training-free late interaction), `regions_roi` / `regions_crops` / `regions_oracle` (training-free
best region per caption segment), `tflocal` (trainable transformer over patch + token embeddings), and their variants.
Checkpoints: `save_head` / `load_head` (safetensors + JSON); training: `heads.train.train_head`.

Each head's module is imported when that head is first asked for (torch only for the heads that need it);
the table below says which module registers which name, and a contract test keeps it true.
"""

from __future__ import annotations

from typing import Any

from .base import HEADS, CacheSpec, Head, TorchHead, create_head, describe_head, list_heads, register_head, register_variant

HEADS.provide({
    "blind": "compalign.heads.blind",
    "global": "compalign.heads.global_head",
    **{n: "compalign.heads.global_mlp" for n in ("global_mlp", "global_mlp_tiny")},
    **{n: "compalign.heads.maxsim" for n in ("maxsim", "maxsim_l2")},
    **{n: "compalign.heads.regions" for n in ("regions_crops", "regions_crops_only", "regions_oracle",
                                              "regions_oracle_only", "regions_roi", "regions_roi_only")},
    **{n: "compalign.heads.tflocal" for n in ("tflocal", "tflocal_coloc", "tflocal_deep", "tflocal_l2", "tflocal_max",
                                              "tflocal_nores", "tflocal_proj", "tflocal_tiny")},
})


def __getattr__(name: str) -> Any:  # checkpoints need torch + safetensors: imported on first use
    if name in ("load_head", "save_head"):
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CacheSpec", "Head", "TorchHead", "create_head", "describe_head", "list_heads", "load_head",
           "register_head", "register_variant", "save_head"]
