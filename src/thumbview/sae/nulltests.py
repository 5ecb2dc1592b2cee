"""Null tests of the SAE study: is a feature's group unusual, compared with what chance gives?

Three nulls, each valid for what it tests:

- *Random groups* (`random_group_stats`): groups of random distinct videos of the
  feature-group size; per-feature permutation p-values and Benjamini-Hochberg q-values
  against them. A single feature's group is a fixed set of distinct rows, so under "views
  independent of latents" its statistic is distributed as a random group's: the
  per-feature p-value is exact up to the Monte Carlo error of the null sample.
- *View shuffles* (`shuffle_tests`): the two omnibus tests (KS and max-z) and the held-out
  test compare the observed study with the same study rerun on views shuffled across
  videos, selection included. Feature groups overlap (one video sits in many groups) and
  the held-out top-1s of different features are often the same video, so neither the
  feature medians nor the held-out views are independent draws: scipy's two-sample KS
  p-value and a null of independent random videos both assume they are, and reject far too
  often (a KS "p = 0" on pure noise). Shuffling views keeps every overlap and repeat and
  breaks only the link to views, so its p-value is exact at any dependence. The KS test
  looks at the whole distribution of feature statistics and so sees many small shifts but
  not a few strong features among thousands; the max-z test looks at the most extreme
  feature only and so sees a few strong features but not many small shifts.
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


def _draw_rows(
    rng: np.random.Generator, n_rows: int, size: tuple[int, ...], dtype: type = np.intp
) -> np.ndarray:
    """Uniform row indices with replacement from uniform doubles.

    Unlike rng.integers (which buffers 32-bit halves per call), the stream of rng.random is
    the same however the draws are chunked, so chunked and one-at-a-time loops agree exactly.
    """
    idx = (rng.random(size) * n_rows).astype(dtype)
    return np.minimum(idx, n_rows - 1, out=idx)


def random_group_stats(
    views: np.ndarray,
    group_size: int,
    n: int,
    rng: np.random.Generator,
    statistic: Statistic = "median",
) -> np.ndarray:
    """Statistic of `n` groups of `group_size` random distinct videos, (n,).

    Vectorised in row blocks of at most `CHUNK_ELEMS` draws (`draw_groups`).
    """
    v = np.asarray(views, dtype=np.float64)
    require(group_size >= 1 and n >= 0, "group_size must be >= 1 and n >= 0")
    require(len(v) >= 1, "no videos to draw random groups from")
    out = np.empty(n)
    step = max(1, arrays.CHUNK_ELEMS // group_size)
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s : s + m] = reduce_rows(v[draw_groups(rng, len(v), m, group_size)], statistic)
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
    """Row indices of `n` random groups of `group_size` distinct videos, (n, g).

    A feature's group holds distinct videos, so its null must too: groups drawn with
    replacement spread the null of a median or mean wider by about sqrt((N - 1) / (N - g)),
    which makes per-feature p-values conservative where a group is a large share of the
    videos (x1.41 at g = N / 2). Where groups are small (4 g <= N) draws with replacement
    are kept and repeated videos redrawn; otherwise each group takes the g smallest of N
    random keys (N random numbers a group, cheaper there than many rounds of redraws).
    Neither depends on how videos are numbered, so both pick every set of g distinct videos
    with the same probability. Rows within a group come in no set order.
    """
    require(1 <= group_size <= n_rows, f"groups of {group_size} need that many of {n_rows} videos")
    by_keys = 4 * group_size > n_rows
    small = np.int32 if n_rows < 2**31 else np.intp
    step = max(1, arrays.CHUNK_ELEMS // (n_rows if by_keys else group_size))
    out = np.empty((n, group_size), np.intp)
    for s in range(0, n, step):
        m = min(step, n - s)
        if by_keys:
            keys = rng.random((m, n_rows))  # (m, N)
            out[s : s + m] = np.argpartition(keys, group_size - 1, axis=1)[:, :group_size]
        else:
            idx = _draw_rows(rng, n_rows, (m, group_size), small)  # int32: sorts ~1.6x faster
            out[s : s + m] = _redraw_repeats(rng, n_rows, idx)
    return out


def _redraw_repeats(rng: np.random.Generator, n_rows: int, idx: np.ndarray) -> np.ndarray:
    """Redraw every repeated row of each group (m, g) until each group's rows are distinct.

    Groups are sorted in place (repeats become neighbours); later rounds touch only the
    groups that still had a repeat, and with 4 g <= N a redraw repeats with probability
    below 1/4, so the rounds end quickly. Each group comes back sorted.
    """
    idx.sort(axis=1)
    todo = np.flatnonzero((idx[:, 1:] == idx[:, :-1]).any(axis=1))
    while len(todo):
        block = idx[todo]  # (t, g), sorted
        repeat = np.zeros(block.shape, bool)
        repeat[:, 1:] = block[:, 1:] == block[:, :-1]
        block[repeat] = _draw_rows(rng, n_rows, (int(repeat.sum()),))
        block.sort(axis=1)
        idx[todo] = block
        todo = todo[(block[:, 1:] == block[:, :-1]).any(axis=1)]
    return idx


# ------------------------------------------------------------------ view-shuffle tests

# Fewer distinct held-out videos than this on either side: the held-out test rests on a
# handful of videos (the top-1s of many features are the same few), and the study says so.
MIN_HELDOUT_VIDEOS = 10


@dataclass(frozen=True)
class KsResult:
    """Omnibus test: do feature groups differ from random groups more than chance allows?

    statistic: two-sample KS distance D between the feature-group statistics and the
    random-group statistics; pvalue: share of view shuffles whose D is at least as large
    ((count + 1) / (n_shuffles + 1)), valid however much the feature groups overlap.
    D moves when many features shift a little (dense, weak effects); a few strong features
    among thousands move the ECDF by a few thousandths and go unseen: see `MaxZResult`.
    """

    statistic: float
    pvalue: float
    n_shuffles: int


@dataclass(frozen=True)
class MaxZResult:
    """Omnibus test for a few strong features: is the most extreme feature beyond chance?

    statistic: the largest |z| over features (z for the alternative "greater", -z for
    "less"), z = (feature-group statistic - mean of the random groups' statistics) / their
    standard deviation; latent: the feature that attains it. pvalue: share of view shuffles
    whose largest |z| is at least as large ((count + 1) / (n_shuffles + 1)). The random
    groups are recomputed on each shuffle, so the statistic is a function of the shuffled
    views alone and the p-value is exact however the groups overlap. One strong feature is
    enough to reject; many small shifts, none extreme, are not (that is the KS test's case).
    """

    statistic: float
    pvalue: float
    latent: int
    n_shuffles: int


@dataclass(frozen=True)
class HeldoutResult:
    """Out-of-sample check on the held-out top videos of the most extreme features.

    The `n_features` highest (lowest) features' held-out videos are deduplicated: a video
    that is the top-1 of several features counts once (`n_videos_high`, `n_videos_low`
    distinct videos). hhm/lhm: their statistic. p_hhm = P(shuffled HHM >= hhm) and
    p_lhm = P(shuffled LHM <= lhm), from rerunning ranking, selection and deduplication on
    views shuffled across videos; null_high / null_low are the medians of those nulls.
    Reading either tail below 0.05 as a finding is two tests (6.5-8.5% false positives in
    docs/SAE.md's calibration); p_combined is one: the smaller tail's p-value calibrated on the same
    shuffles, P(min(p_hhm*, p_lhm*) <= min(p_hhm, p_lhm)), between min and 2 x min.
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
    p_combined: float

    @property
    def few_videos(self) -> bool:
        """True when either side has fewer than `MIN_HELDOUT_VIDEOS` distinct videos."""
        return self.n_features > 0 and min(self.n_videos_high, self.n_videos_low) < (
            MIN_HELDOUT_VIDEOS
        )

    def warning(self) -> str | None:
        """A sentence for the report when the test rests on a handful of videos, else None."""
        if not self.few_videos:
            return None
        return (
            f"The held-out test rests on {self.n_videos_high} (high) and {self.n_videos_low} "
            f"(low) distinct videos, the held-out top videos of {self.n_features} features "
            f"per side, so it can see only very large effects and its p-values are coarse. "
            f"Read a large p as 'too few videos', not as 'no effect'."
        )


@dataclass(frozen=True)
class ShuffleTests:
    """The three view-shuffle tests of one study."""

    ks: KsResult
    max_z: MaxZResult
    heldout: HeldoutResult


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance: the largest gap between the two ECDFs."""
    a, b = np.sort(a), np.sort(b)
    at = np.concatenate([a, b])
    gap = np.searchsorted(a, at, side="right") / len(a) - np.searchsorted(
        b, at, side="right"
    ) / len(b)
    return float(np.abs(gap).max())


def extremeness(
    feature_stats: np.ndarray, random_stats: np.ndarray, alternative: Alternative
) -> np.ndarray:
    """Each feature's z against the random groups, signed by the alternative, (F,).

    |z| for two-sided, z for "greater", -z for "less"; NaN where random groups do not vary.
    """
    sd = float(np.std(random_stats))
    if not sd > 0:
        return np.full(len(feature_stats), np.nan)
    z = (feature_stats - np.mean(random_stats)) / sd  # (F,)
    return np.abs(z) if alternative == "two-sided" else (z if alternative == "greater" else -z)


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
    views: np.ndarray, sg: StudyGroups, statistic: Statistic, alternative: Alternative
) -> tuple[np.ndarray, int]:
    """[KS D, max z, HHM, LHM] of one assignment of views to videos, and the max-z feature."""
    feat = row_statistics(views, sg.groups, statistic)  # (F,)
    rand = row_statistics(views, sg.random, statistic)  # (R,)
    score = extremeness(feat, rand, alternative)  # (F,)
    top = int(np.nanargmax(score)) if np.isfinite(score).any() else 0
    out = np.array([ks_distance(feat, rand), score[top], np.nan, np.nan])
    if sg.n_side:
        order = np.lexsort((sg.tiebreak, -feat))  # highest first, ties by latent index
        high = np.unique(sg.held[order[: sg.n_side]])  # distinct held-out videos
        low = np.unique(sg.held[order[-sg.n_side :]])
        out[2:] = reduce_rows(views[high], statistic), reduce_rows(views[low], statistic)
    return out, top


def shuffle_tests(
    views: np.ndarray,
    sg: StudyGroups,
    n_shuffles: int,
    rng: np.random.Generator,
    statistic: Statistic = "median",
    alternative: Alternative = "two-sided",
) -> ShuffleTests:
    """The KS, max-z and held-out tests against `n_shuffles` reruns on shuffled views.

    Each shuffle permutes views across videos (latents, and so every group, stay put) and
    recomputes all feature statistics, the random groups', the ranking, the held-out
    selection and both omnibus statistics, so the null reproduces every dependence of the
    observed statistics.
    """
    v = np.asarray(views, dtype=np.float64)
    require(n_shuffles >= 1, "n_shuffles must be >= 1")
    obs, top = _shuffle_statistics(v, sg, statistic, alternative)
    null = np.array(
        [
            _shuffle_statistics(v[rng.permutation(len(v))], sg, statistic, alternative)[0]
            for _ in range(n_shuffles)
        ]
    )  # (B, 4)
    ks = KsResult(obs[0], _upper_p(null[:, 0], obs[0]), n_shuffles)
    max_z = MaxZResult(obs[1], _upper_p(null[:, 1], obs[1]), int(sg.tiebreak[top]), n_shuffles)
    return ShuffleTests(ks, max_z, _heldout_result(obs, null, sg, n_shuffles))


def _heldout_result(
    obs: np.ndarray, null: np.ndarray, sg: StudyGroups, n_shuffles: int
) -> HeldoutResult:
    """The held-out test from the observed [.., HHM, LHM] (4,) and the shuffles' (B, 4)."""
    return HeldoutResult(
        hhm=obs[2],
        lhm=obs[3],
        p_hhm=_upper_p(null[:, 2], obs[2]),
        p_lhm=_upper_p(-null[:, 3], -obs[3]),
        null_high=float(np.median(null[:, 2])),
        null_low=float(np.median(null[:, 3])),
        n_features=sg.n_side,
        n_videos_high=len(np.unique(sg.held[: sg.n_side])) if sg.n_side else 0,
        n_videos_low=len(np.unique(sg.held[len(sg.held) - sg.n_side :])) if sg.n_side else 0,
        n_shuffles=n_shuffles,
        p_combined=min_tail_pvalue(np.r_[obs[2], null[:, 2]], np.r_[obs[3], null[:, 3]]),
    )


def min_tail_pvalue(high: np.ndarray, low: np.ndarray) -> float:
    """One p-value for "either tail": the smaller tail's p, calibrated on the same draws.

    high, low (B+1,): the observed statistic first, then the shuffles'. Every draw k gets
    its tail p-values among all B+1 (P(high >= high_k), P(low <= low_k)); the result is the
    share of draws whose smaller tail is at most the observed one's. The observed study is
    exchangeable with the shuffles under the null, so this is exact, as `_upper_p` is.
    """
    if not (np.isfinite(high[0]) and np.isfinite(low[0])):
        return float("nan")
    n = len(high)
    p_high = (n - np.searchsorted(np.sort(high), high, side="left")) / n  # (B+1,)
    p_low = np.searchsorted(np.sort(low), low, side="right") / n  # (B+1,)
    smaller = np.minimum(p_high, p_low)
    return float(np.mean(smaller <= smaller[0]))


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
