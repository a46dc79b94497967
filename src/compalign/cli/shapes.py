"""`compalign shapes make`: write the synthetic shapes world (mounted by the main CLI)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from compalign.shapes import WorldConfig, WorldExistsError, write_world

app = typer.Typer(help="The synthetic compositional shapes world.", no_args_is_help=True)
console = Console()


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
    leak_negatives: bool = typer.Option(
        False, "--leak-negatives", help="Let training negatives name held-out pairs (reproduces the OOD collapse)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite a world built from a different config."),
) -> None:
    """Generate train pairs and SugarCrepe/BiVLC-format test splits (in-distribution and held-out pairs)."""
    try:
        cfg = WorldConfig.for_canvas(
            size, seed=seed, n_train=n_train, n_test_id=n_test, n_test_ood=n_test, leak_negatives=leak_negatives
        )
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from e
    columns = (TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        try:
            result = write_world(cfg, out, force=force, progress=progress)
        except WorldExistsError as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from e
    if result.status == "cached":
        console.print(f"[green]cached:[/green] {out} already holds this world (same config); nothing to do.")
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
    console.print(table)
