"""Scoring `global` on all 7,511 SugarCrepe items from a ready cache: in process, and the whole CLI call.

The cache is the real SugarCrepe JSONs with a generated image at every COCO file name, extracted once
with the tiny backbone (the backbone does not matter: scoring reads only the cache). The in-process
time is `create_benchmark("sugarcrepe").evaluate(CacheReader(store), create_head("global"))`, best of
`--repeat`; the CLI time is `compalign-heads score --bench sugarcrepe --cache STORE` in a subprocess,
start-up included, without and with the 1,000-replicate bootstrap (the default). Goal: in process < 1 s.

    .venv/bin/python benchmarks/score_speed.py [--work caches/bench-score] [--repeat 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import log, sugarcrepe_standin

from compalign.cache import CacheReader
from compalign.evaluate.benchmarks import create_benchmark
from compalign.extract.runner import ExtractConfig, extract
from compalign.heads import create_head


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("caches/bench-score"))
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    root = sugarcrepe_standin(a.work / "sugarcrepe", size=(64, 64))
    store = a.work / "tiny-sugarcrepe.zarr"
    if not store.exists():
        extract(ExtractConfig(model="tiny", data="sugarcrepe", root=str(root), out=str(store), batch_size=256, workers=1))
    best = float("inf")
    for _ in range(a.repeat):
        t = time.perf_counter()
        result = create_benchmark("sugarcrepe").evaluate(CacheReader(store), create_head("global"))
        best = min(best, time.perf_counter() - t)
    log(f"in process: {result.counts['items']} items scored in {best * 1e3:.0f} ms (best of {a.repeat}); "
        f"goal < 1000 ms: ratio {best / 1.0:.2f} of the goal")
    cli = Path(sys.executable).with_name("compalign-heads")
    for extra in (["--bootstrap", "0"], ["--bootstrap", "1000"]):
        t = time.perf_counter()
        done = subprocess.run([str(cli), "score", "--bench", "sugarcrepe", "--cache", str(store), *extra],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        if done.returncode == 0:
            log(f"CLI {' '.join(['score', *extra])}: {wall:.2f} s wall, start-up and printing included")
        else:
            log(f"CLI {' '.join(['score', *extra])}: exit {done.returncode} ({done.stderr.strip().splitlines()[-1]})")


if __name__ == "__main__":
    main()
