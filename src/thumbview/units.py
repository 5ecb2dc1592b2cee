"""What the numbers mean and how people read them: one place for targets, views and intervals.

Every model predicts in *target units*: `log10(1 + views)` ("log10") or the log10 ratio to the
channel's typical views ("channel-relative"). People read view counts ("3.5M") and
multipliers ("x1.8"), and intervals labelled by the coverage the model was calibrated for
("90% interval"), never a hard-coded level. The CLI, the PNGs, the plots and the reports all
format through here (the web page's `fmtViews` in serve/static mirrors `format_views`).
"""

from __future__ import annotations

import math

TARGETS = ("log10", "channel-relative")
TARGET_HELP = {
    "log10": "log10(1 + views): predictions are view counts",
    "channel-relative": "log10 of views / the channel's typical views: predictions are multipliers",
}
_SUFFIXES = ((1e9, "B"), (1e6, "M"), (1e3, "K"))


def is_relative(target: str) -> bool:
    """True when predictions are multipliers of the channel's views, not view counts."""
    return target == "channel-relative"


def unit_name(target: str) -> str:
    """What a prediction counts: 'views', or 'x channel median' for the relative target."""
    return "x channel median" if is_relative(target) else "views"


def format_count(v: float) -> str:
    """1234 -> '1.2K', 3_500_000 -> '3.5M', 999 -> '999', 12_345 -> '12K': YouTube's style.

    Two significant figures above 1,000 (three from 100K), rounded first so 999,999 reads
    '1M', not '1000K'. Non-finite values read '?'.
    """
    v = float(v)
    if not math.isfinite(v):
        return "?"
    sign, v = ("-" if v < 0 else ""), abs(v)
    if v < 999.5:
        return f"{sign}{v:.0f}"
    for i, (div, unit) in enumerate(_SUFFIXES):
        if v >= div * 0.9995 or i == len(_SUFFIXES) - 1:
            x = v / div
            digits = 1 if x < 9.95 else 0
            text = f"{x:.{digits}f}"
            if float(text) >= 1000 and i > 0:  # 999.6K -> 1M
                div, unit = _SUFFIXES[i - 1]
                text = f"{v / div:.1f}"
            return f"{sign}{text.removesuffix('.0')}{unit}"
    return f"{sign}{v:.0f}"  # unreachable


def format_factor(v: float) -> str:
    """A multiplier: 1.8 -> 'x1.80', 12.3 -> 'x12'."""
    v = float(v)
    if not math.isfinite(v):
        return "x?"
    return f"x{v:.2f}" if v < 10 else f"x{v:.0f}"


def format_views(v: float, target: str = "log10") -> str:
    """A prediction as people read it: '1.2K' (view count) or 'x1.80' (channel multiplier)."""
    return format_factor(v) if is_relative(target) else format_count(v)


def format_range(low: float, high: float, target: str = "log10") -> str:
    """'900 - 4.1K' for an interval in views (or multipliers)."""
    return f"{format_views(low, target)} - {format_views(high, target)}"


def format_days(days: float) -> str:
    """An age people read: 12 -> '12 days', 800 -> '2.2 years' (years from 60 days on)."""
    days = max(float(days), 0.0)
    if not math.isfinite(days):
        return "?"
    return f"{days:.0f} days" if days < 60 else f"{days / 365.25:.1f} years"


def interval_label(coverage: float) -> str:
    """'90% interval' for a model calibrated at coverage 0.9."""
    return f"{round(100 * float(coverage)):d}% interval"


def format_number(v: float) -> str:
    """A descriptor value people can read: 2960 -> '3K', 9.11e-05 -> '0.0001', 0.42 -> '0.42'.

    Never scientific notation: counts get K/M suffixes, small values at most 4 decimals.
    """
    v = float(v)
    if not math.isfinite(v):
        return "?"
    if abs(v) >= 1000:
        return format_count(v)
    decimals = 0 if abs(v) >= 10 else 2 if abs(v) >= 0.01 else 4
    text = f"{v:.{decimals}f}"
    text = text.rstrip("0").rstrip(".") if "." in text else text
    return "0" if text in ("-0", "") else text


def round_ticks(lo: float, hi: float, max_ticks: int = 8):
    """Round values 1, 2, 5 x 10^k inside [lo, hi] (positive, linear units): 1K, 2K, 5K, 10K.

    Thinned to 1 and 10^k only (then every other power) when more than `max_ticks` fit.
    """
    import numpy as np  # here, so that `thumbview --help` (which imports units) stays light

    lo, hi = max(float(lo), 1e-12), float(hi)
    if not hi > lo:
        return np.array([], dtype=np.float64)
    k = np.arange(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    ticks = np.outer(10.0**k, [1.0, 2.0, 5.0]).ravel()
    ticks = ticks[(ticks >= lo * (1 - 1e-9)) & (ticks <= hi * (1 + 1e-9))]
    if len(ticks) > max_ticks:
        ticks = ticks[np.isclose(np.log10(ticks), np.round(np.log10(ticks)))]
    while len(ticks) > max_ticks:
        ticks = ticks[::2]
    return ticks


def shorten(text: str, width: int) -> str:
    """`text` cut at a word boundary to at most `width` characters, with '…' when cut."""
    text = " ".join(str(text).split())
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space >= width // 2:  # a word boundary not too far back; else cut the long word
        cut = cut[:space]
    return cut.rstrip(" ,.;:-") + "…"
