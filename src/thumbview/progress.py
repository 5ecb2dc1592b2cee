"""One way to show progress: library functions take `progress: bool`, the CLI turns it on.

Bars go to stderr through rich, so piped `--json` output on stdout stays clean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_console = Console(stderr=True)


@contextmanager
def progress_bar(
    total: int | None, description: str, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """Yield `advance(n)`; a no-op when disabled, so callers never branch on it.

    A bar that completes normally ends at its total even when the work was less than
    counted (rows skipped, a cache hit), and nothing is drawn for zero items of work.
    """
    if not enabled or total == 0:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=_console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
        if total is not None:
            bar.update(task, completed=total)  # reached only when the body did not raise
