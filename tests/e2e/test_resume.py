"""Kill extraction with SIGKILL at random moments, resume, and get the uninterrupted store byte for byte."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import zarr
from conftest import make_images

RUN = """
import sys
from compalign.extract.runner import ExtractConfig, extract
extract(ExtractConfig(model="tiny", data="pairs", root=sys.argv[1], out=sys.argv[2], workers=int(sys.argv[3]),
                      batch_size=4, shard_rows=8, layers=[-1, -2]))
"""


def _run(root: Path, out: Path, workers: int = 0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(root), str(out), str(workers)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    out = {}

    def walk(g: zarr.Group, prefix: str) -> None:
        for name, a in g.arrays():
            out[prefix + name] = a[:]
        for name, sub in g.groups():
            walk(sub, prefix + name + "/")

    with warnings.catch_warnings():  # .done (markers) is not a Zarr node
        warnings.simplefilter("ignore")
        walk(zarr.open_group(str(path), mode="r"), "")
    return out


def _done(path: Path) -> int:
    return sum(1 for _ in (path / ".done").rglob("0*")) if (path / ".done").exists() else 0


def _chunk_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("c/**/*")) if p.is_file()}


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path):
    root = tmp_path / "data"
    names = [f"{i:03d}.png" for i in range(160)]
    make_images(root / "img", names, size=(48, 48))
    rows = [{"image": f"img/{n}", "caption": f"caption number {i} " + "word " * (i % 9)} for i, n in enumerate(names)]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))

    ref = tmp_path / "ref.zarr"
    p = _run(root, ref)
    assert p.wait() == 0, p.stderr.read().decode()

    # Kill at random moments of the run: each kill waits for a random number of finished shards
    # (so kills land while shards are being written, at different points) plus a random delay.
    out = tmp_path / "killed.zarr"
    rng = np.random.default_rng(0)
    total = 2 * 160 // 8  # text shards + image shards
    targets = sorted(rng.choice(np.arange(1, total - 5), size=5, replace=False).tolist())
    done_at_kill = []
    for attempt, target in enumerate(targets):
        p = _run(root, out, workers=attempt % 2)
        while p.poll() is None and _done(out) < target:
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))
        assert p.poll() is None, "the run finished before it could be killed"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        done_at_kill.append(_done(out))
    assert len(done_at_kill) == 5 and 0 < done_at_kill[-1] < total
    p = _run(root, out)
    assert p.wait() == 0, p.stderr.read().decode()

    a, b = _arrays(ref), _arrays(out)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
    assert _chunk_files(ref) == _chunk_files(out)  # the files themselves, byte for byte
    assert not (tmp_path / "killed.zarr.creating").exists()
