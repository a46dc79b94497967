"""First evaluation of all 7 SugarCrepe subsets: compalign (extract + score) vs CLIP_benchmark.

Same model (a seeded random-init checkpoint, so nothing is downloaded), same stand-in images at
the real COCO file names, same machine, both fp32 on CPU. CLIP_benchmark encodes every item's
image and both captions (7,511 images, 15,022 captions); compalign encodes unique content once
(1,560 / 11,844) and cuts causal text at the longest caption of each length-sorted batch.

CLIP_benchmark is not a dependency: install it aside, e.g.
    .venv/bin/pip install --target .bench-deps clip-benchmark requests pycocoevalcap scikit-learn
    PYTHONPATH=.bench-deps .venv/bin/python benchmarks/vs_clip_benchmark.py [--work /tmp/vscb]
It prints both wall times, the ratio, and both tools' per-subset accuracies (which must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import log, random_checkpoint, sugarcrepe_standin

SUBSETS = ("add_att", "add_obj", "replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj")


CPU: dict[str, float] = {}


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds; CPU seconds of the process tree go to CPU[cmd[0]] (fair on a shared machine)."""
    log("$", " ".join(cmd))
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU[" ".join(cmd[:4])] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    log(f"  {wall:.1f} s wall, {list(CPU.values())[-1]:.1f} s CPU")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", type=Path, default=Path("/tmp/compalign-vs-clip-benchmark"))
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    root = sugarcrepe_standin(args.work / "sugarcrepe")
    ckpt = random_checkpoint(args.model, args.work / f"{args.model}-random.pt")
    env = dict(os.environ)
    bin_dir = Path(sys.executable).parent

    # CLIP_benchmark: the seven sugar_crepe/* runs, one invocation (model loaded per dataset, as it does)
    cb_out = args.work / "cb"
    shutil.rmtree(cb_out, ignore_errors=True)
    cb_out.mkdir(parents=True)
    cb_cmd = [sys.executable, "-m", "clip_benchmark.cli", "eval", "--model", args.model, "--pretrained", str(ckpt),
              "--dataset", *[f"sugar_crepe/{s}" for s in SUBSETS], "--dataset_root", str(root),
              "--task", "image_caption_selection", "--batch_size", str(args.batch_size),
              "--num_workers", str(args.workers), "--no_amp",
              "--output", str(cb_out / "{dataset}.json")]
    t_cb = timed(cb_cmd, env)

    # compalign: extract once (unique content) + score
    store = args.work / "compalign.zarr"
    shutil.rmtree(store, ignore_errors=True)
    t_ex = timed([str(bin_dir / "compalign"), "extract", "--model", args.model, "--pretrained", str(ckpt),
                  "--data", "sugarcrepe", "--root", str(root), "--out", str(store), "--device", "cpu",
                  "--batch-size", str(args.batch_size), "--workers", str(args.workers)], env)
    scores = args.work / "compalign.json"
    t_sc = timed([str(bin_dir / "compalign-heads"), "score", "--bench", "sugarcrepe", "--cache", str(store),
                  "--json", str(scores)], env)
    ours = json.loads(scores.read_text())["metrics"]
    print(f"{'subset':12s} {'CLIP_benchmark':>15s} {'compalign':>10s}")
    for s in SUBSETS:
        f = next(cb_out.rglob(f"*{s}*.json"))
        theirs = 100 * json.loads(f.read_text())["metrics"]["text_acc"]
        print(f"{s:12s} {theirs:15.2f} {ours[s]:10.2f}")
    total = t_ex + t_sc
    print(f"CLIP_benchmark (7 runs): {t_cb:.1f} s")
    print(f"compalign extract + score: {total:.1f} s (extract {t_ex:.1f} s, score {t_sc:.1f} s)")
    print(f"speed-up: {t_cb / total:.2f}x (wall)")
    cpu = list(CPU.values())
    print(f"CPU seconds: CLIP_benchmark {cpu[0]:.0f}, compalign {cpu[1] + cpu[2]:.0f} -> {cpu[0] / (cpu[1] + cpu[2]):.2f}x")


if __name__ == "__main__":
    main()
