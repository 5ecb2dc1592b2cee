"""Tests of the study's figures, grids and HTML report (thumbview.sae.report)."""

from __future__ import annotations

from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from thumbview.sae import report as R
from thumbview.sae.study import StudyConfig, run_study

SMALL = StudyConfig(
    top_k=6, min_active=5, n_shuffles=99, heldout_group=3, n_extreme=3, n_boot=50, n_perm=500
)


@pytest.fixture(scope="module")
def result():
    """A study on 200 videos x 20 latents where latent 0 picks high and latent 1 low views."""
    rng = np.random.default_rng(0)
    views = rng.lognormal(8, 1, 200)
    x = rng.exponential(1.0, (200, 20)) * (rng.random((200, 20)) < 0.5)
    order = np.argsort(views)
    x[order[-10:], 0] = 5.0
    x[order[:10], 1] = 5.0
    return run_study(x, views, SMALL)


def test_format_views():
    assert R.format_views(999) == "999 views"
    assert R.format_views(1234) == "1.2K views"  # the style of every other count shown
    assert R.format_views(1_250_000) == "1.2M views"
    assert R.format_views(3e9) == "3B views"
    assert R.format_views(float("nan")) == "? views"


def test_plots_are_written(result, tmp_path):
    hist = R.plot_histogram(result, tmp_path / "h.png")
    mag = R.plot_magnitude(result, tmp_path / "m.png")
    for p in (hist, mag):
        assert Image.open(p).format == "PNG"
    assert Image.open(mag).height >= 300


def test_grid_rows_labels_and_unreadable_images(tmp_path):
    red = tmp_path / "red.png"
    Image.new("RGB", (120, 90), (255, 0, 0)).save(red)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    one = R.save_grid(
        [(red, "1K views"), (broken, "2 views")], tmp_path / "g1.png", "latent 3", None, 4
    )
    two = R.save_grid([(red, "1K views")], tmp_path / "g2.png", "latent 3", [red, red], 4)
    a, b = Image.open(one).convert("RGB"), Image.open(two).convert("RGB")
    assert a.width == b.width == R.PAD + 4 * (R.CELL_W + R.PAD)
    assert b.height > 1.8 * a.height  # a second row of reference images
    y = R.PAD + R.HEADER_H + R.CELL_H // 2
    assert a.getpixel((R.PAD + R.CELL_W // 2, y)) == (255, 0, 0)  # the thumbnail is in cell 0
    grey = a.getpixel((R.PAD + R.CELL_W + R.PAD + R.CELL_W // 2, y))
    assert grey == R._EMPTY  # the unreadable image became an empty cell, not a crash


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags, self.text, self.srcs = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.srcs += [v for k, v in attrs if k == "src"]

    def handle_data(self, data):
        self.text.append(data)


def test_write_report_escapes_text_and_is_responsive(result, tmp_path):
    summary = result.summary() | {"n_rows": 200, "dataset": {"root": "/data/<evil>"}}
    table = result.table()
    titles = ("<img src=x onerror=alert(1)>", "Tom & Jerry")
    cards = [
        R.FeatureCard.from_table_row(row, result, f"grids/{i}.png", titles)
        for i, row in enumerate(table.to_dict(orient="records"))
    ]
    doc = R.write_report(tmp_path / "report.html", summary, cards).read_text(encoding="utf-8")
    parser = _Collect()
    parser.feed(doc)
    assert "script" not in parser.tags
    assert "x" not in parser.srcs  # the hostile title did not become an <img>
    text = "".join(parser.text)
    assert (
        "<img src=x onerror=alert(1)>" in text and "Tom & Jerry" in text and "/data/<evil>" in text
    )
    assert 'name="viewport"' in doc and "grid-template-columns" in doc and "@media" in doc
    assert set(parser.srcs) == {"magnitude.png", "histogram.png"} | {c.grid for c in cards}
    assert f"#{cards[0].latent}" in text and f"{cards[0].ratio:.2f}×" in text
    assert cards[0].ci_low is not None and cards[0].ci_low <= cards[0].ratio <= cards[0].ci_high


@pytest.mark.parametrize(("lo", "hi"), [(0.93, 1.08), (0.4, 3.1), (0.999, 1.001), (0.02, 60.0)])
def test_ratio_ticks_are_round_readable_and_include_1x(lo, hi):
    ticks = R.ratio_ticks(lo, hi)
    assert 3 <= len(ticks) <= 9 and 1.0 in ticks and ticks == sorted(ticks)
    assert ticks[0] <= lo and ticks[-1] >= hi  # the whole range is labelled
    assert all(len(f"{t:g}") <= 4 for t in ticks)  # "0.67", "1.25", "2": no "1.58k" noise


def test_only_significant_features_are_coloured(result, tmp_path):
    table = result.table()
    rows = table.to_dict(orient="records")
    cards = [R.FeatureCard.from_table_row(r, result, f"g{i}.png", ()) for i, r in enumerate(rows)]
    cards = [replace(c, q=0.001 if i % 2 else 0.5) for i, c in enumerate(cards)]  # both kinds
    doc = R.write_report(tmp_path / "r.html", result.summary() | {"n_rows": 200}, cards).read_text()
    for card in cards:
        row = doc.split(f'href="#{card.side}-{card.rank}">#{card.latent}</a>')[1].split("</tr>")[0]
        expected = "ns" if card.q >= 0.05 else ("up" if card.ratio >= 1 else "down")
        assert f'class="{expected}"' in row


def test_report_shows_both_omnibus_tests_clusters_and_heldout_warning(result, tmp_path):
    summary = result.summary() | {"n_rows": 200}
    rows = result.table().to_dict(orient="records")
    cards = [R.FeatureCard.from_table_row(r, result, f"g{i}.png", ()) for i, r in enumerate(rows)]
    assert {c.cluster for c in cards} == set(result.table()["cluster"])  # every row clustered
    doc = R.write_report(tmp_path / "r.html", summary, cards).read_text(encoding="utf-8")
    assert f"max z = {result.max_z.statistic:.3g}" in doc and "a few strong features" in doc
    assert "many small shifts" in doc and "not independent evidence" in doc
    n_clusters = summary["n_clusters_q_below_0.05"]
    assert f"in {n_clusters} cluster" in doc and "<th>cluster</th>" in doc
    assert result.heldout.few_videos  # 3 features per side: 3 held-out videos each
    assert doc.count('class="warn"') == 1 and "Few held-out videos." in doc
    assert f"p = {result.heldout.p_combined:.2g}" in doc
    old = {k: v for k, v in summary.items() if k not in ("n_clusters_q_below_0.05", "warnings")}
    old_doc = R.write_report(tmp_path / "old.html", old, cards).read_text(encoding="utf-8")
    assert "features with q &lt; 0.05</span>" in old_doc  # a summary from before still renders
