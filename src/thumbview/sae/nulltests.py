"""Null tests of the SAE study: is a feature's group unusual, compared with what chance gives?

Three nulls, each valid for what it tests:

- *Random groups* (`random_group_stats`): groups of random videos of the feature-group size;
  per-feature permutation p-values and Benjamini-Hochberg q-values against them. A single
  feature's group is a fixed set of rows, so under "views independent of latents" its
  statistic is distributed as a random group's: the per-feature p-value is valid.
- *View shuffles* (`shuffle_tests`): the omnibus KS test and the held-out test compare the
  observed study with the same study rerun on views shuffled across videos, selection
  included. Feature groups overlap (one video sits in many groups) and the held-out top-1s
  of different features are often the same video, so neither the feature medians nor the
  held-out views are independent draws: scipy's two-sample KS p-value and a null of
  independent random videos both assume they are, and reject far too often (a KS "p = 0"
  on pure noise). Shuffling views keeps every overlap and repeat and breaks only the link
  to views, so its p-value is exact at any dependence.
- *Split intervals* (`split_estimates`): each video falls at random into a selection half or
  an estimation half. The table's top/bottom rows are chosen on selection-half statistics
  and their intervals come from the estimation half only, so choosing the extremes cannot
  bias the interval (the plain bootstrap of a row picked *because* it is extreme covers its
  true value far less often than its nominal level).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from thumbview.sae import arrays
from thumbview.sae.arrays import Alternative, Statistic, reduce_rows, require, row_statistics


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

    Vectorised in row blocks of at most `CHUNK_ELEMS` draws. Group i uses the i-th run of
    `group_size` doubles from `rng.random`, exactly as a loop of `rng.random(group_size)`.
    """
    v = np.asarray(views, dtype=np.float64)
    require(group_size >= 1 and n >= 0, "group_size must be >= 1 and n >= 0")
    require(len(v) >= 1, "no videos to draw random groups from")
    out = np.empty(n)
    step = max(1, arrays.CHUNK_ELEMS // group_size)
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
    require(n >= 1, "empty null sample")
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
    require(pv.ndim == 1, "p must be 1-D")
    require(bool(((pv >= 0) & (pv <= 1)).all()), "p-values must lie in [0, 1] (no NaN)")
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

    All rows resample at once in blocks of at most `CHUNK_ELEMS` draws.
    """
    grp = np.asarray(groups, dtype=np.float64)
    require(grp.ndim == 2 and grp.shape[1] >= 1 and n_boot >= 1, "need groups (F, g>=1)")
    f, g = grp.shape
    lo, hi = np.empty(f), np.empty(f)
    step = max(1, arrays.CHUNK_ELEMS // (n_boot * g))
    alpha = (1.0 - ci) / 2
    for s in range(0, f, step):
        block = grp[s : s + step]  # (c, g)
        draws = _draw_rows(rng, g, (len(block), n_boot, g))  # (c, B, g)
        boot = reduce_rows(block[np.arange(len(block))[:, None, None], draws], statistic)
        lo[s : s + step], hi[s : s + step] = np.quantile(boot, [alpha, 1 - alpha], axis=1)
    return lo, hi


def draw_groups(rng: np.random.Generator, n_rows: int, n: int, group_size: int) -> np.ndarray:
    """Row indices of `n` random groups of `group_size` videos (with replacement), (n, g)."""
    return _draw_rows(rng, n_rows, (n, group_size))


# ------------------------------------------------------------------ view-shuffle tests


@dataclass(frozen=True)
class KsResult:
    """Omnibus test: do feature groups differ from random groups more than chance allows?

    statistic: two-sample KS distance D between the feature-group statistics and the
    random-group statistics; pvalue: share of view shuffles whose D is at least as large
    ((count + 1) / (n_shuffles + 1)), valid however much the feature groups overlap.
    """

    statistic: float
    pvalue: float
    n_shuffles: int


@dataclass(frozen=True)
class HeldoutResult:
    """Out-of-sample check on the held-out top videos of the most extreme features.

    The `n_features` highest (lowest) features' held-out videos are deduplicated: a video
    that is the top-1 of several features counts once (`n_videos_high`, `n_videos_low`
    distinct videos). hhm/lhm: their statistic. p_hhm = P(shuffled HHM >= hhm) and
    p_lhm = P(shuffled LHM <= lhm), from rerunning ranking, selection and deduplication on
    views shuffled across videos; null_high / null_low are the medians of those nulls.
    """

    hhm: float
    lhm: float
    p_hhm: float
    p_lhm: float
    null_high: float
    null_low: float
    n_features: int
    n_videos_high: int
    n_videos_low: int
    n_shuffles: int


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the two ECDFs."""
    a, b = np.sort(a), np.sort(b)
    at = np.concatenate([a, b])
    gap = np.searchsorted(a, at, side="right") / len(a) - np.searchsorted(
        b, at, side="right"
    ) / len(b)
    return float(np.abs(gap).max())


@dataclass(frozen=True, eq=False)
class StudyGroups:
    """The fixed part of the study that view shuffles keep: which rows form each group.

    groups (F, g): each feature's group rows; held (F, h): its held-out rows; tiebreak (F,):
    the ranking's tie-break key (latent index); random (R, g): the KS random groups' rows;
    n_side: features per side in the held-out test.
    """

    groups: np.ndarray
    held: np.ndarray
    tiebreak: np.ndarray
    random: np.ndarray
    n_side: int


def _shuffle_statistics(
    views: np.ndarray, sg: StudyGroups, statistic: Statistic
) -> tuple[float, float, float]:
    """(KS D, HHM, LHM) of one assignment of views to videos."""
    feat = row_statistics(views, sg.groups, statistic)  # (F,)
    d = ks_distance(feat, row_statistics(views, sg.random, statistic))
    if sg.n_side == 0:
        return d, np.nan, np.nan
    order = np.lexsort((sg.tiebreak, -feat))  # highest first, ties by latent index
    high = np.unique(sg.held[order[: sg.n_side]])  # distinct held-out videos
    low = np.unique(sg.held[order[-sg.n_side :]])
    hhm = float(reduce_rows(views[high], statistic))
    return d, hhm, float(reduce_rows(views[low], statistic))


def shuffle_tests(
    views: np.ndarray,
    sg: StudyGroups,
    n_shuffles: int,
    rng: np.random.Generator,
    statistic: Statistic = "median",
) -> tuple[KsResult, HeldoutResult]:
    """The KS and held-out tests against `n_shuffles` reruns on shuffled views.

    Each shuffle permutes views across videos (latents, and so every group, stay put) and
    recomputes all feature statistics, the ranking, the held-out selection and the KS
    distance, so the null reproduces every dependence of the observed statistics.
    """
    v = np.asarray(views, dtype=np.float64)
    require(n_shuffles >= 1, "n_shuffles must be >= 1")
    obs = _shuffle_statistics(v, sg, statistic)
    null = np.array(
        [_shuffle_statistics(v[rng.permutation(len(v))], sg, statistic) for _ in range(n_shuffles)]
    )  # (B, 3)
    ks = KsResult(obs[0], _upper_p(null[:, 0], obs[0]), n_shuffles)
    held = HeldoutResult(
        hhm=obs[1],
        lhm=obs[2],
        p_hhm=_upper_p(null[:, 1], obs[1]),
        p_lhm=_upper_p(-null[:, 2], -obs[2]),
        null_high=float(np.median(null[:, 1])),
        null_low=float(np.median(null[:, 2])),
        n_features=sg.n_side,
        n_videos_high=len(np.unique(sg.held[: sg.n_side])) if sg.n_side else 0,
        n_videos_low=len(np.unique(sg.held[len(sg.held) - sg.n_side :])) if sg.n_side else 0,
        n_shuffles=n_shuffles,
    )
    return ks, held


def _upper_p(null: np.ndarray, observed: float) -> float:
    """(1 + #{null >= observed}) / (1 + n): never 0, exact for exchangeable draws."""
    if not np.isfinite(observed):
        return float("nan")
    return float((1 + np.sum(null >= observed)) / (1 + len(null)))


# ---------------------------------------------------------------- split estimates


def masked_row_statistics(
    values: np.ndarray, rows: np.ndarray, keep: np.ndarray, statistic: Statistic
) -> tuple[np.ndarray, np.ndarray]:
    """Statistic of each row's kept entries: values[rows] where keep[rows], (F,) and counts (F,).

    Rows have different numbers of kept entries: dropped ones become NaN, which np.sort
    puts last, so the median of the m kept values sits at positions (m-1)//2 and m//2.
    A row with nothing kept gives NaN.
    """
    x = np.where(keep[rows], values[rows], np.nan)  # (F, g)
    m = keep[rows].sum(axis=1)  # (F,)
    with np.errstate(invalid="ignore", divide="ignore"):
        if statistic == "mean":
            return np.nansum(x, axis=1) / np.where(m > 0, m, np.nan), m
        x.sort(axis=1)
        lo = np.take_along_axis(x, np.maximum(m - 1, 0)[:, None] // 2, axis=1)[:, 0]
        hi = np.take_along_axis(x, (m // 2)[:, None], axis=1)[:, 0]
    return np.where(m > 0, 0.5 * (lo + hi), np.nan), m


def split_cis(
    values: np.ndarray,
    rows: np.ndarray,
    keep: np.ndarray,
    n_boot: int,
    ci: float,
    rng: np.random.Generator,
    statistic: Statistic = "median",
) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap CI of each row's statistic over its kept (estimation-half) entries only.

    rows (T, g) are the table's few rows, so a loop over them costs T bootstrap calls.
    """
    lo, hi = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for i, r in enumerate(rows):
        members = values[r[keep[r]]]  # (m,)
        if len(members):
            (lo[i],), (hi[i],) = bootstrap_ci(members[None], n_boot, ci, rng, statistic)
    return lo, hi
