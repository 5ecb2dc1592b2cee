"""Figures, image grids and the HTML report of the SAE feature study.

The report is for a creator, not a statistician: one self-contained `report.html` (inline
CSS, no scripts, relative links to PNGs beside it) that opens from disk on a laptop or a
phone. Plots use matplotlib's `Figure` directly (Agg canvas, no pyplot global state, safe
in worker threads); grids are composed with PIL, which is ~50x faster than a subplot grid
when a study writes 200 of them.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from thumbview.data.images import ImageError, load_image
from thumbview.fileio import atomic_write
from thumbview.sae.study import StudyResult
from thumbview.units import format_count

logger = logging.getLogger(__name__)

SIGNIFICANCE = 0.05  # q below which a feature is coloured as going with more/fewer views

CELL_W, CELL_H, LABEL_H, HEADER_H, PAD = 160, 90, 18, 22, 4
_BG, _EMPTY, _TEXT = (255, 255, 255), (235, 235, 235), (30, 30, 30)


def format_views(v: float) -> str:
    """1234567 -> '1.2M views': the one count style (`units.format_count`), with its unit."""
    return f"{format_count(v)} views"


# ------------------------------------------------------------------------------- plots


def _log_axis(ax: Any, fmt: Any) -> None:
    """Log x axis labelled in plain words ('3K', '2x') instead of powers of ten."""
    from matplotlib.ticker import FuncFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))

    def minor(v: float, _: Any) -> str:  # minor labels only where they cannot crowd
        lo, hi = ax.get_xlim()
        return fmt(v) if lo > 0 and math.log10(hi / lo) < 1.2 else ""

    ax.xaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="x", which="minor", labelsize=7)


def _figure(width: float, height: float) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    return fig, fig.subplots()


def plot_histogram(result: StudyResult, path: str | Path) -> Path:
    """Feature-group statistics vs random-group statistics on a log axis, KS in the title.

    Each histogram is normalised to fractions, since there may be more random groups than
    features; zeros are clipped to the smallest positive value so the log axis can show them.
    """
    feat = result.features[result.stat_column].to_numpy(dtype=np.float64)  # (F,)
    null = np.asarray(result.random_stats, dtype=np.float64)  # (R,)
    both = np.concatenate([feat, null])
    pos = both[both > 0]
    lo, hi = (pos.min(), pos.max()) if len(pos) else (1.0, 10.0)
    bins = np.geomspace(lo, hi * 1.0001 if hi > lo else lo * 1.1, 40)
    fig, ax = _figure(7, 4)
    for values, label, colour in ((null, "random groups", "0.6"), (feat, "feature groups", "C0")):
        if len(values):
            ax.hist(
                np.clip(values, lo, None),
                bins,
                weights=np.full(len(values), 1 / len(values)),
                alpha=0.55,
                color=colour,
                label=f"{label} ({len(values)})",
            )
    ax.axvline(result.dataset_statistic, color="k", lw=1, ls="--", label="all videos")
    _log_axis(ax, lambda v: format_views(v).removesuffix(" views"))
    ax.set_xlabel(f"group {result.config.statistic} views (n = {result.config.group_size} each)")
    ax.set_ylabel("fraction of groups")
    ax.set_title(
        f"KS D = {result.ks_statistic:.3f}, view-shuffle p = {result.ks_pvalue:.2g} "
        f"({result.ks.n_shuffles} shuffles)"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


_RATIO_TICKS = (
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.25,
    0.33,
    0.5,
    0.67,
    0.8,
    0.9,
    1.0,
    1.1,
    1.25,
    1.5,
    2.0,
    3.0,
    4.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
)


def ratio_ticks(lo: float, hi: float, max_ticks: int = 9) -> list[float]:
    """Round multipliers (0.5x, 0.8x, 1x, 1.25x, 2x ...) spanning [lo, hi], always with 1x.

    A log axis over a narrow range (0.9x-1.1x, common for real effects) gets no major
    tick but "1x" from matplotlib; these keep at least three readable labels.
    """
    lo, hi = min(lo, 1.0), max(hi, 1.0)
    inside = [v for v in _RATIO_TICKS if lo <= v <= hi]
    below = [v for v in _RATIO_TICKS if v < lo][-1:]  # one tick beyond each end
    above = [v for v in _RATIO_TICKS if v > hi][:1]
    ticks = below + inside + above
    while len(ticks) > max_ticks:  # thin out, keeping 1x and both ends
        keep = {0, len(ticks) - 1, ticks.index(1.0)}
        ticks = [v for i, v in enumerate(ticks) if i in keep or i % 2 == 0]
    return ticks


def plot_magnitude(result: StudyResult, path: str | Path, alpha: float = SIGNIFICANCE) -> Path:
    """Horizontal bars of group views / dataset views for the table's top and bottom features.

    Bars start at 1 (no effect) on a log axis, so x2 and x0.5 look equally large; bars and
    whiskers are the estimation-half statistic and its bootstrap CI over the same
    denominator. Only features with q < alpha are green (more views) or red (fewer).
    """
    table = result.table()
    denom = result.dataset_statistic if result.dataset_statistic > 0 else float("nan")
    ratio = np.clip(table["estimate_ratio"].to_numpy(dtype=np.float64), 1e-3, None)  # (2k,)
    ratio = np.where(np.isfinite(ratio), ratio, 1.0)
    ci = table[["ci_low", "ci_high"]].to_numpy(dtype=np.float64) / denom  # (2k, 2)
    y = np.arange(len(table))[::-1]  # top feature #1 at the top
    significant = table["q"].to_numpy(dtype=np.float64) < alpha
    colours = np.where(significant, np.where(ratio >= 1, "tab:green", "tab:red"), "0.65")
    fig, ax = _figure(7, min(36.0, max(3.0, 0.17 * len(table) + 1.3)))
    ax.barh(y, ratio - 1, left=1, color=colours, alpha=0.8)
    ok = np.isfinite(ci).all(axis=1) & (ci > 0).all(axis=1)
    if ok.any():
        err = np.abs(np.stack([ratio[ok] - ci[ok, 0], ci[ok, 1] - ratio[ok]]))  # (2, m)
        ax.errorbar(ratio[ok], y[ok], xerr=err, fmt="none", ecolor="k", elinewidth=0.8, capsize=2)
    ax.axvline(1, color="k", lw=0.8)
    shown = np.concatenate([ratio, ci[ok].ravel()])
    ticks = ratio_ticks(float(shown.min()), float(shown.max()))
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{v:g}×" for v in ticks])
    ax.xaxis.set_minor_locator(_null_locator())
    ax.set_xlim(ticks[0], ticks[-1])
    labels = [
        f"{s} {r}: #{f}"
        for s, r, f in zip(
            table["top_or_bottom"], table["rank"], table["latent_feature_index"], strict=True
        )
    ]
    ax.set_yticks(y, labels, fontsize=7 if len(table) <= 40 else 5)
    ax.set_xlabel(f"group {result.config.statistic} views / all videos' {result.config.statistic}")
    ax.set_title(
        f"Feature effect sizes ({int(result.config.ci * 100)}% CI, estimation half; "
        f"grey: q ≥ {alpha:g})"
    )
    fig.tight_layout()
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def _null_locator() -> Any:
    from matplotlib.ticker import NullLocator

    return NullLocator()


# ------------------------------------------------------------------------------- grids


@lru_cache(maxsize=1)
def _font() -> Any:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 without FreeType sizes
        return ImageFont.load_default()


def _cell(path: Path) -> Image.Image:
    """The image fitted (letterboxed) into one grid cell; unreadable files become grey."""
    cell = Image.new("RGB", (CELL_W, CELL_H), _EMPTY)
    try:
        img = load_image(path)
    except ImageError as e:
        logger.warning("grid: %s", e)
        return cell
    img.thumbnail((CELL_W, CELL_H))
    cell.paste(img, ((CELL_W - img.width) // 2, (CELL_H - img.height) // 2))
    return cell


def save_grid(
    items: Sequence[tuple[Path, str]],
    path: str | Path,
    title: str,
    reference: Sequence[Path] | None = None,
    grid_size: int = 11,
) -> Path:
    """PNG: a row of up to `grid_size` (image, label) cells, plus a reference row if given."""
    rows = [("top thumbnails", list(items)[:grid_size])]
    if reference is not None:
        rows.append(
            ("top reference images", [(p, p.stem[:22]) for p in list(reference)[:grid_size]])
        )
    row_h = HEADER_H + CELL_H + LABEL_H
    canvas = Image.new("RGB", (PAD + grid_size * (CELL_W + PAD), len(rows) * row_h + PAD), _BG)
    draw = ImageDraw.Draw(canvas)
    for r, (name, cells) in enumerate(rows):
        top = r * row_h + PAD
        draw.text((PAD, top + 3), f"{title}: {name}", fill=_TEXT, font=_font())
        for i in range(grid_size):
            x = PAD + i * (CELL_W + PAD)
            if i >= len(cells):
                draw.rectangle(
                    (x, top + HEADER_H, x + CELL_W - 1, top + HEADER_H + CELL_H - 1), fill=_EMPTY
                )
                continue
            canvas.paste(_cell(cells[i][0]), (x, top + HEADER_H))
            draw.text((x + 2, top + HEADER_H + CELL_H + 2), cells[i][1], fill=_TEXT, font=_font())
    return atomic_write(path, lambda tmp: canvas.save(tmp, "PNG", optimize=True))


# ------------------------------------------------------------------------------ report


@dataclass(frozen=True)
class FeatureCard:
    """One feature of the table as the report shows it; ratios relative to all videos."""

    side: str  # "top" | "bottom"
    rank: int
    latent: int
    group_views: float  # the paper's full-group statistic (biased by selection)
    ratio: float  # estimation-half statistic / all videos' (not biased by the selection)
    ci_low: float | None  # ratio scale
    ci_high: float | None
    q: float
    grid: str  # path of the grid PNG relative to the report
    titles: tuple[str, ...]  # titles of the top example videos
    cluster: int | None = None  # shared-video cluster (features in one are one piece of evidence)
    name: str | None = None  # what the SAE's source calls the latent (ImageNet classes), if any

    @classmethod
    def from_table_row(
        cls, row: dict[str, Any], result: StudyResult, grid: str, titles: Sequence[str]
    ) -> FeatureCard:
        denom = result.dataset_statistic

        def scaled(v: Any) -> float | None:
            v = float(v)
            return v / denom if math.isfinite(v) and denom > 0 else None

        return cls(
            side=str(row["top_or_bottom"]),
            rank=int(row["rank"]),
            latent=int(row["latent_feature_index"]),
            group_views=float(row[result.stat_column]),
            ratio=float(row["estimate_ratio"]),
            ci_low=scaled(row["ci_low"]),
            ci_high=scaled(row["ci_high"]),
            q=float(row["q"]),
            grid=grid,
            titles=tuple(titles),
            cluster=int(row["cluster"]) if row.get("cluster", -1) >= 0 else None,
        )


_CSS = """
:root{--fg:#1d1d1f;--muted:#6e6e73;--line:#e3e3e8;--up:#1a7f37;--down:#c62828;--bg:#fafafa}
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1200px;margin:auto;padding:1rem}h1{font-size:1.6rem;margin:.5rem 0}h2{margin-top:2rem;font-size:1.25rem}
.muted{color:var(--muted)}.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(11rem,1fr));gap:.75rem}
.card{background:#fff;border:1px solid var(--line);border-radius:10px;padding:.75rem}.card strong{display:block;font-size:1.35rem}
.card span{color:var(--muted);font-size:.85rem}img{max-width:100%;height:auto;display:block}
.scroll{overflow-x:auto;background:#fff;border:1px solid var(--line);border-radius:10px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}th,td{padding:.4rem .6rem;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}.up{color:var(--up)}.down{color:var(--down)}.ns{color:var(--muted)}
.warn{background:#fff4e5;border:1px solid #f0b35a;border-radius:10px;padding:.6rem .8rem}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,28rem),1fr));gap:1rem}
.plots figure,.feature{margin:0;background:#fff;border:1px solid var(--line);border-radius:10px;padding:.6rem}
.features{display:grid;gap:1rem}.feature figcaption{margin-bottom:.4rem}.feature ul{margin:.4rem 0 0;padding-left:1.2rem;font-size:.9rem}
@media (max-width:600px){body{font-size:14px}main{padding:.5rem}th,td{padding:.3rem .4rem}}
"""


def _num(v: Any, fmt: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _ratio(card: FeatureCard) -> tuple[str, str]:
    ci = "–" if card.ci_low is None else f"{card.ci_low:.2f}–{card.ci_high:.2f}×"
    return _num(card.ratio, ".2f") + "×", ci


def _colour(card: FeatureCard, alpha: float = SIGNIFICANCE) -> str:
    """CSS class: green/red only for features with q < alpha; others stay neutral."""
    if not (math.isfinite(card.q) and card.q < alpha):
        return "ns"
    return "up" if card.ratio >= 1 else "down"


def _headline(summary: dict[str, Any]) -> str:
    held = summary.get("heldout") or {}
    stat = summary.get("config", {}).get("statistic", "median")
    cards = [
        (
            format_views(summary.get("raw_dataset_median") or summary["dataset_median"]),
            "median views of all videos",
        ),
        (f"{summary['n_qualifying']} / {summary['n_latents']}", "features studied / SAE latents"),
        (str(summary.get("n_q_below_0.05", 0)), _discoveries(summary)),
        (
            f"D = {_num(summary.get('ks_statistic'))}",
            f"KS vs random groups (many small shifts), view-shuffle p = "
            f"{_num(summary.get('ks_pvalue'), '.2g')}",
        ),
        (
            f"max z = {_num(summary.get('max_z_statistic'))}",
            f"strongest feature (#{summary.get('max_z_latent', '?')}) vs shuffled views (a few "
            f"strong features), p = {_num(summary.get('max_z_pvalue'), '.2g')}",
        ),
        (
            f"p = {_num(held.get('p_combined'), '.2g')}",
            "held-out test, both sides in one p-value (read this one, not either side's)",
        ),
        (
            f"p = {_num(held.get('p_hhm'), '.2g')}",
            f"held-out top videos of high features (HHM {stat} {format_views(held.get('hhm') or float('nan'))})",
        ),
        (
            f"p = {_num(held.get('p_lhm'), '.2g')}",
            f"held-out top videos of low features (LHM {stat} {format_views(held.get('lhm') or float('nan'))})",
        ),
    ]
    return "".join(
        f'<div class="card"><strong>{html.escape(a)}</strong><span>{html.escape(b)}</span></div>'
        for a, b in cards
    )


def _discoveries(summary: dict[str, Any]) -> str:
    """The discoveries card's label: how many independent pieces of evidence they are."""
    clusters = summary.get("n_clusters_q_below_0.05")
    if clusters is None:  # a summary written before clusters were counted
        return "features with q < 0.05"
    plural = "" if clusters == 1 else "s"
    return f"features with q < 0.05, in {clusters} cluster{plural} of shared videos"


def _warnings(summary: dict[str, Any]) -> str:
    """A visible box for each thing that limits the study's conclusions."""
    boxes = []
    ident = summary.get("channel_identifiability") or {}
    if ident.get("weak"):
        boxes.append(("Channel control is weak.", ident["message"]))
    boxes += [("Few held-out videos.", text) for text in summary.get("warnings") or ()]
    return "".join(
        f'<p class="warn"><strong>{html.escape(a)}</strong> {html.escape(b)}</p>' for a, b in boxes
    )


def _table(cards: Sequence[FeatureCard], side: str, stat: str, ci_name: str) -> str:
    named = any(c.name for c in cards)
    head = (
        f"<tr><th>Rank</th><th>Feature</th>{'<th>Looks like</th>' if named else ''}"
        f"<th>Group {stat}</th><th>vs all</th><th>{ci_name} CI</th><th>q</th><th>cluster</th></tr>"
    )
    body = []
    for c in (c for c in cards if c.side == side):
        ratio, ci = _ratio(c)
        cls = _colour(c)
        name = f'<td class="name">{html.escape(c.name or "–")}</td>' if named else ""
        body.append(
            f'<tr><td>{c.rank}</td><td><a href="#{c.side}-{c.rank}">#{c.latent}</a></td>{name}'
            f'<td>{html.escape(format_views(c.group_views))}</td><td class="{cls}">{ratio}</td>'
            f"<td>{html.escape(ci)}</td><td>{_num(c.q, '.2g')}</td>"
            f"<td>{'–' if c.cluster is None else c.cluster}</td></tr>"
        )
    return f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'


def _feature(card: FeatureCard) -> str:
    ratio, ci = _ratio(card)
    label = "Top" if card.side == "top" else "Bottom"
    titles = "".join(f"<li>{html.escape(t)}</li>" for t in card.titles if t)
    return (
        f'<figure class="feature" id="{card.side}-{card.rank}"><figcaption><strong>{label} #{card.rank}'
        f"</strong> · feature {card.latent}"
        + (f" · looks like: {html.escape(card.name)}" if card.name else "")
        + f" · {html.escape(ratio)} the views (CI {html.escape(ci)}) · "
        f"q = {_num(card.q, '.2g')}</figcaption>"
        f'<a href="{html.escape(card.grid)}"><img loading="lazy" src="{html.escape(card.grid)}" '
        f'alt="thumbnails that activate feature {card.latent} most"></a>'
        + (f"<ul>{titles}</ul>" if titles else "")
        + "</figure>"
    )


def _intro(summary: dict[str, Any], stat: str) -> str:
    """What was studied, in one escaped paragraph."""
    cfg, dataset = summary.get("config", {}), summary.get("dataset", {})
    scope = f"channel {summary['channel']}" if summary.get("channel") else "all channels"
    group = int(cfg.get("top_k", 0)) - int(cfg.get("hold_out", 0))
    text = (
        f"{summary.get('n_rows', summary['n_videos'])} videos from {dataset.get('root', '?')} "
        f"({scope}); views {summary.get('views', 'raw')}. Each feature is an SAE latent; its "
        f"group is the {group} videos that activate it most after the very top one, "
        f"summarised by their {stat} views."
    )
    return html.escape(text)


# The report's question, by what the SAE was trained on (summary.json's "activations").
_TITLES = {
    "clip": "Which things CLIP sees in a thumbnail go with more views?",
    "imagenet": "Which things an ImageNet network sees in a thumbnail go with more views?",
    "title": "Which title features go with more views?",
    "visual": "Which thumbnail descriptors (colour, faces, text) go with more views?",
}
_SOURCE_LINES = {
    "clip": "CLIP's residual stream ({hook_name})",
    "imagenet": "the ImageNet-trained EfficientNet-Lite0 ({hook_name}, {tokens})",
    "title": "the titles' sentence embeddings (not the images)",
    "visual": "26 hand-made image descriptors (colour, faces, text boxes)",
    "shards": "activation shards from disk ({hook_name})",
}


def report_title(activations: dict[str, Any] | None) -> str:
    """The report's heading, naming what its features are features of."""
    features = (activations or {}).get("features")
    return _TITLES.get(features, "Which SAE features go with more views?")


def _source_line(activations: dict[str, Any] | None) -> str:
    """One sentence: which features the SAE was trained on, and how its latents are named."""
    info = activations or {}
    what = _SOURCE_LINES.get(info.get("features"))
    if what is None:
        text = "SAE trained on: unknown (latents were read from a file; pass --sae to say)."
    else:
        text = f"SAE trained on: {what.format_map({'hook_name': '?', 'tokens': '?', **info})}."
    if info.get("latent_names"):
        text += f" Latent names: {info['latent_names']}."
    return html.escape(text)


def write_report(
    path: str | Path,
    summary: dict[str, Any],
    cards: Sequence[FeatureCard],
    plots: Sequence[tuple[str, str]] = (
        ("magnitude.png", "How much more (or fewer) views each feature's videos get"),
        ("histogram.png", "Feature groups vs random groups of videos"),
    ),
) -> Path:
    """A self-contained report.html beside its PNGs; every piece of text is HTML-escaped."""
    stat = summary.get("config", {}).get("statistic", "median")
    # what the SAE read: summary.json's "activations" (an SAE folder), else its "features"
    source = summary.get("activations") or {"features": summary.get("features")}
    ci_name = f"{100 * float(summary.get('config', {}).get('ci', 0.95)):g}%"
    figures = "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}"><figcaption class="muted">'
        f"{html.escape(cap)}</figcaption></figure>"
        for src, cap in plots
    )
    doc = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(report_title(source))}</title><style>{_CSS}</style></head>
<body><main>
<h1>{html.escape(report_title(source))}</h1>
<p class="source">{_source_line(source)}</p>
<p class="muted">{_intro(summary, stat)}</p>
<section class="cards">{_headline(summary)}</section>{_warnings(summary)}
<h2>Effect sizes</h2><div class="plots">{figures}</div>
<h2>Features with the most views</h2>{_table(cards, "top", stat, ci_name)}
<h2>Features with the fewest views</h2>{_table(cards, "bottom", stat, ci_name)}
<h2>What the features look like</h2>
<div class="features">{"".join(_feature(c) for c in cards)}</div>
<p class="muted">q: Benjamini-Hochberg adjusted permutation p-value over all studied features;
green/red only where q &lt; {SIGNIFICANCE:g}. Rows are chosen on a random half of each group's
videos; "vs all" and its CI come from the other half ({ci_name} bootstrap of the group
{html.escape(stat)}, relative to all videos), so choosing the extremes does not inflate them.
Group {html.escape(stat)}: all the group's videos, as in the original study.
Cluster: features whose groups share more than half of their videos with the cluster's lead
(its feature with the smallest p). Features in one cluster are not independent evidence: they
carry the same videos' views, so count clusters, not features. The two omnibus tests answer
different questions: KS sees many features each a little off, max z sees a few strong ones;
a large p from one of them does not mean the other kind of effect is absent.</p>
</main></body></html>
"""
    return atomic_write(path, doc)
