"""P(A beats B) from the predicted difference, calibrated on same-channel pairs (known truth)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from thumbview.compare import compare
from thumbview.embed.base import Encoder
from thumbview.inference import LoadedPredictor
from thumbview.predict import pairwise as pw
from thumbview.predict.model import PredictorConfig

BETA = np.array([0.3, -0.2, 0.0, 0.0, 0.0])
NOISE = 0.2  # per-video sd of log10 views around the truth


def _channel_data(n_channels: int, per: int, beta, seed: int):
    """Channels with big random offsets (shared by their videos) + a planted feature effect."""
    rng = np.random.default_rng(seed)
    channels = np.repeat(np.arange(n_channels), per).astype(str).astype(object)
    offset = rng.normal(0, 1.0, n_channels)[np.repeat(np.arange(n_channels), per)]
    X = rng.normal(size=(len(channels), len(beta)))
    y = 3 + offset + X @ beta + rng.normal(0, NOISE, len(channels))
    return {"f": X}, y, channels


@pytest.fixture(scope="module")
def fitted():
    blocks, y, ch = _channel_data(60, 10, BETA, seed=0)
    config = PredictorConfig(encoders=("f",), seed=0)
    from thumbview.predict.model import ViewPredictor

    model = ViewPredictor(config).fit(blocks, y, ch)
    return model, pw.PairwiseModel().fit(config, blocks, y, ch)


def test_same_group_pairs_only_pair_within_groups():
    groups = np.array(["a", "b", "a", None, "a", "", "b"], dtype=object)
    i, j = pw.same_group_pairs(groups)
    assert sorted(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 2), (0, 4), (1, 6), (2, 4)]


def test_sigma_recovers_the_true_difference_noise(fitted):
    _, pairwise = fitted
    # actual difference = predicted difference + two independent noises (+ small fit error)
    assert pairwise.calibration_.sigma == pytest.approx(NOISE * np.sqrt(2), rel=0.15)
    assert pairwise.calibration_.brier < 0.2


def test_calibrated_on_new_same_channel_pairs(fitted):
    """On fresh channels, predicted P matches the observed win rate in every populated bin."""
    model, pairwise = fitted
    blocks, y, ch = _channel_data(200, 8, BETA, seed=1)
    scored = pw.score_pairs(model.predict(blocks), y, ch, pairwise.calibration_.sigma)
    assert scored.n_pairs == 200 * 28
    for b in scored.reliability:
        if b.n >= 300:
            assert abs(b.mean_p - b.observed) < 0.05, b
    i, j = pw.same_group_pairs(ch)
    true_p = stats.norm.cdf((blocks["f"][i] - blocks["f"][j]) @ BETA / (NOISE * np.sqrt(2)))
    assert scored.brier < 0.2
    assert scored.brier == pytest.approx(pw.brier(true_p, pw.outcome(y[i], y[j])), abs=0.01)


def test_old_independent_draws_are_badly_calibrated_on_same_channel_pairs(fitted):
    """What the issue found: residuals of a pooled model, drawn independently, are far too wide."""
    model, pairwise = fitted
    blocks, y, ch = _channel_data(200, 8, BETA, seed=1)
    pred = model.predict(blocks)
    i, j = pw.same_group_pairs(ch)
    pooled_sd = np.std(y - pred) * np.sqrt(2)  # channel offsets inflate the residuals
    new = pw.brier(
        pw.p_beats(pred[i] - pred[j], pairwise.calibration_.sigma), pw.outcome(y[i], y[j])
    )
    old = pw.brier(pw.p_beats(pred[i] - pred[j], pooled_sd), pw.outcome(y[i], y[j]))
    assert new < old - 0.02


def test_p_best_matches_p_beats_for_two_and_sums_to_one():
    pred = np.array([0.3, 0.1])
    best = pw.p_best(pred, 0.25)
    assert best[0] == pytest.approx(float(pw.p_beats(0.2, 0.25)), abs=1e-9)
    many = pw.p_best(np.array([0.0, 0.0, 0.0, 0.5]), 0.3)
    assert many.sum() == pytest.approx(1.0) and many[0] == pytest.approx(many[1])
    assert many[3] == many.max()


def test_null_effect_says_no_reliable_difference():
    """No feature matters: the model cannot tell candidates apart, and says so."""
    blocks, y, ch = _channel_data(60, 10, np.zeros(5), seed=2)
    config = PredictorConfig(encoders=("f",), seed=0)
    pairwise = pw.PairwiseModel().fit(config, blocks, y, ch)
    rng = np.random.default_rng(3)
    said = []
    for _ in range(30):
        cand = {"f": rng.normal(size=(3, 5))}
        pred = np.mean(pairwise.fold_predictions(cand), axis=0)
        said.append(pw.verdict(pred, pairwise.calibration_, pairwise.fold_predictions(cand)))
    assert sum(v.reliable for v in said) <= 3
    assert all("no reliable difference" in v.text for v in said if not v.reliable)


def test_strong_effect_names_a_winner(fitted):
    model, pairwise = fitted
    cand = {"f": np.array([[3.0, -3.0, 0, 0, 0], [-3.0, 3.0, 0, 0, 0]])}
    said = pw.verdict(model.predict(cand), pairwise.calibration_, pairwise.fold_predictions(cand))
    assert said.reliable and said.p_top_beats_next > 0.95


def test_pairwise_round_trips_and_compare_carries_the_verdict(fitted, tmp_path):
    model, pairwise = fitted
    pairwise.save(tmp_path)
    again = pw.PairwiseModel.load(tmp_path)
    cand = {"f": np.random.default_rng(0).normal(size=(4, 5))}
    assert np.array_equal(again.fold_predictions(cand), pairwise.fold_predictions(cand))
    assert again.calibration_ == pairwise.calibration_
    assert pw.PairwiseModel.load(tmp_path / "nothing") is None
    images = [Image.new("RGB", (8, 8), (v, 0, 0)) for v in (0, 120, 250)]
    predictor = LoadedPredictor(model, {"f": _RedEncoder()}, tmp_path / "none")
    found = compare(predictor, images, ["a", "b", "c"], pairwise=again)
    assert found.reliable is not None and found.verdict
    assert found.assumption == pw.METHOD
    p = np.array(found.p_beats)
    assert np.allclose(p + p.T, 1.0)
    assert sum(c.p_best for c in found.candidates) == pytest.approx(1.0)


class _RedEncoder(Encoder):
    """5 features from the red channel: enough to drive the planted effect."""

    name, version, modality = "f", "1", "image"

    @property
    def dim(self) -> int:
        return 5

    def encode(self, inputs):
        red = np.array([np.asarray(im)[..., 0].mean() / 60.0 for im in inputs])
        return np.stack([red, -red, 0 * red, 0 * red, 0 * red], axis=1).astype(np.float32)
