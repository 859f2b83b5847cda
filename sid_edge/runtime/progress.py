"""Rich progress bars shared by long-running commands (torch-free)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

#: Progress and messages go to stderr so stdout stays parseable.
# soft_wrap: messages stay one line when stderr is not a terminal, so paths, URLs and commands can be copied.
# Without a terminal (CI logs, pipes) rich would assume 80 columns and cut table cells: give tables room instead.
console = Console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 160)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``41.3 img/s``."""

    def __init__(self, unit: str = "img"):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"– {self.unit}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress_tasks(unit: str = "img", enabled: bool | None = None) -> Iterator[Callable[[str, int], Callable[[int], None]]]:
    """Context manager yielding ``new_task(description, total) -> advance(n)``: one live display on stderr for a
    sequence of long steps (each a bar with count, rate, elapsed and remaining time). Silent when ``enabled`` is
    False, or by default when stderr is not a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield lambda description, total: (lambda n=1: None)
        return
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:

        def new_task(description: str, total: int) -> Callable[[int], None]:
            task = progress.add_task(description, total=total)
            return lambda n=1: progress.advance(task, n)

        yield new_task


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, unit: str = "img", enabled: bool | None = None) -> Iterator[Callable[[int], None]]:
    """Context manager yielding ``advance(n)`` for one bar (see :func:`progress_tasks`)."""
    with progress_tasks(unit, enabled) as new_task:
        yield new_task(description, total)
