"""Metrics and channel-grouped folds: the arrays-only core that fitting and evaluation share.

`predict.model` (conformal calibration) and `predict.crossval` (cross-validation, baselines)
both need the same folds and the same metrics; they live here so neither imports the other
in a cycle.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import mean_absolute_error, r2_score

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
