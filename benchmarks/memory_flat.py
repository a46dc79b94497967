"""Peak RSS of extraction, training and scoring at two store sizes: it must not grow with the rows.

Each stage runs in its own process (ru_maxrss is per process) on N and 4N generated images with
the tiny backbone, under the CLI's heap policy (core/memory.py). Prints both peaks and their ratio
(flat ~ 1.0; what grows is what holds rows).

    .venv/bin/python benchmarks/memory_flat.py [--n 1000] [--times 4] [--heap keep|default] [--stages extract,train,score]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from common import coco_like_image

CHILD = """
import resource, sys, json
from compalign.core.memory import keep_freed_memory
if sys.argv[4] == "keep":
    keep_freed_memory()  # as every CLI command does
from compalign.extract.runner import ExtractConfig, extract
from compalign.cache import open_cache
from compalign.heads import create_head
from compalign.evaluate.scoring import score_pairs
stage, root, out = sys.argv[1:4]
if stage == "extract":
    extract(ExtractConfig(model="tiny", data="pairs", root=root, out=out, workers=1, batch_size=128))
elif stage == "train":  # a local head on the patches and tokens: the heaviest reads training makes
    from compalign.heads.train import TrainConfig, train_head
    cfg = TrainConfig(steps=60, batch_size=64, eval_every=30, device="cpu", n_hard=0, losses={"infonce": 1.0})
    train_head("tflocal_tiny", out, out + ".run", cfg)
else:
    r = open_cache(out)
    it = r.items
    s = score_pairs(r, create_head("global"), it["image"], it["caption"])
    for rows, vals in r.batches("images", "patches", batch_size=256, shuffle=True):
        pass  # a full streamed pass over the largest array
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


STAGES = ("extract", "train", "score")


def make(root: Path, n: int) -> None:
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        p = root / "img" / f"{i:06d}.jpg"
        if not p.exists():
            coco_like_image(i, (96, 128)).save(p, quality=85)
        rows.append({"image": f"img/{i:06d}.jpg", "caption": f"picture {i} of a red circle left of a blue square"})
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows))


def peak(stage: str, root: Path, out: Path, heap: str = "keep") -> float:
    res = subprocess.run([sys.executable, "-c", CHILD, stage, str(root), str(out), heap], capture_output=True, text=True,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--times", type=int, default=4, help="the second size is N x this")
    ap.add_argument("--heap", default="keep", choices=["keep", "default"], help="the CLI's heap policy or glibc's own")
    ap.add_argument("--stages", default=",".join(STAGES), help="which of extract,train,score (train and score need extract)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/compalign-memory"))
    args = ap.parse_args()
    stages = [s for s in STAGES if s in args.stages.split(",")]
    results = {}
    for n in (args.n, args.times * args.n):
        root, out = args.work / f"data{n}", args.work / f"store{n}.zarr"
        make(root, n)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(f"{out}.run", ignore_errors=True)
        results[n] = [peak(stage, root, out, args.heap) for stage in stages]
        print(f"{n:6d} rows (heap {args.heap}): " + ", ".join(f"{s} peak {v:7.1f} MiB" for s, v in zip(stages, results[n])))
    a, b = results[args.n], results[args.times * args.n]
    print(f"{args.times}x the rows: " + ", ".join(f"{s} peak x{y / x:.2f}" for s, x, y in zip(stages, a, b)) + " (flat ~ 1.0)")


if __name__ == "__main__":
    main()
