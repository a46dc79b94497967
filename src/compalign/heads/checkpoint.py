"""Head checkpoints: safetensors (tensors) + JSON (head config, cache shape, training config, cache identity).

    RUN_DIR/head.safetensors   the head's tensors (+ the cache projections it was built with, `spec.*`)
    RUN_DIR/head.json          {"schema", "head", "head_config", "dims", "trained_on", "train", "metrics", "versions"}

Loading never unpickles: JSON and safetensors only. A loaded head remembers which backbone's cache
it was trained on (`trained_on`) and refuses to score a cache of another backbone, naming both.
Files are written to a temporary name and renamed, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..core import CompalignError, InputError, atomic_write, atomic_write_with
from .base import CacheSpec, Head, TorchHead, create_head, list_heads

SCHEMA = "compalign.head/1"
WEIGHTS, META = "head.safetensors", "head.json"
_SPEC = "spec."  # prefix of the cache projections stored beside the head's own tensors


class CheckpointError(CompalignError, ValueError):
    """A run directory that is missing, incomplete or from another schema; the message names the fix."""


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write_with(path, lambda p: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(p)))


def read_json(path: Path) -> dict[str, Any]:
    """A run directory's JSON file, or a CheckpointError naming it (never a bare JSONDecodeError)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged: retrain the head, "
                              "or restore the file from where it was copied") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint's JSON object; retrain the head")
    return obj


def read_tensors(path: Path, map_location: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=map_location)
    except SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it is truncated or damaged: "
                              "copy it again or retrain the head") from None


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
    meta = read_json(path)
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
    try:
        head = create_head(meta["head"], **(meta.get("head_config") or {}))
    except InputError as e:
        raise CheckpointError(f"{run / (name + '.json')}: its head_config does not build a head ({e}); "
                              "fix the file or retrain the head") from None
    weights = run / f"{name}.safetensors"
    tensors = read_tensors(weights, map_location) if weights.is_file() else {}
    if isinstance(head, TorchHead):
        if not meta.get("dims"):
            raise CheckpointError(f"{run / (name + '.json')} has no `dims`; the checkpoint is incomplete, retrain the head")
        proj = {k[len(_SPEC):]: v.numpy() for k, v in tensors.items() if k.startswith(_SPEC)}
        dims = dict(meta["dims"])
        dims["layers"] = tuple(dims["layers"])
        head.build(CacheSpec(**dims, projections=proj))
    try:
        head.load_state_tensors({k: v for k, v in tensors.items() if not k.startswith(_SPEC)})
    except InputError as e:
        raise CheckpointError(f"{weights} does not fit {run / (name + '.json')} ({e}); the two files come from "
                              "different runs: copy the run directory again, whole") from None
    head.trained_on = meta.get("trained_on")
    head._label = f"{meta['head']}@{run.name}"
    head.checkpoint = {"path": str(run), "train": meta.get("train"), "metrics": meta.get("metrics", {})}
    return head
