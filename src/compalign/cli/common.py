"""Shared CLI plumbing: console, logging, progress bars."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

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


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=console, show_path=False)], force=True)
    if not verbose:  # open_clip logs its config resolution at INFO/WARNING on the root logger
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("compalign").setLevel(logging.WARNING)


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
