"""Covariate control of the SAE study: views with upload age and channel effects removed.

Older videos have had longer to collect views, and a channel's audience lifts all its
videos; a latent that merely marks a big channel's style (or an era) would look like a
view-raising feature. `adjust_views` removes age (linear + quadratic) and a channel intercept
from log views before grouping. Channels are partially pooled (a random intercept), because
in real datasets about half the videos are alone in their channel: fixed effects would set
every lone video's residual to 0 and erase the signal with the confound.

What the data cannot do, this module says: a lone video's channel effect cannot be told
apart from the video's own, so only n / (n + lambda) of a channel's effect is removed from a
channel of n videos. `ChannelIdentifiability` reports how much that is on the data at hand,
and flags the control as weak when most of a channel effect would stay in the views.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from thumbview.predict.target import channel_codes
from thumbview.sae.arrays import StudyError, finite_1d, require
from thumbview.sae.selection import check_views

logger = logging.getLogger(__name__)

ChannelMode = Literal["pooled", "fixed"]
# The control is flagged weak when fewer than this share of videos share their channel with
# another video (a lone video's channel effect cannot be told from its own) ...
WEAK_MULTI_SHARE = 0.8
# ... or when, in multi-video channels, less than this share of a channel effect is removed.
WEAK_REMOVED_SHARE = 0.5


def study_channel_codes(channels: Any, n: int) -> np.ndarray:
    """Channel codes 0..C-1 for the covariate model, (N,).

    One rule for missing ids, shared with the predictor (`predict.target.channel_codes`:
    None, NaN and "" are missing). Here a video without a channel id is its own channel of
    one: its channel effect is unknown, so partial pooling removes only 1 / (1 + lambda)
    of it instead of guessing a channel or dropping the video.
    """
    try:
        codes = channel_codes(channels, n)
    except ValueError as e:
        raise StudyError(str(e)) from e
    missing = codes < 0
    if missing.any():
        logger.warning(
            "%d videos have no channel id; each is treated as a channel of its own",
            int(missing.sum()),
        )
        codes = codes.copy()
        codes[missing] = codes.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    return codes


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
    lambda in "pooled" mode, None without channels; identifiability: how much of a channel
    effect that lambda removes on this data (None without channels).
    """

    residuals: np.ndarray
    coef: np.ndarray
    channel_effects: np.ndarray | None = None
    shrinkage: ChannelShrinkage | None = None
    channel_lambda: float | None = None
    identifiability: ChannelIdentifiability | None = None


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
    require(channel_mode in ("pooled", "fixed"), "channel_mode must be 'pooled' or 'fixed'")
    y = finite_1d(log_views, "log_views")
    slopes = _age_terms(age, len(y), quadratic)  # (N, p)
    design = np.column_stack([np.ones(len(y)), slopes])  # (N, 1 + p)
    if channels is None:
        beta, *_ = np.linalg.lstsq(design, y, rcond=None)
        return ResidualFit(residuals=y - design @ beta, coef=beta)
    codes = study_channel_codes(channels, len(y))
    shrinkage = None
    lam = 0.0
    if channel_mode == "pooled":
        within = _within_residuals(y, slopes, codes)  # (N,)
        shrinkage = channel_variance_components(within, codes, p=slopes.shape[1])
        lam = shrinkage.shrinkage_lambda
    beta, effects, resid = _random_intercept_gls(y, design, codes, lam)
    return ResidualFit(resid, beta, effects, shrinkage, lam, channel_identifiability(codes, lam))


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
    v = finite_1d(values, "values")
    codes = study_channel_codes(channels, len(v))
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
    a = finite_1d(age, "age", n)
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
    if fit.identifiability is not None:
        ident = fit.identifiability
        (logger.warning if ident.weak else logger.info)("channel control: %s", ident.message)
    return 10.0 ** (fit.residuals + log_v.mean()), fit


def upload_age_years(published_at: Any, reference: Any = None) -> np.ndarray:
    """Years between each publish time and `reference` (default: the latest publish time)."""
    t = pd.to_datetime(pd.Series(published_at), utc=True, errors="coerce", format="ISO8601")
    require(not t.isna().any(), f"{int(t.isna().sum())} unparseable publish dates")
    ref = t.max() if reference is None else pd.Timestamp(reference, tz="UTC")
    return ((ref - t).dt.total_seconds() / (365.25 * 86400)).to_numpy(np.float64)


def _demean(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """x minus its channel means (the within transform), same shape as x."""
    return x - _channel_means(x, codes, np.bincount(codes).astype(np.float64))


@dataclass(frozen=True)
class ChannelIdentifiability:
    """How well the data can separate a channel's effect from its videos' own.

    share_multi_video: share of videos whose channel has >= 2 videos in the data. For a
    lone video the channel effect and the video's own effect are one number: shrinkage
    scales both by the same factor, which keeps the lone videos' order, so a latent that
    marks high-view channels among them keeps its high group views after the control.
    effective_n: within-channel degrees of freedom (videos minus channels), the
    observations that inform the channel effects. removed_share: mean over videos in
    multi-video channels of n_c / (n_c + lambda), the share of its channel's effect the
    control removes there (1 = fixed effects). weak: share_multi_video below
    `WEAK_MULTI_SHARE` or removed_share below `WEAK_REMOVED_SHARE`.
    """

    n_videos: int
    n_channels: int
    n_multi_video_channels: int
    share_multi_video: float
    effective_n: int
    removed_share: float
    weak: bool

    @property
    def message(self) -> str:
        """One sentence for people: what the channel control can and cannot do here."""
        what = (
            f"{self.share_multi_video:.0%} of videos share their channel with another video "
            f"(effective sample size {self.effective_n:,}); in those channels the control "
            f"removes on average {self.removed_share:.0%} of a channel's effect"
        )
        if not self.weak:
            return what + "."
        return (
            what + ". It is WEAK here: a lone video's channel effect cannot be told apart "
            "from its own, so features that merely mark high- or low-view channels can "
            "survive it; a null result after --control channel does not rule out a channel "
            "confound, and a positive one may still be one."
        )


def channel_identifiability(codes: np.ndarray, lam: float) -> ChannelIdentifiability:
    """`ChannelIdentifiability` of channel codes (N,) under shrinkage `lam` (inf = none)."""
    counts = np.bincount(codes).astype(np.float64)  # (C,)
    per_video = counts[codes]  # (N,)
    multi = per_video >= 2
    removed = np.zeros_like(per_video) if math.isinf(lam) else per_video / (per_video + lam)
    share_multi = float(multi.mean()) if len(codes) else 0.0
    removed_share = float(removed[multi].mean()) if multi.any() else 0.0
    return ChannelIdentifiability(
        n_videos=len(codes),
        n_channels=len(counts),
        n_multi_video_channels=int((counts >= 2).sum()),
        share_multi_video=share_multi,
        effective_n=int(len(codes) - len(counts)),
        removed_share=removed_share,
        weak=share_multi < WEAK_MULTI_SHARE or removed_share < WEAK_REMOVED_SHARE,
    )
