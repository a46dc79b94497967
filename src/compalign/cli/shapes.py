"""`compalign shapes make`: write the synthetic shapes world (mounted by the main CLI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from compalign.core import InputError, MissingFileError
from compalign.shapes import WorldConfig, write_world

from .common import console, user_errors

app = typer.Typer(help="The synthetic compositional shapes world.", no_args_is_help=True)


def _print_result(renderable: Any) -> None:
    """Results (tables, the summary line) go to stdout; messages, progress and errors to the shared stderr console."""
    Console().print(renderable)


@app.callback()
def _main() -> None:
    """The synthetic compositional shapes world."""
    # A callback keeps `make` a named subcommand even though it is the only one.


@app.command()
def make(
    out: Path = typer.Option(..., "--out", help="World folder to write (DIR/world.json, DIR/train, DIR/test_*)."),
    seed: int = typer.Option(0, "--seed", help="Master seed; same seed + options => byte-identical files."),
    size: int = typer.Option(64, "--size", help="Canvas side in px; object sizes scale with it (64 = defaults)."),
    n_train: int = typer.Option(5000, "--n-train", help="Training scenes."),
    n_test: int = typer.Option(1000, "--n-test", help="Scenes in each test split (test_id, test_ood)."),
    position_grid: int = typer.Option(
        None, "--position-grid", help="Boxes start on multiples of this many px (1: anywhere; default: WorldConfig's)."
    ),
    leak_negatives: bool = typer.Option(
        False, "--leak-negatives", help="Let training negatives name held-out pairs (reproduces the OOD collapse)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a world built from a different config."),
    workers: int = typer.Option(
        1, "--workers", help="Processes rendering chunks of scenes (the files are the same bytes for any count)."
    ),
) -> None:
    """Generate train pairs and SugarCrepe/BiVLC-format test splits (in-distribution and held-out pairs)."""
    with user_errors():  # a bad option value, or a world from another config without --force (WorldExistsError)
        extra = {} if position_grid is None else {"position_grid": position_grid}
        cfg = WorldConfig.for_canvas(
            size, seed=seed, n_train=n_train, n_test_id=n_test, n_test_ood=n_test, leak_negatives=leak_negatives, **extra
        )
        columns = (TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            result = write_world(cfg, out, force=force, progress=progress, workers=workers)
    if result.status == "cached":
        _print_result(f"[green]cached:[/green] {escape(str(out))} already holds this world (same config); nothing to do.")
        return
    table = Table(title=f"shapes world written to {out}")
    for col in ("split", "scenes", "train pairs", "sugarcrepe items", "bivlc rows"):
        table.add_column(col, justify="right" if col != "split" else "left")
    for split, c in result.counts.items():
        table.add_row(
            split,
            str(c["scenes"]),
            str(c.get("pairs", "")),
            str(sum(c["sugarcrepe"].values())) if "sugarcrepe" in c else "",
            str(c["bivlc"]["rows"]) if "bivlc" in c else "",
        )
    _print_result(table)


@app.command()
def backbone(
    world: Path = typer.Option(..., "--world", help="World folder written by `compalign shapes make`."),
    out: Path = typer.Option(..., "--out", help="Checkpoint folder to write (open_clip local-dir layout)."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: the PretrainConfig default)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Distinct images per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation and the batch order."),
    fp16: bool = typer.Option(False, "--fp16", help="Store the weights in fp16 (half the file)."),
    threads: int = typer.Option(
        1, "--threads", help="CPU threads (deterministic for a given count; `make backbone` uses 2: ~1.8x faster when quiet)."
    ),
    device: str = typer.Option(
        "cpu", "--device", help="cpu (deterministic; how the shipped backbone is made) | cuda | auto: a GPU sweeps knobs fast."
    ),
    p_background: float = typer.Option(
        None, "--p-background", help="Probability an image's background is repainted a random grey (augmentation)."
    ),
    p_grey: float = typer.Option(
        None, "--p-grey", help="Probability an image is shown in greyscale with its caption's colour words dropped."
    ),
    p_recolour: float = typer.Option(
        None, "--p-recolour", help="Probability an image's colours become random RGBs (never reading as a held-out pair)."
    ),
) -> None:
    """Pretrain the tiny backbone on the world's train split with the plain CLIP loss (CPU by default, seeded)."""
    import time

    from compalign.shapes.pretrain import PretrainConfig, pretrain_backbone

    overrides = {"seed": seed, "save_dtype": "fp16" if fp16 else "fp32", "threads": threads, "device": device}
    if steps is not None:
        overrides["steps"] = steps
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if p_background is not None:
        overrides["p_background"] = p_background
    if p_grey is not None:
        overrides["p_grey"] = p_grey
    if p_recolour is not None:
        overrides["p_recolour"] = p_recolour
    columns = (
        TextColumn("{task.description:>9}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
    )
    t0 = time.perf_counter()
    # a bad option value, a missing or damaged world, --device cuda without a GPU, augmenting a noisy world
    with user_errors():
        cfg = PretrainConfig(**overrides)
        if not (world / "train" / "pairs.jsonl").is_file():  # before the model is built
            raise MissingFileError(f"{world} has no train/pairs.jsonl; build it with `compalign shapes make --out {world}`")
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("loading", total=cfg.steps, loss="-")

            def progress(step: int, total: int, loss: float) -> None:
                bar.update(task, description="training", completed=step, loss=f"{loss:.3f}")

            result = pretrain_backbone(world, out, cfg, progress=progress)
    losses = result.losses
    head, tail = losses[: min(50, len(losses))], losses[-min(50, len(losses)) :]
    table = Table(title=f"tiny backbone written to {out}")
    for col in ("images", "captions", "steps", "loss first→last 50", "train s", "total s", "weights MB"):
        table.add_column(col, justify="right")
    table.add_row(
        str(result.n_images),
        str(result.n_captions),
        str(cfg.steps),
        f"{sum(head) / len(head):.3f} → {sum(tail) / len(tail):.3f}",
        f"{result.seconds:.0f}",
        f"{time.perf_counter() - t0:.0f}",
        f"{result.bytes / 1e6:.1f}",
    )
    _print_result(table)


@app.command()
def probe(
    cache: Path = typer.Option(..., "--cache", help="Feature store extracted from the world's split (sugarcrepe)."),
    world: Path = typer.Option(..., "--world", help="World folder (its scenes.jsonl gives every object's box)."),
    split: str = typer.Option("test_id", "--split", help="Which split the cache was extracted from."),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/test split of the images."),
    fit_on: Path = typer.Option(
        None, "--fit-on", help="Also fit probes on this cache (test_id) and score them on --cache (test_ood): unseen pairs."
    ),
    fit_split: str = typer.Option("test_id", "--fit-split", help="Which split the --fit-on cache was extracted from."),
) -> None:
    """Linear probes for colour, shape, size and the pair from the patch tokens at each object."""
    with user_errors():  # a missing or foreign cache, a missing world or split, a cache of another split
        _probe(cache, world, split, seed, fit_on, fit_split)


def _probe(cache: Path, world: Path, split: str, seed: int, fit_on: Path | None, fit_split: str) -> None:
    from compalign.cache import open_cache
    from compalign.shapes.probe import ProbeConfig, cached_layers, probe_cache, text_to_image_recall

    reader = open_cache(cache)
    layers = cached_layers(reader)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True) as bar:
        bar.add_task(f"probing {len(layers)} layer(s)", total=None)
        result = probe_cache(reader, world, split, ProbeConfig(seed=seed))
        recall = text_to_image_recall(reader, world, split) if "caption" in reader.items else None
    chance = result.chance()
    table = Table(
        title=f"locality probe · {split} · held-out accuracy %",
        caption=f"{result.n_objects} objects in {result.n_images} images, {result.grid}x{result.grid} patches; "
        "box = mean of the patches inside the object's box, centre = the patch under its centre",
    )
    table.add_column("layer")
    table.add_column("pool")
    targets = ("colour", "shape", "size", "pair")
    for t in targets:
        table.add_column(t, justify="right")
    for (layer, pool), accs in result.table().items():
        cells = [f"[{'green' if accs[t] >= 0.9 else 'yellow'}]{100 * accs[t]:.1f}[/]" for t in targets]
        table.add_row(str(layer), pool, *cells)
    table.add_row("chance", "", *[f"{100 * chance[t]:.1f}" for t in targets], style="dim")
    _print_result(table)
    if recall is not None:
        _print_result(
            f"text→image R@1 over {int(recall['n'])} images: {100 * recall['r1']:.1f}% "
            f"(caption true of the top image: {100 * recall['r1_valid']:.1f}%)"
        )
    _print_text_probe(reader, world, seed)
    if fit_on is not None:
        _print_transfer_probe(fit_on, fit_split, reader, world, split, seed)


