"""Train an SAE on a dataset's activations (plus an optional reference image folder).

CLS activations and cached encoders' features (one vector per video) go through the feature
cache, so training twice, or analysing afterwards, never recomputes them. All-token
activations (T vectors per image) are too many to cache per image; they are streamed once
into a memory-mapped array in the output folder, with a sidecar saying what produced it.
After training, the dataset's own latents are written to `codes.npz` (rows = the dataset's
usable rows) with a sidecar key (`sae.codes`): `sae analyze --sae` on the same dataset reads
them instead of recomputing, and `sae analyze --latents` reads the file as it is.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thumbview.data.dataset import ThumbnailDataset
from thumbview.data.images import load_image
from thumbview.embed.cache import embed
from thumbview.fileio import atomic_write, while_running
from thumbview.layout import RUN_UNFINISHED, SAE_SUBDIR, SAE_WEIGHTS
from thumbview.layout import SAE_CODES as CODES_FILE
from thumbview.progress import SILENT, Progress
from thumbview.sae.analyze import image_folder_dataset
from thumbview.sae.architectures import build_sae
from thumbview.sae.codes import codes_key, write_codes
from thumbview.sae.config import ActivationSource, SaeError, TrainConfig, sae_config
from thumbview.sae.folder import activation_encoder, encode_sparse
from thumbview.sae.shards import ShardedActivations
from thumbview.sae.sources import IMAGE_SOURCES, position_max_codes, source_cfg
from thumbview.sae.train import EvalMetrics, SaeTrainer
from thumbview.schema import SchemaError, load_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaeTrainResult:
    """Where the SAE went, on how many activations, and its held-out quality."""

    out_dir: Path
    n_activations: int
    metrics: EvalMetrics  # on held-out activations (training rows if too few to hold out)
    heldout: bool
    codes_file: Path


def train_sae(
    dataset: ThumbnailDataset,
    source: ActivationSource,
    out_dir: Path,
    sae_options: dict | None = None,
    train_cfg: TrainConfig | None = None,
    reference: Path | None = None,
    cache_dir: Path | None = None,
    progress: Progress = SILENT,
    encoder: Any = None,
) -> SaeTrainResult:
    """Activations -> sparse autoencoder, checkpointed in `out_dir` (re-running resumes).

    `encoder`: `activation_encoder(source)` when the caller built it already (the CLI does,
    before checking the dataset, so a missing CLIP is reported first).
    """
    if reference is not None and source.features not in IMAGE_SOURCES:
        raise SaeError("--reference adds images, so it needs --features clip or imagenet")
    out_dir = Path(out_dir)
    encoder = encoder or activation_encoder(source)
    train_cfg = train_cfg or TrainConfig()
    datasets = [dataset] + ([image_folder_dataset(reference)] if reference else [])
    parts = [
        _activations(d, source, encoder, out_dir, i, cache_dir, progress)
        for i, d in enumerate(datasets)
    ]
    acts = parts[0] if len(parts) == 1 else np.concatenate(parts)  # keep a lone memmap mapped
    # The study's rows are videos: one vector per image as it is; every position of an image
    # folded to each latent's max over the image (`position_max_codes`); CLIP's all-token
    # stream (CLS among patches) has no per-video codes.
    per_position = getattr(encoder, "positions", False)
    code_rows = parts[0] if source.per_image or per_position else None
    n_tokens = len(parts[0]) // max(len(dataset), 1) if per_position else 1
    extra = source_cfg(source, encoder)
    key = (lambda weights: codes_key(weights, encoder, dataset)) if code_rows is not None else None
    return _fit_and_encode(
        acts, code_rows, out_dir, sae_options, train_cfg, extra, progress, n_tokens, key
    )


def train_sae_on_shards(
    folder: str | Path,
    out_dir: str | Path,
    sae_options: dict | None = None,
    train_cfg: TrainConfig | None = None,
    expected_rows: int | None = None,
    progress: Progress = SILENT,
) -> SaeTrainResult:
    """Train on activations already on disk as `.npy` shards, never loaded whole.

    For activations beyond RAM (a million ViT-L/14 CLS vectors are ~4 GB) written by any
    producer through `write_shards`. Batches are read from memory maps in the same order as
    from an array, so resuming works as it does there. Codes are written for every row; they
    are the study's input (`sae analyze DATA --latents`) when the shards hold one row per
    video in the dataset's row order, which `expected_rows` (the dataset's size) checks.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    acts = ShardedActivations(folder)
    if expected_rows is not None and len(acts) != expected_rows:
        raise SaeError(
            f"{folder} holds {len(acts):,} activation rows but the dataset has "
            f"{expected_rows:,}: the shards must hold one row per video, in the dataset's order"
        )
    extra = {"features": "shards", "model_name": None, "dataset_path": str(folder)}
    cfg = train_cfg or TrainConfig()
    return _fit_and_encode(acts, acts, out_dir, sae_options, cfg, extra, progress)


