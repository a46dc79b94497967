"""Find a command's cache or trained run in the workspace when the flag is not given.

The workspace is the folder the command runs in: `make extract` writes `caches/MODEL-DATA.zarr`, and
`compalign-heads train HEAD` writes `runs/HEAD` by default. A command that needs a cache of one data kind
takes the only such store under `caches/`; several or none is a message listing what is there and the
flag to pass. Nothing is guessed across kinds.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core import InputError

CACHES, RUNS = Path("caches"), Path("runs")


def _kind(store: Path) -> str | None:
    """The data kind a store was extracted from (None: not a compalign store), read without opening arrays."""
    try:
        if store.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(store, "r") as f:
                attrs = json.loads(f.attrs["compalign"])
        else:
            attrs = json.loads((store / "zarr.json").read_text())["attributes"]
        return attrs["source"]["kind"] if str(attrs.get("schema", "")).startswith("compalign.cache/") else None
    except (OSError, KeyError, ValueError):
        return None


def stores(kind: str | None = None) -> list[tuple[Path, str]]:
    """(path, kind) of every store under caches/, of `kind` when given."""
    found = [(p, _kind(p)) for p in sorted([*CACHES.glob("*.zarr"), *CACHES.glob("*.h5")])] if CACHES.is_dir() else []
    return [(p, k) for p, k in found if k is not None and (kind is None or k == kind)]


def find_cache(kind: str | None, what: str) -> Path:
    """The only store of `kind` (any kind when None) under caches/; else a message naming --cache."""
    found = stores(kind)
    if len(found) == 1:
        return found[0][0]
    label = f"{kind} " if kind else ""
    if found:
        listed = ", ".join(f"{p} ({k})" for p, k in found)
        raise InputError(f"{len(found)} {label}caches under {CACHES}/ ({listed}); pass the one {what} with --cache")
    there = ", ".join(f"{p} ({k})" for p, k in stores()) or "none"
    raise InputError(f"no {label}cache under {CACHES}/ for {what} (caches there: {there}); make one with "
                     f"`make extract MODEL=... DATA={kind or 'pairs'} ROOT=...` or pass --cache")


def find_run(head: str) -> Path | None:
    """The only run under runs/ whose head.json is a `head` head (None when there is none; several: a message)."""
    if not RUNS.is_dir():
        return None
    found = []
    for meta in sorted(RUNS.glob("*/head.json")):
        try:
            if json.loads(meta.read_text()).get("head") == head:
                found.append(meta.parent)
        except (OSError, ValueError):
            continue
    if len(found) > 1:
        raise InputError(f"{len(found)} trained {head} runs under {RUNS}/ ({', '.join(map(str, found))}); "
                         "pass the one to score with --checkpoint")
    return found[0] if found else None
