"""Dataset commands: `synth` (built-in data), `info` (validation report), `embed` (features)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from thumbview.cli._shared import console, safe, split_names, user_errors
from thumbview.progress import progress_bar

# The library is imported inside each command: `thumbview --help` must not load pandas/torch.
ENCODER_NAMES = ("clip", "title", "visual")  # == thumbview.embed.registry.ENCODER_NAMES (tested)

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
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same data).")] = 0,
) -> None:
    """Write a synthetic dataset with planted effects (truth in planted.json, truth.csv)."""
    from thumbview.data.synth import SynthConfig, make_synthetic

    root = make_synthetic(out, SynthConfig(n=n, seed=seed), progress=True)
    console.print(
        f"wrote {n} thumbnails to [bold]{safe(root)}[/] "
        f"(planted truth: {safe(root / 'planted.json')})"
    )


@user_errors
def info(data: DataArg) -> None:
    """Validate a dataset folder and report what would be skipped, and why."""
    from thumbview.data.dataset import load_dataset

    ds = load_dataset(data, progress=True)
    console.print(safe(ds.report.summary()))
    if ds.report.skipped:
        table = Table("row", "file_name", "reason", "detail", title="skipped rows (first 20)")
        table.caption = "row: 0-based data row of the metadata file (in a CSV, line = row + 2)"
        for s in ds.report.skipped[:20]:
            table.add_row(str(s.row), safe(s.file_name), s.reason, safe(s.detail))
        console.print(table)


@user_errors
def embed_command(
    data: DataArg,
    encoders: EncodersOpt = "title,visual",
    clip_model: ClipModelOpt = "openai/clip-vit-base-patch32",
    cache_dir: CacheOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")] = 64,
) -> None:
    """Compute and cache features; re-running reuses them and computes only new images."""
    from thumbview.data.dataset import load_dataset
    from thumbview.embed.cache import embed
    from thumbview.predict.workflow import build_encoders, check_encoders

    names = split_names(encoders)
    check_encoders(names, clip_model)  # before the dataset is verified
    ds = load_dataset(data, progress=True)
    console.print(safe(ds.report.summary()))
    for name, encoder in build_encoders(names, clip_model).items():
        with progress_bar(len(ds), f"embed {name}") as advance:
            matrix, stats = embed(ds, encoder, cache_dir, batch_size=batch_size, progress=advance)
        console.print(
            f"{name}: {matrix.shape[0]} x {matrix.shape[1]} "
            f"({stats.n_cached} cached, {stats.n_computed} computed) -> {safe(stats.cache_path)}"
        )


def register(app: typer.Typer) -> None:
    app.command()(synth)
    app.command()(info)
    app.command("embed")(embed_command)