def _fit_and_encode(
    acts,
    code_rows,
    out_dir: Path,
    sae_options,
    train_cfg: TrainConfig,
    extra_cfg: dict,
    progress: Progress = SILENT,
    n_tokens: int = 1,
    key_of: Callable[[Path], dict] | None = None,
) -> SaeTrainResult:
    """Fit (checkpointed in out_dir), measure, and write the codes of `code_rows` if any
    (`n_tokens` > 1: rows come in runs of one image's positions, folded by their max).
    `key_of(weights)`: the codes' cache key (`sae.codes`), so `sae analyze --sae` on the
    same dataset reuses them; None (shards: rows of unknown images) writes no key.

    The folder is marked unfinished until the codes are written: a killed run leaves an SAE
    no loader accepts, and running the same command again resumes from the checkpoint."""
    options = _default_dead_after(dict(sae_options or {}), len(acts))
    cfg = sae_config(options.pop("arch", "topk"), d_in=acts.shape[1], **options)
    trainer = SaeTrainer(build_sae(cfg, seed=train_cfg.seed), train_cfg)
    with while_running(out_dir / RUN_UNFINISHED, "thumbview sae train"):
        sae = trainer.fit(acts, out_dir, extra_cfg=extra_cfg, progress=progress)
        metrics = trainer.reported_metrics or trainer.evaluate(acts[:65_536])
        log.info("SAE: %s", metrics)
        codes = out_dir / CODES_FILE
        if code_rows is not None:
            z = (
                position_max_codes(sae, code_rows, n_tokens)
                if n_tokens > 1
                else encode_sparse(sae, code_rows, progress=progress)
            )
            key = key_of(out_dir / SAE_SUBDIR / SAE_WEIGHTS) if key_of else None
            write_codes(out_dir, z, key)
    return SaeTrainResult(out_dir, len(acts), metrics, trainer.heldout_metrics is not None, codes)


def _default_dead_after(options: dict, n: int) -> dict:
    """'Dead' means no firing over half an epoch unless said otherwise: sparsify's 10M-sample
    default would never trigger AuxK/ghost grads on a dataset of a few thousand thumbnails."""
    if options.get("dead_after") is None:
        options["dead_after"] = int(min(10_000_000, max(1_000, n // 2)))
    return options


def _activations(
    dataset,
    source: ActivationSource,
    encoder,
    out_dir: Path,
    index: int,
    cache_dir,
    progress: Progress,
) -> np.ndarray:
    if source.per_image:
        acts, _ = embed(dataset, encoder, cache_dir, progress=progress)
        return acts  # (N, D)
    return _all_token_activations(
        dataset, source, encoder, out_dir / f"activations-{index}.npy", progress
    )


def _sidecar(path: Path) -> object:
    """A cache's sidecar JSON, or None when absent or unreadable (size and depth limited)."""
    try:
        return load_json(path) if path.exists() else None
    except SchemaError:
        return None


def _all_token_activations(
    dataset, source: ActivationSource, encoder, path: Path, progress: Progress
) -> np.ndarray:
    """(N * T, D) float32 memory-mapped; reused when its sidecar matches, else rebuilt."""
    key = {"spec": encoder.spec(), "tokens": "all", "files": [str(p) for p in dataset.paths]}
    sidecar = path.with_suffix(".json")
    if path.exists() and _sidecar(sidecar) == json.loads(json.dumps(key)):
        return np.load(path, mmap_mode="r")
    first = encoder.residual_stream(
        [load_image(dataset.image_source(0))], layer=source.layer, tokens="all"
    )
    n_tokens, dim = first.shape[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar.unlink(missing_ok=True)  # else a run killed while rewriting leaves the old key
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(len(dataset) * n_tokens, dim)
    )
    batch = encoder.batch_size
    with progress.task(f"{source.features} activations (all tokens)", len(dataset)) as advance:
        for start in range(0, len(dataset), batch):
            rows = range(start, min(start + batch, len(dataset)))
            images = [load_image(dataset.image_source(r)) for r in rows]  # files or shard bytes
            block = encoder.residual_stream(images, layer=source.layer, tokens="all")  # (B, T, D)
            out[start * n_tokens : (start + len(images)) * n_tokens] = block.reshape(-1, dim)
            advance(len(images))
    out.flush()
    atomic_write(sidecar, json.dumps(key))  # the key last, whole: it vouches for the array
    return np.load(path, mmap_mode="r")
