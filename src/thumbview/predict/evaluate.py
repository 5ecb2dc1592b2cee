"""How good is the predictor, honestly: metrics, channel-disjoint folds, baselines.

Videos of one channel share subscribers, style and often the thumbnail template, so a random
split lets the model recognise the channel instead of judging the thumbnail. Every split here
is grouped by channel when channel ids are known. Spearman is the headline metric because
the product question is ranking ("which of my thumbnails is better?"), not the exact count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import mean_absolute_error, r2_score

from thumbview.fileio import json_safe

if TYPE_CHECKING:
    from thumbview.predict.model import PredictorConfig

log = logging.getLogger(__name__)


class EvaluationError(ValueError):
    """Evaluation inputs are inconsistent (lengths, too few groups for K folds, ...)."""


@dataclass(frozen=True)
class Metrics:
    """Agreement of predictions with the truth, in log10-views units where units apply."""

    spearman: float
    pearson: float
    mae_log10: float
    r2: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def compute_metrics(y_true, y_pred) -> Metrics:
    """Spearman, Pearson, MAE and R^2; undefined ones are NaN instead of an exception.

    Correlations need n >= 3 and non-constant inputs (a constant prediction, like the
    global-median baseline, ranks nothing); R^2 needs a non-constant truth.
    """
    yt, yp = np.asarray(y_true, np.float64), np.asarray(y_pred, np.float64)
    if yt.ndim != 1 or yt.shape != yp.shape:
        raise EvaluationError(f"y_true {yt.shape} and y_pred {yp.shape} must be equal-length 1-d")
    if not (np.isfinite(yt).all() and np.isfinite(yp).all()):
        raise EvaluationError("y_true and y_pred must be finite (no NaN/inf)")
    n = len(yt)
    nan = float("nan")
    varied = n >= 3 and np.ptp(yt) > 0 and np.ptp(yp) > 0
    spearman = float(stats.spearmanr(yt, yp).statistic) if varied else nan
    pearson = float(stats.pearsonr(yt, yp).statistic) if varied else nan
    mae = float(mean_absolute_error(yt, yp)) if n else nan
    r2 = float(r2_score(yt, yp)) if n >= 2 and np.ptp(yt) > 0 else nan
    return Metrics(spearman=spearman, pearson=pearson, mae_log10=mae, r2=r2, n=n)


def _group_codes(groups, n: int | None) -> np.ndarray:
    """Integer group per row; missing ids (None/NaN/"") become singleton groups."""
    if groups is None:
        if n is None:
            raise EvaluationError("give either groups or the number of rows n")
        return np.arange(n)
    codes, _ = pd.factorize(pd.Series(np.asarray(groups, dtype=object)).replace("", None))
    if n is not None and len(codes) != n:
        raise EvaluationError(f"groups has {len(codes)} rows, expected {n}")
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    return codes


def group_kfold(groups, k: int = 5, seed: int = 0, *, n: int | None = None) -> list:
    """K folds `[(train_idx, test_idx), ...]` that never split a group (channel) across folds.

    Groups are shuffled with `seed`, then placed largest-first into the currently lightest
    fold, so folds are near-equal in rows (sklearn's shuffled GroupKFold balances group counts
    instead, which gives very unequal folds when channel sizes vary). `groups=None` means
    every row is its own group (plain shuffled K-fold over `n` rows).
    """
    codes = _group_codes(groups, n)
    sizes = np.bincount(codes)  # (G,)
    if k < 2 or k > len(sizes):
        raise EvaluationError(
            f"cannot make {k} folds from {len(sizes)} groups (need 2 <= k <= groups)"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sizes))
    order = order[np.argsort(-sizes[order], kind="stable")]  # largest first, random among ties
    fold_of_group, load = np.empty(len(sizes), dtype=np.int64), np.zeros(k, dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of_group[g], load[f] = f, load[f] + sizes[g]
    fold = fold_of_group[codes]  # (N,)
    return [(np.flatnonzero(fold != f), np.flatnonzero(fold == f)) for f in range(k)]


def group_train_test_split(
    groups, test_frac: float = 0.2, seed: int = 0, *, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """One channel-disjoint split whose test side holds about `test_frac` of the rows."""
    if not 0 < test_frac < 1:
        raise EvaluationError(f"test_frac must be in (0, 1), got {test_frac}")
    codes = _group_codes(groups, n)
    sizes = np.bincount(codes)
    if len(sizes) < 2:
        raise EvaluationError("need at least 2 groups to split into train and test")
    order = np.random.default_rng(seed).permutation(len(sizes))
    cum = np.cumsum(sizes[order])  # rows taken so far, in shuffled group order
    n_test_groups = int(np.searchsorted(cum, test_frac * len(codes))) + 1
    n_test_groups = min(max(n_test_groups, 1), len(sizes) - 1)
    is_test = np.isin(codes, order[:n_test_groups])
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


@dataclass(frozen=True)
class CVResult:
    """Per-fold metrics, their mean (n = all rows evaluated) and standard deviation across folds."""

    folds: tuple[Metrics, ...]
    mean: Metrics
    std: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": [f.to_dict() for f in self.folds],
            "mean": self.mean.to_dict(),
            "std": dict(self.std),
        }


def summarize_folds(folds) -> CVResult:
    """Mean and spread of fold metrics; NaN folds (constant predictions) are ignored."""
    folds = tuple(folds)
    names = [f.name for f in fields(Metrics) if f.name != "n"]
    table = np.array([[getattr(m, k) for k in names] for m in folds], dtype=np.float64)  # (K, 4)
    with np.errstate(all="ignore"):
        ok = np.isfinite(table).sum(axis=0)  # (4,)
        mean = np.where(ok > 0, np.nansum(table, axis=0) / np.maximum(ok, 1), np.nan)
        std = [
            float(np.nanstd(col, ddof=1)) if c > 1 else math.nan
            for col, c in zip(table.T, ok, strict=True)
        ]
    total = sum(m.n for m in folds)
    return CVResult(
        folds=folds,
        mean=Metrics(**dict(zip(names, map(float, mean), strict=True)), n=total),
        std=dict(zip(names, std, strict=True)),
    )


def _check_lengths(blocks: dict[str, np.ndarray], y: np.ndarray) -> None:
    for name, X in blocks.items():
        if np.shape(X)[0] != len(y):
            raise EvaluationError(f"block {name!r} has {np.shape(X)[0]} rows but y has {len(y)}")


def cross_validate(
    blocks: dict[str, np.ndarray], y, groups, config: PredictorConfig, k: int = 5
) -> CVResult:
    """K-fold (channel-disjoint when `groups` is given) metrics of the full predictor.

    Each fold fits a fresh `ViewPredictor` without its own calibration loop (only point
    predictions are scored here), so this costs K fits, not K x (K + 1).
    """
    from thumbview.predict.model import ViewPredictor  # model imports this module

    y = np.asarray(y, dtype=np.float64)
    _check_lengths(blocks, y)
    metrics = []
    for train, test in group_kfold(groups, k, config.seed, n=len(y)):
        model = ViewPredictor(config).fit(_rows(blocks, train), y[train], calibrate=False)
        metrics.append(compute_metrics(y[test], model.predict(_rows(blocks, test))))
        log.debug("fold %d/%d: %s", len(metrics), k, metrics[-1])
    return summarize_folds(metrics)


def baseline_metrics(
    blocks: dict[str, np.ndarray], y, groups=None, *, k: int = 5, seed: int = 0
) -> dict[str, Metrics]:
    """What the model must beat, on the same folds: the training median, and ridge per encoder.

    Keys: `global-median`, then `<encoder>-only` for each block. A model that does not beat
    its best single encoder is not using the combination.
    """
    from thumbview.predict.heads import RidgeHead

    y = np.asarray(y, dtype=np.float64)
    _check_lengths(blocks, y)
    folds = group_kfold(groups, k, seed, n=len(y))
    per_fold: dict[str, list[Metrics]] = {"global-median": []}
    for train, test in folds:
        median = np.full(len(test), np.median(y[train]))
        per_fold["global-median"].append(compute_metrics(y[test], median))
        for name, X in blocks.items():
            head = RidgeHead().fit(np.asarray(X)[train], y[train])
            per_fold.setdefault(f"{name}-only", []).append(
                compute_metrics(y[test], head.predict(np.asarray(X)[test]))
            )
    return {name: summarize_folds(m).mean for name, m in per_fold.items()}


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
    # calibration on same-channel pairs (`PairCalibration.to_json_dict`), and a one-line
    # warning when the data lies far outside the training range; None where not computed.
    conditional_coverage: dict[str, list[dict[str, Any]]] | None = None
    pairwise: dict[str, Any] | None = None
    warning: str | None = None
    interval_method: str = INTERVAL_METHOD

    def to_json_dict(self) -> dict[str, Any]:
        """Flat model metrics + `baselines`; NaN becomes None so the output is strict JSON."""
        out: dict[str, Any] = json_safe(self.model.to_dict())
        out["interval_coverage"] = self.interval_coverage
        out["interval_level"] = self.interval_level
        out["interval_method"] = self.interval_method
        out["conditional_coverage"] = json_safe(self.conditional_coverage)
        out["pairwise"] = json_safe(self.pairwise)
        out["warning"] = self.warning
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
        for value in pd.unique(labels):
            sel = labels == value
            rows.append(
                {"stratum": str(value), "n": int(sel.sum()), "coverage": float(inside[sel].mean())}
            )
        out[name] = rows
    return out


def coverage_strata(pred, channel_sizes=None, ages_days=None) -> dict[str, np.ndarray]:
    """Labels per row: predicted-views decile, channel size bucket, upload-age tercile."""
    pred = np.asarray(pred, dtype=np.float64)
    strata = {"predicted decile": _quantile_labels(pred, 10, "D")}
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
) -> EvalResult:
    """Cross-validated model metrics and baselines on identical folds."""
    cv = cross_validate(blocks, y, groups, config, k=k)
    chosen = {name: blocks[name] for name in config.encoders if name in blocks}
    return EvalResult(cv.mean, baseline_metrics(chosen, y, groups, k=k, seed=config.seed))


def _rows(blocks: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(X)[idx] for name, X in blocks.items()}
