"""Causal text towers: encoding up to the longest caption of a length-sorted batch vs the full context.

Same model (random-init ViT-B-32), same captions (SugarCrepe's unique captions, a sample), same
batch size, same process. Prints the speed-up and the largest relative difference of the pooled
embeddings (tokens after end-of-text cannot change a causal tower's EOT output).

    .venv/bin/python benchmarks/text_cut.py [--n 2048] [--batch-size 128]
"""

from __future__ import annotations

import argparse
import gzip
import json
import time

import numpy as np
from common import SUGARCREPE_JSONS

from compalign.extract.backbones import load_backbone


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()
    texts: set[str] = set()
    for gz in sorted(SUGARCREPE_JSONS.glob("*.json.gz")):
        for row in json.loads(gzip.decompress(gz.read_bytes())).values():
            texts.update((row["caption"], row["negative_caption"]))
    texts_l = sorted(texts)
    rng = np.random.default_rng(0)
    sample = [texts_l[i] for i in rng.choice(len(texts_l), size=min(args.n, len(texts_l)), replace=False)]
    bb = load_backbone(args.model, "none")
    tok = bb.tokenize(sample)
    order = np.argsort(tok.lengths.numpy(), kind="stable")
    B = args.batch_size

    def run(cut: bool) -> tuple[float, np.ndarray]:
        out = np.zeros((len(sample), bb.meta["embed_dim"]), np.float32)
        t0 = time.perf_counter()
        for b in range(0, len(order), B):
            idx = order[b:b + B]
            L = int(tok.lengths[idx].max()) if cut else bb.context_length
            out[idx] = bb.encode_texts(tok.ids[idx, :L], [-1]).global_.numpy()
        return time.perf_counter() - t0, out

    run(True)  # warm-up
    t_full, full = run(False)
    t_cut, cut = run(True)
    t_full2, _ = run(False)  # bracket the cut run: drift on a shared machine hits both
    t_full = (t_full + t_full2) / 2
    rel = np.abs(cut - full).max() / np.abs(full).max()
    lengths = tok.lengths.numpy()
    print(f"{args.model} (random init), {len(sample)} SugarCrepe captions, batch {B}, "
          f"mean length {lengths.mean():.1f} tokens (context {bb.context_length})")
    print(f"full context: {t_full:.2f} s, cut at the batch's longest caption: {t_cut:.2f} s -> {t_full / t_cut:.2f}x")
    print(f"max relative difference of pooled embeddings: {rel:.2e}")


if __name__ == "__main__":
    main()
