"""`compalign study`: the study's whole comparison on the synthetic world, in one resumable, seeded command.

world -> caches of the shipped tiny backbone (train pairs; test_id / test_ood in SugarCrepe, BiVLC and retrieval
formats, with caption segments) -> every method -> one table per split (SugarCrepe subsets and swap mean, BiVLC
I2T / T2I / Group, retrieval R@1), each cell with its 95% bootstrap interval, plus trainable parameters and train
time per method -> OUT/results.md, results.csv, results.png.

Methods, by what they change:
- training-free heads on the frozen backbone: `global` (the baseline), `maxsim`, and the inference-time
  region-segment diagnostic three ways: `regions_roi` (boxes pooled from the cached patches), `regions_crops` (a
  multi-scale grid of crops, each encoded), `regions_oracle` (the world's true object boxes, cropped and encoded);
- heads trained on the frozen backbone's train cache: `global_mlp` (capacity without locality), `tflocal_coloc`,
  and the text-only `blind` control (what the captions alone give away; no retrieval row: it cannot rank images);
- end-to-end fine-tuning of the backbone on the same train split (`shapes finetune`): `full`, `negclip`, `clic`,
  `degla`, each scored with `global` on caches of its own backbone.
Every step leaves its output in OUT and is skipped when it is already there: the world and the stores are reused,
training and extraction resume, a fine-tuned backbone or a score file that exists is read back.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from .common import StageProgress, console, progress_bar, setup_logging, user_errors

SPLITS = ("test_id", "test_ood")
DATA = {"sugarcrepe": "sugarcrepe", "bivlc": "bivlc", "retrieval": "karpathy"}
COLUMNS = [("sugarcrepe", m) for m in ("replace_att", "replace_obj", "replace_rel", "swap_att", "swap_obj", "add_att",
                                         "add_obj", "swap", "macro")]
COLUMNS += [("bivlc", m) for m in ("I2T", "T2I", "Group")] + [("retrieval", m) for m in ("t2i_R@1", "i2t_R@1")]
LABEL = {"sugarcrepe": "", "bivlc": "BiVLC ", "retrieval": ""}
RERANK = 20  # heads other than global re-rank global's top 20 of each retrieval query
FREE = ("global", "maxsim", "regions_roi", "regions_crops", "regions_oracle")
TRAINED = {"global_mlp": {}, "tflocal_coloc": {"hard_kinds": ("swap_att", "swap_obj")}, "blind": {"losses": {"hardneg": 1.0}}}
KIND = {"global_mlp": "frozen + trained head", "tflocal_coloc": "frozen + trained head", "blind": "text-only control"}
CROPS = "grid+oracle"  # the frozen backbone's test caches carry both region sets; fine-tuned ones are scored globally
FINETUNED = ("full", "negclip", "clic", "degla")


@dataclass(frozen=True)
class Budget:
    n_train: int
    n_test: int
    head_steps: int
    finetune_steps: int


FULL = Budget(n_train=5000, n_test=1000, head_steps=1000, finetune_steps=200)
QUICK = Budget(n_train=600, n_test=150, head_steps=150, finetune_steps=40)


def _extract(model: str, root: Path, data: str, store: Path, crops: str = "none") -> Path:
    from ..extract.config import ExtractConfig
    from ..extract.runner import extract

    cfg = ExtractConfig(model=model, data=data, root=str(root), out=str(store), batch_size=256, workers=1,
                        layers=[-1, -2], segments="rules" if data != "pairs" else "none", crops=crops)
    with progress_bar() as bar:
        extract(cfg, StageProgress(bar))
    return store


def _test_caches(model: str, world: Path, out: Path, tag: str, crops: str = "none") -> dict[tuple[str, str], Path]:
    return {(split, bench): _extract(model, world / split / bench, DATA[bench],
                                     out / "caches" / f"{tag}-{split}-{bench}.zarr", crops)
            for split in SPLITS for bench in DATA}


def _score(method: str, head: Any, caches: dict[tuple[str, str], Path], out: Path, bootstrap: int) -> dict:
    """{(split, bench): {"metrics", "intervals"}}; a score file already written is read back instead."""
    from ..cache import open_cache
    from ..evaluate.benchmarks import create_benchmark
    from ..evaluate.uncertainty import bootstrap_intervals

    got = {}
    for (split, bench), store in caches.items():
        if bench == "retrieval" and method == "blind":
            continue
        path = out / "scores" / f"{method}-{split}-{bench}.json"
        if not path.exists():
            options = {"rerank": RERANK} if bench == "retrieval" and method not in ("global", *FINETUNED) else {}
            benchmark = create_benchmark(bench, **options)
            r = benchmark.evaluate(open_cache(store), head())
            d = {**r.to_json(), "intervals": bootstrap_intervals(benchmark, r.items, n=bootstrap) if bootstrap else {}}
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(d, indent=1))
        d = json.loads(path.read_text())
        got[split, bench] = {"metrics": d["metrics"], "intervals": d.get("intervals", {})}
    return got


def _trainable(head: Any) -> int:
    return sum(p.numel() for p in head.parameters() if p.requires_grad) if hasattr(head, "parameters") else 0


def _run_methods(world: Path, out: Path, budget: Budget, seed: int, bootstrap: int) -> list[dict[str, Any]]:
    from ..core.assets import TINY_CHECKPOINT
    from ..heads import create_head, load_head
    from ..heads.train import TrainConfig, train_head
    from ..shapes.finetune import FinetuneConfig, finetune_backbone

    rows: list[dict[str, Any]] = []
    caches = _test_caches("tiny", world, out, "tiny", CROPS)
    for name in FREE:
        console.print(f"[bold]{name}[/bold] (training-free)")
        rows.append({"method": name, "kind": "frozen, training-free", "params": 0, "train_s": 0.0,
                     "scores": _score(name, lambda name=name: create_head(name), caches, out, bootstrap)})
    train_store = _extract("tiny", world / "train", "pairs", out / "caches" / "tiny-train-pairs.zarr")
    for name, kw in TRAINED.items():
        console.print(f"[bold]{name}[/bold] (trained on the frozen backbone's cache)")
        res = train_head(name, train_store, out / "runs" / name, TrainConfig(steps=budget.head_steps, seed=seed, **kw))
        # A rerun resumes a finished run in no time: the train time is the first run's, kept beside its scores.
        timing = out / "scores" / f"{name}-train.json"
        if not timing.exists():
            timing.parent.mkdir(parents=True, exist_ok=True)
            timing.write_text(json.dumps({"train_s": res.seconds, "steps": res.steps}))
        rows.append({"method": name, "kind": KIND[name], "params": _trainable(load_head(res.run_dir)),
                     "train_s": json.loads(timing.read_text())["train_s"],
                     "scores": _score(name, lambda run=res.run_dir: load_head(run), caches, out, bootstrap)})
    for method in FINETUNED:
        console.print(f"[bold]{method}[/bold] (end-to-end fine-tuning)")
        folder = out / "backbones" / method
        record = folder / "open_clip_config.json"
        if not record.exists():
            finetune_backbone(world, folder, FinetuneConfig(method=method, steps=budget.finetune_steps, seed=seed),
                              backbone=TINY_CHECKPOINT)
        seconds = float(json.loads(record.read_text()).get("compalign", {}).get("train_seconds", math.nan))
        ft_caches = _test_caches(f"local-dir:{folder}", world, out, method)
        rows.append({"method": method, "kind": "fine-tuned backbone, global", "params": _backbone_params(folder),
                     "train_s": seconds, "scores": _score(method, lambda: create_head("global"), ft_caches, out, bootstrap)})
    return rows


def _backbone_params(folder: Path) -> int:
    from safetensors import safe_open

    files = list(folder.glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def _cell(row: dict[str, Any], split: str, bench: str, metric: str) -> tuple[float, list[float] | None]:
    s = row["scores"].get((split, bench), {})
    return float(s.get("metrics", {}).get(metric, math.nan)), s.get("intervals", {}).get(metric)


def _fmt(v: float, ci: list[float] | None) -> str:
    if math.isnan(v):
        return "—"
    return f"{v:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "")


def _tables(rows: list[dict[str, Any]]) -> dict[str, tuple[list[str], list[list[str]]]]:
    header = ["method", "kind", "trainable params", "train s", *(LABEL[b] + m for b, m in COLUMNS)]
    out = {}
    for split in SPLITS:
        body = [[r["method"], r["kind"], f"{r['params']:,}", f"{r['train_s']:.0f}",
                 *(_fmt(*_cell(r, split, b, m)) for b, m in COLUMNS)] for r in rows]
        out[split] = (header, body)
    return out


def _write(out: Path, rows: list[dict[str, Any]], title: str) -> list[Path]:
    tables = _tables(rows)
    md = [f"# {title}", "", "Cells: % [95% bootstrap interval over items, 1,000 replicates unless the run says otherwise].", ""]
    for split, (header, body) in tables.items():
        md += [f"## {split}", "", "| " + " | ".join(header) + " |", "|" + "---|" * 2 + "---:|" * (len(header) - 2)]
        md += ["| " + " | ".join(cells) + " |" for cells in body] + [""]
    paths = [out / "results.md", out / "results.csv", out / "results.png"]
    paths[0].write_text("\n".join(md))
    with paths[1].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "kind", "params", "train_s", "split", "bench", "metric", "value", "ci_low", "ci_high"])
        for r in rows:
            for split in SPLITS:
                for b, m in COLUMNS:
                    v, ci = _cell(r, split, b, m)
                    w.writerow([r["method"], r["kind"], r["params"], r["train_s"], split, b, m, v, *(ci or [math.nan] * 2)])
    _chart(rows, paths[2])
    return paths


def _chart(rows: list[dict[str, Any]], path: Path) -> None:
    from .charts import grouped_bars

    shown = [("sugarcrepe", "swap_att"), ("sugarcrepe", "swap"), ("sugarcrepe", "macro"), ("bivlc", "Group"),
             ("retrieval", "t2i_R@1")]
    cells = {r["method"]: [[_cell(r, split, b, m) for b, m in shown] for split in SPLITS] for r in rows}
    grouped_bars(path, list(SPLITS), [LABEL[b] + m for b, m in shown],
                 {k: [[v for v, _ in panel] for panel in c] for k, c in cells.items()},
                 {k: [[ci for _, ci in panel] for panel in c] for k, c in cells.items()},
                 figsize=(14, 4.8), legend_outside=True, rotation=30)


def study(
    out: Path = typer.Option(Path("study"), help="where the world, caches, runs, backbones, scores and tables go"),
    quick: bool = typer.Option(False, "--quick", help=f"a small version: {QUICK.n_train} train / {QUICK.n_test} test "
                               f"scenes, {QUICK.head_steps} head steps, {QUICK.finetune_steps} fine-tuning steps"),
    n_train: int | None = typer.Option(None, help="override the train scenes"),
    n_test: int | None = typer.Option(None, help="override the scenes per test split"),
    head_steps: int | None = typer.Option(None, help="override the trained heads' steps"),
    finetune_steps: int | None = typer.Option(None, help="override the end-to-end fine-tuning steps"),
    seed: int = typer.Option(0, help="world, training and fine-tuning seed (same seed: the same table)"),
    bootstrap: int = typer.Option(1000, min=0, help="bootstrap replicates per cell's interval (0: none)"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Every method of the study on the synthetic world: one table per split, with intervals (OUT/results.md)."""
    from ..shapes import WorldConfig, write_world

    setup_logging(verbose)
    t0 = time.perf_counter()
    base = QUICK if quick else FULL
    budget = Budget(n_train or base.n_train, n_test or base.n_test, head_steps or base.head_steps,
                    finetune_steps or base.finetune_steps)
    out.mkdir(parents=True, exist_ok=True)
    with user_errors():
        cfg = WorldConfig(n_train=budget.n_train, n_test_id=budget.n_test, n_test_ood=budget.n_test, seed=seed)
        with progress_bar() as bar:
            world = write_world(cfg, out / "world", progress=StageProgress(bar))
        console.print(f"world: {world.path} ({world.status})")
        rows = _run_methods(world.path, out, budget, seed, bootstrap)
    title = (f"compalign study · synthetic world ({budget.n_train} train / {budget.n_test} test scenes, seed {seed}) · "
             f"tiny backbone · heads {budget.head_steps} steps · fine-tuning {budget.finetune_steps} steps")
    paths = _write(out, rows, title)
    for split, (header, body) in _tables(rows).items():
        t = Table(title=f"{split} · % [95% CI]")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i < 2 else "right")
        for cells in body:
            t.add_row(*cells)
        Console(width=max(160, Console().width)).print(t)
    print("wrote " + ", ".join(str(p) for p in paths) + f" in {time.perf_counter() - t0:.0f}s")
