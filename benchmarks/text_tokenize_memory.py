"""Peak memory and time of tokenising every caption: the whole table at once (before) vs chunks + shards (now).

Each way runs in its own process (ru_maxrss is per process) on M and 4M generated captions with the tiny
backbone's tokenizer; the peak is taken above the process's peak once the strings exist (the strings are
the plan's, held either way). "table" is `bb.tokenize(texts)`, what the runner did; "stream" is what it
does now: lengths measured in one pass 1,024 captions at a time, then each 256-row shard tokenised on its own
(here in this process; an extraction does both in its --workers processes, extract_overhead.py --zero-backbone).

    .venv/bin/python benchmarks/text_tokenize_memory.py [--m 20000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time
import numpy as np
from compalign.extract.backbones import load_backbone
from compalign.extract.runner import _token_lengths
way, m = sys.argv[1], int(sys.argv[2])
bb = load_backbone("tiny", None, device="cpu")
words = ["red", "blue", "small", "large", "circle", "square", "left", "of", "above", "a", "the", "green", "triangle"]
rng = np.random.default_rng(0)
texts = [" ".join(rng.choice(words, size=rng.integers(3, 30))) + f" {i}" for i in range(m)]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.process_time()  # CPU time: wall time on a shared machine measures the neighbours
if way == "table":
    tok = bb.tokenize(texts)
    lengths = tok.lengths.numpy()
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, m, 256):
        ids = tok.ids[order[lo:lo + 256]]
else:
    lengths, truncated, _ = _token_lengths(bb, texts, 0)  # in this process: its peak and CPU time are the way's
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, m, 256):
        ids = bb.token_ids([texts[i] for i in order[lo:lo + 256]])
seconds = time.process_time() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"above_mib": (peak - base) / 1024, "seconds": seconds}))
"""


def run(way: str, m: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, way, str(m)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--m", type=int, default=20000, help="captions in the small run (the large one has 4x)")
    args = ap.parse_args()
    rows = {(way, m): run(way, m) for way in ("table", "stream") for m in (args.m, 4 * args.m)}
    for (way, m), r in rows.items():
        print(f"{way:6s} M={m:7d}: {r['above_mib']:7.1f} MiB above the strings, {r['seconds']:6.1f} CPU s")
    for way in ("table", "stream"):
        small, large = rows[way, args.m], rows[way, 4 * args.m]
        print(f"{way}: peak at 4M / at M = {large['above_mib'] / max(small['above_mib'], 1e-3):.2f}")
    print(f"stream / table time at 4M: {rows['stream', 4 * args.m]['seconds'] / rows['table', 4 * args.m]['seconds']:.2f}")


if __name__ == "__main__":
    main()
