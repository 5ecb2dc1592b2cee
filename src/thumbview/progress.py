"""One progress contract for the whole library.

Every long library function takes `progress: Progress = SILENT` (that name, that type,
everywhere) and opens one task per stage of work:

    with progress.task("embed clip", total=len(dataset)) as advance:
        for batch in batches:
            ...
            advance(len(batch))

Stages run one after another, each in its own `task`; a function that calls another long
function passes its `progress` on. Who called decides how it is shown:

- `SILENT` (the default): nothing is shown and nothing is paid for; library calls and tests.
- `Bars()`: rich bars on stderr, one a task (description, bar, M/N, %, elapsed, remaining), so
  `--json` output on stdout stays clean; the CLI builds one (`cli._shared.progress_for`).
- `Fractions(report, shares)`: one overall fraction in [0, 1] and the current stage's text,
  reported to `report(fraction, stage)`; the web's frame jobs use it for the page's bar.

A task that completes normally ends at its total even when less was counted (rows skipped,
a cache hit), so a finished bar reads N/N; `total=None` is work of unknown size, and a task of
`total=0` shows nothing.

Progress vs reports: progress says how far along work is and carries no data, so it can be
dropped (`SILENT`) without changing any result. A callback that hands the caller data about
the work (fine-tuning's `on_epoch(EpochReport)`, the bot's `on_epoch(epoch, EpochStats)`) is
a report, not progress: it keeps its own name and type, and goes alongside `progress`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

Advance = Callable[[int], None]  # advance(n): n more units of the task's total are done


class Progress(Protocol):
    """What long library functions accept: something that opens tasks."""

    def task(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        """A context for one stage of `total` units; yields `advance(n)`."""
        ...


def _ignore(n: int = 1) -> None:
    """The advance of a task nobody watches."""


class Silent:
    """Shows nothing: the default of every library function."""

    _task = nullcontext(_ignore)  # reusable: opening a silent task allocates nothing

    def task(self, description: str, total: int | None) -> AbstractContextManager[Advance]:
        return self._task


SILENT: Progress = Silent()


class Bars:
    """rich progress bars on stderr, one line a task; nested tasks share one live display."""

    def __init__(self, console: Console | None = None):
        self._console = console or Console(stderr=True)
        self._lock = threading.Lock()
        self._live: RichProgress | None = None  # while any task is open
        self._open = 0

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        if total == 0:
            yield _ignore
            return
        live = self._acquire()
        task_id = live.add_task(description, total=total)
        try:
            yield lambda n=1: live.advance(task_id, n)
            if total is not None:
                live.update(task_id, completed=total)  # reached only when the body did not raise
        finally:
            self._release()

    def _acquire(self) -> RichProgress:
        with self._lock:
            if self._live is None:
                self._live = RichProgress(
                    TextColumn("[bold]{task.description}"),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TaskProgressColumn(),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    console=self._console,
                )
                self._live.start()
            self._open += 1
            return self._live

    def _release(self) -> None:
        with self._lock:
            self._open -= 1
            if self._open == 0 and self._live is not None:
                self._live.stop()
                self._live = None


class Fractions:
    """The whole job as one fraction in [0, 1], reported with the current stage's text.

    `shares` are the parts of the job the caller expects its successive top-level tasks to
    take (e.g. (0.9, 0.1): scanning a video, then ranking its frames); they are normalised.
    The reported fraction never goes back, and reaches 1.0 when the last share's task
    completes. Tasks beyond the shares, and tasks nested in another, change the stage text only.
    """

    def __init__(self, report: Callable[[float, str], None], shares: Sequence[float] = (1.0,)):
        if not shares or min(shares) < 0 or sum(shares) <= 0:
            raise ValueError(f"shares must be >= 0 with a positive sum, got {tuple(shares)}")
        total = float(sum(shares))
        self._bounds = [sum(shares[:i]) / total for i in range(len(shares) + 1)]
        self._report = report
        self._stage = 0  # index of the next top-level task
        self._depth = 0
        self.fraction = 0.0

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        top = self._depth == 0
        if top and self._stage + 1 < len(self._bounds):
            start, end = self._bounds[self._stage], self._bounds[self._stage + 1]
        else:
            start = end = self.fraction
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n
            if total:
                self._emit(start + (end - start) * min(done[0] / total, 1.0), description)

        self._depth += 1
        self._emit(start, description)
        try:
            yield advance
            self._emit(end, description)
        finally:
            self._depth -= 1
            self._stage += top

    def _emit(self, fraction: float, stage: str) -> None:
        self.fraction = max(self.fraction, min(fraction, 1.0))
        self._report(self.fraction, stage)
