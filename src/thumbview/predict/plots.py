"""Diagnostic figures for a fitted predictor, written as PNG files.

People read views, not log10 units, so every axis that carries log10 values is labelled in
views (1K, 2K, 5K, 10K, 1M; see `thumbview.units`) or in multiplicative factors (x2, x0.5) on a log scale. Figures are drawn
on `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot global state, no GUI
backend, safe from worker threads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator

from thumbview import units
from thumbview.predict.metrics import compute_metrics

log = logging.getLogger(__name__)


class PlotError(ValueError):
    """Inputs a figure cannot be drawn from (mismatched lengths, nothing finite)."""


def format_views(log10_value: float, _pos=None) -> str:
    """Tick label for a log10(1 + views) value: log10(1001) -> '1K', log10(1 + 2.5e6) -> '2.5M'."""
    return units.format_count(10.0**log10_value - 1.0)


def format_factor(log10_value: float, _pos=None) -> str:
    """Tick label for a log10 ratio: 1 -> 'x10', 0 -> 'x1', -0.3 -> 'x0.5'."""
    v = float(f"{10.0**log10_value:.2g}")
    return "\u00d7" + (f"{v:g}" if v < 1000 else units.format_count(v))


def views_ticks(lo: float, hi: float) -> np.ndarray:
    """Positions (log10(1 + views)) of round view counts 1, 2, 5 x 10^k (1K, 2K, 5K, 10K)."""
    ticks = units.round_ticks(max(10.0**lo - 1.0, 1.0), 10.0 ** max(hi, 0.0) - 1.0)
    if lo <= 0.0 <= hi:
        ticks = np.concatenate([[0.0], ticks])  # 0 views
    return np.log10(1.0 + np.asarray(ticks, dtype=np.float64))


def factor_ticks(lo: float, hi: float) -> np.ndarray:
    """Positions (log10 ratio) of round factors x0.1, x0.2, x0.5, x1, x2, ... inside [lo, hi]."""
    return np.log10(units.round_ticks(10.0**lo, 10.0**hi, max_ticks=9))


def _log_axis(axis, lo: float, hi: float, relative: bool) -> None:
    """Round-number ticks labelled in views (or factors); plain locator if too few fit."""
    ticks = factor_ticks(lo, hi) if relative else views_ticks(lo, hi)
    axis.set_major_locator(FixedLocator(ticks) if len(ticks) >= 2 else MaxNLocator(nbins=6))
    axis.set_major_formatter(FuncFormatter(format_factor if relative else format_views))


def _finite_pair(a, b, what: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise PlotError(f"{what}: lengths differ ({a.size} vs {b.size})")
    ok = np.isfinite(a) & np.isfinite(b)
    if not ok.any():
        raise PlotError(f"{what}: no finite values to plot")
    return a[ok], b[ok]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    log.debug("wrote %s", path)
    return path


def plot_pred_vs_actual(
    y_true, y_pred, path, *, relative: bool = False, title: str | None = None
) -> Path:
    """Scatter of predicted vs actual views (log axes) with the y = x line.

    `relative=True` labels axes as multiples of the channel median (channel-relative target).
    """
    yt, yp = _finite_pair(y_true, y_pred, "pred vs actual")
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.scatter(yt, yp, s=6, alpha=0.35, linewidths=0)
    lo, hi = float(min(yt.min(), yp.min())), float(max(yt.max(), yp.max()))
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="perfect prediction")
    for axis in (ax.xaxis, ax.yaxis):
        _log_axis(axis, lo, hi, relative)
    unit = "views / channel median" if relative else "views"
    ax.set_xlabel(f"actual {unit} (log scale)")
    ax.set_ylabel(f"predicted {unit} (log scale)")
    rho = compute_metrics(yt, yp).spearman
    ax.set_title(title or f"Predicted vs actual views (n={yt.size}, Spearman {rho:.2f})")
    ax.legend(loc="upper left", frameon=False)
    return _save(fig, path)


def plot_residual_hist(residuals, path, interval: tuple[float, float] | None = None) -> Path:
    """Histogram of actual/predicted as a factor (log axis), with the interval's bounds marked."""
    r = np.asarray(residuals, np.float64).ravel()
    r = r[np.isfinite(r)]
    if not r.size:
        raise PlotError("residual histogram: no finite residuals")
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.hist(r, bins=min(60, max(10, r.size // 20)), color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="black", lw=1)
    if interval is not None:
        lo, hi = interval
        inside = float(np.mean((r >= lo) & (r <= hi)))
        label = f"interval {format_factor(lo)} .. {format_factor(hi)} ({inside:.0%} inside)"
        for bound in (lo, hi):
            ax.axvline(bound, color="tab:red", ls="--", lw=1, label=label if bound == lo else None)
        ax.legend(loc="best", framealpha=0.9)
    _log_axis(ax.xaxis, float(r.min()), float(r.max()), relative=True)
    ax.set_xlabel("actual views / predicted views (log scale)")
    ax.set_ylabel("videos")
    ax.set_title(f"Prediction errors (median miss {format_factor(np.median(np.abs(r)))})")
    return _save(fig, path)


def plot_training_curve(history, path) -> Path:
    """Train and validation error per epoch, as RMSE in log10 views and as a typical factor."""
    h = np.asarray(history, np.float64)
    if h.ndim != 2 or h.shape[1] != 3 or not len(h):
        raise PlotError("training curve: history must be a list of (epoch, train_loss, val_loss)")
    epoch, train, val = h[:, 0], np.sqrt(h[:, 1]), np.sqrt(h[:, 2])  # MSE -> RMSE
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    ax.plot(epoch, train, label="train")
    ax.plot(epoch, val, label="validation")
    best = int(np.argmin(val))
    ax.axvline(epoch[best], color="grey", ls=":", label=f"best epoch {int(epoch[best])}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("RMSE (log10 views)")
    factor = ax.secondary_yaxis("right", functions=(lambda x: x, lambda x: x))
    ylo, yhi = ax.get_ylim()
    _log_axis(factor.yaxis, ylo, yhi, relative=True)
    factor.set_ylabel("typical miss (factor of views)")
    ax.set_title(f"MLP training curve (best validation miss {format_factor(val[best])})")
    ax.legend(frameon=False)
    return _save(fig, path)
