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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thumbview.data.dataset import ThumbnailDataset
from thumbview.data.times import dataset_ages_days, upload_times
from thumbview.embed.base import Encoder
from thumbview.embed.cache import embed, finite_rows
from thumbview.embed.registry import DEFAULT_CLIP_MODEL, get_encoder
from thumbview.fileio import while_running, write_json
from thumbview.layout import (
    MODEL_BASELINES,
    MODEL_ENCODERS,
    MODEL_EVAL,
    MODEL_TRAINING,
    PLOT_PRED_VS_ACTUAL,
    PLOT_RESIDUALS,
    PLOT_TRAINING_CURVE,
    RUN_UNFINISHED,
)
from thumbview.predict import plots
from thumbview.predict.card import HeldOutSkill, write_card
from thumbview.predict.crossval import (
    CVResult,
    EvalResult,
    Metrics,
    baseline_config,
    compute_metrics,
    conditional_coverage,
    coverage_strata,
    evaluate_predictor,
)
from thumbview.predict.drift import TrainingRange
from thumbview.predict.model import ArtifactError, PredictorConfig, ViewPredictor, block_rows
from thumbview.predict.pairwise import PairwiseError, PairwiseModel, score_pairs
from thumbview.predict.protocol import (
    SplitPlan,
    SplitProtocol,
    plan_split,
)
from thumbview.predict.target import make_target
from thumbview.progress import SILENT, Progress
from thumbview.schema import load_json

log = logging.getLogger(__name__)

DEFAULT_CLIP = DEFAULT_CLIP_MODEL
TRAINING_FILE, EVAL_FILE = MODEL_TRAINING, MODEL_EVAL


# ----- features ------------------------------------------------------------------------------
def encoder_options(names: Sequence[str], clip_model: str = DEFAULT_CLIP) -> dict[str, dict]:
    """Constructor options per encoder: what `encoders.json` stores to rebuild them later."""
    return {name: ({"model": clip_model} if name == "clip" else {}) for name in names}


def check_encoders(names: Sequence[str], clip_model: str = DEFAULT_CLIP) -> None:
    """Fail in seconds, before a dataset is verified or embedded, on what would fail later.

    Unknown encoder names raise `UnknownEncoderError`; with `clip`, the CLIP checkpoint must
    be reachable (`embed.clip.load_checkpoint_info` reads its config, not its weights,
    and its error says how to fetch it). `sae train` calls that same function.
    """
    from thumbview.embed.registry import ENCODER_NAMES, encoder_class

    for name in names:
        if name not in ENCODER_NAMES:
            encoder_class(name)  # raises UnknownEncoderError naming the known ones
    if "clip" in names:
        from thumbview.embed.clip import load_checkpoint_info

        load_checkpoint_info(clip_model)


def build_encoders(names: Sequence[str], clip_model: str = DEFAULT_CLIP) -> dict[str, Encoder]:
    return {
        name: get_encoder(name, **opts) for name, opts in encoder_options(names, clip_model).items()
    }


def dataset_blocks(
    dataset: ThumbnailDataset,
    encoders: dict[str, Encoder],
    cache_dir: Path | None = None,
    progress: Progress = SILENT,
) -> dict[str, np.ndarray]:
    """{encoder name: (N, D) float32}, each computed once and cached."""
    blocks = {}
    for name, encoder in encoders.items():
        blocks[name], _ = embed(dataset, encoder, cache_dir, progress=progress)
    return blocks


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
    protocol: SplitProtocol | None = None
    skill: HeldOutSkill | None = None  # the held-out verdict also written to card.json


