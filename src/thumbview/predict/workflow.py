"""The IO side of prediction: from dataset folders and image files to saved, evaluated models.

`model`, `heads` and `evaluate` work on arrays; this module feeds them. A model folder holds
the predictor (`model.safetensors` + `config.json`), the encoder settings needed to rebuild
its features (`encoders.json`), which rows it was trained on (`training.json`, so that
evaluation can refuse to score them), single-encoder baselines, and its held-out evaluation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from thumbview.data.dataset import ThumbnailDataset
from thumbview.data.images import load_image
from thumbview.embed.base import Encoder
from thumbview.embed.cache import embed, finite_rows
from thumbview.embed.registry import get_encoder
from thumbview.inference.predictor import ENCODERS_FILE, LoadedPredictor, Prediction
from thumbview.predict import plots
from thumbview.predict.evaluate import (
    CVResult,
    EvalResult,
    Metrics,
    compute_metrics,
    cross_validate,
    evaluate_predictor,
    group_train_test_split,
)
from thumbview.predict.model import PredictorConfig, PredictorError, ViewPredictor
from thumbview.predict.target import make_target
from thumbview.progress import progress_bar

log = logging.getLogger(__name__)

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
TRAINING_FILE = "training.json"
EVAL_FILE = "eval.json"


# ----- features ------------------------------------------------------------------------------
def encoder_options(names: Sequence[str], clip_model: str = DEFAULT_CLIP) -> dict[str, dict]:
    """Constructor options per encoder: what `encoders.json` stores to rebuild them later."""
    return {name: ({"model": clip_model} if name == "clip" else {}) for name in names}


def build_encoders(names: Sequence[str], clip_model: str = DEFAULT_CLIP) -> dict[str, Encoder]:
    return {
        name: get_encoder(name, **opts) for name, opts in encoder_options(names, clip_model).items()
    }


def dataset_blocks(
    dataset: ThumbnailDataset,
    encoders: dict[str, Encoder],
    cache_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """{encoder name: (N, D) float32}, each computed once and cached."""
    blocks = {}
    for name, encoder in encoders.items():
        with progress_bar(len(dataset), f"embed {name}", progress) as advance:
            blocks[name], _ = embed(dataset, encoder, cache_dir, progress=advance)
    return blocks


def image_blocks(
    encoders: dict[str, Encoder], images: Sequence[Image.Image], titles: Sequence[str]
):
    """Features for images and titles that are not in a dataset (prediction, comparison)."""
    return {
        name: enc.encode(list(titles) if enc.modality == "text" else list(images))
        for name, enc in encoders.items()
    }


def combination_blocks(
    encoders: dict[str, Encoder], images: Sequence[Image.Image], titles: Sequence[str]
):
    """Every image x title, image-major: ([(image index, title)], blocks with one row per pair).

    One definition of the order, shared by predictions and comparisons (the web page relies on it).
    """
    pairs = [(i, t) for i in range(len(images)) for t in (list(titles) or [""])]
    return pairs, image_blocks(encoders, [images[i] for i, _ in pairs], [t for _, t in pairs])


def _rows(blocks: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {name: X[idx] for name, X in blocks.items()}


def _groups(dataset: ThumbnailDataset) -> np.ndarray | None:
    """Channel ids when the dataset has them: splits must never share a channel."""
    return dataset.channels


# ----- training ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainResult:
    """What `train` produced.

    cv: out-of-fold metrics on the training rows (channel-disjoint folds).
    holdout: metrics on a channel-disjoint share of the data the model never saw (None if
    `holdout_frac` was 0).
    """

    model_dir: Path
    n_train: int
    n_holdout: int
    n_no_target: int
    cv: Metrics | None
    holdout: EvalResult | None
    plots: tuple[Path, ...]


def train(
    dataset: ThumbnailDataset,
    config: PredictorConfig,
    out_dir: Path,
    *,
    clip_model: str = DEFAULT_CLIP,
    holdout_frac: float = 0.2,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> TrainResult:
    """Embed, split off a channel-disjoint hold-out, fit, save, evaluate on the hold-out."""
    out_dir = Path(out_dir)
    encoders = build_encoders(config.encoders, clip_model)
    blocks = dataset_blocks(dataset, encoders, cache_dir, progress)
    y, mask = make_target(dataset.views, config.target, dataset.channels)
    mask &= finite_rows(blocks)  # rows an encoder skipped (unreadable input) have no features
    usable = np.flatnonzero(mask)
    train_idx, test_idx = _split(dataset, usable, holdout_frac, config.seed)
    groups = _groups(dataset)
    model = ViewPredictor(config).fit(
        _rows(blocks, train_idx), y[train_idx], None if groups is None else groups[train_idx]
    )
    model.save(out_dir)
    _write_training_record(
        out_dir, dataset, train_idx, encoder_options(config.encoders, clip_model), encoders
    )
    _fit_baselines(out_dir, config, _rows(blocks, train_idx), y[train_idx])
    paths = [*_training_plots(model, out_dir)]
    holdout = None
    if len(test_idx):
        holdout = _score(model, out_dir, _rows(blocks, test_idx), y[test_idx])
        paths += _evaluation_plots(model, _rows(blocks, test_idx), y[test_idx], out_dir)
        _write_json(out_dir / EVAL_FILE, {**holdout.to_json_dict(), "split": "holdout"})
    cv = model.cv_metrics_ if getattr(model, "cv_metrics_", None) is not None else None
    n_missing = int((~mask).sum())
    return TrainResult(out_dir, len(train_idx), len(test_idx), n_missing, cv, holdout, tuple(paths))


def _split(dataset, usable: np.ndarray, holdout_frac: float, seed: int):
    if holdout_frac <= 0:
        return usable, usable[:0]
    groups = _groups(dataset)
    sub_groups = None if groups is None else groups[usable]
    tr, te = group_train_test_split(sub_groups, holdout_frac, seed, n=len(usable))
    return usable[tr], usable[te]


def _write_training_record(out_dir, dataset, train_idx, options, encoders) -> None:
    specs = {n: {"options": options[n], "spec": e.spec()} for n, e in encoders.items()}
    _write_json(out_dir / ENCODERS_FILE, specs)
    channels = dataset.channels
    record = {
        "dataset": str(Path(dataset.root).resolve()),
        "n_train": len(train_idx),
        "video_ids": [dataset.keys[i] for i in train_idx],
        "channels": sorted({str(channels[i]) for i in train_idx}) if channels is not None else [],
    }
    _write_json(out_dir / TRAINING_FILE, record)


def _fit_baselines(out_dir: Path, config: PredictorConfig, blocks, y) -> None:
    """One ridge model per encoder: evaluation reports what each encoder does alone."""
    if len(config.encoders) < 2:
        return
    for name in config.encoders:
        single = PredictorConfig(encoders=(name,), target=config.target, seed=config.seed)
        ViewPredictor(single).fit({name: blocks[name]}, y, calibrate=False).save(
            out_dir / "baselines" / name
        )


def _training_plots(model: ViewPredictor, out_dir: Path) -> list[Path]:
    history = getattr(model.head_, "history_", None)
    return [plots.plot_training_curve(history, out_dir / "training_curve.png")] if history else []


def _evaluation_plots(model, blocks, y, out_dir: Path) -> list[Path]:
    pred = model.predict(blocks)
    relative = model.config.target == "channel-relative"
    lo, hi = model.residual_quantile(
        [(1 - model.config.coverage) / 2, (1 + model.config.coverage) / 2]
    )
    return [
        plots.plot_pred_vs_actual(y, pred, out_dir / "pred_vs_actual.png", relative=relative),
        plots.plot_residual_hist(
            y - pred, out_dir / "residuals.png", interval=(float(lo), float(hi))
        ),
    ]


# ----- evaluation ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Evaluation:
    """Scores of a saved model on a dataset; rows it was trained on are excluded and counted."""

    result: EvalResult
    n_excluded_seen: int
    n_shared_channels: int
    plots: tuple[Path, ...]


def load_model(model_dir: Path) -> tuple[ViewPredictor, dict[str, Encoder]]:
    """The predictor and freshly built encoders (see `LoadedPredictor.load`)."""
    loaded = LoadedPredictor.load(model_dir)
    return loaded.model, loaded.encoders


def evaluate(
    model_dir: Path,
    dataset: ThumbnailDataset,
    cache_dir: Path | None = None,
    out_dir: Path | None = None,
    progress: bool = False,
) -> Evaluation:
    """Metrics of a saved model and its baselines on rows it never saw."""
    model, encoders = load_model(model_dir)
    seen = _training_ids(model_dir)
    keep = np.array([k not in seen for k in dataset.keys], dtype=bool)
    y, mask = make_target(dataset.views, model.config.target, dataset.channels)
    rows = np.flatnonzero(keep & mask)
    if len(rows) < 3:
        raise PredictorError(f"only {len(rows)} unseen rows with a target: nothing to evaluate on")
    blocks = dataset_blocks(dataset.subset(rows), encoders, cache_dir, progress)
    embedded = finite_rows(blocks)  # rows an encoder skipped (unreadable input) have no features
    blocks, rows = _rows(blocks, embedded), rows[embedded]
    result = _score(model, Path(model_dir), blocks, y[rows])
    paths = _evaluation_plots(model, blocks, y[rows], Path(out_dir)) if out_dir else []
    shared = _shared_channels(model_dir, dataset, rows)
    return Evaluation(result, int((~keep).sum()), shared, tuple(paths))


def _score(model: ViewPredictor, model_dir: Path, blocks, y) -> EvalResult:
    baselines = {"global-median": compute_metrics(y, np.full(len(y), model.y_median_))}
    for name in model.config.encoders:
        base_dir = model_dir / "baselines" / name
        if base_dir.exists():
            base = ViewPredictor.load(base_dir)
            baselines[f"{name}-only"] = compute_metrics(y, base.predict({name: blocks[name]}))
    lo, hi = model.predict_interval(blocks)
    coverage = float(np.mean((y >= lo) & (y <= hi)))
    metrics = compute_metrics(y, model.predict(blocks))
    return EvalResult(metrics, baselines, coverage, model.config.coverage)


def _training_record(model_dir: Path) -> dict:
    path = Path(model_dir) / TRAINING_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _training_ids(model_dir: Path) -> set[str]:
    return set(_training_record(model_dir).get("video_ids", []))


def _shared_channels(model_dir: Path, dataset: ThumbnailDataset, rows: np.ndarray) -> int:
    """Channels present both in training and here: such rows are not a channel-disjoint test."""
    trained = set(_training_record(model_dir).get("channels", []))
    if dataset.channels is None or not trained:
        return 0
    return len(trained & {str(c) for c in dataset.channels[rows]})


# ----- cross-validation ----------------------------------------------------------------------
def cross_validate_dataset(
    dataset: ThumbnailDataset,
    config: PredictorConfig,
    k: int = 5,
    *,
    clip_model: str = DEFAULT_CLIP,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> tuple[EvalResult, CVResult]:
    """K-fold metrics grouped by channel (random folds without channel ids), with baselines."""
    blocks = dataset_blocks(
        dataset, build_encoders(config.encoders, clip_model), cache_dir, progress
    )
    y, mask = make_target(dataset.views, config.target, dataset.channels)
    mask &= finite_rows(blocks)  # rows an encoder skipped (unreadable input) have no features
    rows = np.flatnonzero(mask)
    groups = _groups(dataset)
    sub_groups = None if groups is None else groups[rows]
    sub = _rows(blocks, rows)
    return evaluate_predictor(sub, y[rows], sub_groups, config, k), cross_validate(
        sub, y[rows], sub_groups, config, k
    )


# ----- prediction ----------------------------------------------------------------------------
def predict_images(
    model_dir: Path, images: Sequence[Path | str], titles: Sequence[str] = ("",)
) -> list[Prediction]:
    """Every image x title combination, with the model's interval at its own coverage."""
    loaded = LoadedPredictor.load(model_dir)  # a bad model folder is reported before images
    opened = [load_image(p) for p in images]
    return loaded.predict_images(opened, [str(p) for p in images], titles)


def predict_loaded(
    model: ViewPredictor,
    encoders: dict[str, Encoder],
    images: Sequence[Image.Image],
    names: Sequence[str],
    titles: Sequence[str] = ("",),
) -> list[Prediction]:
    """Like `predict_images` for images already decoded (the web app, comparisons)."""
    return LoadedPredictor(model, encoders, Path()).predict_images(images, names, titles)


def _write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False))
