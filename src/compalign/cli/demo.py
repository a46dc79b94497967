"""`compalign demo`: the whole pipeline on the synthetic world with the embedded `tiny` backbone.

world (generated once, cached) -> extract test_id / test_ood (SugarCrepe + BiVLC formats) ->
score every available head -> one table, a PNG bar chart, and the `score --json` files in OUT.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import StageProgress, console, progress_bar, setup_logging

SPLITS = ("test_id", "test_ood")
BENCHES = ("sugarcrepe", "bivlc")
SHOWN = {"sugarcrepe": ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj", "add_att", "add_obj", "macro"),
         "bivlc": ("I2T", "T2I", "Group")}


def _world(out: Path, n_train: int, n_test: int) -> Path:
    from ..shapes import WorldConfig, write_world

    cfg = WorldConfig(n_train=n_train, n_test_id=n_test, n_test_ood=n_test)
    with progress_bar() as bar:
        result = write_world(cfg, out / "world", progress=StageProgress(bar))
    console.print(f"world: {result.path} ({result.status})")
    return result.path


def _extract(world: Path, out: Path, model: str) -> dict[tuple[str, str], Path]:
    from ..extract.runner import ExtractConfig, extract

    caches = {}
    for split in SPLITS:
        for bench in BENCHES:
            root = world / split / bench
            store = out / "caches" / f"{model}-{split}-{bench}.zarr"
            with progress_bar() as bar:
                s = extract(ExtractConfig(model=model, data=bench, root=str(root), out=str(store), batch_size=256,
                                          workers=1, layers=[-1, -2]), StageProgress(bar))
            console.print(f"{split}/{bench}: {s.images} images, {s.texts} captions, {s.items} items "
                          f"({s.seconds:.1f}s, {s.shards_skipped} shards already done)")
            caches[split, bench] = store
    return caches


def _score(caches: dict[tuple[str, str], Path], out: Path, heads: list[str]) -> dict:
    from ..cache import open_cache
    from ..evaluate.benchmarks import create_benchmark
    from ..heads import create_head

    results = {}
    for (split, bench), store in caches.items():
        reader = open_cache(store)
        for head in heads:
            r = create_benchmark(bench).evaluate(reader, create_head(head))
            path = out / "scores" / f"{bench}-{split}-{head}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r.to_json(), indent=1))
            results[bench, split, head] = r.metrics
    return results


def _table(results: dict, heads: list[str]) -> Table:
    t = Table(title="synthetic world · tiny backbone · accuracy %")
    t.add_column("benchmark / metric")
    for head in heads:
        for split in SPLITS:
            t.add_column(f"{head}\n{split.replace('test_', '')}", justify="right")
    for bench in BENCHES:
        for m in SHOWN[bench]:
            row = [f"{bench} {m}"]
            for head in heads:
                for split in SPLITS:
                    v = results.get((bench, split, head), {}).get(m, float("nan"))
                    row.append("—" if math.isnan(v) else f"{v:.1f}")
            t.add_row(*row)
    return t


def _chart(results: dict, heads: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("sugarcrepe", m) for m in SHOWN["sugarcrepe"]] + [("bivlc", m) for m in SHOWN["bivlc"]]
    fig, axes = plt.subplots(1, len(SPLITS), figsize=(14, 4.5), sharey=True)
    width = 0.8 / max(1, len(heads))
    for ax, split in zip(axes, SPLITS):
        for h, head in enumerate(heads):
            vals = [results.get((b, split, head), {}).get(m, float("nan")) for b, m in metrics]
            ax.bar([i + h * width for i in range(len(metrics))], vals, width, label=head)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(metrics))])
        ax.set_xticklabels([f"{m}" if b == "sugarcrepe" else f"BiVLC {m}" for b, m in metrics], rotation=45, ha="right")
        ax.set_title(split)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("accuracy %")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo(out: Path = typer.Option(Path("demo"), help="where the world, caches, scores and chart go"),
         model: str = typer.Option("tiny", help="backbone (the embedded tiny one by default)"),
         n_train: int = typer.Option(5000, help="training scenes in the world"),
         n_test: int = typer.Option(1000, help="scenes per test split"),
         verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    """Run the whole pipeline on the synthetic world and print one table (+ demo/summary.png)."""
    setup_logging(verbose)
    from ..heads import list_heads

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = _world(out, n_train, n_test)
    caches = _extract(world, out, model)
    heads = [h for h in list_heads() if h == "global"]  # untrained heads only, until training lands
    results = _score(caches, out, heads)
    Console().print(_table(results, heads))
    _chart(results, heads, out / "summary.png")
    console.print(f"scores: {out / 'scores'}/*.json · chart: {out / 'summary.png'} · {time.perf_counter() - t0:.0f}s")
