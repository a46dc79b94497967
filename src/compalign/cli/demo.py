"""`compalign demo`: the whole pipeline on the synthetic world with the embedded `tiny` backbone.

world (generated once, cached) -> extract train pairs + test_id / test_ood (SugarCrepe, BiVLC and Karpathy
retrieval formats) -> train tflocal_coloc, global_mlp and the text-only `blind` control from the train cache (resumed
if already done) -> score global, maxsim and the trained heads (on retrieval: re-ranking global's top 20) -> one table,
the control's table, a PNG bar chart, and the `score --json` files in OUT.
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
BENCHES = ("sugarcrepe", "bivlc", "retrieval")
DATA = {"sugarcrepe": "sugarcrepe", "bivlc": "bivlc", "retrieval": "karpathy"}  # the data kind each is extracted from
SHOWN = {
    "sugarcrepe": ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj", "add_att", "add_obj", "macro"),
    "bivlc": ("I2T", "T2I", "Group"),
    "retrieval": ("t2i_R@1", "t2i_R@5", "i2t_R@1", "i2t_R@5"),
}
LABEL = {"sugarcrepe": "", "bivlc": "BiVLC ", "retrieval": ""}
RERANK = 20  # the trained heads re-rank global's top 20 of each retrieval query


def _world(out: Path, n_train: int, n_test: int) -> Path:
    from ..shapes import WorldConfig, write_world

    cfg = WorldConfig(n_train=n_train, n_test_id=n_test, n_test_ood=n_test)
    with progress_bar() as bar:
        result = write_world(cfg, out / "world", progress=StageProgress(bar), workers=2)  # the same bytes as 1 worker
    console.print(f"world: {result.path} ({result.status})")
    return result.path


def _extract_one(model: str, data: str, root: Path, store: Path):
    """One extraction with the demo's settings (the two layers tflocal's variants read), with a progress bar."""
    from ..extract.config import ExtractConfig
    from ..extract.runner import extract

    cfg = ExtractConfig(model=model, data=data, root=str(root), out=str(store), batch_size=256, workers=1, layers=[-1, -2])
    with progress_bar() as bar:
        return extract(cfg, StageProgress(bar))


def _extract(world: Path, out: Path, model: str) -> dict[tuple[str, str], Path]:
    caches = {}
    for split in SPLITS:
        for bench in BENCHES:
            root = world / split / bench
            store = out / "caches" / f"{model}-{split}-{bench}.zarr"
            s = _extract_one(model, DATA[bench], root, store)
            console.print(
                f"{split}/{bench}: {s.images} images, {s.texts} captions, {s.items} items "
                f"({s.seconds:.1f}s, {s.shards_skipped} shards already done)"
            )
            caches[split, bench] = store
    return caches


# The demo's training runs: one (train config, head config) per trained head, <= 10 minutes with the rest on a
# 2-core CPU. tflocal_coloc: tflocal with the co-location match (a token and the one before it answered by the same
# patch) on the layer -2 tokens, in-batch + 2 swap negatives per pair, 1,000 steps x 64 images (about 3.5 minutes
# here) on the 20,000-scene train split. Of the recipes measured (docs/results.md) it binds best per minute: the
# 5,000-scene split at layer -1 removed 51% / 21% of global's swap_att errors (test_id / test_ood), this one 64% /
# 51%. global_mlp: seconds. blind: the text-only control, trained on the same pairs to put each caption above its
# negatives without the image; its column says how much of each benchmark needs no vision at all (its own table).
DEMO_TRAIN = {
    "global_mlp": (dict(steps=1000), {}),
    "tflocal_coloc": (dict(steps=1000, hard_kinds=("swap_att", "swap_obj")), {"layer": -2}),
    "blind": (dict(steps=1000, losses={"hardneg": 1.0}), {}),
}
CONTROL = "blind"  # not a method: scored on the compositional benchmarks, shown apart, never re-ranks retrieval


def _extract_train(world: Path, out: Path, model: str) -> Path:
    store = out / "caches" / f"{model}-train-pairs.zarr"
    s = _extract_one(model, "pairs", world / "train", store)
    console.print(f"train: {s.images} images, {s.texts} captions, {s.items} pairs ({s.seconds:.1f}s)")
    return store


def _train(store: Path, out: Path, steps: int | None) -> dict[str, Path]:
    from ..heads.train import TrainConfig, train_head

    runs = {}
    for head, (kw, head_config) in DEMO_TRAIN.items():
        kw = {**kw, "steps": steps} if steps else kw
        run = out / "runs" / head
        with progress_bar() as bar:
            task = bar.add_task(f"train {head}", total=kw["steps"], rate="")

            def progress(e: dict, task=task, bar=bar) -> None:
                rate = f"val {e['val']['acc']:.1f}" if "val" in e else f"loss {e['loss']:.3f} · {e['pairs_s']:.0f} pairs/s"
                bar.update(task, completed=e["step"], rate=rate)

            res = train_head(head, store, run, TrainConfig(**kw), head_config=head_config, progress=progress)
            bar.update(task, completed=res.steps)  # a finished run resumes at its end without progress events
        console.print(
            f"{head}: {res.steps} steps, kept step {res.best_step} (val acc {res.best.get('acc', float('nan')):.1f}), "
            f"{res.seconds:.0f}s"
        )
        runs[head] = run
    return runs


def _score(caches: dict[tuple[str, str], Path], out: Path, heads: list[str], runs: dict[str, Path]) -> dict:
    from ..cache import open_cache
    from ..evaluate.benchmarks import create_benchmark
    from ..heads import create_head, load_head

    results = {}
    for (split, bench), store in caches.items():
        reader = open_cache(store)
        for head in heads:
            if head == CONTROL and bench == "retrieval":
                continue
            h = load_head(runs[head]) if head in runs else create_head(head)
            options = {"rerank": RERANK} if bench == "retrieval" and head != "global" else {}
            r = create_benchmark(bench, **options).evaluate(reader, h)
            path = out / "scores" / f"{bench}-{split}-{head}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(r.to_json(), indent=1))
            results[bench, split, head] = r.metrics
    return results


def _table(results: dict, heads: list[str], benches: tuple[str, ...] = BENCHES,
           title: str = "synthetic world · tiny backbone · accuracy / recall % (test_id / test_ood)") -> Table:
    # One column per head, each cell "ID / OOD": fits an 80-column terminal with four heads.
    t = Table(title=title)
    t.add_column("metric", no_wrap=True)
    for head in heads:
        t.add_column(head, justify="right")

    def cell(bench: str, head: str, m: str) -> str:
        vals = [results.get((bench, split, head), {}).get(m, float("nan")) for split in SPLITS]
        return " / ".join("—" if math.isnan(v) else f"{v:.1f}" for v in vals)

    for bench in benches:
        for m in SHOWN[bench]:
            t.add_row(LABEL[bench] + m, *(cell(bench, head, m) for head in heads))
    return t


def _chart(results: dict, heads: list[str], path: Path) -> None:
    from .charts import grouped_bars

    metrics = [(b, m) for b in BENCHES for m in SHOWN[b]]
    series = {head: [[results.get((b, split, head), {}).get(m, float("nan")) for b, m in metrics] for split in SPLITS]
              for head in heads}
    grouped_bars(path, list(SPLITS), [LABEL[b] + m for b, m in metrics], series, ylabel="accuracy / recall %")


def demo(
    out: Path = typer.Option(Path("demo"), help="where the world, caches, scores and chart go"),
    model: str = typer.Option("tiny", help="backbone (the embedded tiny one by default)"),
    n_train: int = typer.Option(20000, help="training scenes in the world"),
    n_test: int = typer.Option(1000, help="scenes per test split"),
    train: bool = typer.Option(True, help="train tflocal_coloc, global_mlp and the blind control on the world's train split"),
    train_steps: int | None = typer.Option(None, help="override the demo's training steps (tests use a few)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run the whole pipeline on the synthetic world and print one table (+ demo/summary.png)."""
    setup_logging(verbose)
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    world = _world(out, n_train, n_test)
    caches = _extract(world, out, model)
    runs = _train(_extract_train(world, out, model), out, train_steps) if train else {}
    heads = ["global", "maxsim", *runs]  # maxsim needs a linear token projection: `tiny` (a CLIP ViT) has one
    results = _score(caches, out, heads, runs)
    methods = [h for h in heads if h != CONTROL]
    Console().print(_table(results, methods))
    if CONTROL in heads:
        Console().print(_table(results, [CONTROL], ("sugarcrepe", "bivlc"), "text-only control: the caption alone, "
                               "trained on the train pairs' negatives (test_id / test_ood)"))
    _chart(results, heads, out / "summary.png")
    console.print(f"scores: {out / 'scores'}/*.json · chart: {out / 'summary.png'} · {time.perf_counter() - t0:.0f}s")
