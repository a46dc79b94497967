"""`compalign shapes finetune`: the end-to-end baselines (full, NegCLIP, CLIC, DeGLA) on the tiny backbone."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from compalign.core import MissingFileError

from .common import console, user_errors


def finetune(
    method: str = typer.Option(..., "--method", help="full | negclip | clic | degla (the loss; see shapes/finetune.py)."),
    world: Path = typer.Option(..., "--world", help="World folder written by `compalign shapes make` (its train split)."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write (open_clip local-dir layout)."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: the FinetuneConfig default, 200)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Distinct images per batch (CLIC: composites)."),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate (default 1e-4; warmup, then a cosine to 0)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the batch order, the negatives drawn and CLIC's pairing."),
    n_hard: int = typer.Option(None, "--n-hard", help="Hard negatives per caption (default: negclip 1, degla 4)."),
    backbone: Path = typer.Option(
        None, "--backbone", help="Folder of the backbone to fine-tune (default: the shipped tiny backbone)."
    ),
    threads: int = typer.Option(1, "--threads", help="CPU threads (deterministic for a given count)."),
    device: str = typer.Option("cpu", "--device", help="cpu (seeded, deterministic) | cuda | auto."),
) -> None:
    """Fine-tune the tiny backbone end to end on the world's train split; `compalign extract --model local-dir:OUT` reads it."""
    from compalign.shapes.finetune import FinetuneConfig, finetune_backbone

    overrides = {"method": method, "seed": seed, "threads": threads, "device": device}
    for name, value in (("steps", steps), ("batch_size", batch_size), ("lr", lr), ("n_hard", n_hard)):
        if value is not None:
            overrides[name] = value
    columns = (TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn())
    t0 = time.perf_counter()
    with user_errors():  # an unknown method, a bad value, a missing or damaged world or backbone, a missing GPU
        cfg = FinetuneConfig(**overrides)
        if not (world / "train" / "pairs.jsonl").is_file():  # before the model is built
            raise MissingFileError(f"{world} has no train/pairs.jsonl; build it with `compalign shapes make --out {world}`")
        extra = {} if backbone is None else {"backbone": backbone}
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("loading", total=cfg.steps, loss="-")

            def progress(step: int, total: int, loss: float) -> None:
                bar.update(task, description=cfg.method, completed=step, loss=f"{loss:.3f}")

            result = finetune_backbone(world, out, cfg, progress=progress, **extra)
    losses = result.losses
    head, tail = losses[: min(20, len(losses))], losses[-min(20, len(losses)):]
    table = Table(title=f"{cfg.method}-fine-tuned backbone written to {out}",
                  caption=f"score it: compalign extract --model local-dir:{out} ...; compalign-heads score --head global")
    for col in ("method", "images", "pairs", "steps", "loss first→last 20", "train s", "total s"):
        table.add_column(col, justify="right")
    table.add_row(cfg.method, str(result.n_images), str(result.n_captions), str(cfg.steps),
                  f"{sum(head) / len(head):.3f} → {sum(tail) / len(tail):.3f}", f"{result.seconds:.0f}",
                  f"{time.perf_counter() - t0:.0f}")
    Console().print(table)  # results go to stdout; messages, progress and errors to the shared stderr console
