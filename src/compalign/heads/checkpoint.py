"""Head checkpoints: safetensors (tensors) + JSON (head config, cache shape, training config, cache identity).

    RUN_DIR/head.safetensors   the head's tensors (+ the cache projections it was built with, `spec.*`)
    RUN_DIR/head.json          {"schema", "head", "head_config", "dims", "trained_on", "train", "metrics", "versions"}

Loading never unpickles: JSON and safetensors only. A loaded head remembers which backbone's cache
it was trained on (`trained_on`) and refuses to score a cache of another backbone, naming both.
Files are written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..core import CompalignError
from .base import CacheSpec, Head, TorchHead, create_head, list_heads

SCHEMA = "compalign.head/1"
WEIGHTS, META = "head.safetensors", "head.json"
_SPEC = "spec."  # prefix of the cache projections stored beside the head's own tensors


class CheckpointError(CompalignError, ValueError):
    """A run directory that is missing, incomplete or from another schema; the message names the fix."""


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj: dict[str, Any]) -> None:
    _atomic(path, lambda p: p.write_text(json.dumps(obj, indent=1, sort_keys=True)))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    _atomic(path, lambda p: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(p)))


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"compalign": version("compalign"), "torch": torch.__version__}


def save_head(head: Head, run_dir: str | Path, *, train: dict[str, Any] | None = None,
              trained_on: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
              name: str = "head") -> Path:
    """Write `name`.safetensors + `name`.json into `run_dir`; returns the JSON's path."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    tensors = dict(head.state_tensors())
    spec: CacheSpec | None = getattr(head, "spec", None)
    if spec is not None:
        tensors.update({_SPEC + k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in spec.projections.items()})
        trained_on = trained_on or {"backbone": spec.backbone, "backbone_id": spec.backbone_id}
    trained_on = trained_on or getattr(head, "trained_on", None)
    write_tensors(run / f"{name}.safetensors", tensors)
    meta = {"schema": SCHEMA, "head": head.name, "head_config": head.config(), "dims": spec.dims() if spec else None,
            "trained_on": trained_on, "train": train, "metrics": metrics or {}, "versions": _versions()}
    write_json(run / f"{name}.json", meta)
    return run / f"{name}.json"


def read_meta(run_dir: str | Path, name: str = "head") -> dict[str, Any]:
    run = Path(run_dir)
    path = run / f"{name}.json"
    if not path.is_file():
        raise CheckpointError(f"{run} has no {path.name}: pass the RUN_DIR that `compalign-heads train ... --out RUN_DIR` wrote")
    meta = json.loads(path.read_text())
    if meta.get("schema") != SCHEMA:
        raise CheckpointError(f"{path} has schema {meta.get('schema')!r}, this compalign reads {SCHEMA!r}; retrain the head")
    if meta.get("head") not in list_heads():
        raise CheckpointError(f"{path} is a {meta.get('head')!r} head, which this compalign does not register "
                              f"(available: {', '.join(list_heads())})")
    return meta


def load_head(run_dir: str | Path, name: str = "head", map_location: str = "cpu") -> Head:
    """Rebuild the head of `run_dir` exactly (same config, same tensors); never unpickles."""
    run = Path(run_dir)
    meta = read_meta(run, name)
    head = create_head(meta["head"], **meta["head_config"])
    tensors = load_file(str(run / f"{name}.safetensors"), device=map_location) if (run / f"{name}.safetensors").is_file() else {}
    if isinstance(head, TorchHead):
        if not meta.get("dims"):
            raise CheckpointError(f"{run / (name + '.json')} has no `dims`; the checkpoint is incomplete, retrain the head")
        proj = {k[len(_SPEC):]: v.numpy() for k, v in tensors.items() if k.startswith(_SPEC)}
        dims = dict(meta["dims"])
        dims["layers"] = tuple(dims["layers"])
        head.build(CacheSpec(**dims, projections=proj))
    head.load_state_tensors({k: v for k, v in tensors.items() if not k.startswith(_SPEC)})
    head.trained_on = meta.get("trained_on")
    head._label = f"{meta['head']}@{run.name}"
    head.checkpoint = {"path": str(run), "train": meta.get("train"), "metrics": meta.get("metrics", {})}
    return head