def train(
    dataset: ThumbnailDataset,
    config: PredictorConfig,
    out_dir: Path,
    *,
    clip_model: str = DEFAULT_CLIP,
    holdout_frac: float = 0.2,
    cache_dir: Path | None = None,
    progress: Progress = SILENT,
) -> TrainResult:
    """Embed, split off a channel-disjoint hold-out, fit, save, evaluate on the hold-out."""
    out_dir = Path(out_dir)
    y, mask = make_target(dataset.views, config.target, dataset.channels)
    plan = dataset_split(dataset, np.flatnonzero(mask), config, holdout_frac)  # before features
    train_idx, test_idx = plan.train_idx, plan.test_idx
    encoders = build_encoders(config.encoders, clip_model)
    blocks = dataset_blocks(dataset, encoders, cache_dir, progress)
    plan = _embedded_only(plan, finite_rows(blocks))  # rows an encoder skipped have no features
    train_idx, test_idx = plan.train_idx, plan.test_idx
    model = ViewPredictor(config).fit(block_rows(blocks, train_idx), y[train_idx], plan.fold_groups)
    n_missing = int((~mask).sum())
    with while_running(out_dir / RUN_UNFINISHED, "thumbview train"):  # a killed run: refused
        model.save(out_dir)
        _save_companions(out_dir, config, blocks, y, dataset, plan, encoders, clip_model, model)
        paths = [*_training_plots(model, out_dir)]
        holdout, more = _evaluate_holdout(model, out_dir, blocks, y, dataset, plan)
        paths += more
        card = _write_card(
            out_dir, model, encoders, dataset, train_idx, holdout, y, test_idx, blocks
        )
        cv = model.cv_metrics_ if getattr(model, "cv_metrics_", None) is not None else None
    counts = (len(train_idx), len(test_idx), n_missing)
    return TrainResult(out_dir, *counts, cv, holdout, tuple(paths), plan.protocol, card.skill)


def _save_companions(out_dir, config, blocks, y, dataset, plan, encoders, clip_model, model):
    """What `train` writes beside the model: the training record and encoders.json, one
    baseline per encoder, the pairwise model and the training range (training rows only)."""
    train_idx = plan.train_idx
    options = encoder_options(config.encoders, clip_model)
    write_training_record(out_dir, dataset, train_idx, options, encoders)
    _add_to_record(out_dir / TRAINING_FILE, protocol=plan.protocol.to_json_dict())
    rows, y_train = block_rows(blocks, train_idx), y[train_idx]
    _fit_baselines(out_dir, config, rows, y_train)
    fit_pairwise(out_dir, config, rows, y_train, dataset, plan)
    _fit_range(out_dir, config, rows, y_train, encoders, dataset, train_idx, model)


def _evaluate_holdout(model, out_dir, blocks, y, dataset, plan) -> tuple[EvalResult | None, list]:
    """`eval.json` and the evaluation plots on the held-out rows (None, [] without any)."""
    test_idx = plan.test_idx
    if not len(test_idx):
        return None, []
    holdout = score_rows(model, out_dir, block_rows(blocks, test_idx), y, dataset, test_idx)
    paths = evaluation_plots(model, block_rows(blocks, test_idx), y[test_idx], out_dir)
    payload = {**holdout.to_json_dict(), "split": "holdout"}
    write_json(out_dir / EVAL_FILE, {**payload, "protocol": plan.protocol.to_json_dict()})
    return holdout, paths


def _write_card(out_dir, model, encoders, dataset, train_idx, holdout, y, test_idx, blocks):
    """`card.json` (`predict.card.write_card`): the training rows' typical context and the
    held-out verdict, within-channel skill from the pairwise calibration and held-out pairs."""
    as_of = next(
        (getattr(e, "as_of", None) for e in encoders.values() if e.modality == "meta"), None
    )
    pairwise = PairwiseModel.load(out_dir)
    within = None if pairwise is None else pairwise.calibration_.skilful
    if holdout is not None and holdout.pairwise and holdout.pairwise.get("skilful") is False:
        within = False  # held-out pairs disagree with the cross-fit: not demonstrated
    pred = model.predict(block_rows(blocks, test_idx)) if len(test_idx) else None
    return write_card(
        out_dir, dataset, train_idx, test_idx, y, pred, model.y_median_, within, as_of
    )


def _embedded_only(plan: SplitPlan, embedded: np.ndarray) -> SplitPlan:
    """The plan without rows whose features could not be computed (unreadable input)."""
    keep = embedded[plan.train_idx]
    groups = None if plan.fold_groups is None else plan.fold_groups[keep]
    return replace(
        plan,
        train_idx=plan.train_idx[keep],
        test_idx=plan.test_idx[embedded[plan.test_idx]],
        fold_groups=groups,
    )


