"""What the predictor learns: view counts on a log scale, optionally relative to the channel.

Raw view counts span six orders of magnitude and are dominated by a few hits, so every model
works on `log10(1 + views)`. Much of that spread is the channel (subscribers, niche), not the
thumbnail; the channel-relative target removes it by subtracting the median of the channel's
*other* videos, which is what creators call an "outlier score" (+1 = ten times the channel's
usual views). Leaving the video itself out keeps its own views from leaking into its reference.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

TARGETS = ("log10", "channel-relative")


class TargetError(ValueError):
    """The views or channels cannot be turned into a training target; the message says why."""


def log_views(views) -> np.ndarray:
    """`log10(1 + views)` as float64; views must be finite and >= 0 (0 views maps to 0)."""
    v = np.asarray(views, dtype=np.float64)
    if v.ndim != 1:
        raise TargetError(f"views must be a 1-d array, got shape {v.shape}")
    bad = ~np.isfinite(v) | (v < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TargetError(
            f"views must be finite and >= 0; {int(bad.sum())} are not (first at row {i}: {v[i]})"
        )
    return np.log10(1.0 + v)


def views_from_log(y) -> np.ndarray:
    """Inverse of `log_views`: `10**y - 1` (a prediction in log10 units back to a view count)."""
    return np.power(10.0, np.asarray(y, dtype=np.float64)) - 1.0


def to_views(target: str) -> Callable[[float], float]:
    """Target units -> what people read: a view count (log10 target) or, for the
    channel-relative target, a multiplier of the channel's usual views."""
    if target == "log10":
        return lambda y: float(views_from_log(y))
    return lambda y: float(10.0**y)


def channel_codes(channels, n: int) -> np.ndarray:
    """Integer code per row (-1 = no channel). None, NaN and "" all count as missing.

    The one rule for channel ids in thumbview: the SAE study's channel control
    (`thumbview.sae.covariates`) uses it too, and makes each missing id a channel of its own.
    """
    if channels is None:
        return np.full(n, -1, dtype=np.int64)
    ch = pd.Series(np.asarray(channels, dtype=object)).replace("", None)
    if len(ch) != n:
        raise TargetError(f"channels has {len(ch)} rows but there are {n} videos")
    codes, _ = pd.factorize(ch, use_na_sentinel=True)
    return codes.astype(np.int64)


def channel_relative(log_views, channels) -> tuple[np.ndarray, np.ndarray]:
    """Log views minus the leave-one-out median of the same channel -> `(y, mask)`.

    Rows whose channel is missing or has fewer than 2 videos have no reference: `mask` is
    False there and `y` is NaN, so callers train on `y[mask]`.
    Vectorised: sort by (channel, value); removing the element at rank r from a sorted run
    shifts every later index by one, so the two middle elements of the remaining run are
    found by index arithmetic instead of a per-video median.
    """
    lv = np.asarray(log_views, dtype=np.float64)
    if lv.ndim != 1 or not np.isfinite(lv).all():
        raise TargetError("log_views must be a 1-d array of finite numbers")
    codes = channel_codes(channels, len(lv))
    counts = np.bincount(codes[codes >= 0], minlength=int(codes.max(initial=-1)) + 1)
    size = np.where(codes >= 0, counts[np.maximum(codes, 0)], 0)  # (N,) videos in the channel
    mask = size >= 2

    order = np.lexsort((lv, codes))  # (N,) rows sorted by channel, then value
    sorted_codes, sorted_lv = codes[order], lv[order]
    run_start = np.searchsorted(sorted_codes, sorted_codes, side="left")  # (N,)
    rank = np.empty(len(lv), dtype=np.int64)
    rank[order] = np.arange(len(lv)) - run_start  # position of each row inside its channel

    m = size - 1  # size of the leave-one-out reference set
    j1, j2 = np.maximum(m - 1, 0) // 2, np.maximum(m, 0) // 2  # middle positions of the m values
    start = np.empty(len(lv), dtype=np.int64)
    start[order] = run_start
    i1 = start + j1 + (j1 >= rank)  # skip over the left-out row itself
    i2 = start + j2 + (j2 >= rank)
    i1, i2 = np.where(mask, i1, 0), np.where(mask, i2, 0)
    reference = 0.5 * (sorted_lv[i1] + sorted_lv[i2])  # (N,)
    y = np.where(mask, lv - reference, np.nan)
    return y, mask


def make_target(views, target: str = "log10", channels=None) -> tuple[np.ndarray, np.ndarray]:
    """The training target named `target` (one of TARGETS) -> `(y, mask)`; mask all True for log10."""
    if target not in TARGETS:
        raise TargetError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    lv = log_views(views)
    if target == "log10":
        return lv, np.ones(len(lv), dtype=bool)
    if channels is None:
        raise TargetError("the channel-relative target needs channel ids (no channel column)")
    return channel_relative(lv, channels)
