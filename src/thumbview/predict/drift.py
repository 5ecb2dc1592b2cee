"""Say when data lies outside what the model was trained on, and in which feature.

A model trained on videos with 1K-11K views has never seen a video with millions: its
errors, and its intervals, say nothing about them (such a model's 80% interval covered 1.5%
of them). The same holds for every input: a ridge trained with one input in [-1, 1] and
scored with it in [-3, 3] has intervals that cover 55% instead of 80%. The model folder
therefore records the training distribution of its target (quantiles) and of each feature
block (`training_range.json`), and evaluation, prediction, comparison, the web page and the
bot's reward all ask `TrainingRange.check` and get one `DriftReport`.

The check gives every row one novelty score with a stated false-alarm rate (`Novelty`,
files from issue 29 on). Each block contributes five statistics, so no direction is blind:

- every column on its own, as a normal score (training quantiles in the body, Pareto tails
  beyond, and past the largest value a tail as steep as the top values are crowded, so a
  date or a bounded input is sharp at its edge and a heavy-tailed count is not loud);
- the block's whitened main directions (up to 64; each coordinate as a normal score too),
  the whitened distance within them and the distance off them, for shifts along any
  direction of an embedding and for combinations of columns each inside its own range
  (x2 = x1 in training, x2 = -x1 now);
- the row's coordinate along the block's predictive direction (a ridge of the target on
  the whitened coordinates): a shift along what the views depend on breaks intervals
  first, even when it is one of hundreds of quiet directions.

Beside the blocks, the model's own prediction is one more column (`PREDICTED`, from the
out-of-fold predictions of the training rows; `TrainingRange.fit(predicted=...)`): a row
the model extrapolates on, its prediction beyond those it made for its training rows, is
where its intervals fail, whichever of hundreds of directions moved it. A block's own
predictive direction, fitted on a part of the rows, sees such a shift only blurred (the
40th of 384 directions: unflagged coverage 0.70 at noise sd 0.5 without it). The
prediction gets half of alpha, the other statistics share the rest (`Novelty.scores`).

The statistics are fitted on one part of the training rows, their distributions measured
on a second (rows the fit never saw, as new rows are), so each becomes a normal score and
they weigh alike; a row's score is the largest. The third part calibrates it (split
conformal): a row is flagged when its score exceeds all but alpha (1%) of the calibration
rows', so a row like the training rows is flagged with probability at most alpha whatever
the number of columns or rows. With fewer than MIN_NOVELTY_ROWS training rows (too few
calibration rows for 1%, and too few to measure the statistics' tails) the per-feature
ranges below are fitted instead. The parts
hold whole channels when channels are known. An evaluation warns when its share of flagged
rows is improbable under that rate (a beta-binomial tail below WARN_LEVEL), not at a fixed
share; a prediction warns on any flagged row. A flagged row names what it is most extreme
on: a column in its own units ("publication year 2019-2020 is outside the training years
2012-2015"), a dimension or direction of an embedding, or the two columns whose
combination is new.

The arrays (a 2,280-wide block's directions alone are 146K numbers) are stored in
safetensors beside the JSON (`NOVELTY_FILE`), read through the same checked loader.
Measured by simulation in `benchmarks/drift_calibration.py` (BENCHMARKS.md). Files written
before keep their checks: per-feature ranges (issue 22: each narrow column beyond its
widened 0.5-99.5% range and everything training saw, embeddings along 16 main directions;
an evaluation warns above MAX_SHARE) or, older still, the whole-block distance.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import special, stats

from thumbview.embed.context import FEATURES as CONTEXT_FEATURES
from thumbview.fileio import atomic_write
from thumbview.units import format_count, format_days, format_factor, format_number, format_views

RANGE_FILE = "training_range.json"
RANGE_FORMAT = 2  # 2: every block has per-column ranges (files without "format" are older)
TARGET_LEVELS = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)
FAR = 2.0  # old files: x the training rows' 99th-percentile whole-block distance
VIEWS_SLACK = 0.5  # log10 units beyond the training 1-99% range (about 3x) before warning
MAX_SHARE = 0.05  # views, and old files' features: an evaluation warns above this share
NARROW = 64  # blocks up to this width have named columns (embeddings: "dimension j")
RANGE_LEVELS = (0.005, 0.995)  # the central training range a column is measured by
MARGIN = 0.25  # x that range's width, added on both sides (calibrated by simulation)
DIRECTIONS = 16  # main directions of an embedding block (at most; n/10 for small sets)
MIN_SPLIT = 40  # training rows below which directions and ranges share the same rows
SHOWN = 3  # features named in one message
WITHIN = "distance within the main directions"
DISTANCE = "distance from the main directions"
PREDICTIVE = "the direction that predicts views"
PREDICTED = "prediction"  # the block of the model's own prediction (`TrainingRange.fit`)
PREDICTED_NAMES = {"log10": "predicted views", "channel-relative": "predicted channel multiple"}
# Context columns that people read in other units than the encoder's (log10 counts, years)
UNITS = dict(
    zip(
        CONTEXT_FEATURES,
        ("age", "year", None, None, None, None, "subscribers", "videos"),
        strict=True,
    )
) | {"predicted views": "views", "predicted channel multiple": "multiple"}
LABELS = {  # unit: (what the feature is called, what its training range is called)
    "age": ("upload age", "ages"),
    "year": ("publication year", "years"),
    "subscribers": ("channel subscribers", "range"),
    "videos": ("channel videos in the dataset", "range"),
    "views": ("the predicted views", "predictions"),
    "multiple": ("the predicted multiple of the channel's usual views", "predictions"),
}


@dataclass(frozen=True)
class ColumnRange:
    """Where one column (or embedding coordinate) may lie: [low, high], None = unbounded.

    seen: the training minimum and maximum, which messages quote.
    """

    name: str
    low: float | None
    high: float | None
    seen: tuple[float, float]


@dataclass(frozen=True)
class BlockRange:
    """One feature block on the training rows: column mean and sd, the old whole-block 99%
    distance, and the per-column ranges (narrow blocks) or the main directions and the
    ranges along them (embedding blocks; `basis` (k, D) on the standardised columns).
    Files from before per-column ranges have no `columns`."""

    mean: tuple[float, ...]
    sd: tuple[float, ...]
    q99_distance: float
    columns: tuple[ColumnRange, ...] = ()
    basis: tuple[tuple[float, ...], ...] = ()

    @classmethod
    def fit(cls, X: np.ndarray, names=None, groups=None, seed: int = 0) -> BlockRange:
        X = np.asarray(X, dtype=np.float64)  # (N, D)
        mean, sd = X.mean(axis=0), X.std(axis=0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        q99 = float(np.quantile(_distance(X, mean, sd), 0.99))
        if X.shape[1] <= NARROW:
            names = list(names) if names is not None and len(names) == X.shape[1] else None
            names = names or [f"column {i + 1}" for i in range(X.shape[1])]
            return cls(tuple(mean), tuple(sd), q99, column_ranges(X, names))
        fit_rows, range_rows = halves(len(X), groups, seed)
        Z = (X - mean) / sd  # (N, D)
        basis = main_directions(Z[fit_rows])  # (k, D), whitened
        k = len(basis)
        names = [f"main direction {j + 1} of {k}" for j in range(k)] + [WITHIN, DISTANCE]
        columns = column_ranges(project(Z[range_rows], basis), names, one_sided=(k, k + 1))
        return cls(tuple(mean), tuple(sd), q99, columns, tuple(map(tuple, basis)))

    @functools.cached_property
    def arrays(self) -> dict[str, np.ndarray]:
        """The fields as arrays, built once: mean, sd (D,), basis (k, D), low, high (C,)."""
        return {
            "mean": np.array(self.mean),
            "sd": np.array(self.sd),
            "basis": np.array(self.basis),
            "low": np.array([-np.inf if c.low is None else c.low for c in self.columns]),
            "high": np.array([np.inf if c.high is None else c.high for c in self.columns]),
        }

    def coordinates(self, X: np.ndarray) -> np.ndarray:
        """(N, C): the columns themselves, or the coordinates along the main directions."""
        X = np.asarray(X, dtype=np.float64)
        if not self.basis:
            return X
        a = self.arrays
        return project((X - a["mean"]) / a["sd"], a["basis"])

    def distance(self, X: np.ndarray) -> np.ndarray:
        """(N,) the old whole-block distance: RMS of the standardised columns."""
        return _distance(np.asarray(X, np.float64), self.arrays["mean"], self.arrays["sd"])

    def outside(self, X: np.ndarray) -> np.ndarray:
        """(N, C) True where a row's column (or coordinate) lies outside its range; old files:
        (N, 1), the whole-block distance beyond FAR x its training 99th percentile."""
        if not self.columns:
            return (self.distance(X) > FAR * max(self.q99_distance, 1e-12))[:, None]
        values = self.coordinates(X)  # (N, C)
        return (values < self.arrays["low"]) | (values > self.arrays["high"])


def column_ranges(V: np.ndarray, names, one_sided=()) -> tuple[ColumnRange, ...]:
    """Each column's allowed range on training values V (N, C): beyond the seen min/max and
    beyond the 0.5-99.5% range widened by MARGIN x its width. Constant columns are not
    checked (the model cannot have used them); columns in `one_sided` (distances) have no
    lower bound."""
    lo_q, hi_q = np.quantile(V, RANGE_LEVELS, axis=0)  # (C,) each
    width = hi_q - lo_q
    vmin, vmax = V.min(axis=0), V.max(axis=0)
    low = np.minimum(vmin, lo_q - MARGIN * width)
    high = np.maximum(vmax, hi_q + MARGIN * width)
    out = []
    for i, name in enumerate(names):
        constant = vmax[i] - vmin[i] <= 1e-9 * max(1.0, abs(vmax[i]))
        lo = None if constant or i in one_sided else float(low[i])
        out.append(
            ColumnRange(
                name, lo, None if constant else float(high[i]), (float(vmin[i]), float(vmax[i]))
            )
        )
    return tuple(out)


def halves(n: int, groups=None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows to fit directions on, rows to measure ranges on): disjoint halves, whole groups
    (channels) on one side when given; the same rows twice when there are too few."""
    rows = np.arange(n)
    if n < MIN_SPLIT:
        return rows, rows
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        return np.sort(order[: n // 2]), np.sort(order[n // 2 :])
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    first = rng.permutation(codes.max() + 1)[: (codes.max() + 1) // 2]
    in_first = np.isin(codes, first)
    if not 0 < in_first.sum() < n:
        return rows, rows
    return rows[in_first], rows[~in_first]


def main_directions(Z: np.ndarray) -> np.ndarray:
    """(k, D) top principal directions of standardised rows Z (N, D), each divided by the
    sd of the rows along it (whitened), k <= DIRECTIONS and <= N / 10 so that each is
    estimated from enough rows."""
    k = max(1, min(DIRECTIONS, Z.shape[1], len(Z) // 10))
    Zc = Z - Z.mean(axis=0)  # (N, D)
    # eigh of the smaller Gram matrix: an SVD gives the same directions but, with BLAS
    # threads on a busy machine, ran 10-20x slower
    small = len(Zc) < Zc.shape[1]
    w, vecs = np.linalg.eigh(Zc @ Zc.T if small else Zc.T @ Zc)  # ascending
    top = np.argsort(w)[::-1][:k]
    top = top[: max(1, int(np.sum(w[top] > 1e-9 * max(w.max(), 1e-300))))]  # not degenerate
    if small:  # right singular vectors from the left ones
        vt = (Zc.T @ vecs[:, top] / np.sqrt(np.maximum(w[top], 1e-12))).T  # (k, D)
    else:
        vt = vecs[:, top].T  # (k, D)
    sd = np.maximum(np.sqrt(np.maximum(w[top], 0.0) / len(Zc)), 1e-9)  # (k,)
    return np.array([[float(f"{v:.6g}") for v in row] for row in vt / sd[:, None]])


def project(Z: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """(N, k + 2): coordinates along the k whitened directions (in training sds), their
    root-mean-square (a Mahalanobis distance within the directions), and the RMS distance
    of the standardised row from the directions' span."""
    t = Z @ basis.T  # (N, k), whitened
    sd = 1.0 / np.linalg.norm(basis, axis=1)  # (k,)
    rest = Z - (t * sd) @ (basis * sd[:, None])  # (N, D): off the span of the directions
    within = np.sqrt(np.mean(t**2, axis=1))[:, None]  # (N, 1)
    return np.hstack([t, within, np.sqrt(np.mean(rest**2, axis=1))[:, None]])


# ----- the novelty score (files from issue 29 on) -----------------------------------------------
ALPHA = 0.01  # the share of fresh same-distribution rows flagged, at most (see `Novelty`)
WARN_LEVEL = 0.01  # an evaluation warns when its flagged count is this improbable under ALPHA
KNOT_LEVELS = (0.1, 0.25, 0.5, 0.75, 0.9)  # each column's training quantiles kept
TAIL = 0.1  # the share beyond each outer knot, where a generalised Pareto tail takes over
MAX_XI = 0.5  # the Pareto tails' shape, at most (heavier tails are rare and badly estimated)
MAX_DIRECTIONS = 64  # main directions of a block's normal scores kept (at most; n/4)
MIN_NOVELTY_ROWS = 200  # below: the per-feature ranges (fewer than 1/ALPHA calibration rows)
MAX_TENSOR_BYTES = 256 * 1024 * 1024  # a range file is kilobytes to a megabyte; refuse more
NOVELTY_FILE = "training_range.safetensors"  # the novelty score's arrays, beside RANGE_FILE
COLUMN, ALONG, TOGETHER, OFF, LEAD = "column", "direction", "within", "distance", "predictive"
LEAD_Z = 2.0  # a predictive weight within this many standard errors of 0 is left out
RIDGE = 0.1  # the predictive direction's ridge penalty (whitened coordinates have unit sd)
PREDICTION_SHARE = 0.5  # of alpha, given to the model's own prediction (`Novelty.scores`)


@dataclass(frozen=True, eq=False)
class BlockNovelty:
    """How one block's rows are scored, fitted on training rows the calibration never sees.

    Each column becomes a normal score u (its training quantiles at KNOT_LEVELS in the body,
    generalised Pareto tails beyond the outer knots), so a skewed count, a heavy-tailed
    descriptor and a uniform date weigh alike; the normal scores' main directions then
    whiten the block, and each whitened coordinate gets its own normal score the same way
    (a factor that was uniform in training is then as sharp at its edge as a uniform
    column). Statistics per row (`stats`): the largest |u| over columns, the largest |normal
    score| over whitened coordinates, the whitened distance within the directions, the
    distance off them (per direction of leftover variance `rho`), and the normal score of
    the row along the block's predictive direction (`weights` (K,): a ridge of the target on
    the whitened coordinates, so a shift along the direction the views depend on, which is
    what breaks intervals, is seen even where it is one of hundreds of quiet directions).

    knots (L, D), tails (TAIL_ROWS, D): the columns' `margins`; seen (2, D): the training
    min and max over all rows (what messages quote); center (D,); basis (K, D) unit
    directions, scale (K,) their sds with rho added (a shrinkage: a direction fitted on few
    rows must not turn its noise into a huge whitened value); axis_knots (L, K), axis_tails
    (TAIL_ROWS, K): the whitened coordinates' `margins`; lead_knots (L, 1), lead_tails
    (TAIL_ROWS, 1): those of the predictive coordinate.
    """

    names: tuple[str, ...]
    knots: np.ndarray
    tails: np.ndarray
    seen: np.ndarray
    center: np.ndarray
    basis: np.ndarray
    scale: np.ndarray
    rho: float
    axis_knots: np.ndarray
    axis_tails: np.ndarray
    weights: np.ndarray
    lead_knots: np.ndarray
    lead_tails: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, y, names, seen: np.ndarray, k: int | None = None) -> BlockNovelty:
        """On rows X (n, D) with target y (n,); `k` directions (default: `directions`)."""
        X = np.asarray(X, dtype=np.float64)  # (n, D)
        knots, tails = margins(X)
        k = directions(len(X), X.shape[1]) if k is None else k
        U = normal_scores(X, knots, tails)  # (n, D)
        center, basis, scale, rho = _whiten(U, k)
        T = (U - center) @ basis.T / scale  # (n, K) whitened coordinates
        axis_knots, axis_tails = margins(T)
        yc = np.asarray(y, dtype=np.float64) - np.mean(y)
        weights = np.linalg.solve(T.T @ T / len(T) + RIDGE * np.eye(T.shape[1]), T.T @ yc / len(T))
        se = np.sqrt(np.mean((yc - T @ weights) ** 2) / len(T))  # each weight's, roughly
        weights = np.where(np.abs(weights) > LEAD_Z * se, weights, 0.0)  # noise: left out
        lead_knots, lead_tails = margins((T @ weights)[:, None])
        return cls(tuple(names), knots, tails, seen, center, basis, scale, rho, axis_knots,
                   axis_tails, weights, lead_knots, lead_tails)  # fmt: skip

    @property
    def kinds(self) -> tuple[str, ...]:
        """The statistics this block contributes (a 1-column block: the column only)."""
        k, d = self.basis.shape
        return (COLUMN,) + ((ALONG, LEAD) if d > 1 else ()) + ((TOGETHER,) if k > 1 else ()) + (
            (OFF,) if 0 < k < d else ())  # fmt: skip

    def normal_scores(self, X: np.ndarray) -> np.ndarray:
        """(N, D) each value's normal score; 0 in columns constant in training."""
        return normal_scores(X, self.knots, self.tails)

    def stats(self, X: np.ndarray) -> dict[str, np.ndarray]:
        """{kind: (N,)} the row statistics (larger = more unusual); `kinds` says which count
        (OFF is 0 when no direction is left over)."""
        u = self.normal_scores(X)  # (N, D)
        c = u - self.center
        p = c @ self.basis.T  # (N, K)
        t = p / self.scale
        along = np.abs(normal_scores(t, self.axis_knots, self.axis_tails))  # (N, K)
        out = {COLUMN: np.abs(u).max(axis=1), ALONG: along.max(axis=1, initial=0.0),
               TOGETHER: np.sum(t**2, axis=1),
               OFF: np.maximum(np.sum(c**2, axis=1) - np.sum(p**2, axis=1), 0.0) / self.rho}  # fmt: skip
        lead = normal_scores((t @ self.weights)[:, None], self.lead_knots, self.lead_tails)
        return {**out, LEAD: np.abs(lead[:, 0])}

    def culprit(self, X: np.ndarray, kind: str) -> tuple[list[str], str, np.ndarray | None]:
        """For rows X (N, D) flagged on `kind`: ([names of what is named per row], Shift kind,
        (N,) the named column's values when it is one column, else None)."""
        u = self.normal_scores(X)
        c = u - self.center
        t = c @ self.basis.T / self.scale  # (N, K)
        along = np.abs(normal_scores(t, self.axis_knots, self.axis_tails))
        wide, rows = len(self.names) > NARROW, np.arange(len(u))
        if kind == COLUMN:
            j = np.abs(u).argmax(axis=1)
            return [self.names[i] for i in j], "dimension" if wide else "column", X[rows, j]
        if wide:
            if kind == ALONG:
                k = along.argmax(axis=1)
                return (
                    [f"main direction {i + 1} of {len(self.scale)}" for i in k],
                    "direction",
                    None,
                )
            said = {TOGETHER: WITHIN, OFF: DISTANCE, LEAD: PREDICTIVE}[kind]
            return [said] * len(u), "direction", None
        if kind == LEAD:  # each column's part of the predictive coordinate
            part = np.abs(c * ((self.weights / self.scale) @ self.basis))
        elif kind == ALONG:  # each column's part of the most unusual whitened coordinate
            k = along.argmax(axis=1)
            part = np.abs(c * self.basis[k])
        elif kind == TOGETHER:  # each column's part of the whitened distance
            part = np.abs(c * ((t / self.scale) @ self.basis))
        else:
            part = (c - (c @ self.basis.T) @ self.basis) ** 2
        top = np.argsort(-part, axis=1)[:, :2]
        return [" with ".join(_label(self.names[i]) for i in sorted(r)) for r in top], "joint", None


def margins(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(knots (L, D), tails (9, D)) of each column of X (n, D): its quantiles at KNOT_LEVELS
    and its tails (`_tails`)."""
    X = np.asarray(X, dtype=np.float64)
    knots = np.quantile(X, KNOT_LEVELS, axis=0)  # (L, D)
    spread = np.maximum(knots[-1] - knots[0], X.std(axis=0))  # (D,)
    lo, hi = _pareto(knots[0] - X, spread), _pareto(X - knots[-1], spread)
    edges = [X.min(axis=0), _spacing(-X, lo[0]), X.max(axis=0), _spacing(X, hi[0])]
    return knots, np.vstack([lo, hi, *edges, np.full(X.shape[1], float(len(X)))])


def normal_scores(X, knots: np.ndarray, tails: np.ndarray) -> np.ndarray:
    """(N, D) the normal score of each value of X (N, D) under `margins`: the piecewise-
    linear CDF between the knots (a value tied with knots counts half), beyond them the
    tails; 0 in columns constant on the rows the margins were fitted on.

    tails rows: Pareto (scale, shape) below and above the outer knots, then min, spacing,
    max, spacing, n. Between an outer knot and the fitted rows' extreme the Pareto tail
    holds (shape >= 0: an exponential or heavier tail); beyond the extreme the tail starts
    at most at 1/(n + 1) and falls by e every `spacing` (the mean gap of the top order
    statistics, as for an exponential tail): a bounded column (a date, a uniform input),
    whose top values crowd against its edge, is thus steep just past it, and a heavy-tailed
    one, whose top values are spread out, is gentle."""
    X = np.asarray(X, dtype=np.float64)
    levels = np.asarray(KNOT_LEVELS)
    F = np.full(X.shape, levels[0])
    for s in range(len(levels) - 1):
        width = knots[s + 1] - knots[s]  # (D,)
        frac = np.clip((X - knots[s]) / np.where(width > 0, width, 1.0), 0.0, 1.0)
        tied = np.where(X > knots[s], 1.0, np.where(X == knots[s], 0.5, 0.0))
        F += (levels[s + 1] - levels[s]) * np.where(width > 0, frac, tied)
    u = special.ndtri(np.clip(F, levels[0], levels[-1]))
    lo, hi, (vmin, s_lo, vmax, s_hi, n) = tails[:2], tails[2:4], tails[4:]
    below = _log_tail(knots[0] - X, knots[0] - vmin, s_lo, n, *lo)
    above = _log_tail(X - knots[-1], vmax - knots[-1], s_hi, n, *hi)
    u = np.where(X < knots[0], special.ndtri_exp(below), u)
    u = np.where(X > knots[-1], -special.ndtri_exp(above), u)
    return np.where(vmax > vmin, u, 0.0)


def _pareto(excess: np.ndarray, spread: np.ndarray) -> np.ndarray:
    """(2, D) generalised Pareto (scale, shape) of the positive excesses (n, D) of each column
    over its outer knot, by moments; shape in [0, MAX_XI], scale at least 5% of the spread."""
    e = np.where(excess > 0, excess, np.nan)
    count = np.sum(excess > 0, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with no excess: nan
        m, v = np.nanmean(e, axis=0), np.nanvar(e, axis=0, ddof=1)
        xi = np.where((count >= 3) & (v > 0), 0.5 * (1 - m**2 / v), 0.0)
    xi = np.clip(np.nan_to_num(xi), 0.0, MAX_XI)
    beta = np.fmax(np.nan_to_num(m * (1 - xi)), 0.05 * spread)
    return np.vstack([np.where(beta > 0, beta, 1.0), xi])


def _spacing(X: np.ndarray, beta: np.ndarray, top: int = 5) -> np.ndarray:
    """(D,) the tail's e-folding length just past the largest value of each column of X
    (n, D): the mean gap of the top `top` order statistics (for an exponential tail of
    scale b, max - 5th largest averages b (1 + 1/2 + 1/3 + 1/4)), at least half the gap to
    the next distinct value (counts) and 5% of the Pareto scale `beta`."""
    k = min(top, len(X))
    ordered = np.sort(X, axis=0)  # (n, D)
    harmonic = max(sum(1 / i for i in range(1, k)), 1.0)
    gaps = (ordered[-1] - ordered[-k]) / harmonic
    below = np.where(X < ordered[-1], X, -np.inf).max(axis=0)
    step = np.where(np.isfinite(below), ordered[-1] - below, 0.0)
    return np.maximum.reduce([gaps, 0.5 * step, 0.05 * beta, np.full(X.shape[1], 1e-12)])


def _log_tail(excess, edge, spacing, n, beta, xi) -> np.ndarray:
    """log P(beyond) of an excess over the outer knot: log TAIL + the Pareto tail's log up
    to the fitted rows' extreme (excess `edge`); past it at most log 1/(n + 1), falling by
    one per `spacing`."""
    e = np.maximum(np.minimum(excess, edge), 0.0) / beta
    safe = np.where(xi > 0, xi, 1.0)
    inside = np.log(TAIL) - np.where(xi > 0, np.log1p(safe * e) / safe, e)
    past = np.minimum(inside, -np.log(n + 1)) - (excess - edge) / spacing
    return np.where(excess > edge, past, inside)


def directions(n: int, d: int) -> int:
    """How many main directions n rows of width d support: at most MAX_DIRECTIONS, n/4."""
    return max(1, min(d, MAX_DIRECTIONS, n // 4))


def _whiten(U: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(center (D,), unit directions (K, D), their sds with rho added (K,), rho) of the
    normal scores U (n, D): the top K <= k principal directions (fewer when degenerate); rho
    is the leftover variance per remaining direction (1% of the average when none remain)."""
    n, d = U.shape
    center = U.mean(axis=0)
    Uc = U - center
    total = float(np.sum(Uc**2)) / n
    w, vt = _top_directions(Uc, k)
    keep = w > 1e-9 * max(total, 1e-300)
    w, basis = w[keep], vt[keep]
    rest = d - len(w)
    rho = max((total - float(w.sum())) / rest if rest else 0.0, 0.01 * total / d, 1e-12)
    return center, basis.astype(np.float32).astype(np.float64), np.sqrt(w + rho), rho


def _top_directions(Uc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(variances (K,), unit directions (K, D)) of the top k principal directions of centred
    rows Uc (n, D), largest first. Small problems: eigh of the smaller Gram matrix; large
    ones (a 2,280-wide block on thousands of rows): a randomized subspace iteration, since
    a full eigh of 2,280 x 2,280 takes seconds where this takes a fraction of one."""
    n, d = Uc.shape
    if min(n, d) <= 4 * k + 32:
        small = n < d
        w, vecs = np.linalg.eigh(Uc @ Uc.T / n if small else Uc.T @ Uc / n)  # ascending
        w, vecs = np.maximum(w[::-1][:k], 0.0), vecs[:, ::-1][:, :k]
        if small:  # right singular vectors from the left ones
            return w, (Uc.T @ vecs / np.sqrt(np.maximum(n * w, 1e-300))).T
        return w, vecs.T
    q = np.random.default_rng(0).normal(size=(d, k + 16))  # (D, P)
    for _ in range(4):  # power iterations sharpen the top of the spectrum
        q, _ = np.linalg.qr(Uc.T @ (Uc @ q))
    small = q.T @ (Uc.T @ (Uc @ q)) / n  # (P, P)
    w, vecs = np.linalg.eigh(small)
    w, vecs = np.maximum(w[::-1][:k], 0.0), vecs[:, ::-1][:, :k]
    return w, (q @ vecs).T


@dataclass(frozen=True, eq=False)
class Novelty:
    """One novelty score per row with a stated false-alarm rate (split conformal).

    The training rows are split in three (`split_rows`; whole channels in each part when
    known). On the first each block's statistics are fitted (`BlockNovelty`); on the second
    the distribution of each of the C statistics is measured (`scales`: `margins` knots
    (L, C) and tails (TAIL_ROWS, C)), on rows the fit never saw, so each becomes a normal
    score that new rows share and they weigh alike. A row's score is its largest. The
    third part's scores (`calibration`, sorted (m,)) set the threshold: a row is flagged
    when its score exceeds the j-th largest of them, j = floor(alpha (m + 1)) (at least 1).
    On new rows exchangeable with the training rows that happens with probability
    j / (m + 1) <= alpha (1 / (m + 1) when m < 1/alpha - 1), whatever the number of
    columns, blocks or rows, and however the statistics were fitted: only the held-out
    rows set the level.
    """

    alpha: float
    blocks: dict[str, BlockNovelty]
    components: tuple[tuple[str, str], ...]
    scales: dict[str, np.ndarray]
    calibration: np.ndarray
    prediction_share: float = 0.0

    @classmethod
    def fit(cls, blocks, y, names=None, groups=None, seed: int = 0, alpha: float = ALPHA):
        blocks = {k: np.asarray(v, dtype=np.float64) for k, v in blocks.items()}
        y = np.asarray(y, dtype=np.float64)
        n = len(next(iter(blocks.values())))
        fit_rows, scale_rows, cal_rows = split_rows(n, groups, seed, alpha)
        final = _fit_blocks(blocks, y, fit_rows, names)
        components = tuple((name, k) for name, bn in final.items() for k in bn.kinds)
        # (n_scale, C): the statistics on rows the blocks were not fitted on, as new rows'
        crossed = _statistics(final, components, {k: v[scale_rows] for k, v in blocks.items()})
        knots, tails = margins(crossed)
        share = PREDICTION_SHARE if PREDICTED in final else 0.0
        self = cls(alpha, final, components, {"knots": knots, "tails": tails}, np.zeros(0), share)
        cal = np.sort(self.scores({k: v[cal_rows] for k, v in blocks.items()})[0])
        return replace(self, calibration=cal)

    def __eq__(self, other) -> bool:
        return isinstance(other, Novelty) and _as_dict(self) == _as_dict(other)

    __hash__ = None

    @property
    def level(self) -> float:
        """The share of fresh rows flagged, at most: alpha, or 1/(m + 1) for few rows."""
        return self._flag_rank / (len(self.calibration) + 1)

    @property
    def _flag_rank(self) -> int:
        return max(1, int(np.floor(self.alpha * (len(self.calibration) + 1) + 1e-9)))

    @property
    def threshold(self) -> float:
        """The score a row must exceed to be flagged: the j-th largest calibration score."""
        return float(self.calibration[-self._flag_rank])

    def scores(self, blocks) -> tuple[np.ndarray, np.ndarray]:
        """((N,) each row's score, (N, C) its statistics as normal scores, weighted); a
        block not given counts as ordinary (score -inf on its statistics).

        The score is a weighted Bonferroni over the C statistics: each normal score's tail
        p is divided by C w_c before turning back into a normal score, w_c being
        `prediction_share` for the model's own prediction and an equal part of the rest
        for the others (all 1/C, the plain maximum, without a prediction). The prediction
        gets half of alpha because a row it moves beyond the training predictions is
        where intervals fail first (the 40th of 384 directions: unflagged coverage 0.744
        with equal weights, 0.767 with half; BENCHMARKS.md). Any fixed weights keep the
        level: only the calibration rows set it."""
        stat = _statistics(self.blocks, self.components, blocks)  # (N, C)
        sc = self.scales
        u = normal_scores(stat, sc["knots"], sc["tails"])
        if self.prediction_share > 0:
            c = len(self.components)
            own = np.array([b == PREDICTED for b, _ in self.components])  # (C,)
            w = np.where(own, self.prediction_share, (1 - self.prediction_share) / max(c - 1, 1))
            log_p = special.log_ndtr(-u) - np.log(c * w)  # (N, C), weighted tail p
            u = -special.ndtri_exp(np.minimum(log_p, -1e-12))
        u = np.where(np.isneginf(stat), -np.inf, u)
        return u.max(axis=1, initial=-np.inf), u

    def flagged(self, blocks) -> tuple[np.ndarray, np.ndarray]:
        """((N,) True where a row is novel at `level`, (N,) the component it is named by: an
        index into `components`: its most extreme column check when one is beyond the
        threshold, else its most extreme input component, else (no input unusual on its own
        at level alpha) the model's prediction when that is what is extreme."""
        score, parts = self.scores(blocks)
        inputs = np.array([b != PREDICTED for b, _ in self.components])  # (C,)
        # a column beyond the threshold is named before a direction or a pair it moves too
        column = inputs & np.array([k == COLUMN for _, k in self.components])  # (C,)
        over = parts > self.threshold  # (N, C)
        named = np.where(over & column, parts, -np.inf)
        prefer = over[:, column].any(axis=1)
        # a prediction the model extrapolates to names the input that moved it, if one did
        own = np.where(inputs, parts, -np.inf)  # (N, C)
        notable = own.max(axis=1) > special.ndtri(1 - self.alpha)
        most = np.where(notable, np.argmax(own, axis=1), np.argmax(parts, axis=1))
        return score > self.threshold, np.where(prefer, np.argmax(named, axis=1), most)

    def tail_p(self, flagged: int, n: int) -> float:
        """P(at least `flagged` of n fresh rows flagged): beta-binomial, the flag rate given
        one calibration set being Beta(j, m + 1 - j) (exact for split conformal)."""
        if flagged <= 0:
            return 1.0
        j, m = self._flag_rank, len(self.calibration)
        return float(stats.betabinom.sf(flagged - 1, n, j, m + 1 - j))

    # ----- persistence ------------------------------------------------------------------------
    def to_json(self) -> dict:
        """The small part (scalars, names): the arrays go to NOVELTY_FILE (`tensors`)."""
        return {
            "alpha": self.alpha,
            "prediction_share": self.prediction_share,
            "file": NOVELTY_FILE,
            "calibration_rows": len(self.calibration),
            "components": [list(c) for c in self.components],
            "blocks": {
                b: {
                    "width": len(bn.names),
                    "directions": len(bn.scale),
                    "rho": bn.rho,
                    "names": list(bn.names) if len(bn.names) <= NARROW else None,
                }
                for b, bn in self.blocks.items()
            },  # fmt: skip
        }

    def tensors(self) -> dict[str, np.ndarray]:
        out = {
            "calibration": self.calibration,
            **{f"scores/{k}": v for k, v in self.scales.items()},
        }
        for b, bn in self.blocks.items():
            for part in TENSOR_FIELDS:
                out[f"{b}/{part}"] = getattr(bn, part)
        # the directions were rounded to float32 when fitted: stored so, they load unchanged
        return {k: np.ascontiguousarray(v, dtype=np.float32 if k.endswith("/basis") else np.float64)
                for k, v in out.items()}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict, tensors: dict[str, np.ndarray]) -> Novelty:
        """Rebuilt and checked: every shape must agree with the JSON (ValueError if not)."""
        alpha = float(d["alpha"])
        if not 0 < alpha < 0.5:
            raise ValueError(f"alpha {alpha} outside (0, 0.5)")
        blocks = {str(b): _block_novelty(str(b), v, tensors) for b, v in dict(d["blocks"]).items()}
        components = tuple((str(b), str(k)) for b, k in d["components"])
        for b, k in components:
            if b not in blocks or k not in blocks[b].kinds:
                raise ValueError(f"component {b}/{k} does not match the blocks")
        c, m = len(components), int(d["calibration_rows"])
        shapes = {"knots": (len(KNOT_LEVELS), c), "tails": (TAIL_ROWS, c)}
        scales = {k: _tensor(tensors, f"scores/{k}", shape) for k, shape in shapes.items()}
        cal = _tensor(tensors, "calibration", (m,))
        if m < 1 or np.any(np.diff(cal) < 0):
            raise ValueError("the calibration scores must be sorted and not empty")
        share = _finite([d.get("prediction_share", 0.0)], "prediction_share")[0]
        if not 0 <= share < 1 or (share > 0) != (PREDICTED in blocks):
            raise ValueError(f"prediction_share {share} must be in [0, 1), above 0 with a "
                             f"{PREDICTED} block only")  # fmt: skip
        return cls(alpha, blocks, components, scales, cal, share)


def split_rows(n: int, groups=None, seed: int = 0, alpha: float = ALPHA):
    """(rows to fit the statistics on, rows to measure their distributions on, calibration
    rows): disjoint, whole groups (channels) on one side when given. Calibration gets a
    quarter of the rows but at least 1/alpha (so that alpha can be reached) and at most half;
    the statistics' distributions a third of the rest, the statistics themselves the others.
    When whole channels cannot fill the parts within half of these sizes, rows are split
    without them."""
    m = min(max(int(np.ceil(n / 4)), int(np.ceil(1 / alpha))), n // 2)
    sizes = np.cumsum([n - m - (n - m) // 3, (n - m) // 3])  # row counts of the first two
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(n)
        return tuple(np.sort(part) for part in np.split(order, sizes))
    _, codes = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    counts = np.bincount(codes)
    perm = rng.permutation(len(counts))
    ends = np.cumsum(counts[perm])  # rows covered after each group, in that order
    part = np.searchsorted(sizes, ends - counts[perm] // 2, side="right")  # (G,) 0, 1 or 2
    which = np.empty(len(counts), int)
    which[perm] = part
    rows = np.arange(n)
    parts = tuple(rows[which[codes] == k] for k in range(3))
    if min(len(p) for p in parts) < 0.5 * min(m, (n - m) // 3):  # a few big channels
        return split_rows(n, None, seed, alpha)  # rows apart rather than parts lopsided
    return parts


def _fit_blocks(blocks: dict[str, np.ndarray], y, rows: np.ndarray, names, ks=None) -> dict:
    """{block: BlockNovelty} fitted on `rows`; named columns for narrow blocks (generic
    'column j', or 'dimension j' for embeddings), seen ranges over all training rows."""
    out = {}
    for name, X in blocks.items():
        given = list((names or {}).get(name) or [])
        d = X.shape[1]
        if d > NARROW or len(given) != d:
            given = [f"{'dimension' if d > NARROW else 'column'} {j + 1}" for j in range(d)]
        seen = np.vstack([X.min(axis=0), X.max(axis=0)])
        out[name] = BlockNovelty.fit(X[rows], y[rows], given, seen, (ks or {}).get(name))
    return out


def _statistics(fitted: dict, components, blocks) -> np.ndarray:
    """(N, C) the components' statistics on `blocks`; -inf for a block not given."""
    n = len(next(iter(blocks.values())))
    cache = {b: bn.stats(blocks[b]) for b, bn in fitted.items() if b in blocks}
    return np.column_stack(
        [cache[b][k] if b in cache else np.full(n, -np.inf) for b, k in components]
    )


TAIL_ROWS = 9  # rows of a `margins` tails array
TENSOR_FIELDS = ("knots", "tails", "seen", "center", "basis", "scale", "axis_knots", "axis_tails",
                 "weights", "lead_knots", "lead_tails")  # fmt: skip


def _block_novelty(name: str, v: dict, tensors) -> BlockNovelty:
    d, k = int(v["width"]), int(v["directions"])
    names = v.get("names") or [f"dimension {j + 1}" for j in range(d)]
    if len(names) != d or not all(isinstance(x, str) for x in names):
        raise ValueError(f"block {name}: {len(names)} names for {d} columns")
    shapes = {"knots": (len(KNOT_LEVELS), d), "tails": (TAIL_ROWS, d), "seen": (2, d), "center": (d,),
              "basis": (k, d), "scale": (k,), "axis_knots": (len(KNOT_LEVELS), k),
              "axis_tails": (TAIL_ROWS, k), "weights": (k,), "lead_knots": (len(KNOT_LEVELS), 1),
              "lead_tails": (TAIL_ROWS, 1)}  # fmt: skip
    arrays = {f: _tensor(tensors, f"{name}/{f}", shapes[f]) for f in TENSOR_FIELDS}
    rho = float(v["rho"])
    scale = arrays["scale"]  # the directions' sds, largest first (`_whiten`)
    if not (rho > 0 and np.isfinite(rho)) or np.any(scale <= 0) or np.any(np.diff(scale) > 0):
        raise ValueError(f"block {name}: scales must be positive and largest first")
    return BlockNovelty(tuple(names), rho=rho, **arrays)


def _tensor(tensors, key: str, shape: tuple) -> np.ndarray:
    if key not in tensors:
        raise ValueError(f"no tensor {key!r}")
    if tensors[key].dtype not in (np.float32, np.float64):  # as `Novelty.tensors` writes them
        raise ValueError(f"tensor {key!r} is {tensors[key].dtype}, not float32 or float64")
    a = np.asarray(tensors[key], dtype=np.float64)
    if a.shape != shape or not np.all(np.isfinite(a)):
        raise ValueError(f"tensor {key!r} has shape {a.shape} (want {shape}) or non-finite values")
    return a


def _as_dict(n: Novelty) -> dict:
    return {"json": n.to_json(), **{k: v.tolist() for k, v in n.tensors().items()}}


def _label(name: str) -> str:
    """A column's human name ('publication year' for the year column)."""
    return LABELS.get(UNITS.get(name), (name, ""))[0]


# ----- what is reported ----------------------------------------------------------------------
@dataclass(frozen=True)
class Shift:
    """One feature on which some rows lie outside the training range.

    share: of the rows checked; low, high: the outside rows' values; seen: the training
    min and max (values in the block's units: log10 days for the upload age, etc.).
    kind: "column", "dimension" (one column of an embedding), "direction" (an embedding's
    main direction, or its distance within or from them), "joint" (columns of a narrow block
    whose combination is new: `feature` names the two that weigh most) or "block" (files
    from before per-feature ranges: the block as a whole).
    """

    block: str
    feature: str
    share: float
    low: float
    high: float
    seen: tuple[float, float]
    kind: str = "column"

    def phrase(self) -> str:
        """'publication year 2019-2020 is outside the training years 2012-2015'."""
        if self.kind == "block":
            return f"the {self.block} inputs look unlike the training ones"
        if self.kind == "joint":
            return (f"{self.feature} together are unlike any training {self.block} inputs "
                    "(each may lie within its own range)")  # fmt: skip
        if self.kind == "dimension":
            return f"the {self.block} embedding lies outside the training range in {self.feature}"
        if self.kind == "direction":
            where = {DISTANCE: "far from its main directions",
                     WITHIN: "far out along its main directions together",
                     PREDICTIVE: "outside the training range along the direction that "
                                 "predicts views"}  # fmt: skip
            along = (f"outside the training range along {self.feature} (one of the mixes of "
                     "its values that varied most between training thumbnails)")  # fmt: skip
            return f"the {self.block} embedding lies {where.get(self.feature, along)}"
        unit = UNITS.get(self.feature)
        label, plural = LABELS.get(unit, (self.feature, "range"))
        now, seen = _span(self.low, self.high, unit), _span(*self.seen, unit)
        if self.block == PREDICTED:  # the model's own output: it is extrapolating
            return (f"{label} {now} lie beyond what the model predicted for its training "
                    f"videos ({seen})")  # fmt: skip
        if self.seen[0] <= self.low and self.high <= self.seen[1]:  # rare, not beyond
            return f"{label} {now} lies in the far tail of the training {plural} {seen}"
        return f"{label} {now} is outside the training {plural} {seen}"


@dataclass(frozen=True)
class DriftReport:
    """What `TrainingRange.check` found on some rows: `message()` is the one line to show.

    share: rows outside on at least one feature; shifts: the features, most rows first;
    views_share: rows whose views lie far outside the training range (None: not scored).
    Predictions warn on any row (`min_share` 0). An evaluation (views given) warns on views
    when their share exceeds MAX_SHARE, and on features: with the novelty score, when
    `tail_p` (the chance of this many flagged rows or more if the rows were like the
    training ones, each flagged with probability `expected`) is below WARN_LEVEL; with an
    old file's ranges, when the share exceeds MAX_SHARE.
    """

    n: int
    share: float
    shifts: tuple[Shift, ...]
    views_share: float | None = None
    views_span: str = ""
    min_share: float = 0.0
    expected: float | None = None
    tail_p: float | None = None

    @property
    def features_warn(self) -> bool:
        """Whether the features part of the message is said."""
        if not self.shifts:
            return False
        if self.tail_p is not None and self.min_share > 0:
            return self.tail_p < WARN_LEVEL
        return self.share > self.min_share

    @property
    def warns(self) -> bool:
        return self.message() is not None

    def message(self) -> str | None:
        """One plain line when views or features lie outside the training range, else None."""
        parts = []
        if self.views_share is not None and self.views_share > self.min_share:
            parts.append(
                f"{self.views_share:.0%} of these videos have views far outside the training "
                f"range ({self.views_span})"
            )
        if self.features_warn:
            one = self.n == 1
            named = [s.phrase() + ("" if one else f" ({_percent(s.share)})") for s in self.shifts]
            if len(named) > SHOWN:
                named = [*named[:SHOWN], f"{len(named) - SHOWN} more features"]
            who = "the input lies" if one else f"{_percent(self.share)} of the inputs lie"
            if not one and self.expected is not None:
                who += f" ({_percent(self.expected)} expected by chance)"
            parts.append(f"{who} outside the training range: " + "; ".join(named))
        if not parts:
            return None
        return "; ".join(parts) + ": predictions and intervals there are extrapolations"

    def to_json_dict(self) -> dict:
        """The report as `evaluate --json` writes it (`out_of_range`)."""
        return {
            "n": self.n,
            "share_outside": self.share,
            "views_share_outside": self.views_share,
            "features": [{**asdict(s), "text": s.phrase()} for s in self.shifts],
            "expected_share": self.expected,
            "tail_p": self.tail_p,
            "warning": self.message(),
        }


@dataclass(frozen=True)
class TrainingRange:
    """The target's quantiles (at TARGET_LEVELS) and the features' training distribution:
    the novelty score (`novelty`, files from issue 29 on; `blocks` then empty) or, in older
    files, each block's per-feature ranges (`blocks`)."""

    target: str
    target_quantiles: tuple[float, ...]
    blocks: dict[str, BlockRange]
    novelty: Novelty | None = None
    # maps the blocks a predictor computes to those the range describes (a fine-tuned
    # network's pixels to its embeddings, `finetune.range`); None: checked as given
    inputs: Callable[[dict], dict] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def fit(cls, y, blocks: dict[str, np.ndarray], target: str = "log10", names=None,
            groups=None, seed: int = 0, alpha: float = ALPHA,
            predicted=None) -> TrainingRange:  # fmt: skip
        """`names`: {block: column names} (`Encoder.feature_names()`; generic when absent);
        `groups`: the rows' channels, so the score is fitted and calibrated on different
        channels; `predicted` (n,): the model's out-of-fold predictions of these rows, so
        that a row the model extrapolates on (its prediction beyond those of the training
        rows, `PREDICTED`) is flagged whichever direction of the inputs moved it. Fewer
        than MIN_NOVELTY_ROWS rows: the per-feature ranges instead (without `predicted`)."""
        y = np.asarray(y, dtype=np.float64)
        quantiles = tuple(float(q) for q in np.quantile(y, TARGET_LEVELS))
        if len(y) >= MIN_NOVELTY_ROWS and blocks:
            if predicted is not None:
                blocks = with_prediction(blocks, predicted)
                names = {**(names or {}), PREDICTED: [PREDICTED_NAMES.get(target, target)]}
            novelty = Novelty.fit(blocks, y, names, groups, seed, alpha)
            return cls(target, quantiles, {}, novelty)
        names = names or {}
        ranges = {
            name: BlockRange.fit(X, names.get(name), groups, seed) for name, X in blocks.items()
        }
        return cls(target, quantiles, ranges)

    # ----- checks -----------------------------------------------------------------------------
    def views_outside(self, y) -> np.ndarray:
        """(N,) True where the target is beyond the training 1-99% range by more than ~3x."""
        lo, hi = self.target_quantiles[1], self.target_quantiles[5]
        y = np.asarray(y, dtype=np.float64)
        return (y < lo - VIEWS_SLACK) | (y > hi + VIEWS_SLACK)

    def features_outside(self, blocks: dict[str, np.ndarray], predicted=None) -> np.ndarray:
        """(N,) True where a row is flagged: novel at the stated rate (or, old files, any
        feature of any block outside its training range). `predicted` (N,): the model's
        predictions of these rows (see `fit`; without them that part is not checked)."""
        flags = self._flags(with_prediction(blocks, predicted))
        if flags is None:
            return np.zeros(0, bool)
        return flags[2].any(axis=1)

    def check(self, blocks=None, y=None, predicted=None) -> DriftReport:
        """Which rows and features lie outside the training range. With `y` (an evaluation)
        the features warn when the flagged share is improbable under the stated rate (old
        files: above MAX_SHARE); without (predictions) any flagged row does. `predicted`:
        as in `features_outside`."""
        views = float(self.views_outside(y).mean()) if y is not None and len(y) else None
        min_share = MAX_SHARE if y is not None else 0.0
        flags = self._flags(with_prediction(blocks, predicted)) if blocks else None
        if flags is None:
            return DriftReport(0, 0.0, (), views, self._span(), min_share)
        report = _report(*flags, views, self._span(), min_share)
        if self.novelty is None:
            return report
        flagged = int(flags[2].any(axis=1).sum())
        tail = self.novelty.tail_p(flagged, report.n)
        return replace(report, expected=self.novelty.level, tail_p=tail)

    def row_messages(self, blocks: dict[str, np.ndarray], predicted=None) -> list[str]:
        """Each row's own warning ("" when it lies inside): what one prediction shows."""
        flags = self._flags(with_prediction(blocks, predicted))
        if flags is None:
            return [""] * len(next(iter(blocks.values()), ()))
        columns, values, outside = flags
        return [
            _report(columns, values[i : i + 1], outside[i : i + 1]).message() or ""
            for i in range(len(values))
        ]

    def warning(self, blocks=None, y=None, predicted=None) -> str | None:
        """`check(blocks, y, predicted).message()`: one plain line, or None."""
        return self.check(blocks, y, predicted).message()

    def _flags(self, blocks) -> tuple[list[tuple], np.ndarray, np.ndarray] | None:
        """([(block, ColumnRange or None, kind)], values (N, C), outside (N, C)) over the
        blocks both have (kind: see `Shift`); with the novelty score, one column per named
        feature, True in the rows flagged on it."""
        if self.inputs is not None:  # the model's prediction passes through as it is
            own = {PREDICTED: blocks[PREDICTED]} if PREDICTED in blocks else {}
            blocks = {**self.inputs({k: v for k, v in blocks.items() if k != PREDICTED}), **own}
        if self.novelty is not None:
            return _novelty_flags(self.novelty, blocks)
        columns, values, outside = [], [], []
        for name, r in self.blocks.items():
            if name not in blocks:
                continue
            X = np.asarray(blocks[name], dtype=np.float64)  # (N, D)
            if r.columns:
                kind = "direction" if r.basis else "column"
                columns += [(name, c, kind) for c in r.columns]
                values.append(r.coordinates(X))
            else:  # an old file: the block as a whole
                columns.append((name, None, "block"))
                values.append(r.distance(X)[:, None])
            outside.append(r.outside(X))
        if not columns:
            return None
        return columns, np.hstack(values), np.hstack(outside)

    def _span(self) -> str:
        from thumbview.predict.target import to_views

        lo, hi = (to_views(self.target)(self.target_quantiles[i]) for i in (1, 5))
        unit = "views" if self.target == "log10" else "of the channel's usual views"
        return f"{format_views(lo, self.target)}-{format_views(hi, self.target)} {unit}"

    # ----- persistence ------------------------------------------------------------------------
    def save(self, model_dir: Path) -> Path:
        """RANGE_FILE (JSON, kilobytes), and NOVELTY_FILE (safetensors) beside it with the
        novelty score's arrays: a 2,280-wide block's 64 directions alone are 146K numbers,
        which a JSON file would carry as megabytes of text."""
        path = Path(model_dir) / RANGE_FILE
        d = {"format": RANGE_FORMAT, "target": self.target,
             "target_quantiles": list(self.target_quantiles),
             "blocks": {k: asdict(v) for k, v in self.blocks.items()}}  # fmt: skip
        if self.novelty is not None:
            from safetensors.numpy import save_file

            tensors = self.novelty.tensors()
            atomic_write(Path(model_dir) / NOVELTY_FILE, lambda p: save_file(tensors, str(p)))
            d["novelty"] = self.novelty.to_json()
        atomic_write(path, json.dumps(d))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> TrainingRange | None:
        """The recorded range, or None for models trained before it was recorded. Files
        without the novelty score (older models) load and keep their per-feature ranges or
        whole-block check."""
        path = Path(model_dir) / RANGE_FILE
        if not path.is_file():
            return None
        from thumbview.predict.model import ArtifactError  # model imports no drift: no ring
        from thumbview.schema import MAX_JSON_BYTES, parse_json, read_regular_file

        try:  # size and depth limited (issue 30)
            d = parse_json(read_regular_file(path, MAX_JSON_BYTES), allow_nan=True)
            blocks = {k: _block_from_json(v) for k, v in d["blocks"].items()}
            if d.get("format", 1) != 1 and not _complete(d, blocks):  # files from before: lenient
                raise ValueError("a block or its per-column ranges are missing")
            novelty = None
            if "novelty" in d:
                novelty = _novelty(d["novelty"], Path(model_dir))
            return cls(d["target"], tuple(d["target_quantiles"]), blocks, novelty)
        except ArtifactError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ArtifactError(f"{path}: damaged training range ({type(e).__name__}: {e})") from e


def _novelty(d: dict, model_dir: Path) -> Novelty:
    """The novelty score of RANGE_FILE's "novelty" and NOVELTY_FILE's arrays: a mismatch
    between the two may be either file's damage, so the message names both."""
    from thumbview.predict.model import ArtifactError

    tensors = _read_tensors(model_dir)
    try:
        return Novelty.from_json(d, tensors)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise ArtifactError(
            f"{model_dir / RANGE_FILE} and {NOVELTY_FILE} beside it: damaged training range "
            f"({type(e).__name__}: {e})"
        ) from e


def with_prediction(
    blocks: dict[str, np.ndarray] | None, predicted
) -> dict[str, np.ndarray] | None:
    """`blocks` with the model's predictions (N,) as the one-column block PREDICTED (the
    blocks unchanged when there are none)."""
    if predicted is None or blocks is None:
        return blocks
    return {**blocks, PREDICTED: np.asarray(predicted, dtype=np.float64).reshape(-1, 1)}


def _read_tensors(model_dir: Path) -> dict[str, np.ndarray]:
    """NOVELTY_FILE's arrays, or an ArtifactError naming it (missing, huge, corrupt)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from thumbview.predict.model import ArtifactError

    path = model_dir / NOVELTY_FILE
    try:
        if path.stat().st_size > MAX_TENSOR_BYTES:
            raise ArtifactError(f"{path}: too large for a training range")
        return load_file(str(path))
    except FileNotFoundError as e:
        raise ArtifactError(f"{path}: missing (training_range.json refers to it)") from e
    except (OSError, SafetensorError, ValueError) as e:
        raise ArtifactError(f"{path}: corrupt or truncated ({e})") from e


def _novelty_flags(novelty: Novelty, blocks) -> tuple[list[tuple], np.ndarray, np.ndarray] | None:
    """`TrainingRange._flags` for the novelty score: each flagged row names what it is most
    extreme on (its most extreme component, and there the column, direction or pair of
    columns that weighs most)."""
    given = {b: np.asarray(blocks[b], dtype=np.float64) for b in novelty.blocks if b in blocks}
    if not given:
        return None
    n = len(next(iter(given.values())))
    flagged, component = novelty.flagged(given)  # (N,) each
    features: dict[tuple, int] = {}
    values, hits = [], []
    for c in np.unique(component[flagged]):
        block, kind = novelty.components[c]
        rows = np.flatnonzero(flagged & (component == c))
        bn = novelty.blocks[block]
        named, shift_kind, vals = bn.culprit(given[block][rows], kind)
        for r, (name, i) in enumerate(zip(named, rows, strict=True)):
            key = (block, name, shift_kind)
            if key not in features:
                features[key] = len(features)
                values.append(np.zeros(n))
                hits.append(np.zeros(n, bool))
            f = features[key]
            hits[f][i], values[f][i] = True, 0.0 if vals is None else vals[r]
    columns = [(block, ColumnRange(name, None, None, _seen(novelty, block, name, kind)), kind)
               for block, name, kind in features]  # fmt: skip
    if not columns:  # nothing flagged: one empty column keeps the shapes
        return [(b, None, "block") for b in given][:1], np.zeros((n, 1)), np.zeros((n, 1), bool)
    return columns, np.column_stack(values), np.column_stack(hits)


def _seen(novelty: Novelty, block: str, name: str, kind: str) -> tuple[float, float]:
    """The training min and max of a named column (0, 0 for directions and pairs)."""
    bn = novelty.blocks[block]
    if kind not in ("column", "dimension"):
        return (0.0, 0.0)
    j = bn.names.index(name)
    return (float(bn.seen[0, j]), float(bn.seen[1, j]))


def _block_from_json(v: dict) -> BlockRange:
    """One block, checked as it is read (types, finite numbers, consistent lengths), so a
    damaged file fails here, named, and never later inside a check."""
    mean, sd = _finite(v["mean"], "mean"), _finite(v["sd"], "sd")
    if len(mean) != len(sd) or not all(x > 0 for x in sd):
        raise ValueError("mean and sd must have one entry per column, every sd > 0")
    columns = tuple(_column_from_json(c) for c in v.get("columns", ()))
    basis = tuple(_finite(row, "basis") for row in v.get("basis", ()))
    if any(len(row) != len(mean) for row in basis):
        raise ValueError("basis rows must have one entry per column")
    if columns and len(columns) != (len(basis) + 2 if basis else len(mean)):
        raise ValueError(f"{len(columns)} column ranges for {len(mean)} columns")
    q99 = _finite([v["q99_distance"]], "q99_distance")[0]
    return BlockRange(mean, sd, q99, columns, basis)


def _complete(d: dict, blocks: dict[str, BlockRange]) -> bool:
    """A file this code wrote (format 2) has its blocks, and each has its per-column ranges
    unless the novelty score checks it (models of `MIN_NOVELTY_ROWS` rows and more): without
    them a block would fall back to the weaker whole-block check unnoticed."""
    ranged = "novelty" in d or (bool(blocks) and all(b.columns for b in blocks.values()))
    return d.get("format") == RANGE_FORMAT and ranged


def _finite(values, what: str) -> tuple[float, ...]:
    """A list of finite numbers (never booleans or strings) as floats, else ValueError."""
    if not isinstance(values, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in values
    ):
        raise ValueError(f"{what} must be a list of finite numbers")
    return tuple(float(x) for x in values)


def _column_from_json(c) -> ColumnRange:
    if not isinstance(c, dict) or not isinstance(c.get("name"), str):
        raise ValueError("every column range needs a name")
    if "low" not in c or "high" not in c:  # null is unbounded; a missing key is damage
        raise ValueError(f"{c['name']}: low and high must be given (null for unbounded)")
    bounds = [c["low"], c["high"]]
    low, high = (None if b is None else _finite([b], f"{c['name']}: low/high")[0] for b in bounds)
    seen = _finite(c.get("seen"), f"{c['name']}: seen")
    if len(seen) != 2:
        raise ValueError(f"{c['name']}: seen must be [min, max]")
    return ColumnRange(c["name"], low, high, seen)


def _report(columns, values, outside, views=None, span="", min_share=0.0) -> DriftReport:
    """The DriftReport of flags (N, C) over `columns` [(block, ColumnRange or None, kind)]."""
    n = len(values)
    shifts = []
    for j in np.flatnonzero(outside.any(axis=0)):
        block, col, kind = columns[j]
        hit, share = values[outside[:, j], j], float(outside[:, j].mean())
        if col is None:
            shifts.append(Shift(block, "", share, 0.0, 0.0, (0.0, 0.0), kind))
        else:
            shifts.append(Shift(block, col.name, share, float(hit.min()), float(hit.max()),
                                col.seen, kind))  # fmt: skip
    shifts.sort(key=lambda s: -s.share)
    share = float(outside.any(axis=1).mean()) if n else 0.0
    return DriftReport(n, share, tuple(shifts), views, span, min_share)


def _percent(share: float) -> str:
    """'12%', or '<1%' for a share that rounds to zero but is not."""
    return "<1%" if 0 < share and f"{share:.0%}" == "0%" else f"{share:.0%}"


def _span(lo: float, hi: float, unit: str | None) -> str:
    """'2019-2020', '3 days-1.9 years', '0.12 to 0.40': a range in the column's own unit."""
    a, b = _value(lo, unit), _value(hi, unit)
    if a == b:
        return a
    return f"{a} to {b}" if min(lo, hi) < 0 and unit is None else f"{a}-{b}"


def format_feature(name: str, v: float) -> str:
    """A feature's value in the unit people read it in ("2020", "3 days", "12K"), else
    the number (`format_number`): what `explain` shows, the same as this file's lines."""
    return _value(v, UNITS.get(name))


def _value(v: float, unit: str | None) -> str:
    if unit == "year":
        return str(int(np.floor(v)))
    if unit == "age":  # log10(1 + days)
        return format_days(10**v - 1)
    if unit in ("subscribers", "views"):  # log10(1 + count)
        return format_count(max(10**v - 1, 0.0))
    if unit == "multiple":  # log10 of a multiple of the channel's usual views
        return format_factor(10**v)
    if unit == "videos":  # log10(videos)
        return format_count(10**v)
    return format_number(v)


def _distance(X: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(N,) root-mean-square standardised value of each row (the old whole-block check)."""
    return np.sqrt(np.mean(((X - mean) / sd) ** 2, axis=1))
