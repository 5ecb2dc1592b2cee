"""Train an SAE on the CLIP activations of a dataset (plus an optional reference image folder).

CLS activations (one vector per image, the study's recipe) go through the feature cache,
so training twice, or analysing afterwards, never recomputes CLIP. All-token activations
(T vectors per image) are too many to cache per image; they are streamed once into a
memory-mapped array in the output folder, with a sidecar saying what produced it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thumbview.data.dataset import ThumbnailDataset
from thumbview.data.images import load_image
from thumbview.embed.cache import embed
from thumbview.embed.clip import ClipEncoder
from thumbview.progress import progress_bar
from thumbview.sae.analyze import image_folder_dataset
from thumbview.sae.model import SaeConfig, SparseAutoencoder
from thumbview.sae.train import EvalMetrics, SaeTrainer, TrainConfig

log = logging.getLogger(__name__)

TOKENS = ("cls", "all")


@dataclass(frozen=True)
class ActivationSource:
    """Which activations the SAE reads: recorded in its cfg.json so analysis can rebuild them."""

    clip_model: str
    layer: int = -2
    tokens: str = "cls"

    def extra_cfg(self) -> dict:
        """thumbview's keys plus SAELens' `model_name` / `hook_name` (a transformers module)."""
        index = ClipEncoder(self.clip_model, layer=self.layer).layer_index(self.layer)
        # hidden_states[i] is the output of block i - 1; hidden_states[0] the embeddings.
        hook = f"vision_model.encoder.layers.{index - 1}" if index else "vision_model.pre_layrnorm"
        return {
            "clip_model": self.clip_model,
            "model_name": self.clip_model,
            "hook_name": hook,
            "hook_layer": max(index - 1, 0),
            "clip_layer": self.layer,
            "clip_tokens": self.tokens,
        }


@dataclass(frozen=True)
class SaeTrainResult:
    out_dir: Path
    n_activations: int
    metrics: EvalMetrics


def train_sae(
    dataset: ThumbnailDataset,
    source: ActivationSource,
    out_dir: Path,
    sae_options: dict | None = None,
    train_cfg: TrainConfig | None = None,
    reference: Path | None = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> SaeTrainResult:
    """Activations -> SparseAutoencoder, checkpointed in `out_dir` (re-running resumes)."""
    if source.tokens not in TOKENS:
        raise ValueError(f"tokens must be one of {TOKENS}, got {source.tokens!r}")
    out_dir = Path(out_dir)
    datasets = [dataset] + ([image_folder_dataset(reference)] if reference else [])
    parts = [
        _activations(d, source, out_dir, i, cache_dir, progress) for i, d in enumerate(datasets)
    ]
    acts = parts[0] if len(parts) == 1 else np.concatenate(parts)  # keep a lone memmap mapped
    cfg = SaeConfig(d_in=acts.shape[1], **_default_dead_after(sae_options or {}, len(acts)))
    trainer = SaeTrainer(SparseAutoencoder(cfg, seed=(train_cfg or TrainConfig()).seed), train_cfg)
    trainer.fit(acts, out_dir, extra_cfg=source.extra_cfg())
    metrics = trainer.evaluate(acts[:65_536])
    log.info("SAE: %s", metrics)
    return SaeTrainResult(out_dir, len(acts), metrics)


def _default_dead_after(options: dict, n: int) -> dict:
    """'Dead' means no firing over half an epoch unless said otherwise: sparsify's 10M-sample
    default would never trigger AuxK/ghost grads on a dataset of a few thousand thumbnails."""
    if options.get("dead_after") is None:
        options = {**options, "dead_after": int(min(10_000_000, max(1_000, n // 2)))}
    return options


def _activations(
    dataset, source: ActivationSource, out_dir: Path, index: int, cache_dir, progress
) -> np.ndarray:
    if source.tokens == "cls":
        encoder = ClipEncoder(source.clip_model, layer=source.layer, tokens="cls")
        with progress_bar(len(dataset), "CLIP activations", progress) as advance:
            acts, _ = embed(dataset, encoder, cache_dir, progress=advance)
        return acts  # (N, D)
    return _all_token_activations(dataset, source, out_dir / f"activations-{index}.npy", progress)


def _all_token_activations(
    dataset, source: ActivationSource, path: Path, progress: bool
) -> np.ndarray:
    """(N * T, D) float32 memory-mapped; reused when its sidecar matches, else rebuilt."""
    encoder = ClipEncoder(source.clip_model, layer=source.layer, tokens="cls")
    key = {"spec": encoder.spec(), "tokens": "all", "files": [str(p) for p in dataset.paths]}
    sidecar = path.with_suffix(".json")
    if (
        path.exists()
        and sidecar.exists()
        and json.loads(sidecar.read_text()) == json.loads(json.dumps(key))
    ):
        return np.load(path, mmap_mode="r")
    first = encoder.residual_stream(
        [load_image(dataset.image_source(0))], layer=source.layer, tokens="all"
    )
    n_tokens, dim = first.shape[1:]
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(len(dataset) * n_tokens, dim)
    )
    batch = encoder.batch_size
    with progress_bar(len(dataset), "CLIP activations (all tokens)", progress) as advance:
        for start in range(0, len(dataset), batch):
            rows = range(start, min(start + batch, len(dataset)))
            images = [load_image(dataset.image_source(r)) for r in rows]  # files or shard bytes
            block = encoder.residual_stream(images, layer=source.layer, tokens="all")  # (B, T, D)
            out[start * n_tokens : (start + len(images)) * n_tokens] = block.reshape(-1, dim)
            advance(len(images))
    out.flush()
    sidecar.write_text(json.dumps(key))
    return np.load(path, mmap_mode="r")
