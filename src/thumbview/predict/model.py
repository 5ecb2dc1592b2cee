"""The view predictor: encoder feature blocks -> predicted (log) views with honest intervals.

Blocks come from different encoders with very different widths (512-d CLIP, 384-d title,
~30 visual descriptors). Each block is standardised and scaled by 1/sqrt(D) so every block
has the same total variance: otherwise the ridge penalty would treat the 30 hand-made
descriptors as a rounding error next to CLIP.

Intervals are split-conformal on out-of-fold residuals: the residual distribution of K-fold
predictions on videos the model did not see (channel-disjoint when channels are known).
That is what a new thumbnail will face, unlike in-sample residuals, which are far too small.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from thumbview import __version__
from thumbview.fileio import atomic_write, write_json
from thumbview.layout import MODEL_CONFIG, MODEL_WEIGHTS, check_finished
from thumbview.predict.heads import (
    GBM_MAX_DIM,
    HEADS,
    HeadError,
    MLPParams,
    head_from_arrays,
)
from thumbview.predict.metrics import Metrics, compute_metrics, group_kfold
from thumbview.predict.target import TARGETS
from thumbview.schema import MapOf, Number, Optional, check, read_json
from thumbview.tensorfile import FLOAT_DTYPES, INT_DTYPES, dtype_problem, read_header

log = logging.getLogger(__name__)

FORMAT = "thumbview-predictor"
FORMAT_VERSION = 1
WEIGHTS_FILE, CONFIG_FILE = MODEL_WEIGHTS, MODEL_CONFIG
# config.json as `save` writes it; `load` refuses anything else with the file and field named.
CONFIG_SCHEMA = {
    "format": str,
    "format_version": int,
    "config": {
        "encoders": [str],
        "head": str,
        "target": str,
        "coverage": Number,
        "cv_folds": int,
        "seed": int,
        "mlp": Optional(MapOf((int, float, str, bool, list, type(None)))),
    },
    "head": MapOf((int, float, str, bool, list, type(None))),
    "block_dims": MapOf(int),
    "y_median": Number,
    "n_train": int,
    "thumbview_version": Optional(str),
    "target": Optional(str),
    "cv_metrics": Optional(
        {"spearman": (*Number, type(None)), "pearson": (*Number, type(None)),
         "mae_log10": (*Number, type(None)), "r2": (*Number, type(None)), "n": int}
    ),
}  # fmt: skip
INT_ARRAYS = ("tree_sizes",)  # the only integer arrays a predictor stores (GBM); others float
METRIC_FIELDS = ("spearman", "pearson", "mae_log10", "r2", "n")  # cv_metrics in config.json
QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)  # residual quantiles stored for intervals


class PredictorError(ValueError):
    """The predictor cannot use these inputs or this configuration; the message says why."""


class ArtifactError(PredictorError):
    """A saved predictor folder is missing, incomplete or corrupt."""


@dataclass(frozen=True)
class PredictorConfig:
    """Everything that determines a fitted predictor besides the data."""

    encoders: tuple[str, ...]
    head: str = "ridge"
    target: str = "log10"
    coverage: float = 0.8
    cv_folds: int = 5
    seed: int = 0
    mlp: dict | None = field(default=None, hash=False)

    def __post_init__(self):
        object.__setattr__(self, "encoders", tuple(self.encoders))
        if not self.encoders or len(set(self.encoders)) != len(self.encoders):
            raise PredictorError(
                f"encoders must be a non-empty list of distinct names, got {self.encoders}"
            )
        if self.head not in HEADS:
            raise PredictorError(f"unknown head {self.head!r}; choose one of {', '.join(HEADS)}")
        if self.target not in TARGETS:
            raise PredictorError(
                f"unknown target {self.target!r}; choose one of {', '.join(TARGETS)}"
            )
        if not 0 < self.coverage < 1:
            raise PredictorError(f"coverage must be in (0, 1), got {self.coverage}")
        if self.cv_folds < 2:
            raise PredictorError(f"cv_folds must be >= 2, got {self.cv_folds}")
        unknown = set(self.mlp or {}) - set(MLPParams.__dataclass_fields__)
        if unknown:
            raise PredictorError(f"unknown mlp options: {', '.join(sorted(unknown))}")
        try:
            MLPParams(**(self.mlp or {}))
        except HeadError as e:
            raise PredictorError(f"bad mlp options: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "encoders": list(self.encoders)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictorConfig:
        return cls(**{**d, "encoders": tuple(d["encoders"])})


class ViewPredictor:
    """Fit on `{encoder: (N, D_k)}` blocks and a target `y` (N,), predict with intervals.

    Fitted attributes: `block_dims_`, `block_mean_`, `block_scale_` (per block), `head_`,
    `residual_quantiles_` (signed out-of-fold residuals at `quantile_levels_`), `cv_metrics_`,
    `oof_predictions_` (not saved), `y_median_`, `n_train_`.
    """

    def __init__(self, config: PredictorConfig):
        self.config = config

    # ----- fitting -------------------------------------------------------------------------
    def fit(self, blocks: dict[str, np.ndarray], y, groups=None, *, calibrate: bool = True):
        """Fit scalers + head on all rows; with `calibrate`, first K-fold for conformal residuals."""
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 1 or not np.isfinite(y).all():
            raise PredictorError("y must be a 1-d array of finite numbers (drop masked rows first)")
        blocks = self._check_blocks(blocks, len(y), fitting=True)
        if groups is not None and len(groups) != len(y):
            raise PredictorError(f"groups has {len(groups)} rows but y has {len(y)}")
        if calibrate:
            self._calibrate(blocks, y, groups)
        self._fit_core(blocks, y, groups)
        return self

    def _fit_core(self, blocks: dict[str, np.ndarray], y: np.ndarray, groups=None) -> None:
        self.block_dims_ = {name: blocks[name].shape[1] for name in self.config.encoders}
        self.block_mean_, self.block_scale_ = {}, {}
        for name in self.config.encoders:
            X = blocks[name].astype(np.float64)  # (N, D_k)
            std = X.std(axis=0)
            self.block_mean_[name] = X.mean(axis=0)
            self.block_scale_[name] = np.where(std > 1e-12, std, 1.0)
        try:
            head = self._new_head()
        except HeadError as e:
            raise PredictorError(str(e)) from e
        if self.config.head in ("gbm", "stacked"):  # trees stop early on a channel-grouped split
            self.head_ = head.fit(self._design(blocks), y, groups)
        else:
            self.head_ = head.fit(self._design(blocks), y)
        self.y_median_, self.n_train_ = float(np.median(y)), len(y)

    def _new_head(self):
        if self.config.head == "mlp":
            opts = {"seed": self.config.seed, **(self.config.mlp or {}), "standardize": False}
            return HEADS["mlp"](**opts)
        if self.config.head == "gbm":
            return HEADS["gbm"](seed=self.config.seed)
        if self.config.head == "stacked":
            return HEADS["stacked"](self._narrow_columns(), seed=self.config.seed)
        return HEADS["ridge"](standardize=False)  # blocks are already scaled on purpose

    def _narrow_columns(self) -> list[int]:
        """Design columns of the blocks narrow enough for trees, in design order."""
        columns, start = [], 0
        for name in self.config.encoders:
            dim = self.block_dims_[name]
            if dim <= GBM_MAX_DIM:
                columns.extend(range(start, start + dim))
            start += dim
        return columns

    def _calibrate(self, blocks: dict[str, np.ndarray], y: np.ndarray, groups) -> None:
        """Out-of-fold predictions -> residual quantiles (intervals) and honest metrics."""
        cfg = self.config
        try:
            folds = group_kfold(groups, cfg.cv_folds, cfg.seed, n=len(y))
        except ValueError as e:
            raise PredictorError(f"cannot calibrate intervals: {e}") from e
        oof = np.empty(len(y))  # (N,)
        for train, test in folds:
            fold_model = ViewPredictor(cfg)
            fold_groups = None if groups is None else np.asarray(groups, dtype=object)[train]
            fold_model._fit_core(block_rows(blocks, train), y[train], fold_groups)
            oof[test] = fold_model.predict(block_rows(blocks, test))
        self.oof_predictions_ = oof
        self.quantile_levels_ = QUANTILE_LEVELS.copy()
        self.residual_quantiles_ = np.quantile(y - oof, QUANTILE_LEVELS)  # (Q,) signed
        self.cv_metrics_ = compute_metrics(y, oof)
        log.info("out-of-fold metrics (%d folds): %s", cfg.cv_folds, self.cv_metrics_)

    # ----- prediction ----------------------------------------------------------------------
    def predict(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        """Point prediction (N,) in target units (log10 views, or log10 ratio to the channel)."""
        self._require("head_")
        n = _n_rows(blocks, self.config.encoders)
        return self.head_.predict(self._design(self._check_blocks(blocks, n)))

    def predict_interval(
        self, blocks, coverage: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Central `coverage` interval `(lo, hi)`, each (N,), from out-of-fold residual quantiles."""
        coverage = self.config.coverage if coverage is None else coverage
        if not 0 < coverage < 1:
            raise PredictorError(f"coverage must be in (0, 1), got {coverage}")
        self._require("residual_quantiles_")
        pred = self.predict(blocks)
        lo_q, hi_q = self.residual_quantile([(1 - coverage) / 2, (1 + coverage) / 2])
        return pred + lo_q, pred + hi_q

    def residual_quantile(self, levels) -> np.ndarray:
        """Signed residual (actual - predicted) at probability `levels`, interpolated."""
        self._require("residual_quantiles_")
        return np.interp(levels, self.quantile_levels_, self.residual_quantiles_)

    def predictive_quantiles(self, blocks) -> np.ndarray:
        """Predictive distribution as quantiles (N, Q) at `quantile_levels_`."""
        self._require("residual_quantiles_")
        return self.predict(blocks)[:, None] + self.residual_quantiles_[None, :]

    def predictive_samples(self, blocks, n: int, seed: int = 0) -> np.ndarray:
        """`n` draws (N, n) from each prediction's distribution (inverse-CDF of the residuals).

        Used to estimate P(A beats B): draw for both, compare. Residuals are drawn
        independently per row, so it treats the two errors as independent: on same-channel
        pairs that scored like a coin flip (`predict.pairwise` calibrates the difference instead).
        """
        u = np.random.default_rng(seed).random((_n_rows(blocks, self.config.encoders), n))
        return self.predict(blocks)[:, None] + self.residual_quantile(u)  # (N, n)

    # ----- features ------------------------------------------------------------------------
    def _design(self, blocks: dict[str, np.ndarray]) -> np.ndarray:
        """Standardised blocks, each weighted 1/sqrt(D_k), concatenated in config order."""
        parts = []
        for name in self.config.encoders:
            X = blocks[name].astype(np.float64)  # (N, D_k)
            weight = 1.0 / np.sqrt(X.shape[1])
            parts.append((X - self.block_mean_[name]) / self.block_scale_[name] * weight)
        return np.concatenate(parts, axis=1)  # (N, sum D_k)

    def _check_blocks(self, blocks, n: int, fitting: bool = False) -> dict[str, np.ndarray]:
        """Every configured block present, 2-d, n rows, right width, finite."""
        if not isinstance(blocks, dict):
            raise PredictorError("features must be a dict {encoder name: (N, D) array}")
        out = {}
        for name in self.config.encoders:
            if name not in blocks:
                have = ", ".join(sorted(blocks)) or "none"
                raise PredictorError(f"missing feature block {name!r} (have: {have})")
            X = np.asarray(blocks[name])
            if X.ndim != 2 or X.shape[0] != n:
                raise PredictorError(f"block {name!r} has shape {X.shape}, expected ({n}, D)")
            want = None if fitting else self.block_dims_[name]
            if want is not None and X.shape[1] != want:
                raise PredictorError(
                    f"block {name!r} has {X.shape[1]} columns but the model was trained on {want}"
                    " (different encoder or encoder version?)"
                )
            if not np.isfinite(X).all():
                raise PredictorError(f"block {name!r} contains NaN/inf values")
            out[name] = X
        return out

    def _require(self, attr: str) -> None:
        if not hasattr(self, attr):
            what = (
                "calibrated (fit with calibrate=True)"
                if attr == "residual_quantiles_"
                else "fitted"
            )
            raise PredictorError(f"this ViewPredictor is not {what} yet")

    # ----- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write `model.safetensors` (all arrays) and `config.json` (everything else)."""
        self._require("head_")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {f"head.{k}": v for k, v in self.head_.to_arrays().items()}
        for name in self.config.encoders:
            arrays[f"block.{name}.mean"] = self.block_mean_[name]
            arrays[f"block.{name}.scale"] = self.block_scale_[name]
        if hasattr(self, "residual_quantiles_"):
            arrays["residual_quantiles"] = self.residual_quantiles_
            arrays["quantile_levels"] = self.quantile_levels_
        arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(arrays, p))
        write_json(directory / CONFIG_FILE, self._meta())
        log.info("saved predictor to %s", directory)
        return directory

    def _meta(self) -> dict[str, Any]:
        cv = getattr(self, "cv_metrics_", None)
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "thumbview_version": __version__,
            "config": self.config.to_dict(),
            "head": self.head_.config(),
            "block_dims": self.block_dims_,
            "target": self.config.target,
            "y_median": self.y_median_,
            "n_train": self.n_train_,
            "cv_metrics": None if cv is None else cv.to_dict(),
        }

    @classmethod
    def load(cls, directory: str | Path) -> ViewPredictor:
        """Rebuild a saved predictor; a missing or damaged file raises `ArtifactError`."""
        directory = Path(directory)
        meta, arrays = _read_artifact(directory)
        try:
            model = cls(PredictorConfig.from_dict(meta["config"]))
        except (TypeError, PredictorError) as e:
            raise ArtifactError(f"{directory / CONFIG_FILE}: config: {e}") from e
        model.block_dims_ = _block_dims(meta["block_dims"], model.config.encoders, directory)
        if meta["head"].get("kind") != model.config.head:
            raise ArtifactError(
                f"{directory / CONFIG_FILE}: head.kind {str(meta['head'].get('kind'))[:20]!r} "
                f"is not config.head {model.config.head!r}"
            )
        try:
            model.block_mean_ = {n: arrays[f"block.{n}.mean"] for n in model.config.encoders}
            model.block_scale_ = {n: arrays[f"block.{n}.scale"] for n in model.config.encoders}
            heads = {k[5:]: v for k, v in arrays.items() if k.startswith("head.")}
            model.head_ = head_from_arrays(meta["head"], heads)
        except (KeyError, TypeError, HeadError) as e:
            raise ArtifactError(
                f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE} (head: {e})"
            ) from e
        model.y_median_, model.n_train_ = float(meta["y_median"]), int(meta["n_train"])
        _check_loaded_dims(model, directory)
        quantiles = quantile_arrays(arrays, directory / WEIGHTS_FILE)
        if quantiles is not None:
            model.quantile_levels_, model.residual_quantiles_ = quantiles
        if meta.get("cv_metrics"):
            model.cv_metrics_ = Metrics(**{k: meta["cv_metrics"][k] for k in METRIC_FIELDS})
        return model


