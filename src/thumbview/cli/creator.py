"""Creator-facing commands: `frames` (best stills of a video), `compare` (A/B before
publishing) and `serve` (the web page and JSON API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thumbview.cli._shared import console, print_json, user_errors
from thumbview.cli.predict import JsonOpt
from thumbview.progress import progress_bar

ModelOpt = Annotated[
    Path, typer.Option("--model", "-m", help="Model folder from `thumbview train`.")
]


@user_errors
def frames_command(
    video: Annotated[Path, typer.Argument(help="A video file (anything FFmpeg decodes).")],
    model: ModelOpt,
    title: Annotated[str, typer.Option("--title", "-t", help="The video's title.")] = "",
    top: Annotated[int, typer.Option("--top")] = 5,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Folder for stills + contact sheet.")
    ] = None,
    letterbox: Annotated[
        bool, typer.Option("--letterbox", help="Letterbox to 16:9 instead of cropping.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Rank the stills of a video by predicted views; the top ones are different shots."""
    from dataclasses import replace

    from thumbview.frames.rank import FramesConfig, format_views, rank_frames

    config = replace(FramesConfig(), fit="letterbox") if letterbox else FramesConfig()
    with progress_bar(1000, "scanning video", enabled=not as_json) as advance:
        done = [0]

        def report(fraction: float) -> None:
            step = int(fraction * 1000) - done[0]
            done[0] += max(step, 0)
            advance(max(step, 0))

        result = rank_frames(video, model, title, top, out, config, progress=report)
    if as_json:
        print_json(result.to_json_dict())
        return
    table = Table("rank", "time", "shot", "predicted", "80% interval", "still")
    for rank, c in enumerate(result.choices, 1):
        table.add_row(
            str(rank),
            f"{c.timestamp_s:.1f}s",
            str(c.shot_index),
            format_views(c.predicted_views, result.target),
            f"{format_views(c.low, result.target)} - {format_views(c.high, result.target)}",
            str(c.path or ""),
        )
    console.print(table)
    if result.contact_sheet:
        console.print(f"contact sheet: [bold]{result.contact_sheet}[/]")


@user_errors
def compare_command(
    images: Annotated[list[Path], typer.Argument(help="2-6 candidate thumbnails.")],
    model: ModelOpt,
    title: Annotated[
        list[str] | None, typer.Option("--title", "-t", help="Candidate title(s).")
    ] = None,
    sae: Annotated[
        Path | None, typer.Option("--sae", help="SAE folder, to explain with features.")
    ] = None,
    study: Annotated[
        Path | None, typer.Option("--study", help="Study folder (default SAE/study).")
    ] = None,
    png: Annotated[
        Path | None, typer.Option("--png", help="Write a side-by-side PNG here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every thumbnail x title: predicted views, interval and the chance each one wins."""
    from thumbview.compare import compare_files, save_side_by_side

    study = study or (sae / "study" if sae else None)
    comparison, decoded = compare_files(model, images, title or [""], sae, study)
    if png:
        save_side_by_side(comparison, decoded, png)
    if as_json:
        print_json(comparison.to_json_dict())
        return
    _print_comparison(comparison)
    if png:
        console.print(f"side by side: [bold]{png}[/]")


def _print_comparison(comparison) -> None:
    from thumbview.frames.rank import format_views

    target = comparison.target
    table = Table(
        "rank", "image", "title", "predicted", f"{comparison.coverage:.0%} interval", "P(best)"
    )
    for rank, c in enumerate(comparison.candidates, 1):
        table.add_row(
            str(rank),
            c.image,
            c.title,
            format_views(c.views, target),
            f"{format_views(c.low, target)} - {format_views(c.high, target)}",
            f"{c.p_best:.0%}",
        )
    console.print(table)
    if comparison.descriptors:
        why = Table("descriptor", *comparison.image_names, title="what differs most")
        for d in comparison.descriptors[:6]:
            why.add_row(d.feature, *(f"{v:.3g}" for v in d.values))
        console.print(why)
    for s in comparison.sae[:5]:
        ratio = "-" if s.ratio is None else f"x{s.ratio:.2f} views"
        console.print(f"SAE feature {s.latent}: activations {s.activations} ({ratio})")


@user_errors
def serve_command(
    model: ModelOpt,
    sae: Annotated[Path | None, typer.Option("--sae", help="SAE folder for explanations.")] = None,
    study: Annotated[
        Path | None, typer.Option("--study", help="Study folder (default: found in SAE).")
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    bot: Annotated[
        Path | None, typer.Option("--bot", help="BOT folder: adds the /bot generate panel.")
    ] = None,
) -> None:
    """The web page and JSON API (OpenAPI schema at /openapi.json). Loopback by default."""
    from thumbview.serve.app import run

    console.print(f"thumbview on http://{host}:{port}  (Ctrl+C to stop)")
    run(model, sae, study, host, port, bot_dir=bot)


def register(app: typer.Typer) -> None:
    app.command("frames")(frames_command)
    app.command("compare")(compare_command)
    app.command("serve")(serve_command)
