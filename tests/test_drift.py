"""Out-of-range warnings and interval coverage, checked with known truth."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from thumbview.cli import app
from thumbview.data.dataset import load_dataset
from thumbview.data.synth import SynthConfig, make_synthetic
from thumbview.predict.drift import TrainingRange
from thumbview.predict.evaluate import conditional_coverage, coverage_strata
from thumbview.predict.model import PredictorConfig, ViewPredictor
from thumbview.predict.target import log_views
from thumbview.predict.workflow import train


def test_narrow_training_warns_on_wide_views_and_far_features():
    rng = np.random.default_rng(0)
    y_train = log_views(rng.uniform(1_000, 11_000, 500))
    X = rng.normal(size=(500, 8))
    limits = TrainingRange.fit(y_train, {"f": X})
    assert limits.warning({"f": rng.normal(size=(200, 8))}, y_train[:200]) is None
    wide = log_views(10 ** rng.uniform(1, 7, 200))  # 10 to 10M views
    said = limits.warning(None, wide)
    assert said is not None and "far outside the training range" in said and "1.1K" in said
    far = {"f": rng.normal(size=(5, 8)) + np.array([10.0] + [0] * 7)}
    assert limits.features_outside(far).all()
    assert "unlike the training" in limits.warning(far)


def test_training_range_round_trips(tmp_path):
    limits = TrainingRange.fit(np.arange(10.0), {"a": np.eye(10)[:, :3]})
    limits.save(tmp_path)
    assert TrainingRange.load(tmp_path) == limits
    assert TrainingRange.load(tmp_path / "none") is None


def test_cv_residual_intervals_cover_new_rows_at_the_nominal_rate():
    """Simulated truth: marginal coverage of the 80% intervals on fresh data is about 80%."""
    rng = np.random.default_rng(1)

    def draw(n):
        X = rng.normal(size=(n, 6))
        return {"f": X}, X @ np.array([0.5, -0.3, 0.2, 0, 0, 0]) + rng.normal(0, 0.4, n)

    blocks, y = draw(600)
    model = ViewPredictor(PredictorConfig(encoders=("f",))).fit(blocks, y)
    new, y_new = draw(4000)
    lo, hi = model.predict_interval(new)
    assert np.mean((y_new >= lo) & (y_new <= hi)) == pytest.approx(0.8, abs=0.03)


def test_conditional_coverage_finds_where_intervals_are_too_narrow():
    """Heteroscedastic truth: noise grows with the prediction; equal-width intervals
    over-cover low deciles and under-cover high ones, while the marginal looks fine."""
    rng = np.random.default_rng(2)
    pred = rng.uniform(0, 1, 20_000)
    y = pred + rng.normal(0, 0.05 + 0.5 * pred)
    half = np.quantile(np.abs(y - pred), 0.8)
    cov = conditional_coverage(y, pred - half, pred + half, coverage_strata(pred))
    by = {r["stratum"]: r["coverage"] for r in cov["predicted decile"]}
    assert by["D1"] > 0.95 and by["D10"] < 0.65
    assert sum(r["n"] for r in cov["predicted decile"]) == 20_000


@pytest.fixture(scope="module")
def narrow_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift") / "data"
    make_synthetic(root, SynthConfig(n=240, seed=5, n_channels=30, width=64, height=36))
    ds = load_dataset(root)
    middle = np.flatnonzero(
        (ds.views > np.quantile(ds.views, 0.3)) & (ds.views < np.quantile(ds.views, 0.7))
    )
    out = tmp_path_factory.mktemp("m")
    train(ds.subset(middle), PredictorConfig(encoders=("title",)), out, holdout_frac=0.2)
    return ds, out


def test_evaluate_json_carries_warning_coverage_and_pairwise(narrow_model):
    ds, out = narrow_model
    res = CliRunner().invoke(app, ["evaluate", str(out), str(ds.root), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output)
    assert "far outside the training range" in got["warning"]
    assert {"predicted decile", "channel size", "age tercile"} <= set(got["conditional_coverage"])
    assert got["pairwise"]["n_pairs"] > 0 and 0 <= got["pairwise"]["brier"] <= 1
    assert got["pairwise"]["heldout_brier"] == got["pairwise"]["brier"]  # new pairs: held out
    assert got["pairwise"]["skilful"] in (True, False) and got["pairwise"]["skill_margin"] > 0
    assert "cross-validation residual" in got["interval_method"]


def test_evaluate_says_skilful_only_past_the_margin():
    from thumbview.cli.predict import _pairwise_line

    base = {"n_pairs": 900, "brier": 0.246, "skill_margin": 0.006}
    assert "no skill shown" in _pairwise_line({**base, "skilful": False})
    assert "skilful (better than a coin by more than the 0.006 margin)" in _pairwise_line(
        {**base, "brier": 0.2, "skilful": True}
    )
    assert "skil" not in _pairwise_line({**base, "skilful": None})  # an old model: unknown
