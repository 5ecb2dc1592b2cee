"""`thumbview collect ...`: build a thumbnail dataset from YouTube (a thin shell over
`thumbview.collect`). Every command is resumable: re-run it after a crash or a quota stop."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from thumbview.cli._shared import console, err_console, split_names, user_errors
from thumbview.collect import (
    CollectConfig,
    CollectSummary,
    DataApiBackend,
    FilterConfig,
    HttpClient,
    QuotaTracker,
    RetryPolicy,
    YtDlpBackend,
    collect_channel,
    collect_ids,
    collect_search,
    parse_shard,
    refresh,
)
from thumbview.collect.api import DEFAULT_BASE_URL
from thumbview.collect.types import Backend

app = typer.Typer(help="Collect thumbnails + metadata from YouTube into a dataset folder.")


class BackendName(StrEnum):
    ytdlp = "ytdlp"
    api = "api"


Out = Annotated[Path, typer.Argument(help="Dataset folder (created; re-use it to resume).")]
BackendOpt = Annotated[
    BackendName, typer.Option("--backend", help="ytdlp (no key) or api (YOUTUBE_API_KEY).")
]
KeyOpt = Annotated[str, typer.Option("--api-key", envvar="YOUTUBE_API_KEY", show_default=False)]
BaseOpt = Annotated[str, typer.Option("--api-base-url", envvar="YOUTUBE_API_BASE_URL")]
QuotaOpt = Annotated[int, typer.Option("--daily-quota", help="Stop before this many units.")]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Parallel requests.")]
MinViews = Annotated[int, typer.Option("--min-views")]
DateOpt = Annotated[datetime | None, typer.Option(formats=["%Y-%m-%d"])]
MaxDur = Annotated[float | None, typer.Option("--max-duration", help="Seconds.")]
Shorts = Annotated[bool, typer.Option("--include-shorts", help="Keep videos <= 60 s.")]


def _backend(name: BackendName, key: str, base_url: str, daily_quota: int) -> Backend:
    if name is BackendName.api:
        quota = QuotaTracker(daily_quota)
        return DataApiBackend(key, http=HttpClient(), quota=quota, base_url=base_url)
    return YtDlpBackend(policy=RetryPolicy(attempts=3, base_delay=2.0))


def _config(
    workers: int,
    min_views: int,
    since: datetime | None,
    until: datetime | None,
    max_duration: float | None,
    include_shorts: bool,
) -> CollectConfig:
    filters = FilterConfig(
        min_views=min_views,
        since=_day(since),
        until=_day(until),
        max_duration_s=max_duration,
        include_shorts=include_shorts,
    )
    hosts = os.environ.get("THUMBVIEW_THUMB_HOSTS")  # tests: the fake's 127.0.0.1
    extra = {"thumb_hosts": frozenset(split_names(hosts))} if hosts else {}
    return CollectConfig(filters=filters, workers=workers, **extra)


def _day(value: datetime | None) -> date | None:
    return None if value is None else value.date()


@contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A rich bar driven by the library's (done, total) callback."""
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _report(summary: CollectSummary) -> None:
    table = Table(title=f"collect -> {summary.out}", show_header=False)
    table.add_row("collected", str(summary.collected))
    table.add_row("rows in dataset", str(summary.total_rows))
    if summary.rechecked:
        table.add_row("re-checked against the new filters", str(summary.rechecked))
    for reason, count in sorted(summary.skipped.items()):
        table.add_row(f"skipped: {reason}", str(count))
    table.add_row("quota used", str(summary.quota_used))
    table.add_row("time", f"{summary.elapsed_s:.1f} s")
    console.print(table)
    if summary.stopped:
        console.print(
            f"[yellow]stopped ({summary.stopped}); {summary.remaining} videos still queued: "
            "re-run the same command to continue.[/]"
        )


