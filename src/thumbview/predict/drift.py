"""Say when data lies outside what the model was trained on.

A model trained on videos with 1K-11K views has never seen a video with millions: its
errors, and its intervals, say nothing about them (such a model's 80% interval covered 1.5%
of them). The model folder therefore records the training distribution of its target
(quantiles) and of each feature block (column means and sds, and how far training rows
themselves lie from that centre), and evaluation and prediction compare against it and
warn in one plain line.

Distance of a row from a block: the root-mean-square of its standardised columns. A row is
"far outside" a block when that distance exceeds `FAR` times the 99th percentile of the
training rows' own distances: robust to blocks whose columns are all wide or all narrow.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from thumbview.fileio import atomic_write

RANGE_FILE = "training_range.json"
TARGET_LEVELS = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 1.0)
FAR = 2.0  # x the training rows' 99th-percentile distance
VIEWS_SLACK = 0.5  # log10 units beyond the training 1-99% range (about 3x) before warning
MAX_SHARE = 0.05  # warn when more than this share of rows is outside


@dataclass(frozen=True)
class BlockRange:
    """Column mean and sd of one feature block on the training rows, and their 99% distance."""

    mean: tuple[float, ...]
    sd: tuple[float, ...]
    q99_distance: float


@dataclass(frozen=True)
class TrainingRange:
    """The target's quantiles (at TARGET_LEVELS) and each block's range, on the training rows."""

    target: str
    target_quantiles: tuple[float, ...]
    blocks: dict[str, BlockRange]

    @classmethod
    def fit(cls, y, blocks: dict[str, np.ndarray], target: str = "log10") -> TrainingRange:
        y = np.asarray(y, dtype=np.float64)
        ranges = {}
        for name, X in blocks.items():
            X = np.asarray(X, dtype=np.float64)  # (N, D)
            mean, sd = X.mean(axis=0), X.std(axis=0)
            sd = np.where(sd > 1e-12, sd, 1.0)
            dist = _distance(X, mean, sd)
            ranges[name] = BlockRange(tuple(mean), tuple(sd), float(np.quantile(dist, 0.99)))
        return cls(target, tuple(float(q) for q in np.quantile(y, TARGET_LEVELS)), ranges)

    # ----- checks -----------------------------------------------------------------------------
    def views_outside(self, y) -> np.ndarray:
        """(N,) True where the target is beyond the training 1-99% range by more than ~3x."""
        lo, hi = self.target_quantiles[1], self.target_quantiles[5]
        y = np.asarray(y, dtype=np.float64)
        return (y < lo - VIEWS_SLACK) | (y > hi + VIEWS_SLACK)

    def features_outside(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        """(N,) True where any block's distance exceeds FAR x the training 99th percentile."""
        out = None
        for name, r in self.blocks.items():
            if name not in blocks:
                continue
            dist = _distance(np.asarray(blocks[name], np.float64), np.array(r.mean), np.array(r.sd))
            far = dist > FAR * max(r.q99_distance, 1e-12)
            out = far if out is None else out | far
        return np.zeros(0, bool) if out is None else out

    def warning(self, blocks=None, y=None) -> str | None:
        """One plain line when views or features are far outside the training range, else None."""
        parts = []
        if y is not None and len(y):
            share = float(self.views_outside(y).mean())
            if share > MAX_SHARE:
                parts.append(
                    f"{share:.0%} of these videos have views far outside the training range "
                    f"({self._span()})"
                )
        if blocks:
            far = self.features_outside(blocks)
            if len(far) and far.mean() > (MAX_SHARE if y is not None else 0):
                parts.append(f"{far.mean():.0%} of the inputs look unlike the training thumbnails")
        if not parts:
            return None
        return "; ".join(parts) + ": predictions and intervals there are extrapolations"

    def _span(self) -> str:
        from thumbview.predict.target import to_views
        from thumbview.units import format_views

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
        """The recorded range, or None for models trained before it was recorded."""
        path = Path(model_dir) / RANGE_FILE
        if not path.is_file():
            return None
        d = json.loads(path.read_text())
        blocks = {
            k: BlockRange(tuple(v["mean"]), tuple(v["sd"]), float(v["q99_distance"]))
            for k, v in d["blocks"].items()
        }
        return cls(d["target"], tuple(d["target_quantiles"]), blocks)


def _distance(X: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    """(N,) root-mean-square standardised value of each row."""
    return np.sqrt(np.mean(((X - mean) / sd) ** 2, axis=1))
