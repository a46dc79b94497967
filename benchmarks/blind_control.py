"""The blind (text-only) control on the real SugarCrepe captions and on the demo world's benchmarks.

How much of a benchmark can be solved from its captions alone? For each backbone, the 7 real SugarCrepe files are
extracted (their captions are what matters: the images are generated stand-ins, which `blind` never reads) and
the blind head is cross-validated on the benchmark's own items (`score --head blind --folds K`). With `--demo DIR`
(a `make demo` or `make study` output folder), the world's test caches are scored the same way.

No pretrained weights can be downloaded here, so the text towers are the shipped tiny backbone (trained on the
synthetic world's captions) and a random-initialised ViT-B-16: lower bounds on what a real text encoder's
features allow. With weights, run it with `--models clip` (any preset or open_clip name).

    .venv/bin/python benchmarks/blind_control.py [--models tiny,ViT-B-16] [--folds 5] [--demo demo]
    .venv/bin/python benchmarks/blind_control.py --models "" --demo study     # the world's caches only
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import log, sugarcrepe_standin

from compalign.cache.reader import CacheReader
from compalign.evaluate.benchmarks import create_benchmark
from compalign.evaluate.blind import cross_validate_blind
from compalign.extract.runner import ExtractConfig, extract
from compalign.heads import create_head

SHOWN = {"sugarcrepe": ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj", "add_att", "add_obj",
                        "macro", "bow_proof/swap_att", "bow_proof/swap_obj", "bow_proof/micro"),
         "bivlc": ("Ipos2T", "Ineg2T", "I2T", "T2I", "Group")}


def row(label: str, metrics: dict[str, float], names: tuple[str, ...]) -> str:
    return f"| {label} | " + " | ".join(f"{metrics.get(n, float('nan')):.1f}" for n in names) + " |"


def header(names: tuple[str, ...]) -> str:
    return "| | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny,ViT-B-16", help="comma-separated presets / open_clip names")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path("caches/blind-control"), help="stand-in data and caches")
    ap.add_argument("--demo", type=Path, default=None, help="a `make demo` output folder: also score its world caches")
    args = ap.parse_args()
    models = [m for m in args.models.split(",") if m]
    if models:
        print("## SugarCrepe (real captions), blind cross-validated, %\n")
        print(header(SHOWN["sugarcrepe"]))
        root = sugarcrepe_standin(args.work / "sugarcrepe", size=(32, 32))
    for model in models:
        store = args.work / f"{model}-sugarcrepe.zarr"
        pretrained = None if model in ("tiny", "clip", "siglip2", "pe-core", "clip-b16") else "none"
        t0 = time.perf_counter()
        extract(ExtractConfig(model=model, pretrained=pretrained, data="sugarcrepe", root=str(root), out=str(store),
                              batch_size=128, workers=1))
        log(f"{model}: extracted in {time.perf_counter() - t0:.0f}s")
        reader = CacheReader(store)
        bench = create_benchmark("sugarcrepe")
        t0 = time.perf_counter()
        blind = cross_validate_blind(bench, reader, folds=args.folds)
        log(f"{model}: {args.folds}-fold blind in {time.perf_counter() - t0:.0f}s")
        label = model if pretrained is None else f"{model} (random init)"
        print(row(f"{label}: blind", blind.metrics, SHOWN["sugarcrepe"]))
        print(row(f"{label}: global", bench.evaluate(reader, create_head("global")).metrics, SHOWN["sugarcrepe"]))
    if args.demo is not None:
        for bench_name in ("sugarcrepe", "bivlc"):
            print(f"\n## demo world, {bench_name}, blind cross-validated, %\n")
            print(header(SHOWN[bench_name]))
            for split in ("test_id", "test_ood"):
                reader = CacheReader(args.demo / "caches" / f"tiny-{split}-{bench_name}.zarr")
                blind = cross_validate_blind(create_benchmark(bench_name), reader, folds=args.folds)
                print(row(f"{split}: blind ({args.folds}-fold)", blind.metrics, SHOWN[bench_name]))


if __name__ == "__main__":
    main()
