"""Open the store a run resumes, or create it; and say which shards are still to do.

Resume is what makes a long extraction safe to kill, so its rules live apart from the encoding loops:
a store is resumed only if everything that changes stored values (backbone, extraction settings, the
data's fingerprint) is what it was; a store holding no finished shard is simply replaced; a done shard
that fails its checksums loses its marker and is redone. A new store is built in a side folder and
renamed into place, so a crash during creation never leaves a half-made store at `--out`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import torch

from .. import __version__
from ..cache.location import Location, location
from ..cache.store import CacheError, Layout, create_store, damaged_shards, done_shards, n_shards, open_store
from ..core import InputError
from .backbones import Backbone
from .config import ExtractConfig
from .crops import CropPlan
from .sources import Plan, text_key
from .target import creation_cut_short, is_store, remove_store

log = logging.getLogger(__name__)


def _shape_probe(bb: Backbone, layers: list[int], device: str) -> tuple[int, int, int]:
    size = bb.meta["image_size"]
    out = bb.encode_images(torch.zeros(1, 3, *size, device=device), layers[:1])
    p = out.patches[layers[0]]
    return p.shape[1], out.prefix[layers[0]].shape[1], p.shape[2]


def _fits(layers: list[int], depth: int) -> list[int]:
    return [l for l in layers if -depth <= l < depth]


def _tower_layers(cfg: ExtractConfig, bb: Backbone) -> tuple[list[int], list[int]]:
    """Each tower keeps the requested layers it has (a 12-block image tower, a 3-block text tower)."""
    img, txt = _fits(cfg.layers, bb.image_depth), _fits(cfg.layers, bb.text_depth)
    missing = [l for l in cfg.layers if l not in img and l not in txt]
    if missing:
        raise InputError(f"--layers {missing} exceed both towers (image {bb.image_depth} blocks, text {bb.text_depth})")
    for l in cfg.layers:
        if l not in img or l not in txt:
            log.warning("layer %d is kept for the %s tower only", l, "image" if l in img else "text")
    return img, txt


def _settings(cfg: ExtractConfig, text_len: int, crops: CropPlan | None = None) -> dict[str, Any]:
    # Everything that changes stored values; a resume must match it exactly.
    out = {"layers": cfg.layers, "precision": cfg.precision, "batch_size": cfg.batch_size,
           "shard_rows": cfg.shard_rows, "chunk_rows": cfg.chunk_rows, "text_len": text_len}
    if cfg.exif_transpose:  # only when on, so stores made before the option existed still resume
        out["exif_transpose"] = True
    if cfg.decode != "exact":  # likewise: fast and gpu decoding change the pixels a little
        out["decode"] = cfg.decode
    if cfg.decode == "fast":  # drafts resized over the image's exact extent (core.decode.Draft): a store made
        out["draft_extent"] = "exact"  # before, when they were stretched by a partial pixel, must not be resumed
    if cfg.segments != "none":  # likewise
        out["segments"] = cfg.segments
    if crops is not None:  # likewise; the boxes themselves (grid) or their digest (oracle), not just the spec
        out["crops"] = crops.settings()
    return out


def _diff(have: Any, want: Any, at: str = "") -> str:
    """The first field where two attr dicts differ, as `field: stored vs now` (plain values before lists and
    dicts, so `crops.spec` is named before the boxes it implies; long values cut short)."""
    if isinstance(have, dict) and isinstance(want, dict):
        nested = lambda k: isinstance(have.get(k), (dict, list)) or isinstance(want.get(k), (dict, list))  # noqa: E731
        for k in sorted(set(have) | set(want), key=lambda k: (nested(k), k)):
            if json.dumps(have.get(k)) != json.dumps(want.get(k)):
                return _diff(have.get(k), want.get(k), f"{at}{k}.")
    return f"{at.rstrip('.')} is {_short(have)} in the store, {_short(want)} now"


def _short(value: Any, most: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= most else text[:most - 3] + "..."


def _drop_damaged(out: Location) -> list[str]:
    """Verify every done shard against its marker's checksums; a damaged one loses its marker and is redone.

    In object storage a resume compares sizes only: checksums would download the whole store, and an object
    is whole or absent (a PUT is atomic); `compalign cache info --verify` still reads and checks every byte."""
    notes = []
    for (kind, s), problems in damaged_shards(out, checksums=out.local).items():
        (out / ".done" / kind / f"{s:06d}").unlink()
        notes.append(f"{kind} shard {s} was damaged ({'; '.join(problems)}): rewritten")
        log.warning("%s", notes[-1])
    return notes


def open_or_create(cfg: ExtractConfig, bb: Backbone, plan: Plan, order: np.ndarray,
                   text_len: int, device: str, crops: CropPlan | None = None) -> list[str]:
    """Notes on what was replaced or repaired, once the store at --out is ready; `order` is the stored caption order;
    `crops` the boxes `--crops` encodes (their arrays are created beside the image features)."""
    out = location(cfg.out, cfg.storage_options)
    attrs = {
        "compalign_version": __version__,
        "backbone": bb.meta,
        "extraction": _settings(cfg, text_len, crops),
        "source": {"kind": plan.kind, "root": plan.root, "fingerprint": plan.fingerprint,
                   "problems": plan.problems, "notes": plan.notes, "info": plan.info,
                   "n_items": len(next(iter(plan.items.values()), []))},
    }
    notes: list[str] = []
    if is_store(out) and not cfg.overwrite:
        root = open_store(out, "r+")
        have = dict(root.attrs)
        same = lambda k: json.loads(json.dumps(have.get(k))) == json.loads(json.dumps(attrs[k]))  # noqa: E731
        differs = [k for k in ("backbone", "extraction") if not same(k)]
        if have["source"]["fingerprint"] != plan.fingerprint:
            differs.append("source")
        if differs and not (done_shards(out, "images") or done_shards(out, "texts")):
            # Nothing was extracted into it yet (a start that failed): replacing it loses nothing.
            notes.append(remove_store(out) + ": it held no finished shard and was made with other settings")
        elif differs:
            k = differs[0]
            what = (f"another version of the data (source fingerprint {have['source']['fingerprint']} vs {plan.fingerprint})"
                    if k == "source" else f"a different {k}: " + _diff(have.get(k), attrs[k]))
            raise CacheError(f"{out} holds {what}; pass --overwrite to start again, or --out a new store")
        else:
            # A run killed mid-write leaves zarr's temporary '*.partial' chunk files behind, and a done marker's
            # temporary file (atomic_write's '.NAME.*.tmp'); the chunk or marker they were meant to become is
            # rewritten by this run, so they are garbage (one writer per store; under torchrun the others wait).
            # An object PUT leaves no such file: it lands whole or not at all.
            for stale in [*out.path.rglob("*.partial"), *out.path.glob(".done/*/.*.tmp")] if out.local else ():
                stale.unlink()
            notes += _drop_damaged(out)
            return notes
    elif is_store(out):
        notes.append(remove_store(out))
    elif creation_cut_short(out):  # create_store replaces what is there
        notes.append(f"replaced {out}: its creation had been cut short")
    n_patches, n_prefix, width = _shape_probe(bb, cfg.layers, device)
    img_layers, txt_layers = _tower_layers(cfg, bb)
    lay = Layout(n_images=len(plan.images), n_texts=len(plan.texts), embed_dim=bb.meta["embed_dim"],
                 n_patches=n_patches, n_prefix=n_prefix, image_width=width, text_len=text_len,
                 text_width=bb.meta["text_width"], layers=img_layers, shard_rows=cfg.shard_rows,
                 chunk_rows=cfg.chunk_rows, text_layers=txt_layers)
    proj = {{"image_proj": "image", "text_proj": "text", "text_proj_bias": "text_bias"}[k]: v.numpy()
            for k, v in bb.projections().items()}
    attrs["projections"] = {"image": "image" in proj, "text": "text" in proj,
                            "note": "towers pooled by an attention head (MAP) have no linear token map"}
    attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # Build in a side folder and rename: a crash during creation leaves no half-made store behind. Object storage
    # has no rename: there it is built in place, and is a store only once its root attrs are written (create_store).
    tmp = out.sibling(out.name + ".creating") if out.local else out
    if out.local and tmp.exists():
        tmp.rmtree()
    texts = [plan.texts[i] for i in order]
    create_store(tmp, lay, attrs, plan.items, [r.key for r in plan.images], [r.origin for r in plan.images],
                 [text_key(t) for t in texts], texts, proj, plan.segments,
                 crops.arrays(lay.embed_dim) if crops is not None else None, token_codec=cfg.token_codec)
    if out.local:
        tmp.path.rename(out.path)  # an empty folder at `out` is replaced by the rename
    return notes


def pending_shards(out: Location, kind: str, n_rows: int, shard_rows: int) -> tuple[list[int], int]:
    """(shards of `kind` without a done marker, how many have one)."""
    done = done_shards(out, kind)  # type: ignore[arg-type]
    todo = [s for s in range(n_shards(n_rows, shard_rows)) if s not in done]
    return todo, n_shards(n_rows, shard_rows) - len(todo)
