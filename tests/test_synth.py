"""`make_synthetic`: reproducible by seed, loadable, and the planted effects are really there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.stats import spearmanr

from thumbview.data.dataset import load_dataset
from thumbview.data.images import load_image
from thumbview.data.synth import (
    EFFECT_NAMES,
    EFFECTS,
    METADATA_COLUMNS,
    SynthConfig,
    SynthError,
    make_synthetic,
    make_title,
    plan_table,
    render_thumbnail,
)

N_SMALL = 40
HOOKS = ("insane", "secret", "i tried", "you won't believe")


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """One 300-row dataset shared by the tests that only read it (~1 s to draw)."""
    return make_synthetic(tmp_path_factory.mktemp("synth") / "ds", SynthConfig(n=300, seed=7))


def read_meta(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "metadata.csv", dtype=str, keep_default_na=False)


def pixels(root: Path, file_name: str) -> np.ndarray:
    return np.asarray(Image.open(root / file_name).convert("RGB"))


def test_same_seed_gives_identical_files_and_pixels(tmp_path):
    a = make_synthetic(tmp_path / "a", SynthConfig(n=N_SMALL, seed=3))
    b = make_synthetic(tmp_path / "b", SynthConfig(n=N_SMALL, seed=3))
    for name in ("metadata.csv", "truth.csv", "planted.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for file_name in read_meta(a)["file_name"]:
        assert np.array_equal(pixels(a, file_name), pixels(b, file_name)), file_name


def test_different_seeds_differ(tmp_path):
    a = make_synthetic(tmp_path / "a", SynthConfig(n=N_SMALL, seed=1))
    b = make_synthetic(tmp_path / "b", SynthConfig(n=N_SMALL, seed=2))
    meta_a, meta_b = read_meta(a), read_meta(b)
    assert set(meta_a["video_id"]).isdisjoint(meta_b["video_id"])
    assert not np.array_equal(meta_a["views"], meta_b["views"])
    first_a, first_b = pixels(a, meta_a["file_name"][0]), pixels(b, meta_b["file_name"][0])
    assert not np.array_equal(first_a, first_b)


def test_rows_images_and_columns(synth_dir):
    meta = read_meta(synth_dir)
    assert list(meta.columns) == list(METADATA_COLUMNS)
    assert len(meta) == 300 and meta["video_id"].is_unique
    assert len(list((synth_dir / "images").iterdir())) == 300
    for file_name, video_id in zip(meta["file_name"], meta["video_id"], strict=True):
        assert file_name == f"images/{video_id}.jpg"
        assert load_image(synth_dir / file_name).size == (320, 180)


def test_load_dataset_keeps_every_row(synth_dir):
    ds = load_dataset(synth_dir, verify_images=False)
    assert len(ds) == 300 and ds.report.skipped == ()
    assert ds.table["views"].dtype == np.int64


def test_counts_are_non_negative_integers(synth_dir):
    meta = read_meta(synth_dir)
    for col in ("views", "likes", "comments", "subscribers"):
        assert meta[col].str.fullmatch(r"\d+").all(), col
    views, likes = meta["views"].astype(int), meta["likes"].astype(int)
    assert (views > 0).all()
    assert (likes <= views).mean() > 0.99  # likes are ~3% of views
    dates = pd.to_datetime(meta["published_at"], utc=True)
    assert dates.min().year >= 2015 and dates.max().year <= 2025


def test_planted_json_records_effects_and_noise(synth_dir):
    planted = json.loads((synth_dir / "planted.json").read_text(encoding="utf-8"))
    assert planted["seed"] == 7 and planted["noise_sigma"] == 0.25
    by_name = {e["name"]: e for e in planted["effects"]}
    assert set(by_name) == set(EFFECT_NAMES)
    for effect in EFFECTS:
        rec = by_name[effect.name]
        assert rec["factor"] == effect.factor and rec["description"]
        assert rec["log10_factor"] == pytest.approx(np.log10(effect.factor))
    truth = pd.read_csv(synth_dir / "truth.csv")
    assert {e: int(truth[e].sum()) for e in EFFECT_NAMES} == {
        e: by_name[e]["n_rows"] for e in EFFECT_NAMES
    }


def test_truth_regression_recovers_log10_factors():
    """OLS of the true mean on the effect indicators alone gives back each log10(factor)."""
    table = plan_table(SynthConfig(n=6000, seed=11))
    flags = table[list(EFFECT_NAMES)].to_numpy(dtype=float)  # (n, E)
    X = np.column_stack([np.ones(len(table)), flags])  # (n, 1 + E)
    coef, *_ = np.linalg.lstsq(X, table["true_log10_mean"].to_numpy(), rcond=None)
    expected = [e.log10_factor for e in EFFECTS]
    np.testing.assert_allclose(coef[1:], expected, atol=0.03)
    nuisance = (table["channel_log10"] + table["age_log10"]).mean()  # random, not zero
    assert coef[0] == pytest.approx(4.0 + nuisance, abs=0.03)  # base 10,000 views
    for effect in EFFECTS:
        assert table[effect.name].mean() == pytest.approx(effect.rate, abs=0.03)


def test_truth_decomposes_exactly_and_views_carry_the_noise():
    config = SynthConfig(n=4000, seed=5, noise_sigma=0.25)
    table = plan_table(config)
    planted = sum(table[e.name] * e.log10_factor for e in EFFECTS)
    rebuilt = 4.0 + planted + table["channel_log10"] + table["age_log10"]
    np.testing.assert_allclose(table["true_log10_mean"], rebuilt, atol=1e-12)
    residual = np.log10(table["views"]) - table["true_log10_mean"]
    assert residual.std() == pytest.approx(0.25, abs=0.02)
    assert abs(residual.mean()) < 0.02
    # Older uploads have more views; bigger channels have more subscribers.
    age = pd.Timestamp("2026-01-01", tz="UTC") - pd.to_datetime(table["published_at"], utc=True)
    assert spearmanr(age.dt.days, table["age_log10"])[0] > 0.99
    assert spearmanr(table["channel_log10"], np.log10(table["subscribers"]))[0] > 0.7


def test_emoji_and_non_latin_titles_survive_csv(synth_dir):
    meta = read_meta(synth_dir)
    expected = plan_table(SynthConfig(n=300, seed=7))["title"].tolist()
    assert meta["title"].tolist() == expected
    assert any(ch in t for t in expected for ch in "🔥😱🤯✨💯😂")
    assert any(
        any("\u3040" <= ch <= "\u30ff" or "\u0600" <= ch <= "\u06ff" for ch in t) for t in expected
    )


def test_title_wording_follows_flags():
    rng = np.random.default_rng(0)
    for hook, dull in [(False, False), (True, False), (False, True), (True, True)]:
        titles = [make_title(rng, hook, dull) for _ in range(200)]
        has_hook = [any(h in t.lower() for h in HOOKS) for t in titles]
        assert all(has_hook) if hook else not any(has_hook)
        mean_len = np.mean([len(t) for t in titles])
        assert mean_len > 90 if dull else mean_len < 60


def warm_fraction(rgb: np.ndarray) -> float:
    """Share of pixels that are a bright, saturated red / orange / yellow."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=np.float64)  # (H, W, 3) 0-255
    hue_deg = hsv[..., 0] * 360 / 255
    warm_hue = (hue_deg <= 55) | (hue_deg >= 350)
    return float((warm_hue & (hsv[..., 1] > 190) & (hsv[..., 2] > 190)).mean())


