"""Statistics of the SAE feature study, as pure functions on arrays.

Reproduces "Sparse Autoencoders detect features in YouTube thumbnails associated with high
view counts": for every SAE latent, take the videos that activate it most, hold out the very
top one(s), and summarise the views of the rest (the *group statistic*). Whether latents pick
out unusual view counts is judged against groups of random videos (KS test, per-feature
permutation p-values with Benjamini-Hochberg q-values), and the held-out top videos give an
out-of-sample check that the effect is not an artefact of selecting the extremes.

Latents may be a dense array or a scipy.sparse matrix (CSR/CSC). The study runs at
524,288 videos x 65,536 latents, so the matrix is never densified: work proceeds column
block by column block with a bounded element budget (`_CHUNK_ELEMS`).

One code path serves the main study (median of 399 videos) and the per-channel mode (mean of
10 videos): the statistic, group size and thresholds are fields of `StudyConfig`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats as sps

from thumbview.fileio import json_safe

logger = logging.getLogger(__name__)

Statistic = Literal["median", "mean"]
Alternative = Literal["two-sided", "greater", "less"]

# Elements per vectorised block (32 MiB of float64): bounds peak memory of every chunked loop.
_CHUNK_ELEMS = 1 << 22


class StudyError(ValueError):
    """The study cannot run on these inputs; the message says why and what to change."""


@dataclass(frozen=True)
class StudyConfig:
    """Every knob of the study; the defaults are the paper's main analysis.

    A latent *qualifies* when strictly more than `min_active` of its `top_k` strongest
    activations exceed `threshold` (paper: more than 399 of the top 400 above 0.05, i.e. all
    400). Its top `hold_out` videos are held out; the group is ranks hold_out+1..top_k.
    `n_extreme` features per side go into the magnitude table (with bootstrap CIs);
    `heldout_group` features per side feed the held-out test, whose null is `n_null_heldout`
    random groups of the same number of videos. `n_perm` random groups of `group_size` form
    the permutation null (p per feature, BH q over all qualifying features); its first
    `n_random` (default: as many as qualifying latents) form the KS null, as in the paper.
    """

    top_k: int = 400
    threshold: float = 0.05
    min_active: int = 399
    hold_out: int = 1
    statistic: Statistic = "median"
    n_extreme: int = 100
    n_null_heldout: int = 1_000_000
    heldout_group: int = 100
    n_random: int | None = None
    n_perm: int = 100_000
    alternative: Alternative = "two-sided"
    n_boot: int = 1000
    ci: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.statistic in ("median", "mean"), "statistic must be 'median' or 'mean'")
        _require(self.alternative in ("two-sided", "greater", "less"), "bad alternative")
        _require(self.hold_out >= 1, "hold_out must be >= 1 (the held-out test needs it)")
        _require(self.top_k > self.hold_out, "top_k must exceed hold_out (empty group)")
        _require(
            0 <= self.min_active < self.top_k,
            f"min_active must be in [0, top_k): a latent qualifies with MORE than min_active "
            f"of its top {self.top_k} active, so min_active={self.min_active} admits none",
        )
        _require(self.threshold >= 0, "threshold must be >= 0 (SAE latents are non-negative)")
        _require(0 < self.ci < 1, "ci must be in (0, 1)")
        for name in ("n_extreme", "n_null_heldout", "heldout_group", "n_perm"):
            _require(getattr(self, name) >= 1, f"{name} must be >= 1")
        _require(self.n_boot >= 0, "n_boot must be >= 0 (0 disables bootstrap CIs)")
        _require(self.n_random is None or self.n_random >= 1, "n_random must be >= 1 or None")

    @property
    def group_size(self) -> int:
        """Videos per feature group (the paper's 399): ranks hold_out+1..top_k."""
        return self.top_k - self.hold_out


def channel_config(**overrides: Any) -> StudyConfig:
    """Defaults of the per-channel mode (channels of ~330-390 videos).

    Latents active on at least 11 videos (`min_active=10`: qualification is "more than"),
    top-1 held out, group = the next 10 videos summarised by their MEAN (a median of 10 is
    too coarse), top/bottom 10 features, held-out test on the 10 top-1 videos per side.
    """
    base = StudyConfig(
        top_k=11, min_active=10, statistic="mean", n_extreme=10, heldout_group=10, n_perm=20_000
    )
    return replace(base, **overrides)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise StudyError(message)


# ----------------------------------------------------------------------------- validation


def check_views(views: Any, n_rows: int | None = None, min_videos: int = 1) -> np.ndarray:
    """Return views as float64 (N,), rejecting NaN/inf/negative values and bad lengths."""
    v = np.asarray(views, dtype=np.float64)
    _require(v.ndim == 1, f"views must be 1-D, got shape {v.shape}")
    if n_rows is not None and len(v) != n_rows:
        raise StudyError(f"latents have {n_rows} rows but views has {len(v)} entries")
    bad = ~np.isfinite(v)
    if bad.any():
        raise StudyError(
            f"views has {int(bad.sum())} NaN/inf values (first at row {int(np.argmax(bad))})"
        )
    neg = v < 0
    _require(not neg.any(), f"views has {int(neg.sum())} negative values")
    if len(v) < min_videos:
        raise StudyError(
            f"only {len(v)} videos: the study needs at least {min_videos} (hold-out + group "
            f"size); for a small channel lower top_k or pick a bigger channel"
        )
    return v


def check_latents(latents: Any) -> np.ndarray | sp.csc_matrix | sp.csr_matrix:
    """Return latents as a non-negative, finite 2-D dense array or canonical CSR/CSC."""
    if sp.issparse(latents):
        x = latents if latents.format in ("csr", "csc") else latents.tocsc()
        if not x.has_canonical_format:
            x = x.copy()
            x.sum_duplicates()
        data = x.data
    else:
        x = np.asarray(latents)
        _require(x.dtype.kind in "fiub", f"latents must be numeric, got dtype {x.dtype}")
        data = x
    _require(x.ndim == 2, f"latents must be 2-D (videos x latents), got {x.ndim}-D")
    _require(bool(np.isfinite(data).all()), "latents contain NaN/inf")
    _require(not (data < 0).any(), "latents contain negative values; SAE codes are >= 0")
    return x


# ----------------------------------------------------------------------- top activations


def active_counts(latents: Any, threshold: float) -> np.ndarray:
    """Videos per latent with activation > threshold, (L,) int64, without densifying."""
    return _active_counts(check_latents(latents), threshold)


def _active_counts(x: Any, threshold: float) -> np.ndarray:
    if sp.issparse(x):
        if x.format == "csr":
            return np.bincount(x.indices[x.data > threshold], minlength=x.shape[1])
        csum = np.concatenate([[0], np.cumsum(x.data > threshold)])
        return csum[x.indptr[1:]] - csum[x.indptr[:-1]]
    step = max(1, _CHUNK_ELEMS // max(1, x.shape[0]))
    blocks = [(x[:, s : s + step] > threshold).sum(axis=0) for s in range(0, x.shape[1], step)]
    return np.concatenate(blocks).astype(np.int64) if blocks else np.zeros(0, np.int64)


def top_activations(
    latents: Any, top_k: int, columns: Sequence[int] | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the `top_k` strongest activations of each latent, strongest first.

    Returns (indices (C, top_k) int64, values (C, top_k)) for the C requested `columns`
    (default all). Ties break by row index (lower first), so dense and sparse inputs give the
    same answer; zeros (implicit in sparse) rank after every positive activation.
    """
    return _top_activations(check_latents(latents), top_k, columns)


def _top_activations(
    x: Any, top_k: int, columns: Sequence[int] | np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    n, n_lat = x.shape
    _require(1 <= top_k <= n, f"top_k={top_k} must be in [1, {n}] (the number of videos)")
    cols = np.arange(n_lat) if columns is None else np.asarray(columns, dtype=np.int64)
    _require(bool(((cols >= 0) & (cols < n_lat)).all()), "columns out of range")
    if sp.issparse(x):
        return _sparse_topk(x.tocsc(), cols, top_k)
    return _dense_topk(x, cols, top_k)


def _dense_topk(x: np.ndarray, cols: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Column blocks through argpartition, then an exact tie fix at the k-th value."""
    idx = np.empty((len(cols), top_k), np.int64)
    val = np.empty((len(cols), top_k), x.dtype)
    step = max(1, _CHUNK_ELEMS // max(1, x.shape[0]))
    for s in range(0, len(cols), step):
        block = x[:, cols[s : s + step]]  # (N, c)
        idx[s : s + step], val[s : s + step] = _dense_topk_block(block, top_k)
    return idx, val


def _dense_topk_block(block: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    neg = -block.astype(np.float64)  # (N, c): smallest first == strongest first
    part = np.argpartition(neg, top_k - 1, axis=0)[:top_k]  # (k, c), ties arbitrary
    kth = np.take_along_axis(neg, part, axis=0).max(axis=0)  # (c,) k-th strongest
    tie = neg == kth  # (N, c)
    need = top_k - (neg < kth).sum(axis=0)  # (c,) tied rows to take, lowest rows first
    take = (neg < kth) | (tie & (np.cumsum(tie, axis=0) <= need))
    _, rows = np.nonzero(take.T)  # column-major: exactly top_k per column, rows ascending
    rows = rows.reshape(block.shape[1], top_k)  # (c, k)
    vals = np.take_along_axis(block.T, rows, axis=1)  # (c, k)
    order = np.lexsort((rows, -vals.astype(np.float64)), axis=-1)
    return np.take_along_axis(rows, order, 1), np.take_along_axis(vals, order, 1)


def _sparse_topk(x: sp.csc_matrix, cols: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocks of columns with a bounded number of stored entries, sorted in one lexsort."""
    idx = np.empty((len(cols), top_k), np.int64)
    val = np.zeros((len(cols), top_k), x.dtype)
    cum = np.cumsum(np.diff(x.indptr)[cols])  # (C,) stored entries up to each column
    s = 0
    while s < len(cols):
        done = cum[s - 1] if s else 0
        e = max(s + 1, int(np.searchsorted(cum, done + _CHUNK_ELEMS, side="right")))
        _sparse_topk_block(x, cols[s:e], top_k, idx[s:e], val[s:e])
        s = e
    return idx, val


def _sparse_topk_block(
    x: sp.csc_matrix, cols: np.ndarray, top_k: int, idx: np.ndarray, val: np.ndarray
) -> None:
    lens = x.indptr[cols + 1] - x.indptr[cols]  # (c,)
    offsets = np.cumsum(lens) - lens
    pos = np.repeat(x.indptr[cols] - offsets, lens) + np.arange(lens.sum())  # into x.data
    col_id, rows, vals = np.repeat(np.arange(len(cols)), lens), x.indices[pos], x.data[pos]
    keep = vals > 0  # explicit zeros rank with the implicit ones
    col_id, rows, vals = col_id[keep], rows[keep].astype(np.int64), vals[keep]
    order = np.lexsort((rows, -vals.astype(np.float64), col_id))
    col_id, rows, vals = col_id[order], rows[order], vals[order]
    n_pos = np.bincount(col_id, minlength=len(cols))  # (c,)
    rank = np.arange(len(col_id)) - np.repeat(np.cumsum(n_pos) - n_pos, n_pos)
    top = rank < top_k
    idx[col_id[top], rank[top]] = rows[top]
    val[col_id[top], rank[top]] = vals[top]
    starts = np.cumsum(n_pos) - n_pos
    for j in np.flatnonzero(n_pos < top_k):  # pad with zero-activation rows, lowest first
        positive = rows[starts[j] : starts[j] + n_pos[j]]
        cand = np.arange(top_k + n_pos[j])
        idx[j, n_pos[j] :] = cand[~np.isin(cand, positive)][: top_k - n_pos[j]]


# ------------------------------------------------------------------------ group statistics


def reduce_rows(x: np.ndarray, statistic: Statistic) -> np.ndarray:
    """Median or mean along the last axis; sorts `x` in place (callers pass scratch copies).

    A full sort of short rows beats np.median's partition by ~2.5x and gives the same values.
    """
    if statistic == "mean":
        return x.mean(axis=-1)
    x.sort(axis=-1)
    g = x.shape[-1]
    return 0.5 * (x[..., (g - 1) // 2] + x[..., g // 2])


def group_statistics(
    views: np.ndarray, indices: np.ndarray, hold_out: int = 1, statistic: Statistic = "median"
) -> tuple[np.ndarray, np.ndarray]:
    """Statistic of each feature's group (ranks hold_out+1..) and its held-out views.

    `indices` (F, top_k) are video rows, strongest first. Returns (stats (F,), heldout
    (F, hold_out)); holding out the top video keeps it free for the out-of-sample test.
    """
    v = np.asarray(views, dtype=np.float64)
    idx = np.asarray(indices)
    _require(idx.ndim == 2 and idx.shape[1] > hold_out, "indices must be (F, top_k > hold_out)")
    out = np.empty(idx.shape[0])
    step = max(1, _CHUNK_ELEMS // idx.shape[1])
    for s in range(0, idx.shape[0], step):
        out[s : s + step] = reduce_rows(v[idx[s : s + step, hold_out:]], statistic)  # (c, g)
    return out, v[idx[:, :hold_out]]


def _draw_rows(rng: np.random.Generator, n_rows: int, size: tuple[int, ...]) -> np.ndarray:
    """Uniform row indices with replacement from uniform doubles.

    Unlike rng.integers (which buffers 32-bit halves per call), the stream of rng.random is
    the same however the draws are chunked, so chunked and one-at-a-time loops agree exactly.
    """
    idx = (rng.random(size) * n_rows).astype(np.intp)
    return np.minimum(idx, n_rows - 1, out=idx)


def random_group_stats(
    views: np.ndarray,
    group_size: int,
    n: int,
    rng: np.random.Generator,
    statistic: Statistic = "median",
) -> np.ndarray:
    """Statistic of `n` groups of `group_size` random videos (with replacement), (n,).

    Vectorised in row blocks of at most `_CHUNK_ELEMS` draws. Group i uses the i-th run of
    `group_size` doubles from `rng.random`, exactly as a loop of `rng.random(group_size)`.
    """
    v = np.asarray(views, dtype=np.float64)
    _require(group_size >= 1 and n >= 0, "group_size must be >= 1 and n >= 0")
    _require(len(v) >= 1, "no videos to draw random groups from")
    out = np.empty(n)
    step = max(1, _CHUNK_ELEMS // group_size)
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s : s + m] = reduce_rows(v[_draw_rows(rng, len(v), (m, group_size))], statistic)
    return out


def permutation_pvalues(
    observed: np.ndarray, null: np.ndarray, alternative: Alternative = "two-sided"
) -> np.ndarray:
    """P-values of each observed statistic against one shared null sample, (F,).

    Uses the +1 correction ((count + 1) / (n + 1)) so a p-value is never 0 and stays valid
    for a finite null; two-sided doubles the smaller tail.
    """
    null_sorted = np.sort(np.asarray(null, dtype=np.float64))
    obs = np.asarray(observed, dtype=np.float64)
    n = len(null_sorted)
    _require(n >= 1, "empty null sample")
    p_greater = (n - np.searchsorted(null_sorted, obs, side="left") + 1) / (n + 1)
    p_less = (np.searchsorted(null_sorted, obs, side="right") + 1) / (n + 1)
    if alternative == "greater":
        return p_greater
    if alternative == "less":
        return p_less
    return np.minimum(1.0, 2.0 * np.minimum(p_greater, p_less))


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as `p`."""
    pv = np.asarray(p, dtype=np.float64)
    _require(pv.ndim == 1, "p must be 1-D")
    _require(bool(((pv >= 0) & (pv <= 1)).all()), "p-values must lie in [0, 1] (no NaN)")
    if len(pv) == 0:
        return pv.copy()
    if hasattr(sps, "false_discovery_control"):
        return np.asarray(sps.false_discovery_control(pv, method="bh"), dtype=np.float64)
    return _bh_numpy(pv)


def _bh_numpy(p: np.ndarray) -> np.ndarray:
    """Fallback for scipy < 1.11: q_(i) = min_{j >= i} p_(j) m / j, capped at 1."""
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def bootstrap_ci(
    groups: np.ndarray,
    n_boot: int,
    ci: float,
    rng: np.random.Generator,
    statistic: Statistic = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap CI of each row's statistic; groups (F, g) -> (low (F,), high (F,)).

    All rows resample at once in blocks of at most `_CHUNK_ELEMS` draws.
    """
    grp = np.asarray(groups, dtype=np.float64)
    _require(grp.ndim == 2 and grp.shape[1] >= 1 and n_boot >= 1, "need groups (F, g>=1)")
    f, g = grp.shape
    lo, hi = np.empty(f), np.empty(f)
    step = max(1, _CHUNK_ELEMS // (n_boot * g))
    alpha = (1.0 - ci) / 2
    for s in range(0, f, step):
        block = grp[s : s + step]  # (c, g)
        draws = _draw_rows(rng, g, (len(block), n_boot, g))  # (c, B, g)
        boot = reduce_rows(block[np.arange(len(block))[:, None, None], draws], statistic)
        lo[s : s + step], hi[s : s + step] = np.quantile(boot, [alpha, 1 - alpha], axis=1)
    return lo, hi


# ------------------------------------------------------------------------ held-out test


@dataclass(frozen=True)
class HeldoutResult:
    """Out-of-sample check: held-out top videos of the most extreme features vs random ones.

    hhm/lhm: statistic of the held-out videos of the `n_features` highest / lowest features;
    p_hhm = P(null >= hhm), p_lhm = P(null <= lhm) with the +1 correction; the null is
    `n_null` statistics of `group_size` random videos; null_center is its median.
    """

    hhm: float
    lhm: float
    p_hhm: float
    p_lhm: float
    null_center: float
    n_features: int
    group_size: int
    n_null: int


def heldout_test(
    high_views: np.ndarray,
    low_views: np.ndarray,
    views: np.ndarray,
    n_null: int,
    rng: np.random.Generator,
    statistic: Statistic = "median",
    n_features: int | None = None,
) -> HeldoutResult:
    """Compare held-out views of the top and bottom features with random groups of that size."""
    hi = np.asarray(high_views, dtype=np.float64).ravel()
    lo = np.asarray(low_views, dtype=np.float64).ravel()
    _require(len(hi) == len(lo) >= 1, "high and low held-out sets must be equal and non-empty")
    null = random_group_stats(views, len(hi), n_null, rng, statistic)
    hhm = float(reduce_rows(hi.copy(), statistic))
    lhm = float(reduce_rows(lo.copy(), statistic))
    return HeldoutResult(
        hhm=hhm,
        lhm=lhm,
        p_hhm=float(permutation_pvalues([hhm], null, "greater")[0]),
        p_lhm=float(permutation_pvalues([lhm], null, "less")[0]),
        null_center=float(np.median(null)),
        n_features=len(hi) if n_features is None else n_features,
        group_size=len(hi),
        n_null=n_null,
    )


# ---------------------------------------------------------------------- covariate control

ChannelMode = Literal["pooled", "fixed"]


@dataclass(frozen=True)
class ChannelShrinkage:
    """Variance components of a random channel intercept and the shrinkage they imply.

    A channel of n videos keeps n / (n + lambda) of its mean residual as its effect, with
    lambda = sigma2_within / sigma2_between. Fixed effects are lambda = 0 (a lone video's
    residual is always 0); lambda = inf means no channel effect is removed. `estimable` is
    False when the data cannot separate the two components (then lambda = inf).
    """

    sigma2_within: float
    sigma2_between: float
    n_channels: int
    n_multi_video: int
    estimable: bool = True

    @property
    def shrinkage_lambda(self) -> float:
        """sigma2_within / sigma2_between (0 without within noise, inf without channel effects)."""
        if not self.estimable or self.sigma2_between <= 0:
            return math.inf
        return self.sigma2_within / self.sigma2_between if self.sigma2_within > 0 else 0.0


@dataclass(frozen=True, eq=False)
class ResidualFit:
    """Residual log views and the fitted covariate model.

    coef: (1 + p,) intercept then age terms; channel_effects: (C,) per channel code (first
    appearance order, see `channel_codes`), None without channels; shrinkage: variance
    components in "pooled" mode, else None; channel_lambda: 0 in "fixed" mode, the estimated
    lambda in "pooled" mode, None without channels.
    """

    residuals: np.ndarray
    coef: np.ndarray
    channel_effects: np.ndarray | None = None
    shrinkage: ChannelShrinkage | None = None
    channel_lambda: float | None = None


def fit_residuals(
    log_views: np.ndarray,
    age: np.ndarray | None = None,
    channels: np.ndarray | None = None,
    *,
    quadratic: bool = True,
    channel_mode: ChannelMode = "pooled",
) -> ResidualFit:
    """Fit log views ~ 1 + age (+ age^2) + channel intercept; residuals are orthogonal to age.

    "pooled" (default) treats channels as random intercepts: lambda comes from method-of-
    moments variance components on the within-channel (fixed-effects) residuals, then the
    age terms and channel effects are estimated JOINTLY by exact GLS for that lambda (random-
    effects quasi-demeaning, no backfitting). Single-video channels, the bulk of real data,
    keep most of their own signal; big channels get (nearly) their whole mean removed.
    "fixed" is plain channel fixed effects (OLS on a one-hot design), which zeroes every
    single-video channel's residual.
    """
    _require(channel_mode in ("pooled", "fixed"), "channel_mode must be 'pooled' or 'fixed'")
    y = _finite_1d(log_views, "log_views")
    slopes = _age_terms(age, len(y), quadratic)  # (N, p)
    design = np.column_stack([np.ones(len(y)), slopes])  # (N, 1 + p)
    if channels is None:
        beta, *_ = np.linalg.lstsq(design, y, rcond=None)
        return ResidualFit(residuals=y - design @ beta, coef=beta)
    codes = channel_codes(channels, len(y))
    shrinkage = None
    lam = 0.0
    if channel_mode == "pooled":
        within = _within_residuals(y, slopes, codes)  # (N,)
        shrinkage = channel_variance_components(within, codes, p=slopes.shape[1])
        lam = shrinkage.shrinkage_lambda
    beta, effects, resid = _random_intercept_gls(y, design, codes, lam)
    return ResidualFit(resid, beta, effects, shrinkage, lam)


def residualize(
    log_views: np.ndarray,
    age: np.ndarray | None = None,
    channels: np.ndarray | None = None,
    *,
    quadratic: bool = True,
    channel_mode: ChannelMode = "pooled",
) -> np.ndarray:
    """Residual log views after age (linear + quadratic) and channel effects, (N,).

    See `fit_residuals`: channels are partially pooled by default; channel_mode="fixed"
    gives the exact one-hot OLS residuals.
    """
    fit = fit_residuals(log_views, age, channels, quadratic=quadratic, channel_mode=channel_mode)
    return fit.residuals


def channel_variance_components(
    values: np.ndarray, channels: np.ndarray, p: int = 0
) -> ChannelShrinkage:
    """Method-of-moments (one-way ANOVA) variance components of a channel intercept.

    `values` (N,) are log views minus slope effects estimated WITHIN channels (so channel
    effects correlated with age do not bias them; Amemiya 1971). sigma2_within is the pooled
    within-channel variance (only channels with >= 2 videos contribute; `p` slope df are
    spent). The channel means r_c have variance sigma2_between + sigma2_within / n_c, so the
    unweighted variance of the means minus sigma2_within * mean(1 / n_c) is unbiased for
    sigma2_between (clipped at 0) and is not dominated by a few huge channels.
    """
    v = _finite_1d(values, "values")
    codes = channel_codes(channels, len(v))
    counts = np.bincount(codes).astype(np.float64)  # (C,)
    n_ch, n_multi = len(counts), int((counts >= 2).sum())
    df_within = len(v) - n_ch - p
    if n_ch < 2 or n_multi == 0 or df_within <= 0:
        logger.warning(
            "channel effects cannot be estimated (%d channels, %d with >= 2 videos, %d "
            "within-channel degrees of freedom): views are not adjusted for channel",
            n_ch,
            n_multi,
            df_within,
        )
        return ChannelShrinkage(math.nan, math.nan, n_ch, n_multi, estimable=False)
    s2_w = float(np.sum(_demean(v, codes) ** 2) / df_within)
    means = np.bincount(codes, weights=v) / counts  # (C,)
    s2_b = max(0.0, float(np.var(means, ddof=1) - s2_w * np.mean(1.0 / counts)))
    return ChannelShrinkage(s2_w, s2_b, n_ch, n_multi)


def _age_terms(age: np.ndarray | None, n: int, quadratic: bool) -> np.ndarray:
    """[age, age^2] (or [age]) as (N, p); (N, 0) without age."""
    if age is None:
        return np.empty((n, 0))
    a = _finite_1d(age, "age", n)
    return np.column_stack([a, a**2] if quadratic else [a])


def _within_residuals(y: np.ndarray, slopes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """y minus slope effects from the within-channel (fixed-effects) fit, (N,)."""
    if slopes.shape[1] == 0:
        return y
    beta, *_ = np.linalg.lstsq(_demean(slopes, codes), _demean(y, codes), rcond=None)  # (p,)
    return y - slopes @ beta


def _random_intercept_gls(
    y: np.ndarray, design: np.ndarray, codes: np.ndarray, lam: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact GLS of a random-intercept model for a given lambda; returns (beta, u, resid).

    Quasi-demeaning by theta_c = 1 - sqrt(lambda / (n_c + lambda)) whitens the within-
    channel correlation, so OLS on the transformed data is GLS (lambda = 0: fixed effects;
    inf: pooled OLS). The channel effects are the BLUPs u_c = n_c / (n_c + lambda) *
    mean_c(y - X beta), and resid = y - X beta - u, which is orthogonal to every column of X.
    """
    counts = np.bincount(codes).astype(np.float64)  # (C,)
    if math.isinf(lam):
        theta, weight = np.zeros_like(counts), np.zeros_like(counts)
    else:
        theta = 1.0 - np.sqrt(lam / (counts + lam))
        weight = counts / (counts + lam)
    y_q = y - theta[codes] * _channel_means(y, codes, counts)
    x_q = design - theta[codes, None] * _channel_means(design, codes, counts)  # (N, 1 + p)
    beta, *_ = np.linalg.lstsq(x_q, y_q, rcond=None)  # (1 + p,)
    r = y - design @ beta  # (N,)
    effects = weight * np.bincount(codes, weights=r) / counts  # (C,)
    return beta, effects, r - effects[codes]


def _channel_means(x: np.ndarray, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Each row's channel mean of x, same shape as x ((N,) or (N, p))."""
    if x.ndim == 1:
        return (np.bincount(codes, weights=x) / counts)[codes]
    cols = [np.bincount(codes, weights=x[:, j]) / counts for j in range(x.shape[1])]
    return np.column_stack(cols)[codes] if cols else np.empty_like(x)


def adjust_views(
    views: np.ndarray,
    age: np.ndarray | None = None,
    channels: np.ndarray | None = None,
    *,
    channel_mode: ChannelMode = "pooled",
) -> np.ndarray:
    """Views with age/channel effects removed, back on a (positive) views scale, (N,).

    10 ** (residual + mean log10(1 + views)): what the video would have (plus one) at the
    average age and channel. Positive, so it drops into `run_study` in place of views.
    Logs the channel shrinkage lambda at INFO (see `fit_residuals`).
    """
    return adjust_views_fit(views, age, channels, channel_mode=channel_mode)[0]


def adjust_views_fit(
    views: np.ndarray,
    age: np.ndarray | None = None,
    channels: np.ndarray | None = None,
    *,
    channel_mode: ChannelMode = "pooled",
) -> tuple[np.ndarray, ResidualFit]:
    """`adjust_views` and the fit behind it (for reporting lambda and the age terms)."""
    log_v = np.log10(1.0 + check_views(views))
    fit = fit_residuals(log_v, age, channels, channel_mode=channel_mode)
    if fit.shrinkage is not None:
        s = fit.shrinkage
        logger.info(
            "channel partial pooling: %d channels (%d with >= 2 videos), sigma2_within=%.4g, "
            "sigma2_between=%.4g, lambda=%.4g",
            s.n_channels,
            s.n_multi_video,
            s.sigma2_within,
            s.sigma2_between,
            fit.channel_lambda,
        )
    return 10.0 ** (fit.residuals + log_v.mean()), fit


def upload_age_years(published_at: Any, reference: Any = None) -> np.ndarray:
    """Years between each publish time and `reference` (default: the latest publish time)."""
    t = pd.to_datetime(pd.Series(published_at), utc=True, errors="coerce", format="ISO8601")
    _require(not t.isna().any(), f"{int(t.isna().sum())} unparseable publish dates")
    ref = t.max() if reference is None else pd.Timestamp(reference, tz="UTC")
    return ((ref - t).dt.total_seconds() / (365.25 * 86400)).to_numpy(np.float64)


def channel_codes(channels: Any, n: int | None = None) -> np.ndarray:
    """Integer codes 0..C-1 for channel ids of any hashable type; missing ids are an error."""
    codes, _ = pd.factorize(pd.Series(np.asarray(channels, dtype=object)))
    _require(n is None or len(codes) == n, f"channels has {len(codes)} entries, expected {n}")
    _require(not (codes < 0).any(), f"{int((codes < 0).sum())} videos have no channel id")
    return codes


def _demean(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """x minus its channel means (the within transform), same shape as x."""
    return x - _channel_means(x, codes, np.bincount(codes).astype(np.float64))


def _finite_1d(x: Any, name: str, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    _require(a.ndim == 1, f"{name} must be 1-D")
    _require(n is None or len(a) == n, f"{name} has {len(a)} entries, expected {n}")
    _require(bool(np.isfinite(a).all()), f"{name} contains NaN/inf")
    return a


# ----------------------------------------------------------------------------- the study


@dataclass(frozen=True, eq=False)
class StudyResult:
    """Everything the study found; `summary()` is the JSON view.

    features: one row per qualifying latent, sorted by group statistic (highest first) with
      columns rank, latent_feature_index, group_<statistic>_views, ratio (group statistic /
      dataset statistic), n (group size), top_video (row of the held-out top-1 video),
      heldout_views, p (permutation p-value), q (BH over all qualifying latents), ci_low,
      ci_high (bootstrap CI, only for the table's top/bottom `n_extreme`, NaN elsewhere).
    random_stats: (n_random,) statistic of random groups, the KS null.
    ks_statistic, ks_pvalue: two-sample KS of feature statistics vs random_stats.
    heldout: the held-out top-1 test (HHM, LHM and their p-values).
    dataset_median: median views of all videos; dataset_statistic: the configured statistic
      of all videos (the ratio's denominator; equal to the median in the main study).
    """

    config: StudyConfig
    features: pd.DataFrame
    random_stats: np.ndarray
    ks_statistic: float
    ks_pvalue: float
    heldout: HeldoutResult
    dataset_median: float
    dataset_statistic: float
    n_videos: int
    n_latents: int

    @property
    def stat_column(self) -> str:
        return f"group_{self.config.statistic}_views"

    @property
    def hhm(self) -> float:
        return self.heldout.hhm

    @property
    def lhm(self) -> float:
        return self.heldout.lhm

    @property
    def p_hhm(self) -> float:
        return self.heldout.p_hhm

    @property
    def p_lhm(self) -> float:
        return self.heldout.p_lhm

    def table(self) -> pd.DataFrame:
        """The magnitude table: top and bottom `n_extreme` features, most extreme first."""
        k = min(self.config.n_extreme, len(self.features))
        cols = ["rank", "latent_feature_index", self.stat_column, "ratio", "n", "p", "q"]
        top = self.features.head(k)[cols + ["ci_low", "ci_high"]].assign(top_or_bottom="top")
        bottom = self.features.iloc[::-1].head(k)[cols + ["ci_low", "ci_high"]]
        bottom = bottom.assign(top_or_bottom="bottom")
        out = pd.concat([top, bottom], ignore_index=True)
        out["rank"] = np.r_[np.arange(1, k + 1), np.arange(1, k + 1)]
        return out[["top_or_bottom", *cols, "ci_low", "ci_high"]]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (NaN becomes None)."""
        q = self.features["q"].to_numpy()
        out = {
            "config": asdict(self.config),
            "n_videos": self.n_videos,
            "n_latents": self.n_latents,
            "n_qualifying": len(self.features),
            "dataset_median": self.dataset_median,
            "dataset_statistic": self.dataset_statistic,
            "ks_statistic": self.ks_statistic,
            "ks_pvalue": self.ks_pvalue,
            "n_random": len(self.random_stats),
            "heldout": asdict(self.heldout),
            "n_q_below_0.05": int((q < 0.05).sum()),
            "table": self.table().to_dict(orient="records"),
        }
        return json_safe(out)


def qualifying_latents(latents: Any, config: StudyConfig) -> np.ndarray:
    """Indices of latents with more than `min_active` of their top `top_k` above threshold.

    Among the top_k strongest, the count above threshold is min(top_k, count over all
    videos), so qualification needs only per-latent counts, not a sort.
    """
    return _qualifying(check_latents(latents), config)


def _qualifying(x: Any, config: StudyConfig) -> np.ndarray:
    counts = np.minimum(_active_counts(x, config.threshold), config.top_k)  # (L,)
    keep = np.flatnonzero(counts > config.min_active)
    if len(keep) == 0:
        best = np.argsort(-counts, kind="stable")[:5]
        raise StudyError(
            f"no latent qualifies: need more than {config.min_active} of the top "
            f"{config.top_k} activations above {config.threshold}; the closest latents "
            f"{best.tolist()} have {counts[best].tolist()}. Lower `threshold`, `min_active` "
            f"or `top_k`."
        )
    return keep


def run_study(latents: Any, views: Any, config: StudyConfig | None = None) -> StudyResult:
    """Run the whole study on latents (N, L) (dense or scipy.sparse) and views (N,).

    Every random draw comes from `config.seed` (independent streams for the null, the
    held-out null and the bootstrap), so a result is reproducible bit for bit, and dense
    and sparse latents give identical results.
    """
    cfg = config or StudyConfig()
    x = check_latents(latents)
    v = check_views(views, n_rows=x.shape[0], min_videos=cfg.top_k)
    cols, idx, group_stat, held = _ranked_groups(x, v, cfg)
    rng_null, rng_held, rng_boot = np.random.default_rng(cfg.seed).spawn(3)
    n_ks = cfg.n_random or len(cols)
    null = random_group_stats(v, cfg.group_size, max(n_ks, cfg.n_perm), rng_null, cfg.statistic)
    ks = sps.ks_2samp(group_stat, null[:n_ks])
    dataset_stat = float(reduce_rows(v.copy(), cfg.statistic))
    p = permutation_pvalues(group_stat, null[: cfg.n_perm], cfg.alternative)
    features = _feature_frame(cols, idx, group_stat, held, p, dataset_stat, cfg)
    features["ci_low"], features["ci_high"] = _table_cis(v, idx, cfg, rng_boot)
    return StudyResult(
        config=cfg,
        features=features,
        random_stats=null[:n_ks],
        ks_statistic=float(ks.statistic),
        ks_pvalue=float(ks.pvalue),
        heldout=_heldout(held, v, cfg, rng_held),
        dataset_median=float(np.median(v)),
        dataset_statistic=dataset_stat,
        n_videos=int(x.shape[0]),
        n_latents=int(x.shape[1]),
    )


def _feature_frame(
    cols: np.ndarray,
    idx: np.ndarray,
    group_stat: np.ndarray,
    held: np.ndarray,
    p: np.ndarray,
    dataset_stat: float,
    cfg: StudyConfig,
) -> pd.DataFrame:
    """The per-feature table (see `StudyResult.features`), rows already ranked."""
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(cols) + 1),
            "latent_feature_index": cols,
            f"group_{cfg.statistic}_views": group_stat,
            "ratio": group_stat / dataset_stat if dataset_stat > 0 else np.nan,
            "n": cfg.group_size,
            "top_video": idx[:, 0],
            "heldout_views": held[:, 0],
            "p": p,
            "q": bh_qvalues(p),
        }
    )


def _ranked_groups(
    x: Any, v: np.ndarray, cfg: StudyConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Qualifying latents, their top rows, group statistics and held-out views, ranked.

    Ranked by group statistic, highest first; equal statistics by latent index.
    Returns cols (F,), idx (F, top_k), group_stat (F,), held (F, hold_out).
    """
    cols = _qualifying(x, cfg)
    logger.info("%d of %d latents qualify", len(cols), x.shape[1])
    idx, _ = _top_activations(x, cfg.top_k, cols)  # (F, top_k)
    group_stat, held = group_statistics(v, idx, cfg.hold_out, cfg.statistic)
    order = np.lexsort((cols, -group_stat))
    return cols[order], idx[order], group_stat[order], held[order]


def _heldout(
    held: np.ndarray, views: np.ndarray, cfg: StudyConfig, rng: np.random.Generator
) -> HeldoutResult:
    """Held-out test on the `heldout_group` highest and lowest features (fewer if scarce)."""
    h = min(cfg.heldout_group, len(held) // 2)
    if h < cfg.heldout_group:
        logger.warning("only %d qualifying latents: held-out test uses %d per side", len(held), h)
    if h == 0:
        nan = float("nan")
        return HeldoutResult(nan, nan, nan, nan, nan, 0, 0, 0)
    return heldout_test(
        held[:h], held[-h:], views, cfg.n_null_heldout, rng, cfg.statistic, n_features=h
    )


def _table_cis(
    views: np.ndarray, idx: np.ndarray, cfg: StudyConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap CIs for the top and bottom `n_extreme` rows (idx sorted highest first)."""
    lo, hi = np.full(len(idx), np.nan), np.full(len(idx), np.nan)
    if cfg.n_boot == 0:
        return lo, hi
    k = min(cfg.n_extreme, len(idx))
    rows = np.unique(np.r_[np.arange(k), np.arange(len(idx) - k, len(idx))])
    lo[rows], hi[rows] = bootstrap_ci(
        views[idx[rows, cfg.hold_out :]], cfg.n_boot, cfg.ci, rng, cfg.statistic
    )
    return lo, hi


def run_by_channel(
    latents: Any,
    views: Any,
    channels: Any,
    selected: Sequence[Any],
    config: StudyConfig | None = None,
) -> dict[Any, StudyResult]:
    """Per-channel mode: `run_study` on the rows of each selected channel.

    Raises StudyError naming the channel when it is too small or has no qualifying latent.
    """
    cfg = config or channel_config()
    x = check_latents(latents)
    v = check_views(views, n_rows=x.shape[0])
    ch = np.asarray(channels, dtype=object)
    _require(len(ch) == len(v), f"channels has {len(ch)} entries, views has {len(v)}")
    results = {}
    for name in selected:
        rows = np.flatnonzero(ch == name)
        try:
            results[name] = run_study(x[rows], v[rows], cfg)
        except StudyError as e:
            raise StudyError(f"channel {name!r} ({len(rows)} videos): {e}") from e
    return results