def _print_transfer_probe(fit_on: Path, fit_split: str, reader, world: Path, split: str, seed: int) -> None:
    """Fitted on familiar pairs, read on held-out ones: what a head trained on the train split meets."""
    from compalign.cache import open_cache
    from compalign.shapes.probe import ProbeConfig, transfer_probe

    res = transfer_probe(open_cache(fit_on), reader, world, fit_split, split, ProbeConfig(seed=seed))
    n_held, n_fam = res[next(iter(res))]["shape"][2:]  # the same objects in every row
    table = Table(
        title=f"transfer probe · fitted on {fit_split}, scored on {split} · accuracy % (held-out pairs / familiar)",
        caption=f"box-pooled patches; {n_held} objects of a held-out (colour, shape) pair, {n_fam} of a familiar one. "
        "A backbone that codes shape apart from colour reads both alike",
    )
    table.add_column("layer")
    for t in ("colour", "shape", "size"):
        table.add_column(t, justify="right")
    for layer, row in res.items():
        table.add_row(str(layer), *[f"{100 * row[t][0]:.1f} / {100 * row[t][1]:.1f}" for t in ("colour", "shape", "size")])
    _print_result(table)


def _print_text_probe(reader, world: Path, seed: int) -> None:
    """The text side: does each shape word's token carry its own colour / size (not just the caption's)?"""
    from compalign.shapes.probe import ProbeConfig
    from compalign.shapes.text_probe import ATTRS, TextProbeUnavailableError, probe_text_binding

    try:
        res = probe_text_binding(reader, world, ProbeConfig(seed=seed))
    except TextProbeUnavailableError as e:  # another tokenizer, or no world captions: the image table stands alone
        console.print(f"[yellow]text probe skipped:[/yellow] {escape(str(e))}", highlight=False, soft_wrap=True)
        return
    table = Table(
        title="text binding probe · held-out accuracy % (chance)",
        caption=f"token at each shape word of {res.n_captions} captions; contrast = the caption names another object "
        "with a different value (a bag of words is right at most half the time there)",
    )
    table.add_column("layer")
    for a in ATTRS:
        table.add_column(f"{a} (all)", justify="right")
        table.add_column(f"{a} (contrast)", justify="right")
    for layer in sorted({k[0] for k in res.accuracy}, reverse=True):
        cells = []
        for a in ATTRS:
            for subset in ("all", "contrast"):
                acc, chance, _ = res.accuracy.get((layer, a, subset), (float("nan"), float("nan"), 0))
                cells.append(f"{100 * acc:.1f} ({100 * chance:.0f})")
        table.add_row(str(layer), *cells)
    _print_result(table)


