"""Say when data lies outside what the model was trained on, and in which feature.

A model trained on videos with 1K-11K views has never seen a video with millions: its
errors, and its intervals, say nothing about them (such a model's 80% interval covered 1.5%
of them). The same holds for every input: a ridge trained with one input in [-1, 1] and
scored with it in [-3, 3] has intervals that cover 55% instead of 80%. The model folder
therefore records the training distribution of its target (quantiles) and of each feature
block (`training_range.json`), and evaluation, prediction, comparison, the web page and the
bot's reward all ask `TrainingRange.check` and get one `DriftReport`.

The check looks at one feature at a time, because a whole-block distance (the
root-mean-square of the standardised columns, the check before this one) averages a shift
in one column away over the others, the more so the wider the block:

- Narrow blocks (at most `NARROW` columns: context, title descriptors, visual descriptors):
  each column on its own. A value is outside when it lies beyond everything training saw
  *and* beyond the 0.5-99.5% training range widened by `MARGIN` x its width. Never flagging
  a value training saw keeps counts (faces, emoji) quiet; the margin keeps the tails of
  continuous columns quiet. Flagged columns are named, in their own units where they have
  one ("publication year 2019-2020 is outside the training years 2012-2015").
- Embedding blocks (title, clip): the same range check on a row's coordinates along the
  block's main directions (top principal components of the standardised block, whitened),
  on their root-mean-square (a Mahalanobis distance on that low-rank basis) and on the
  row's distance from them, so a shift along one direction is not diluted by 384 quiet
  ones. The
  directions are fitted on one half of the training rows (split by channel when known) and
  the ranges measured on the other half: rows the directions never saw, as new data are.

`MARGIN` was calibrated by simulation (`benchmarks/drift_calibration.py`, BENCHMARKS.md):
rows the check leaves unflagged keep their nominal coverage within 5 points on the shifted
cases, and fresh data like the training data is flagged rarely. Files written before the
per-feature ranges keep the old whole-block check.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from thumbview.embed.context import FEATURES as CONTEXT_FEATURES
from thumbview.fileio import atomic_write
from thumbview.units import format_count, format_days, format_number, format_views

RANGE_FILE = "training_range.json"
TARGET_LEVELS = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)
FAR = 2.0  # old files: x the training rows' 99th-percentile whole-block distance
VIEWS_SLACK = 0.5  # log10 units beyond the training 1-99% range (about 3x) before warning
MAX_SHARE = 0.05  # an evaluation warns when more than this share of rows is outside
NARROW = 64  # blocks up to this width are checked column by column
RANGE_LEVELS = (0.005, 0.995)  # the central training range a column is measured by
MARGIN = 0.25  # x that range's width, added on both sides (calibrated by simulation)
DIRECTIONS = 16  # main directions of an embedding block (at most; n/10 for small sets)
MIN_SPLIT = 40  # training rows below which directions and ranges share the same rows
SHOWN = 3  # features named in one message
WITHIN = "distance within the main directions"
DISTANCE = "distance from the main directions"
# Context columns that people read in other units than the encoder's (log10 counts, years)
UNITS = dict(
    zip(
        CONTEXT_FEATURES,
        ("age", "year", None, None, None, None, "subscribers", "videos"),
        strict=True,
    )
)
LABELS = {  # unit: (what the feature is called, what its training range is called)
    "age": ("upload age", "ages"),
    "year": ("publication year", "years"),
    "subscribers": ("channel subscribers", "range"),
    "videos": ("channel videos in the dataset", "range"),
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


# ----- what is reported ----------------------------------------------------------------------
@dataclass(frozen=True)
class Shift:
    """One feature on which some rows lie outside the training range.

    share: of the rows checked; low, high: the outside rows' values; seen: the training
    min and max (values in the block's units: log10 days for the upload age, etc.).
    kind: "column", "direction" (an embedding's main direction or its distance from them)
    or "block" (files from before per-feature ranges: the block as a whole).
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
        if self.kind == "direction":
            where = {DISTANCE: "far from its main directions",
                     WITHIN: "far out along its main directions together"}  # fmt: skip
            along = f"outside the training range along {self.feature}"
            return f"the {self.block} embedding lies {where.get(self.feature, along)}"
        unit = UNITS.get(self.feature)
        label, plural = LABELS.get(unit, (self.feature, "range"))
        now, seen = _span(self.low, self.high, unit), _span(*self.seen, unit)
        return f"{label} {now} is outside the training {plural} {seen}"


@dataclass(frozen=True)
class DriftReport:
    """What `TrainingRange.check` found on some rows: `message()` is the one line to show.

    share: rows outside on at least one feature; shifts: the features, most rows first;
    views_share: rows whose views lie far outside the training range (None: not scored).
    An evaluation (views given) warns when a share exceeds MAX_SHARE; predictions warn on
    any row (`min_share` 0).
    """

    n: int
    share: float
    shifts: tuple[Shift, ...]
    views_share: float | None = None
    views_span: str = ""
    min_share: float = 0.0

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
        if self.shifts and self.share > self.min_share:
            one = self.n == 1
            named = [s.phrase() + ("" if one else f" ({_percent(s.share)})") for s in self.shifts]
            if len(named) > SHOWN:
                named = [*named[:SHOWN], f"{len(named) - SHOWN} more features"]
            who = "the input lies" if one else f"{_percent(self.share)} of the inputs lie"
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
            "warning": self.message(),
        }


@dataclass(frozen=True)
class TrainingRange:
    """The target's quantiles (at TARGET_LEVELS) and each block's range, on the training rows."""

    target: str
    target_quantiles: tuple[float, ...]
    blocks: dict[str, BlockRange]

    @classmethod
    def fit(cls, y, blocks: dict[str, np.ndarray], target: str = "log10", names=None,
            groups=None, seed: int = 0) -> TrainingRange:  # fmt: skip
        """`names`: {block: column names} (`Encoder.feature_names()`; generic when absent);
        `groups`: the rows' channels, so embedding directions and their ranges are measured
        on different channels."""
        y = np.asarray(y, dtype=np.float64)
        names = names or {}
        ranges = {
            name: BlockRange.fit(X, names.get(name), groups, seed) for name, X in blocks.items()
        }
        return cls(target, tuple(float(q) for q in np.quantile(y, TARGET_LEVELS)), ranges)

    # ----- checks -----------------------------------------------------------------------------
    def views_outside(self, y) -> np.ndarray:
        """(N,) True where the target is beyond the training 1-99% range by more than ~3x."""
        lo, hi = self.target_quantiles[1], self.target_quantiles[5]
        y = np.asarray(y, dtype=np.float64)
        return (y < lo - VIEWS_SLACK) | (y > hi + VIEWS_SLACK)

    def features_outside(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) True where any feature of any block lies outside its training range."""
        flags = self._flags(blocks)
        if flags is None:
            return np.zeros(0, bool)
        return flags[2].any(axis=1)

    def check(self, blocks=None, y=None) -> DriftReport:
        """Which rows and features lie outside the training range. With `y` (an evaluation)
        a share above MAX_SHARE warns; without (predictions) any outside row does."""
        views = float(self.views_outside(y).mean()) if y is not None and len(y) else None
        min_share = MAX_SHARE if y is not None else 0.0
        flags = self._flags(blocks) if blocks else None
        if flags is None:
            return DriftReport(0, 0.0, (), views, self._span(), min_share)
        return _report(*flags, views, self._span(), min_share)

    def row_messages(self, blocks: dict[str, np.ndarray]) -> list[str]:
        """Each row's own warning ("" when it lies inside): what one prediction shows."""
        flags = self._flags(blocks)
        if flags is None:
            return [""] * len(next(iter(blocks.values()), ()))
        columns, values, outside = flags
        return [
            _report(columns, values[i : i + 1], outside[i : i + 1]).message() or ""
            for i in range(len(values))
        ]

    def warning(self, blocks=None, y=None) -> str | None:
        """`check(blocks, y).message()`: one plain line, or None."""
        return self.check(blocks, y).message()

    def _flags(self, blocks) -> tuple[list[tuple], np.ndarray, np.ndarray] | None:
        """([(block, ColumnRange or None, kind)], values (N, C), outside (N, C)) over the
        blocks both have (kind: see `Shift`)."""
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
        path = Path(model_dir) / RANGE_FILE
        atomic_write(path, json.dumps(asdict(self)))
        return path

    @classmethod
    def load(cls, model_dir: Path) -> TrainingRange | None:
        """The recorded range, or None for models trained before it was recorded. Files
        without per-feature ranges (older models) load and keep the whole-block check."""
        path = Path(model_dir) / RANGE_FILE
        if not path.is_file():
            return None
        from thumbview.predict.model import ArtifactError  # model imports no drift: no ring

        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            blocks = {k: _block_from_json(v) for k, v in d["blocks"].items()}
            return cls(d["target"], tuple(d["target_quantiles"]), blocks)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise ArtifactError(f"{path}: damaged training range ({type(e).__name__}: {e})") from e


def _block_from_json(v: dict) -> BlockRange:
    columns = tuple(
        ColumnRange(c["name"], c["low"], c["high"], tuple(c["seen"])) for c in v.get("columns", ())
    )
    basis = tuple(tuple(row) for row in v.get("basis", ()))
    return BlockRange(tuple(v["mean"]), tuple(v["sd"]), float(v["q99_distance"]), columns, basis)


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
    return "<1%" if 0 < share < 0.005 else f"{share:.0%}"


def _span(lo: float, hi: float, unit: str | None) -> str:
    """'2019-2020', '3 days-1.9 years', '0.12 to 0.40': a range in the column's own unit."""
    a, b = _value(lo, unit), _value(hi, unit)
    if a == b:
        return a
    return f"{a} to {b}" if min(lo, hi) < 0 and unit is None else f"{a}-{b}"


def _value(v: float, unit: str | None) -> str:
    if unit == "year":
        return str(int(np.floor(v)))
    if unit == "age":  # log10(1 + days)
        return format_days(10**v - 1)
    if unit == "subscribers":  # log10(1 + subscribers)
        return format_count(max(10**v - 1, 0.0))
    if unit == "videos":  # log10(videos)
        return format_count(10**v)
    return format_number(v)


def _distance(X: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(N,) root-mean-square standardised value of each row (the old whole-block check)."""
    return np.sqrt(np.mean(((X - mean) / sd) ** 2, axis=1))
