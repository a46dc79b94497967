"""Durable writes: a file appears whole under its final name or not at all, with the process umask's mode."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask_mode() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(p: Path) -> None:
    """fsync a file, or every file under a folder (a no-op for a path that does not exist)."""
    if p.is_file():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
        return
    if not p.exists():
        return
    for dirpath, _, files in os.walk(p):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())


def atomic_write_with(target: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `target`; it is made durable, then renamed over `target`.

    mkstemp creates 0600 files: the final file gets the mode any other file would (0666 minus the umask),
    so a checkpoint shared on a cluster is readable by the colleagues the umask allows.
    """
    target = Path(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _umask_mode())
        fsync_tree(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write(target: Path, data: str | bytes) -> None:
    atomic_write_with(target, lambda p: p.write_bytes(data.encode() if isinstance(data, str) else data))


def tree_bytes(p: Path) -> int:
    """Bytes on disk of a file, or of every file under a folder (0 for a path that does not exist)."""
    p = Path(p)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.exists() else 0
