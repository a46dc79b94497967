"""`compalign-heads`: score (and later train) alignment heads from a cache. Never imports a backbone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer
from rich.table import Table

from ..cache.reader import CacheReader
from ..evaluate.benchmarks import create_benchmark, list_benchmarks
from ..heads import create_head, list_heads
from .common import console, setup_logging

app = typer.Typer(help="Score alignment heads on benchmarks, from a feature cache alone.", no_args_is_help=True)


@app.command("list")
def list_cmd() -> None:
    """List registered heads and benchmarks."""
    print("heads:", ", ".join(list_heads()))
    print("benchmarks:", ", ".join(list_benchmarks()))


def _fmt(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.1f}"


@app.command()
def score(
    bench: str = typer.Option(..., help=f"benchmark: {', '.join(list_benchmarks())}"),
    cache: Path = typer.Option(..., exists=True, file_okay=False, help="the cache to score from"),
    head: str = typer.Option("global", help="a registered head"),
    json_out: Path | None = typer.Option(None, "--json", help="write metrics and per-item outcomes here"),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Score HEAD on BENCH from CACHE and print the table."""
    setup_logging(verbose)
    try:
        reader = CacheReader(cache)
        result = create_benchmark(bench).evaluate(reader, create_head(head))
    except (KeyError, ValueError, RuntimeError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    table = Table(title=f"{bench} · head={result.head} · backbone={result.backbone}")
    table.add_column("metric")
    table.add_column("%", justify="right")
    for name, value in result.metrics.items():
        table.add_row(name, _fmt(value))
    print_table(table)
    c = result.counts
    print(f"{c.get('items', 0)} items, {c.get('invalid', 0)} left out (failed image or caption)")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result.to_json(), indent=1))
        print(f"wrote {json_out}")


def print_table(table: Table) -> None:
    from rich.console import Console

    Console().print(table)


if __name__ == "__main__":
    app()
