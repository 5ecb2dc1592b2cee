"""Creator-facing commands: `frames` (best stills of a video), `compare` (A/B before
publishing) and `serve` (the web page and JSON API).

Intervals and their labels come from the model (`LoadedPredictor.interval_label`), never a
fixed level; every file name, title and path is shown through `safe` (no rich markup).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thumbview.cli._shared import (
    console,
    print_json,
    progress_for,
    safe,
    say_model_notes,
    user_errors,
    warn,
)
from thumbview.cli.predict import ChannelVideosOpt, JsonOpt, PublishedOpt, SubscribersOpt
from thumbview.units import format_number, format_range, format_views

ModelOpt = Annotated[
    Path, typer.Option("--model", "-m", help="Model folder from `thumbview train`.")
]


@user_errors
def frames_command(
    video: Annotated[Path, typer.Argument(help="A video file (anything FFmpeg decodes).")],
    model: ModelOpt,
    title: Annotated[str, typer.Option("--title", "-t", help="The video's title.")] = "",
    top: Annotated[int, typer.Option("--top", help="How many stills to return.")] = 5,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for stills + contact sheet.")
    ] = None,
    letterbox: Annotated[
        bool, typer.Option("--letterbox", help="Letterbox to 16:9 instead of cropping.")
    ] = False,
    as_json: JsonOpt = False,
    published: PublishedOpt = None,
    subscribers: SubscribersOpt = None,
    channel_videos: ChannelVideosOpt = None,
) -> None:
    """Rank the stills of a video by predicted views; the top ones are different shots."""
    from dataclasses import replace

    from thumbview.embed.context import context_from_options
    from thumbview.frames.rank import FramesConfig, rank_frames
    from thumbview.inference import LoadedPredictor

    context = context_from_options(published, subscribers, channel_videos=channel_videos)
    config = replace(FramesConfig(), fit="letterbox") if letterbox else FramesConfig()
    predictor = LoadedPredictor.load(model)  # a bad model is reported before decoding
    for message in predictor.missing_inputs([title]):
        warn(message)
    progress = progress_for(as_json)
    result = rank_frames(video, predictor, title, top, out, config, progress, context)
    if as_json:
        print_json(result.to_json_dict())
        return
    _print_frames(result, top)
    say_model_notes(result)


def _print_frames(result, top: int) -> None:
    """The same verdict and out-of-range line as compare, then the stills ('=1' on a tie)."""
    target = result.target
    if result.verdict:
        colour = "green" if result.reliable else "yellow"
        console.print(f"[bold {colour}]verdict:[/] {safe(result.verdict)}")
    if result.warning:
        console.print(f"[yellow]warning:[/] {result.warning}")
    if result.note:
        console.print(f"[yellow]note:[/] {result.note}")
    table = Table("rank", "time", "shot", "predicted", result.interval_label, "still")
    for rank, c in zip(result.rank_labels(), result.choices, strict=True):
        table.add_row(
            rank,
            f"{c.timestamp_s:.1f}s",
            str(c.shot_index),
            format_views(c.predicted_views, target),
            format_range(c.low, c.high, target),
            safe(c.path.name if c.path else ""),
        )
    console.print(table)
    shortfall = result.shortfall(top)
    if shortfall:
        warn(shortfall)
    if result.contact_sheet:
        console.print(f"contact sheet: [bold]{safe(result.contact_sheet)}[/]")


@user_errors
def compare_command(
    images: Annotated[
        list[Path], typer.Argument(help="2-6 candidate thumbnails.", metavar="IMAGE...")
    ],
    model: ModelOpt,
    title: Annotated[
        list[str] | None,
        typer.Option(
            "--title", "-t", help="Candidate title(s); repeat for several.", metavar="TEXT"
        ),
    ] = None,
    sae: Annotated[
        Path | None,
        typer.Option("--sae", help="SAE folder (`sae train --out`), to explain with features."),
    ] = None,
    study: Annotated[
        Path | None, typer.Option("--study", help="Study folder (default: SAE/study).")
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Write a side-by-side PNG here.")
    ] = None,
    as_json: JsonOpt = False,
    published: PublishedOpt = None,
    subscribers: SubscribersOpt = None,
    channel_videos: ChannelVideosOpt = None,
) -> None:
    """Every thumbnail x title: predicted views, interval and the chance each one wins."""
    from thumbview.compare import compare_files, save_side_by_side
    from thumbview.embed.context import context_from_options

    context = context_from_options(published, subscribers, channel_videos=channel_videos)
    comparison, decoded = compare_files(model, images, title or [""], sae, study, context)
    if png:
        save_side_by_side(comparison, decoded, png)
    if as_json:
        print_json(comparison.to_json_dict())
        return
    _print_comparison(comparison)
    if png:
        console.print(f"side by side: [bold]{safe(png)}[/]")


def _print_comparison(comparison) -> None:
    """The library's one verdict first, then the ranked table ('=1' for a tie), the
    per-thumbnail and per-title summaries, and what sets the images apart."""
    target = comparison.target
    colour = "green" if comparison.winner is not None else "yellow"
    if comparison.verdict:  # "no reliable difference ..." instead of a bare 51%
        console.print(f"[bold {colour}]verdict:[/] {safe(comparison.verdict)}")
    if comparison.warning:
        console.print(f"[yellow]warning:[/] {comparison.warning}")
    if comparison.note:  # the independent-residual fallback, said aloud
        console.print(f"[yellow]note:[/] {comparison.note}")
    table = Table("rank", "image", "title", "predicted", comparison.interval_label, "chance best")
    for rank, c in zip(comparison.rank_labels(), comparison.candidates, strict=True):
        table.add_row(
            rank,
            safe(c.image),
            safe(c.title),
            format_views(c.views, target),
            format_range(c.low, c.high, target),
            comparison.chance_text(c.p_best),  # "-" when every candidate is tied
        )
    console.print(table)
    console.print(f"[dim]{comparison.chance_best_note}[/]")
    for what, rows in (("per thumbnail", comparison.by_image), ("per title", comparison.by_title)):
        if comparison.by_image and comparison.by_title:
            _print_summaries(what, rows, comparison)
    say_model_notes(comparison)
    if comparison.descriptors:
        names = [safe(n) for n in comparison.image_names]
        read = any(d.effect is not None for d in comparison.descriptors)
        title = "what sets them apart" + ("" if read else " (this model does not read these)")
        why = Table("descriptor", *names, "what it means", title=title)
        for d in comparison.descriptors[:6]:
            why.add_row(d.feature, *(format_number(v) for v in d.values), safe(d.note))
        console.print(why)
    for s in comparison.sae[:5]:
        ratio = "-" if s.ratio is None else f"{format_views(s.ratio, 'channel-relative')} views"
        acts = ", ".join(format_number(a) for a in s.activations)
        console.print(f"SAE feature {s.latent}: activations {acts} ({ratio})")


def _print_summaries(what: str, rows, comparison) -> None:
    """One row per thumbnail (or title) across the other axis of the cross product."""
    target = comparison.target
    table = Table(
        what, "typical prediction", "lowest - highest", "chance the best uses it", title=what
    )
    for s in rows:
        table.add_row(
            safe(s.name or "(no title)"),
            format_views(s.views, target),
            format_range(s.low, s.high, target),
            comparison.chance_text(s.p_best),
        )
    console.print(table)


@user_errors
def serve_command(
    model: ModelOpt,
    sae: Annotated[Path | None, typer.Option("--sae", help="SAE folder for explanations.")] = None,
    study: Annotated[
        Path | None, typer.Option("--study", help="Study folder (default: found in SAE).")
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="Another name the page may be reached by (Host header; loopback names "
            "and --host are always allowed). Repeatable.",
        ),
    ] = None,
    bot: Annotated[
        Path | None, typer.Option("--bot", help="BOT folder: adds the /bot generate panel.")
    ] = None,
) -> None:
    """The web page and JSON API (OpenAPI schema at /openapi.json). Loopback by default."""
    from thumbview.inference import LoadedPredictor
    from thumbview.serve.app import run
    from thumbview.serve.security import LOOPBACK_HOSTS, Security

    LoadedPredictor.check(model)  # a missing or broken model fails before anything loads
    security = Security(allowed_hosts=LOOPBACK_HOSTS + tuple(allow_host or ()))
    # The models load (and a bad folder fails) before the address is announced.
    announce = lambda line: console.print(line, markup=False, highlight=False)  # noqa: E731
    run(model, sae, study, host, port, security=security, announce=announce, bot_dir=bot)


def register(app: typer.Typer) -> None:
    app.command("frames")(frames_command)
    app.command("compare")(compare_command)
    app.command("serve")(serve_command)