def dataset_split(
    dataset: ThumbnailDataset, usable: np.ndarray, config: PredictorConfig, holdout_frac: float
) -> SplitPlan:
    """The split protocol the dataset's channels allow (see `predict.protocol`), from ids only."""
    return plan_split(
        _groups(dataset),
        upload_times(dataset.table),
        usable,
        k=config.cv_folds,
        holdout_frac=holdout_frac,
        seed=config.seed,
        target=config.target,
    )


def write_training_record(out_dir, dataset, train_idx, options, encoders) -> None:
    specs = {n: {"options": options[n], "spec": e.spec()} for n, e in encoders.items()}
    write_json(out_dir / MODEL_ENCODERS, specs)
    channels = dataset.channels
    record = {
        "dataset": str(Path(dataset.root).resolve()),
        "n_train": len(train_idx),
        "video_ids": [dataset.keys[i] for i in train_idx],
        "channels": sorted({str(channels[i]) for i in train_idx}) if channels is not None else [],
    }
    write_json(out_dir / TRAINING_FILE, record)


def _add_to_record(path: Path, **fields: Any) -> None:
    write_json(path, {**json.loads(path.read_text()), **fields})


def fit_pairwise(out_dir: Path, config, blocks, y, dataset, plan: SplitPlan) -> None:
    """Cross-fit fold models + same-channel pair calibration for P(A beats B) (`pairwise`)."""
    channels = None if dataset.channels is None else dataset.channels[plan.train_idx]
    try:
        PairwiseModel().fit(config, blocks, y, channels, plan.fold_groups).save(out_dir)
    except PairwiseError as e:
        log.warning("no calibrated P(A beats B) for this model: %s", e)


def _fit_range(out_dir: Path, config, blocks, y, encoders, dataset, train_idx, model) -> None:
    """`training_range.json`: the novelty score of the inputs and of the model's own
    out-of-fold predictions (`predict.drift`), fitted and calibrated on different channels."""
    names = {name: encoder.feature_names() for name, encoder in encoders.items()}
    groups = None if dataset.channels is None else dataset.channels[train_idx]
    oof = getattr(model, "oof_predictions_", None)
    TrainingRange.fit(y, blocks, config.target, names=names, groups=groups, predicted=oof).save(
        out_dir
    )


def _fit_baselines(out_dir: Path, config: PredictorConfig, blocks, y) -> None:
    """One model per encoder (`baseline_config`, as in `cv`): evaluation reports what each
    encoder does alone."""
    if len(config.encoders) < 2:
        return
    for name in config.encoders:
        ViewPredictor(baseline_config(config, name)).fit(
            {name: blocks[name]}, y, calibrate=False
        ).save(out_dir / MODEL_BASELINES / name)


def _training_plots(model: ViewPredictor, out_dir: Path) -> list[Path]:
    history = getattr(model.head_, "history_", None)
    return [plots.plot_training_curve(history, out_dir / PLOT_TRAINING_CURVE)] if history else []


def evaluation_plots(model, blocks, y, out_dir: Path) -> list[Path]:
    pred = model.predict(blocks)
    relative = model.config.target == "channel-relative"
    lo, hi = model.residual_quantile(
        [(1 - model.config.coverage) / 2, (1 + model.config.coverage) / 2]
    )
    return [
        plots.plot_pred_vs_actual(y, pred, out_dir / PLOT_PRED_VS_ACTUAL, relative=relative),
        plots.plot_residual_hist(
            y - pred, out_dir / PLOT_RESIDUALS, interval=(float(lo), float(hi))
        ),
    ]


def score_rows(model, model_dir: Path, blocks, y, dataset: ThumbnailDataset, rows) -> EvalResult:
    """Everything `eval.json` reports of `model` on `rows` of `dataset` (`blocks` holds those
    rows, `y` the whole target): metrics against baselines, interval coverage overall and by
    stratum, same-channel P(beats) calibration and the out-of-range warning."""
    result = _score(model, model_dir, blocks, y[rows])
    return _extras(result, model, model_dir, blocks, y, dataset, rows)


