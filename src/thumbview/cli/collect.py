"""`thumbview collect ...`: build a thumbnail dataset from YouTube (a thin shell over
`thumbview.collect`). Every command is resumable: re-run it after a crash or a quota stop."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from rich.markup import escape
from rich.table import Table

from thumbview.cli._shared import console, err_console, progress_for, user_errors
from thumbview.collect import (
    CollectSummary,
    collect_channel,
    collect_ids,
    collect_search,
    merge_shards,
    parse_shard,
    refresh,
)
from thumbview.collect.options import CollectOptions, option_fields

app = typer.Typer(
    help="Collect thumbnails + metadata from YouTube into a dataset folder. Exits 3 when "
    "YouTube could not be reached and nothing was collected."
)

Out = Annotated[Path, typer.Argument(help="Dataset folder (created; re-use it to resume).")]
_DATE_FORMATS = ["%Y-%m-%d"]
EXIT_UNREACHABLE = 3  # nothing collected because YouTube could not be reached


def with_options(groups: frozenset[str] | None = None) -> Callable[[Callable], Callable]:
    """Give a command one flag per `CollectOptions` field of `groups`, and pass `options=`.

    The flags' names, defaults, help and env vars all come from the dataclass, so the four
    commands cannot drift apart. A `date` field becomes a YYYY-MM-DD option.
    """
    chosen = option_fields(groups)
    hints = get_type_hints(CollectOptions)

    def decorate(fn: Callable) -> Callable:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "options"]  # fmt: skip
        added = [_parameter(f, hints[f.name]) for f in chosen]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            values = {f.name: _value(kwargs.pop(f.name)) for f in chosen}
            return fn(*args, options=CollectOptions(**values), **kwargs)

        command.__signature__ = inspect.Signature([*own, *added])  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in (*own, *added)}
        return command

    return decorate


def _parameter(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """The typer option of one `CollectOptions` field."""
    meta = dict(f.metadata)
    extra = {k: meta[k] for k in ("envvar", "show_default") if k in meta}
    if hint == date | None:
        hint, extra["formats"] = datetime | None, _DATE_FORMATS
    flag = "--" + f.name.replace("_", "-")
    option = typer.Option(flag, help=meta["help"], **extra)
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=f.default,
        annotation=Annotated[hint, option],
    )


def _value(value: Any) -> Any:
    return value.date() if isinstance(value, datetime) else value


def _report(summary: CollectSummary) -> None:
    """The run's table; a run that reached nothing (no network) is one line and exit 3."""
    if summary.unreachable:
        queued = f"{summary.remaining} videos stay queued; " if summary.remaining else ""
        err_console.print(
            "[bold red]error:[/] YouTube could not be reached (no network connection?), so "
            f"nothing was collected; {queued}re-run the same command when online",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(code=EXIT_UNREACHABLE)
    table = Table(title=escape(f"collect -> {summary.out}"), show_header=False)
    table.add_row("collected", str(summary.collected))
    table.add_row("rows in dataset", str(summary.total_rows))
    if summary.rechecked:
        table.add_row("re-checked against the new filters", str(summary.rechecked))
    for reason, count in sorted(summary.skipped.items()):
        table.add_row(escape(f"skipped: {reason}"), str(count))
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
@with_options()
def search(
    out: Out,
    queries: Annotated[list[str], typer.Argument(help="Search queries.")],
    per_query: Annotated[int, typer.Option("--per-query", help="Results per query.")] = 100,
    *,
    options: CollectOptions,
) -> None:
    """Collect the top results of each search query."""
    source, config = options.make_backend(), options.config()
    summary = collect_search(
        out, queries, backend=source, per_query=per_query, config=config, progress=progress_for()
    )
    _report(summary)


@app.command()
@user_errors
@with_options()
def channel(
    out: Out,
    channel: Annotated[str, typer.Argument(help="@handle, channel URL or UC... channel id.")],
    limit: Annotated[int | None, typer.Option("--limit", help="Newest N uploads.")] = None,
    *,
    options: CollectOptions,
) -> None:
    """Collect a channel's uploads."""
    source, config = options.make_backend(), options.config()
    summary = collect_channel(
        out, channel, backend=source, limit=limit, config=config, progress=progress_for()
    )
    _report(summary)


@app.command()
@user_errors
@with_options()
def ids(
    out: Out,
    ids_file: Annotated[Path, typer.Argument(help="One video id or URL a line.")],
    shard: Annotated[str, typer.Option("--shard", help="i/n: this machine's share.")] = "0/1",
    *,
    options: CollectOptions,
) -> None:
    """Collect a list of known video ids (split across machines with --shard i/n)."""
    source, config = options.make_backend(), options.config()
    summary = collect_ids(
        out, ids_file, backend=source, shard=parse_shard(shard), config=config,
        progress=progress_for(),
    )  # fmt: skip
    _report(summary)


@app.command("refresh")
@user_errors
@with_options(frozenset({"source"}))
def refresh_cmd(
    out: Out,
    older_than: Annotated[float, typer.Option("--older-than", help="Hours.")] = 12.0,
    *,
    options: CollectOptions,
) -> None:
    """Re-read view counts of collected videos; the old counts stay in views_history."""
    source = options.make_backend()
    summary = refresh(
        out, backend=source, older_than=timedelta(hours=older_than),
        config=options.config(), progress=progress_for(),
    )  # fmt: skip
    console.print(
        f"refreshed {summary.refreshed}, unavailable {summary.unavailable}, "
        f"quota used {summary.quota_used}"
        + (f"; stopped ({summary.stopped}), {summary.remaining} left" if summary.stopped else "")
    )


@app.command()
@user_errors
def merge(
    out: Out,
    shards: Annotated[list[Path], typer.Argument(help="Shard folders (collect ids --shard i/n).")],
) -> None:
    """Merge shard folders into OUT: no duplicate, no lost row; safe to run again."""
    summary = merge_shards(out, shards, progress=progress_for())
    console.print(summary.describe(), highlight=False, markup=False)


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