def _read_artifact(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Both files of a saved predictor, or an `ArtifactError` naming what is wrong."""
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such model folder")
    check_finished(directory, ArtifactError)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (directory / name).is_file():
            raise ArtifactError(f"{directory}: missing {name} (not a saved thumbview predictor?)")
    meta = read_json(directory / CONFIG_FILE, None, ArtifactError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtifactError(f"{directory / CONFIG_FILE}: not a thumbview predictor config")
    version = meta.get("format_version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise ArtifactError(
            f"{directory / CONFIG_FILE}: saved by a newer thumbview "
            f"({str(meta.get('thumbview_version'))[:20]}); upgrade to load it"
        )
    problem = check(meta, CONFIG_SCHEMA)  # every field, typed
    if problem:
        raise ArtifactError(f"{directory / CONFIG_FILE}: {problem}")
    header = read_header(directory / WEIGHTS_FILE, ArtifactError)
    counts = {k: v for k, v in header.items() if k.endswith(INT_ARRAYS)}
    floats = {k: v for k, v in header.items() if k not in counts}
    if problem := dtype_problem(counts, INT_DTYPES) or dtype_problem(floats, FLOAT_DTYPES):
        raise ArtifactError(f"{directory / WEIGHTS_FILE}: {problem}")
    try:
        arrays = load_file(directory / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{directory / WEIGHTS_FILE}: corrupt or truncated ({e})") from e
    bad = sorted(k for k, v in arrays.items() if v.dtype.kind == "f" and not np.isfinite(v).all())
    if bad:
        raise ArtifactError(
            f"{directory / WEIGHTS_FILE}: non-finite values (NaN or inf) in {', '.join(bad)}"
        )
    return meta, arrays


def _block_dims(dims: dict[str, int], encoders: tuple[str, ...], directory: Path) -> dict:
    """block_dims: exactly one positive width per configured encoder."""
    if set(dims) != set(encoders) or any(d < 1 for d in dims.values()):
        raise ArtifactError(
            f"{directory / CONFIG_FILE}: block_dims must give a positive width for each of "
            f"{', '.join(encoders)} (got {str(dims)[:80]})"
        )
    return {name: dims[name] for name in encoders}


def _check_loaded_dims(model: ViewPredictor, directory: Path) -> None:
    """Scalers of block_dims' widths, and a head that reads exactly the design's columns."""
    for name, dim in model.block_dims_.items():
        for part in (model.block_mean_[name], model.block_scale_[name]):
            if part.shape != (dim,):
                raise ArtifactError(
                    f"{directory / WEIGHTS_FILE}: block {name!r} scaler has shape {part.shape}, "
                    f"{CONFIG_FILE} block_dims says ({dim},)"
                )
        if not (model.block_scale_[name] > 0).all():  # a standard deviation (1 if constant)
            raise ArtifactError(f"{directory / WEIGHTS_FILE}: block.{name}.scale must be > 0")
    width = sum(model.block_dims_.values())
    head_width = getattr(model.head_, "n_features_", None) or len(model.head_.coef_)
    if head_width != width:
        raise ArtifactError(
            f"{directory / CONFIG_FILE}: the head reads {head_width} columns but block_dims "
            f"add up to {width}"
        )


def quantile_arrays(
    arrays: dict[str, np.ndarray], path: Path
) -> tuple[np.ndarray, np.ndarray] | None:
    """(levels, residual quantiles) for intervals, or None when the model has none.

    Both or neither; levels strictly increasing in [0, 1] and quantiles non-decreasing, each
    1-d of one length: a reversed or shuffled array would otherwise change every interval
    without a word."""
    levels, resid = arrays.get("quantile_levels"), arrays.get("residual_quantiles")
    if levels is None and resid is None:
        return None
    if levels is None or resid is None:
        missing = "quantile_levels" if levels is None else "residual_quantiles"
        raise ArtifactError(f"{path}: {missing} is missing (intervals need both arrays)")
    if levels.ndim != 1 or resid.shape != levels.shape or len(levels) < 2:
        raise ArtifactError(
            f"{path}: quantile_levels {levels.shape} and residual_quantiles {resid.shape} "
            "must be 1-d arrays of one length >= 2"
        )
    if not (np.all(np.diff(levels) > 0) and levels[0] >= 0 and levels[-1] <= 1):
        raise ArtifactError(f"{path}: quantile_levels must increase strictly within [0, 1]")
    if not np.all(np.diff(resid) >= -1e-9 * max(1.0, float(np.abs(resid).max()))):
        raise ArtifactError(f"{path}: residual_quantiles must not decrease (they are quantiles)")
    return levels.astype(np.float64), resid.astype(np.float64)


def block_rows(blocks: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    """The rows `idx` of every feature block (the one way folds and splits subset blocks)."""
    return {name: np.asarray(X)[idx] for name, X in blocks.items()}


def _n_rows(blocks, encoders) -> int:
    """Row count of the first configured block present (validation happens in `_check_blocks`)."""
    if not isinstance(blocks, dict):
        raise PredictorError("features must be a dict {encoder name: (N, D) array}")
    for name in encoders:
        if name in blocks:
            return int(np.shape(blocks[name])[0])
    raise PredictorError(
        f"missing feature block {encoders[0]!r} (have: {', '.join(sorted(blocks)) or 'none'})"
    )
