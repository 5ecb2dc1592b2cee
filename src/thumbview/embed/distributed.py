"""Embedding on a Ray cluster (Ray Data): the same features, in the same cache, from many GPUs.

A CLIP ViT-L/14 pass over a million thumbnails is hours on one GPU. Ray Data spreads it:

1. digests: tasks read the images (shard row groups, or file chunks) where they run and
   return each row's content digest (16 bytes), so the driver knows what is cached;
2. encode: tasks read the missing images again, an actor pool (`map_batches` with a
   class, one encoder per actor, `num_gpus=1` each where the cluster has GPUs) encodes
   them, and the driver streams the results into the same content-addressed
   `FeatureStore` the local `embed` uses, a shard every `SHARD_ROWS` rows.

Same spec, same digests, same store: `train`, `cv` and `sae` read the features unchanged,
and an interrupted run resumes (a rerun encodes only what is missing). Ray is an optional
extra (`pip install 'thumbview[ray]'`), imported only here, only when asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thumbview.data.dataset import ThumbnailDataset
from thumbview.data.images import ImageError, load_image
from thumbview.embed import cache
from thumbview.embed.base import Encoder
from thumbview.progress import SILENT, Advance, Progress

log = logging.getLogger(__name__)

INSTALL_HINT = "Ray is not installed: pip install 'thumbview[ray]' (or pip install 'ray[data]')"
READ_TASK_ROWS = 256  # rows one read task handles (a shard row group)


class RayMissingError(ValueError):
    """`--ray` without Ray installed; the message says how to install it."""


@dataclass(frozen=True)
class RayOptions:
    """How to run on Ray.

    address: "auto" joins a running cluster (`ray start --head`), else starts a local one;
        or a cluster address ("ray://head:10001", "head:6379").
    batch_size: inputs per `map_batches` call on an actor.
    concurrency: actors per encoder; None = one per GPU when the cluster has GPUs, else
        half its CPUs; always at most CPUs - 1 (each actor holds a CPU, the readers need one).
    num_gpus: GPUs per actor; None = 1 when the cluster has GPUs, else 0.
    """

    address: str = "auto"
    batch_size: int = 64
    concurrency: int | None = None
    num_gpus: float | None = None


def import_ray() -> Any:
    """`ray` and `ray.data`, or RayMissingError with the install line."""
    try:
        import ray
        import ray.data  # noqa: F401 - the data extra must be there too
    except ImportError as e:
        raise RayMissingError(INSTALL_HINT) from e
    return ray


def connect(address: str) -> Any:
    """Join the cluster at `address` ("auto": a running one, else start a local one)."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError:
            if address != "auto":
                raise
            ray.init(log_to_driver=False)  # no cluster running: a local one on this machine
    return ray


def embed_ray(
    dataset: ThumbnailDataset,
    make_encoder: Callable[[], Encoder],
    cache_dir: Path | None = None,
    options: RayOptions = RayOptions(),  # noqa: B008 - frozen dataclass
    progress: Progress = SILENT,
) -> tuple[np.ndarray, cache.CacheStats]:
    """`cache.embed` on Ray: features (len(dataset), dim) float32, aligned with the rows.

    `make_encoder` builds the encoder (it runs on the driver for the spec and once per
    actor); it must be picklable (a class, or `functools.partial(get_encoder, name, ...)`).
    """
    ray = connect(options.address)
    encoder = make_encoder()
    store = cache.FeatureStore(cache_dir or cache.default_cache_dir(dataset.root), encoder)
    with progress.task(f"embed {encoder.name}", total=len(dataset)) as advance, store.exclusive():
        digests = _digests(ray, dataset, encoder)
        table = store.load()
        todo = cache.unique_missing(digests, table)
        advance(sum(d in table for d in digests))
        failed: dict[bytes, tuple[int, str]] = {}
        if todo:
            results = _encode_plan(ray, dataset, encoder, make_encoder, todo, options)
            _collect(results, digests, store, table, failed, advance)
    return cache.assemble(dataset, encoder, store, digests, table, len(todo), failed)


# --- tasks: what a worker reads ------------------------------------------------------------