def _score(model: ViewPredictor, model_dir: Path, blocks, y) -> EvalResult:
    baselines = {"global-median": compute_metrics(y, np.full(len(y), model.y_median_))}
    for name in model.config.encoders:
        base_dir = model_dir / MODEL_BASELINES / name
        if base_dir.exists():
            base = ViewPredictor.load(base_dir)
            baselines[f"{name}-only"] = compute_metrics(y, base.predict({name: blocks[name]}))
    lo, hi = model.predict_interval(blocks)
    coverage = float(np.mean((y >= lo) & (y <= hi)))
    metrics = compute_metrics(y, model.predict(blocks))
    return EvalResult(metrics, baselines, coverage, model.config.coverage)


def _extras(result: EvalResult, model, model_dir: Path, blocks, y, dataset, rows) -> EvalResult:
    """Conditional coverage, same-channel pairwise calibration and the range warning."""
    pred, (lo, hi) = model.predict(blocks), model.predict_interval(blocks)
    channels = dataset.channels
    sizes = None
    if channels is not None:
        ch = pd.Series(channels, dtype=object)
        sizes = ch.map(ch.value_counts()).fillna(1).to_numpy()[rows]
    strata = coverage_strata(pred, sizes, dataset_ages_days(dataset.table)[rows])
    pairwise, limits = PairwiseModel.load(model_dir), TrainingRange.load(model_dir)
    report = None if limits is None else limits.check(blocks, y[rows], pred)
    if report is not None and report.n:  # coverage where the check flags rows vs where not
        outside = limits.features_outside(blocks, pred)
        strata["training range"] = np.where(outside, "outside", "inside")
    scored = None
    if pairwise is not None and channels is not None:
        try:
            sigma = pairwise.calibration_.sigma
            scored = score_pairs(pred, y[rows], channels[rows], sigma).to_json_dict()
        except PairwiseError as e:
            log.info("no same-channel pairs to score P(beats) on: %s", e)
    return replace(
        result,
        conditional_coverage=conditional_coverage(y[rows], lo, hi, strata),
        pairwise=scored,
        warning=None if report is None else report.message(),
        out_of_range=None if report is None else report.to_json_dict(),
    )


def _training_record(model_dir: Path) -> dict:
    path = Path(model_dir) / TRAINING_FILE
    return load_json(path, ArtifactError) if path.exists() else {}


def training_ids(model_dir: Path) -> set[str]:
    return set(_training_record(model_dir).get("video_ids", []))


def shared_channels(model_dir: Path, dataset: ThumbnailDataset, rows: np.ndarray) -> int:
    """Channels present both in training and here: such rows are not a channel-disjoint test."""
    trained = set(_training_record(model_dir).get("channels", []))
    if dataset.channels is None or not trained:
        return 0
    return len(trained & {str(c) for c in dataset.channels[rows]})


# ----- cross-validation ----------------------------------------------------------------------
def cv_protocol(dataset: ThumbnailDataset, config: PredictorConfig) -> SplitProtocol:
    """The protocol `cross_validate_dataset` will use (no hold-out), from channel ids only."""
    _, mask = make_target(dataset.views, config.target, dataset.channels)
    return dataset_split(dataset, np.flatnonzero(mask), config, 0.0).protocol


def cross_validate_dataset(
    dataset: ThumbnailDataset,
    config: PredictorConfig,
    k: int = 5,
    *,
    clip_model: str = DEFAULT_CLIP,
    cache_dir: Path | None = None,
    progress: Progress = SILENT,
) -> tuple[EvalResult, CVResult]:
    """K-fold metrics grouped by channel (random folds without channel ids), with baselines."""
    blocks = dataset_blocks(
        dataset, build_encoders(config.encoders, clip_model), cache_dir, progress
    )
    y, mask = make_target(dataset.views, config.target, dataset.channels)
    mask &= finite_rows(blocks)  # rows an encoder skipped (unreadable input) have no features
    rows = np.flatnonzero(mask)
    sub_groups = dataset_split(dataset, rows, config, 0.0).fold_groups
    sub = block_rows(blocks, rows)
    return evaluate_predictor(sub, y[rows], sub_groups, config, k)  # one K-fold pass