@app.command()
@user_errors
def search(
    out: Out,
    queries: Annotated[list[str], typer.Argument(help="Search queries.")],
    per_query: Annotated[int, typer.Option("--per-query")] = 100,
    backend: BackendOpt = BackendName.ytdlp,
    api_key: KeyOpt = "",
    api_base_url: BaseOpt = DEFAULT_BASE_URL,
    daily_quota: QuotaOpt = 10_000,
    workers: WorkersOpt = 4,
    min_views: MinViews = 0,
    since: DateOpt = None,
    until: DateOpt = None,
    max_duration: MaxDur = None,
    include_shorts: Shorts = False,
) -> None:
    """Collect the top results of each search query."""
    source = _backend(backend, api_key, api_base_url, daily_quota)
    config = _config(workers, min_views, since, until, max_duration, include_shorts)
    with _progress("collecting") as progress:
        summary = collect_search(
            out, queries, backend=source, per_query=per_query, config=config, progress=progress
        )
    _report(summary)


@app.command()
@user_errors
def channel(
    out: Out,
    channel: Annotated[str, typer.Argument(help="@handle, channel URL or UC... channel id.")],
    limit: Annotated[int | None, typer.Option("--limit", help="Newest N uploads.")] = None,
    backend: BackendOpt = BackendName.ytdlp,
    api_key: KeyOpt = "",
    api_base_url: BaseOpt = DEFAULT_BASE_URL,
    daily_quota: QuotaOpt = 10_000,
    workers: WorkersOpt = 4,
    min_views: MinViews = 0,
    since: DateOpt = None,
    until: DateOpt = None,
    max_duration: MaxDur = None,
    include_shorts: Shorts = False,
) -> None:
    """Collect a channel's uploads."""
    source = _backend(backend, api_key, api_base_url, daily_quota)
    config = _config(workers, min_views, since, until, max_duration, include_shorts)
    with _progress("collecting") as progress:
        summary = collect_channel(
            out, channel, backend=source, limit=limit, config=config, progress=progress
        )
    _report(summary)


@app.command()
@user_errors
def ids(
    out: Out,
    ids_file: Annotated[Path, typer.Argument(help="One video id or URL a line.")],
    shard: Annotated[str, typer.Option("--shard", help="i/n: this machine's share.")] = "0/1",
    backend: BackendOpt = BackendName.ytdlp,
    api_key: KeyOpt = "",
    api_base_url: BaseOpt = DEFAULT_BASE_URL,
    daily_quota: QuotaOpt = 10_000,
    workers: WorkersOpt = 4,
    min_views: MinViews = 0,
    since: DateOpt = None,
    until: DateOpt = None,
    max_duration: MaxDur = None,
    include_shorts: Shorts = False,
) -> None:
    """Collect a list of known video ids (split across machines with --shard i/n)."""
    source = _backend(backend, api_key, api_base_url, daily_quota)
    config = _config(workers, min_views, since, until, max_duration, include_shorts)
    with _progress("collecting") as progress:
        summary = collect_ids(
            out, ids_file, backend=source, shard=parse_shard(shard), config=config,
            progress=progress,
        )  # fmt: skip
    _report(summary)


@app.command("refresh")
@user_errors
def refresh_cmd(
    out: Out,
    older_than: Annotated[float, typer.Option("--older-than", help="Hours.")] = 12.0,
    backend: BackendOpt = BackendName.ytdlp,
    api_key: KeyOpt = "",
    api_base_url: BaseOpt = DEFAULT_BASE_URL,
    daily_quota: QuotaOpt = 10_000,
    workers: WorkersOpt = 4,
) -> None:
    """Re-read view counts of collected videos; the old counts stay in views_history."""
    source = _backend(backend, api_key, api_base_url, daily_quota)
    with _progress("refreshing") as progress:
        summary = refresh(
            out, backend=source, older_than=timedelta(hours=older_than),
            config=CollectConfig(workers=workers), progress=progress,
        )  # fmt: skip
    console.print(
        f"refreshed {summary.refreshed}, unavailable {summary.unavailable}, "
        f"quota used {summary.quota_used}"
        + (f"; stopped ({summary.stopped}), {summary.remaining} left" if summary.stopped else "")
    )


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