def _read_score_file(path: Path) -> dict[str, Any]:
    """A `compalign-heads score --json` file; a missing, non-JSON or foreign one is the user's to fix."""
    import json

    if not path.is_file():
        raise MissingFileError(f"{path} is missing: write it with `compalign-heads score ... --json {path}`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON ({e}): pass a file written by `compalign-heads score --json`") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise InputError(f"{path} has no 'items' list: pass a file written by `compalign-heads score --json`")
    return data


@app.command()
def breakdown(
    scores: list[Path] = typer.Argument(..., help="`compalign-heads score --json` files of one SugarCrepe split."),
    world: Path = typer.Option(..., "--world", help="World folder the scored split belongs to."),
    split: str = typer.Option("test_id", "--split", help="Which split was scored (test_id or test_ood)."),
) -> None:
    """Split swap_att / swap_obj accuracy by what the negative swaps (colour, size, shape)."""
    from compalign.shapes.breakdown import breakdown as split_scores
    from compalign.shapes.load import load_world_config

    with user_errors():  # a missing or damaged world, score file or split
        cfg = load_world_config(world)
        rows = {}
        for path in scores:
            data = _read_score_file(path)
            rows[f"{data.get('head', path.stem)}"] = split_scores(data, world / split / "sugarcrepe", cfg, source=str(path))
    columns = sorted({(s, k) for r in rows.values() for s, d in r.items() for k in d})
    table = Table(title=f"swap accuracy % by swapped words · {split}")
    table.add_column("head")
    for s, k in columns:
        table.add_column(f"{s}\n{k}", justify="right")
    for head, r in rows.items():
        cells = []
        for s, k in columns:
            c, n = r.get(s, {}).get(k, [0, 0])
            cells.append(f"{100 * c / n:.1f} (n={n})" if n else "—")
        table.add_row(head, *cells)
    _print_result(table)


from .finetune import finetune  # noqa: E402

app.command()(finetune)
