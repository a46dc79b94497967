"""Shared CLI plumbing: console, logging, progress bars."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape as rich_escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

console = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Print a CompalignError (bad input, damaged artifact, wrong flag) as one message, exit 2.

    Only that base is caught: any other exception is a bug in compalign and keeps its traceback.
    """
    from ..core import CompalignError

    try:
        yield
    except CompalignError as e:
        # soft_wrap: a path or a command in the message stays on one line, to be copied as it is
        console.print("[red]error:[/red] " + rich_escape(str(e)), highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


STORAGE_OPTION_HELP = ("fsspec option for an s3:// (or other object-storage) store or extract --root, KEY=VALUE, "
                       "repeatable, e.g. endpoint_url=http://127.0.0.1:9000 (credentials: the usual AWS_* environment variables)")


def path_or_url(value: str | None) -> str | None:
    """A store flag's value: an object-storage URL kept as it is (a Path would collapse its `//`), else the path's str."""
    from ..cache.location import is_url

    return value if value is None or is_url(value) else str(Path(value))


def existing_store(value: str | None) -> str | None:
    """`--cache`: a local path must exist (as typer's exists=True checked); a URL is checked when it is opened."""
    value = path_or_url(value)
    from ..cache.location import is_url

    if value is not None and not is_url(value) and not Path(value).exists():
        raise typer.BadParameter(f"Path '{value}' does not exist.")
    return value


def store_location(where: str | Path, options: list[str]) -> Any:
    """The `Location` of a store flag with its `--storage-option` values."""
    from ..cache.location import location, storage_options

    return location(where, storage_options(options))


def setup_process() -> None:
    """What every command's process runs under, set before the command (core/memory.py says why)."""
    from ..core.memory import keep_freed_memory

    keep_freed_memory()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    if not verbose:  # open_clip logs its config resolution at INFO/WARNING on the root logger
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("compalign").setLevel(logging.WARNING)
        # s3fs's event loop logs each request a lost connection cut short mid-write as "Task exception was never
        # retrieved" with its traceback; the request's own failure reaches the run, which says it in one line
        logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def progress_bar() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                    TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=console)


class StageProgress:
    """Adapts the library's (stage, done, total) callback to rich tasks with an items/s field."""

    def __init__(self, bar: Progress):
        self.bar, self.tasks, self.start = bar, {}, {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        import time

        now = time.perf_counter()
        if stage not in self.tasks:
            self.tasks[stage] = self.bar.add_task(stage, total=total, completed=done, rate="")
            self.start[stage] = (now, done)
            return
        t0, d0 = self.start[stage]
        rate = f"{(done - d0) / (now - t0):.1f} {stage}/s" if now > t0 else ""
        self.bar.update(self.tasks[stage], completed=done, rate=rate)
