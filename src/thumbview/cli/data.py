"""Dataset commands: `synth` (built-in data), `info` (validation report), `embed` (features),
`pack` / `unpack` (folder <-> Parquet shards)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from thumbview.cli._shared import console, progress_for, safe, split_names, user_errors
from thumbview.embed.registry import DEFAULT_CLIP_MODEL, ENCODER_NAMES

# The library is imported inside each command: `thumbview --help` must not load pandas/torch.

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

    root = make_synthetic(out, SynthConfig(n=n, seed=seed), progress=progress_for())
    console.print(
        f"wrote {n} thumbnails to [bold]{safe(root)}[/] "
        f"(planted truth: {safe(root / 'planted.json')})"
    )


@user_errors
def info(data: DataArg) -> None:
    """Validate a dataset folder and report what would be skipped, and why."""
    from thumbview.data.dataset import load_dataset

    ds = load_dataset(data, progress=progress_for())
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
    clip_model: ClipModelOpt = DEFAULT_CLIP_MODEL,
    cache_dir: CacheOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per encoder batch.")] = 64,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Run on Ray Data: 'auto' (a running cluster, else a local one) or an address "
            "(ray://head:10001). Needs thumbview\\[ray].",
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="With --ray: actors per encoder.")
    ] = None,
    num_gpus: Annotated[
        float | None,
        typer.Option("--num-gpus", help="With --ray: GPUs per actor (default 1 if any)."),
    ] = None,
) -> None:
    """Compute and cache features; re-running reuses them and computes only new images."""
    from thumbview.data.dataset import load_dataset
    from thumbview.embed.cache import embed
    from thumbview.embed.distributed import RayOptions, connect, embed_ray, import_ray
    from thumbview.predict.workflow import check_encoders

    names = split_names(encoders)
    check_encoders(names, clip_model)  # before the dataset is verified
    if ray is not None:
        import_ray()  # before loading anything: say how to install it at once
    ds = load_dataset(data, progress=progress_for())
    if ray is not None:
        connect(ray)
    console.print(safe(ds.report.summary()))
    options = RayOptions(ray or "auto", batch_size, concurrency, num_gpus)
    for name, make in encoder_factories(names, clip_model, ray is not None).items():
        if ray is None:
            matrix, stats = embed(
                ds, make(), cache_dir, batch_size=batch_size, progress=progress_for()
            )
        else:
            matrix, stats = embed_ray(ds, make, cache_dir, options, progress=progress_for())
        console.print(
            f"{name}: {matrix.shape[0]} x {matrix.shape[1]} "
            f"({stats.n_cached} cached, {stats.n_computed} computed) -> {safe(stats.cache_path)}"
        )
        for s in stats.skipped[:20]:
            console.print(f"  skipped row {s.row} ({escape(s.file_name)}): {escape(s.detail)}")


def encoder_factories(names: list[str], clip_model: str, on_ray: bool) -> dict:
    """name -> picklable encoder factory (actors build their own). On Ray, CLIP gets this
    machine's resolved dtype, so GPU actors and the local path share one spec, hence one cache."""
    from thumbview.embed.registry import get_encoder
    from thumbview.predict.workflow import encoder_options

    factories = {}
    for name, opts in encoder_options(names, clip_model).items():
        if on_ray and name == "clip":  # the driver's resolved dtype: the spec (cache) is shared
            opts = {**opts, "dtype": get_encoder(name, **opts).dtype, "device": _ray_device()}
        factories[name] = functools.partial(get_encoder, name, **opts)
    return factories


def _ray_device() -> str:
    import ray

    return "cuda" if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) else "cpu"


@user_errors
def pack_command(
    data: DataArg,
    out: Annotated[Path, typer.Argument(help="Folder to write data/train-*.parquet into.")],
    shard_size: Annotated[int, typer.Option("--shard-size", help="Rows per shard.")] = 10_000,
) -> None:
    """Convert a dataset folder to Parquet shards (Hugging Face layout), losslessly."""
    from thumbview.data.shards import pack

    result = pack(data, out, shard_size=shard_size, progress=progress_for())
    console.print(
        f"{result.n_rows} rows ({result.n_images} with images) in {len(result.files)} shard(s) "
        f"under {escape(str(Path(out) / 'data'))}"
    )


@user_errors
def unpack_command(
    shards: Annotated[Path, typer.Argument(help="Folder holding data/*.parquet.")],
    out: Annotated[Path, typer.Argument(help="Folder to write images + metadata.csv into.")],
) -> None:
    """Write Parquet shards back as a dataset folder (images + metadata.csv)."""
    from thumbview.data.shards import unpack

    result = unpack(shards, out, progress=progress_for())
    console.print(
        f"{result.n_rows} rows, {result.n_images} images -> {escape(str(result.metadata))}"
    )
    if result.n_unwritable:
        console.print(
            f"{result.n_unwritable} image(s) not written: their file_name leaves {escape(str(out))}"
        )
    if result.n_refused:
        console.print(
            f"{result.n_refused} image(s) not written: over the image byte cap (warnings above)"
        )
    if result.n_unreadable:
        console.print(
            f"{result.n_unreadable} image(s) written as they are but not readable as images "
            "(warnings above); `thumbview info` on the folder lists them"
        )


def register(app: typer.Typer) -> None:
    app.command()(synth)
    app.command()(info)
    app.command("embed")(embed_command)
    app.command("pack")(pack_command)
    app.command("unpack")(unpack_command)
