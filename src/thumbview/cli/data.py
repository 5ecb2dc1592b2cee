"""Dataset commands: `synth` (built-in data), `info` (validation report), `embed` (features)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thumbview.cli._shared import console, split_names, user_errors
from thumbview.data.dataset import load_dataset
from thumbview.data.synth import SynthConfig, make_synthetic
from thumbview.embed.cache import embed
from thumbview.embed.registry import ENCODER_NAMES
from thumbview.progress import progress_bar

DataArg = Annotated[Path, typer.Argument(help="Dataset folder (images + metadata.csv).")]
EncodersOpt = Annotated[
    str,
    typer.Option("--encoders", "-e", help=f"Comma-separated, from: {', '.join(ENCODER_NAMES)}."),
]
ClipModelOpt = Annotated[
    str,
    typer.Option("--clip-model", help="CLIP model id on the Hub or a local directory."),
]
CacheOpt = Annotated[
    Path | None, typer.Option("--cache-dir", help="Feature cache (default: ~/.cache/thumbview).")
]


@user_errors
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write the synthetic dataset into.")],
    n: Annotated[int, typer.Option("--n", help="Number of thumbnails.")] = 2000,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a synthetic dataset with planted effects (truth in planted.json, truth.csv)."""
    root = make_synthetic(out, SynthConfig(n=n, seed=seed), progress=True)
    console.print(
        f"wrote {n} thumbnails to [bold]{root}[/] (planted truth: {root / 'planted.json'})"
    )


@user_errors
def info(data: DataArg) -> None:
    """Validate a dataset folder and report what would be skipped, and why."""
    ds = load_dataset(data, progress=True)
    console.print(ds.report.summary())
    if ds.report.skipped:
        table = Table("row", "file_name", "reason", "detail", title="skipped rows (first 20)")
        table.caption = "row: 0-based data row of the metadata file (in a CSV, line = row + 2)"
        for s in ds.report.skipped[:20]:
            table.add_row(str(s.row), s.file_name, s.reason, s.detail)
        console.print(table)


@user_errors
def embed_command(
    data: DataArg,
    encoders: EncodersOpt = "title,visual",
    clip_model: ClipModelOpt = "openai/clip-vit-base-patch32",
    cache_dir: CacheOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
) -> None:
    """Compute and cache features; re-running reuses them and computes only new images."""
    from thumbview.predict.workflow import build_encoders

    ds = load_dataset(data, progress=True)
    console.print(ds.report.summary())
    for name, encoder in build_encoders(split_names(encoders), clip_model).items():
        with progress_bar(len(ds), f"embed {name}") as advance:
            matrix, stats = embed(ds, encoder, cache_dir, batch_size=batch_size, progress=advance)
        console.print(
            f"{name}: {matrix.shape[0]} x {matrix.shape[1]} "
            f"({stats.n_cached} cached, {stats.n_computed} computed) -> {stats.cache_path}"
        )


def register(app: typer.Typer) -> None:
    app.command()(synth)
    app.command()(info)
    app.command("embed")(embed_command)