def test_pixel_features_carry_the_planted_visual_effects(synth_dir):
    """Plain numpy features separate effect rows and correlate with views as planted."""
    meta, truth = read_meta(synth_dir), pd.read_csv(synth_dir / "truth.csv")
    images = [pixels(synth_dir, f) for f in meta["file_name"]]
    warm = np.array([warm_fraction(im) for im in images])
    bright = np.array([im.mean() for im in images])
    sharp = np.array([np.abs(np.diff(im.mean(axis=2), axis=1)).mean() for im in images])
    is_warm, is_dark = truth["warm_colours"] == 1, truth["dark_blurry"] == 1
    assert np.median(warm[is_warm]) > 0.5 > np.quantile(warm[~is_warm], 0.9)
    assert np.quantile(bright[is_dark], 0.9) < np.quantile(bright[~is_dark], 0.1)
    assert np.median(sharp[is_dark]) < 0.5 * np.median(sharp[~is_dark])
    log_views = np.log10(meta["views"].astype(float))
    assert spearmanr(warm, log_views)[0] > 0.15
    assert spearmanr(bright, log_views)[0] > 0.15


def test_render_draws_text_and_faces_in_their_colours():
    """A face adds skin-toned pixels, a text block adds pure white/yellow/black outline pixels."""

    def skin_share(rgb):
        r, g, b = (rgb[..., i].astype(int) for i in range(3))
        return ((r > g) & (g > b) & (r - b > 40) & (r > 120)).mean()

    plain = [render_thumbnail(np.random.default_rng(i), {}) for i in range(20)]
    faces = [render_thumbnail(np.random.default_rng(i), {"face": 1}) for i in range(20)]
    assert np.mean([skin_share(f) for f in faces]) > np.mean([skin_share(p) for p in plain]) + 0.1
    text = render_thumbnail(np.random.default_rng(0), {"big_text": 1})
    assert text.shape == (180, 320, 3) and text.dtype == np.uint8


def test_bad_config_and_non_empty_output_are_refused(tmp_path):
    with pytest.raises(SynthError, match="n must be"):
        SynthConfig(n=0)
    with pytest.raises(SynthError, match="noise_sigma"):
        SynthConfig(noise_sigma=-1.0)
    with pytest.raises(SynthError, match="image size"):
        SynthConfig(width=10)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("x")
    with pytest.raises(SynthError, match="not an empty folder"):
        make_synthetic(tmp_path / "busy", SynthConfig(n=5))
    assert (tmp_path / "busy" / "keep.txt").read_text() == "x"
