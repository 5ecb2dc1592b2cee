"""Score a saved model folder on a labelled dataset it never saw (`thumbview evaluate`).

The model is loaded through the inference layer (any kind: a head on frozen features or a
fine-tuned network) and scored by the training workflow's own evaluation
(`predict.workflow.score_rows`), so `eval.json` written at training time and this report
compute the same numbers. Rows the model was trained on are excluded and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thumbview.data.dataset import ThumbnailDataset
from thumbview.embed.cache import finite_rows
from thumbview.inference import LoadedPredictor
from thumbview.predict.crossval import EvalResult
from thumbview.predict.model import PredictorError, block_rows
from thumbview.predict.target import make_target
from thumbview.predict.workflow import (
    dataset_blocks,
    evaluation_plots,
    score_rows,
    shared_channels,
    training_ids,
)
from thumbview.progress import SILENT, Progress


# ----- evaluation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Scores of a saved model on a dataset; rows it was trained on are excluded and counted."""

    result: EvalResult
    n_excluded_seen: int
    n_shared_channels: int
    plots: tuple[Path, ...]


def evaluate(
    model_dir: Path,
    dataset: ThumbnailDataset,
    cache_dir: Path | None = None,
    out_dir: Path | None = None,
    progress: Progress = SILENT,
) -> Evaluation:
    """Metrics of a saved model and its baselines on rows it never saw."""
    loaded = LoadedPredictor.load(model_dir)
    model, encoders = loaded.model, loaded.encoders
    seen = training_ids(model_dir)
    keep = np.array([k not in seen for k in dataset.keys], dtype=bool)
    y, mask = make_target(dataset.views, model.config.target, dataset.channels)
    rows = np.flatnonzero(keep & mask)
    if len(rows) < 3:
        raise PredictorError(f"only {len(rows)} unseen rows with a target: nothing to evaluate on")
    blocks = dataset_blocks(dataset.subset(rows), encoders, cache_dir, progress)
    embedded = finite_rows(blocks)  # rows an encoder skipped (unreadable input) have no features
    blocks, rows = block_rows(blocks, embedded), rows[embedded]
    result = score_rows(model, Path(model_dir), blocks, y, dataset, rows)
    paths = evaluation_plots(model, blocks, y[rows], Path(out_dir)) if out_dir else []
    shared = shared_channels(model_dir, dataset, rows)
    return Evaluation(result, int((~keep).sum()), shared, tuple(paths))