def _read_tasks(dataset: ThumbnailDataset, rows: list[int]) -> list[dict]:
    """One task per shard row group (or per READ_TASK_ROWS files): positions and where."""
    if dataset.shards is None:
        paths = [str(dataset.paths[r]) for r in rows]
        return [
            {"pos": rows[i : i + READ_TASK_ROWS], "paths": paths[i : i + READ_TASK_ROWS]}
            for i in range(0, len(rows), READ_TASK_ROWS)
        ]
    index = dataset.shards
    order = sorted(rows, key=lambda r: (int(index.shard[r]), int(index.row[r])))
    tasks: dict[tuple[int, int], dict] = {}
    for r in order:
        f, i = int(index.shard[r]), int(index.row[r])
        task = tasks.setdefault(
            (f, i // READ_TASK_ROWS),
            {"file": str(index.files[f]), "max_bytes": index.max_bytes, "pos": [], "rows": []},
        )
        task["pos"].append(r)
        task["rows"].append(i)
    return list(tasks.values())


def read_task(task: dict) -> list[bytes]:
    """The image bytes a task names (runs on a worker, next to the data); a cell the byte cap
    refuses (`thumbview.data.shards.read_cells`) is b"", which then fails to decode."""
    if "paths" in task:
        return [Path(p).read_bytes() for p in task["paths"]]
    import pyarrow.parquet as pq

    from thumbview.data.shards import read_cells

    meta = pq.ParquetFile(task["file"]).metadata
    starts = np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
    groups = np.searchsorted(starts, task["rows"], side="right") - 1  # (T,) row group per row
    blobs: list[bytes] = []
    for g in sorted(set(groups.tolist())):  # one row group in memory at a time
        cells = read_cells(Path(task["file"]), g, task["max_bytes"])
        for r in task["rows"]:
            if starts[g] <= r < starts[g + 1]:
                cell = cells[r - starts[g]]
                blobs.append(cell if isinstance(cell, bytes) else b"")
    return blobs


def _digest_rows(task: dict) -> list[dict]:
    blobs = read_task(task)
    return [
        {"pos": p, "digest": cache.digest_bytes(b)} for p, b in zip(task["pos"], blobs, strict=True)
    ]


def _image_rows(task: dict) -> list[dict]:
    blobs = read_task(task)
    return [{"pos": p, "input": b} for p, b in zip(task["pos"], blobs, strict=True)]


def _digests(ray, dataset: ThumbnailDataset, encoder: Encoder) -> list[bytes]:
    if encoder.modality == "text" or len(dataset) == 0:
        return cache.input_digests(dataset, encoder)  # titles are in memory: hashing is instant
    tasks = _read_tasks(dataset, list(range(len(dataset))))
    rows = ray.data.from_items(tasks).flat_map(_digest_rows).take_all()
    digests: list[bytes] = [b""] * len(dataset)
    for row in rows:
        digests[int(row["pos"])] = bytes(row["digest"])
    return digests


# --- the actor pool ------------------------------------------------------------------------


class EncodeActor:
    """One encoder per actor (built once: loading CLIP is the expensive part)."""

    def __init__(self, make_encoder: Callable[[], Encoder]):
        self.encoder = make_encoder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{pos, input (bytes or title)} -> {pos, features (B, D) NaN where failed, error}."""
        if self.encoder.modality == "text":
            inputs: list = [str(t) for t in batch["input"]]
        else:
            inputs = [_decode(bytes(b)) for b in batch["input"]]
        feats, errors = cache.encode_guarded(self.encoder, inputs)  # (B, D)
        return {
            "pos": batch["pos"],
            "features": feats,
            "error": np.array([e or "" for e in errors], dtype=object),
        }


def _decode(blob: bytes):
    try:
        return load_image(blob)
    except ImageError as e:
        return e


def _encode_plan(ray, dataset, encoder, make_encoder, todo, options: RayOptions):
    rows = [r for r, _ in todo]
    if encoder.modality == "text":
        titles = dataset.titles
        source = ray.data.from_items([{"pos": r, "input": titles[r]} for r in rows])
    else:
        source = ray.data.from_items(_read_tasks(dataset, rows)).flat_map(_image_rows)
    gpus, concurrency = _resources(ray, options)
    return source.map_batches(
        EncodeActor,
        fn_constructor_kwargs={"make_encoder": make_encoder},
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_gpus=gpus,
        num_cpus=1,
        batch_format="numpy",
    )


def _resources(ray, options: RayOptions) -> tuple[float, int]:
    """GPUs per actor and actors. Each actor also holds a CPU, and the read tasks need one:
    a pool that takes every CPU would wait forever for its input, so it is capped."""
    cluster = ray.cluster_resources()
    n_gpus, n_cpus = int(cluster.get("GPU", 0)), int(cluster.get("CPU", 1))
    gpus = options.num_gpus if options.num_gpus is not None else (1 if n_gpus else 0)
    if options.concurrency is not None:
        wanted = options.concurrency
    elif gpus:
        wanted = max(1, int(n_gpus / gpus))
    else:
        wanted = max(1, n_cpus // 2)
    return gpus, max(1, min(wanted, n_cpus - 1))


def _collect(results, digests, store, table, failed, advance: Advance) -> None:
    """Stream results to the store, a shard every SHARD_ROWS rows (what an interruption loses)."""
    pending: list[tuple[bytes, np.ndarray]] = []
    for batch in results.iter_batches(batch_size=None, batch_format="numpy"):
        for pos, row, error in zip(batch["pos"], batch["features"], batch["error"], strict=True):
            if error:
                failed[digests[int(pos)]] = (int(pos), str(error))
            else:
                pending.append((digests[int(pos)], row))
        advance(len(batch["pos"]))
        if len(pending) >= cache.SHARD_ROWS:
            _flush(store, table, pending)
    _flush(store, table, pending)


def _flush(store, table, pending: list[tuple[bytes, np.ndarray]]) -> None:
    if pending:
        digests = [d for d, _ in pending]
        feats = np.stack([row for _, row in pending]).astype(np.float32)  # (B, D)
        store.append(digests, feats)
        table.update(zip(digests, feats, strict=True))
        pending.clear()
