"""Region scoring from the cache: what a re-score costs against re-encoding the crops, and roi against global.

A generated shapes world's test_id SugarCrepe split is extracted twice with the same backbone, caption
segments in both (`--segments rules`): without crops, and with `--crops grid` (18 boxes per image). Their
time difference is what encoding the crops costs (decode workers, forwards, writing): what a method that
re-encodes crops pays at every score. Against it:
  (a) re-scoring SugarCrepe with `regions_crops` from the cache (a fresh reader each time, best of --repeat);
      goal: the crops' encoding >= 1000x the re-score;
  (b) the `regions_roi` scoring pass (patch tokens pooled over the same grid, projected) against the `global`
      pass on the same store; goal <= 2x. Also printed: regions_crops against global, and the extraction
      cost of --crops grid against none;
  (c) from the images to the scores: one extraction + the scoring pass, for global, regions_roi (no extra
      backbone pass) and regions_crops (a forward per box).
The machine's load average is printed with the figures: on a shared 2-core machine torch's intra-op threads
wait on each other (measured at load 6.8: the region heads' torch steps 5-10x slower than with one thread),
which `--threads 1` takes out of the scoring figures.

    .venv/bin/python benchmarks/regions.py [--work caches/bench-regions] [--scenes 300] [--repeat 5] [--model tiny]
                                           [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from common import log

from compalign.cache import CacheReader
from compalign.evaluate.benchmarks import create_benchmark
from compalign.extract.backbones import load_backbone
from compalign.extract.runner import ExtractConfig, extract
from compalign.heads import create_head
from compalign.shapes import WorldConfig, write_world


def _extract(root: Path, out: Path, model: str, crops: str) -> float:
    t = time.perf_counter()
    extract(ExtractConfig(model=model, data="sugarcrepe", root=str(root), out=str(out), segments="rules", crops=crops,
                          workers=1, overwrite=True))
    return time.perf_counter() - t


def _score(store: Path, head: str, repeat: int) -> tuple[float, int]:
    """(best seconds of one whole SugarCrepe scoring pass from a fresh reader, items scored)."""
    best, n = float("inf"), 0
    for _ in range(repeat):
        t = time.perf_counter()
        result = create_benchmark("sugarcrepe").evaluate(CacheReader(store), create_head(head))
        best, n = min(best, time.perf_counter() - t), result.counts["items"]
    return best, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("caches/bench-regions"))
    ap.add_argument("--scenes", type=int, default=300, help="test_id scenes of the generated world")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--model", default="tiny", help="any `compalign extract --model` (an open_clip name alone: random "
                                                    "init, offline); (a) grows with the tower's cost per crop")
    ap.add_argument("--threads", type=int, default=0, help="torch threads while scoring (0: torch's default)")
    a = ap.parse_args()
    world = a.work / "world"
    write_world(WorldConfig(n_train=2, n_test_id=a.scenes, n_test_ood=2), world)  # reused when it is already there
    root = world / "test_id" / "sugarcrepe"
    plain, grid = a.work / "plain.zarr", a.work / "grid.zarr"
    load_backbone(a.model)  # the first load (imports, weights into the page cache) is not timed
    t_plain = _extract(root, plain, a.model, "none")
    t_grid = _extract(root, grid, a.model, "grid")
    r = CacheReader(grid)
    n_img, n_crops = r.layout.n_images, r.read("images", "regions/crops", [0]).shape[1]
    encode = t_grid - t_plain
    log(f"extraction of {n_img} images, {r.layout.n_texts} captions + segments ({a.model}): none {t_plain:.2f} s, "
        f"--crops grid {t_grid:.2f} s ({n_img * n_crops} crops): {t_grid / t_plain:.1f}x; the crops cost {encode:.2f} s")
    if a.threads:
        torch.set_num_threads(a.threads)
    times = {h: _score(grid, h, a.repeat) for h in ("global", "regions_crops", "regions_roi")}
    log(f"scoring with {torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t_crops, items = times["regions_crops"]
    log(f"(a) re-score {items} SugarCrepe items with regions_crops from the cache: {t_crops * 1e3:.1f} ms (best of "
        f"{a.repeat}); re-encoding the crops: {encode:.2f} s; ratio {encode / t_crops:.0f}x (goal >= 1000x)")
    t_global, t_roi = times["global"][0], times["regions_roi"][0]
    log(f"(b) scoring pass: global {t_global * 1e3:.1f} ms, regions_roi {t_roi * 1e3:.1f} ms: {t_roi / t_global:.2f}x "
        f"(goal <= 2x); regions_crops {t_crops / t_global:.2f}x global")
    # What each region kind costs from the images to a score: roi needs the one backbone pass global needs, crops
    # one more forward per box.
    log(f"(c) images to scores: global {t_plain + t_global:.2f} s, regions_roi {t_plain + t_roi:.2f} s "
        f"({(t_plain + t_roi) / (t_plain + t_global):.2f}x global), regions_crops {t_grid + t_crops:.2f} s "
        f"({(t_grid + t_crops) / (t_plain + t_global):.2f}x global)")


if __name__ == "__main__":
    main()
