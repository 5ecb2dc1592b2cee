"""How good is the predictor, honestly: metrics, channel-disjoint folds, baselines.

Videos of one channel share subscribers, style and often the thumbnail template, so a random
split lets the model recognise the channel instead of judging the thumbnail. Every split here
is grouped by channel when channel ids are known. Spearman is the headline metric because
the product question is ranking ("which of my thumbnails is better?"), not the exact count.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from thumbview.fileio import json_safe
from thumbview.predict.metrics import (  # noqa: F401 (the public names of this stage)
    CVResult,
    EvaluationError,
    Metrics,
    compute_metrics,
    group_kfold,
    group_train_test_split,
    summarize_folds,
)
from thumbview.predict.model import PredictorConfig, ViewPredictor, block_rows

log = logging.getLogger(__name__)


def _check_lengths(blocks: dict[str, np.ndarray], y: np.ndarray) -> None:
    for name, X in blocks.items():
        if np.shape(X)[0] != len(y):
            raise EvaluationError(f"block {name!r} has {np.shape(X)[0]} rows but y has {len(y)}")


def baseline_config(config: PredictorConfig, encoder: str) -> PredictorConfig:
    """The one definition of an encoder-only baseline: the same predictor on that block alone.

    `train` saves these beside the model and `cv` / `evaluate` score them, so "title only"
    means the same model everywhere.
    """
    return PredictorConfig(encoders=(encoder,), target=config.target, seed=config.seed)


def cross_validate(
    blocks: dict[str, np.ndarray], y, groups, config: PredictorConfig, k: int = 5
) -> tuple[CVResult, dict[str, CVResult]]:
    """One K-fold pass (channel-disjoint when `groups` is given): the full predictor and,
    on the same folds, every baseline (`global-median`, `<encoder>-only` when there are two or
    more encoders). Folds fit without their own calibration loop (only point predictions are
    scored), so this costs K fits per model, not K x (K + 1).
    """
    y = np.asarray(y, dtype=np.float64)
    _check_lengths(blocks, y)
    per_fold: dict[str, list[Metrics]] = {"model": [], "global-median": []}
    singles = config.encoders if len(config.encoders) > 1 else ()
    for train, test in group_kfold(groups, k, config.seed, n=len(y)):
        median = np.full(len(test), np.median(y[train]))
        per_fold["global-median"].append(compute_metrics(y[test], median))
        for name, cfg in [
            ("model", config),
            *((f"{e}-only", baseline_config(config, e)) for e in singles),
        ]:
            model = ViewPredictor(cfg).fit(block_rows(blocks, train), y[train], calibrate=False)
            per_fold.setdefault(name, []).append(
                compute_metrics(y[test], model.predict(block_rows(blocks, test)))
            )
        log.debug("fold %d/%d: %s", len(per_fold["model"]), k, per_fold["model"][-1])
    if not singles:  # one encoder: its baseline is the model itself, on the same folds
        per_fold[f"{config.encoders[0]}-only"] = per_fold["model"]
    summaries = {name: summarize_folds(m) for name, m in per_fold.items()}
    return summaries.pop("model"), summaries


MIN_STRATUM = 20  # rows per predicted-views group below which groups are merged
INTERVAL_METHOD = (
    "cross-validation residual intervals: quantiles of out-of-fold (channel-disjoint) "
    "residuals around the model refit on all training rows; close to split-conformal but "
    "without its finite-sample guarantee, and marginal (see conditional_coverage)"
)


@dataclass(frozen=True)
class EvalResult:
    """The model's metrics next to its baselines (what `thumbview evaluate` writes).

    interval_coverage: share of rows whose actual value fell inside the model's interval
    (None where no interval was scored, e.g. cross-validation folds); it should be close to
    `interval_level` on data like the training data.
    """

    model: Metrics
    baselines: dict[str, Metrics]
    interval_coverage: float | None = None
    interval_level: float | None = None
    # Coverage within strata (channel size, age tercile, predicted-views decile), the pairwise
    # calibration on same-channel pairs (`PairCalibration.to_json_dict`), a one-line
    # warning when the data lies far outside the training range and the structured report
    # behind it (`predict.drift.DriftReport.to_json_dict`); None where not computed.
    conditional_coverage: dict[str, list[dict[str, Any]]] | None = None
    pairwise: dict[str, Any] | None = None
    warning: str | None = None
    interval_method: str = INTERVAL_METHOD
    out_of_range: dict[str, Any] | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """Flat model metrics + `baselines`; NaN becomes None so the output is strict JSON."""
        out: dict[str, Any] = json_safe(self.model.to_dict())
        out["interval_coverage"] = self.interval_coverage
        out["interval_level"] = self.interval_level
        out["interval_method"] = self.interval_method
        out["conditional_coverage"] = json_safe(self.conditional_coverage)
        out["pairwise"] = json_safe(self.pairwise)
        out["warning"] = self.warning
        out["out_of_range"] = json_safe(self.out_of_range)
        out["baselines"] = {name: json_safe(m.to_dict()) for name, m in self.baselines.items()}
        return out


def conditional_coverage(y, lo, hi, strata: dict[str, np.ndarray]) -> dict[str, list[dict]]:
    """Interval coverage within each stratum: {grouping: [{stratum, n, coverage}, ...]}.

    Marginal coverage can hide intervals that are too narrow for small channels or hits and
    too wide elsewhere; this shows where.
    """
    inside = (np.asarray(y) >= np.asarray(lo)) & (np.asarray(y) <= np.asarray(hi))  # (N,)
    out = {}
    for name, labels in strata.items():
        labels = np.asarray(labels, dtype=object)
        rows = []
        for value in sorted(pd.unique(labels), key=_stratum_order):  # D1, D2, ..., D10
            sel = labels == value
            rows.append(
                {"stratum": str(value), "n": int(sel.sum()), "coverage": float(inside[sel].mean())}
            )
        out[name] = rows
    return out


def _stratum_order(label) -> tuple[float, str]:
    """Strata in reading order: by the first number in the label ('D2' < 'D10', '2-4 videos'
    < '20+ videos'), labels without one ('age unknown') last."""
    found = re.search(r"\d+", str(label))
    return (float(found.group()) if found else float("inf"), str(label))


def coverage_strata(pred, channel_sizes=None, ages_days=None) -> dict[str, np.ndarray]:
    """Labels per row: predicted-views decile, channel size bucket, upload-age tercile."""
    pred = np.asarray(pred, dtype=np.float64)
    # Deciles need rows: with fewer than MIN_STRATUM x 10, fewer, larger groups (each a
    # coverage people can read, not n = 1-2), named by how many there are.
    q = int(np.clip(len(pred) // MIN_STRATUM, 1, 10))
    name = "predicted decile" if q == 10 else f"predicted views in {q} equal groups"
    strata = {name: _quantile_labels(pred, q, "D" if q == 10 else "G")}
    if channel_sizes is not None:
        sizes = np.asarray(channel_sizes)
        edges, names = [2, 5, 20], ["1 video", "2-4 videos", "5-19 videos", "20+ videos"]
        strata["channel size"] = np.array(names, dtype=object)[
            np.searchsorted(edges, sizes, "right")
        ]
    if ages_days is not None and np.isfinite(ages_days).sum() >= 3:
        ages = np.asarray(ages_days, dtype=np.float64)
        labels = _quantile_labels(np.where(np.isfinite(ages), ages, np.nanmedian(ages)), 3, "age T")
        strata["age tercile"] = np.where(np.isfinite(ages), labels, "age unknown")
    return strata


def _quantile_labels(x: np.ndarray, q: int, prefix: str) -> np.ndarray:
    """'D1'..'Dq' by empirical quantile (ties share a label)."""
    ranks = stats.rankdata(x, method="average") / (len(x) + 1)  # (N,) in (0, 1)
    return np.array([f"{prefix}{int(r * q) + 1}" for r in ranks], dtype=object)


def evaluate_predictor(
    blocks: dict[str, np.ndarray], y, groups, config: PredictorConfig, k: int = 5
) -> tuple[EvalResult, CVResult]:
    """Cross-validated metrics (mean over folds) with the baselines of the same folds, and the
    per-fold summary: one K-fold pass serves both."""
    cv, baselines = cross_validate(blocks, y, groups, config, k=k)
    return EvalResult(cv.mean, {name: b.mean for name, b in baselines.items()}), cv
