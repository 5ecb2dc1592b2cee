"""ViewPredictor: signal recovered, conformal intervals calibrated, blocks balanced, exact save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

import thumbview.predict.model as model_mod
from thumbview.predict.model import (
    ArtifactError,
    PredictorConfig,
    PredictorError,
    ViewPredictor,
)

FAST_MLP = {"hidden": 32, "max_epochs": 30, "patience": 5, "batch_size": 128}
W_VIS = np.array([0.4, -0.3, 0.25, 0.2, 0.0, 0.0, 0.0, 0.0])


def make_blocks(n: int, seed: int):
    """A wide, weakly informative 'clip' block and a narrow, strongly informative 'visual' one."""
    rng = np.random.default_rng(seed)
    clip = rng.normal(size=(n, 64)).astype(np.float32)
    visual = (rng.normal(size=(n, 8)) * 5 + 3).astype(np.float32)  # unscaled on purpose
    signal = clip[:, :8].sum(axis=1) * 0.08 + ((visual - 3) / 5) @ W_VIS
    y = 4.0 + signal + 0.2 * rng.normal(size=n)
    groups = rng.integers(0, n // 8, size=n)
    return {"clip": clip, "visual": visual}, y, groups


@pytest.fixture(scope="module")
def fitted():
    blocks, y, groups = make_blocks(1500, seed=0)
    return ViewPredictor(PredictorConfig(("clip", "visual"))).fit(blocks, y, groups)


@pytest.fixture(scope="module")
def fresh():
    return make_blocks(4000, seed=1)


def test_fit_recovers_signal(fitted, fresh):
    blocks, y, _ = fresh
    assert spearmanr(y, fitted.predict(blocks)).statistic > 0.9
    assert fitted.cv_metrics_.spearman > 0.85 and fitted.cv_metrics_.n == 1500
    assert fitted.oof_predictions_.shape == (1500,)
    q = fitted.residual_quantiles_
    assert q.shape == fitted.quantile_levels_.shape == (101,) and np.all(np.diff(q) >= 0)
    assert fitted.n_train_ == 1500 and fitted.block_dims_ == {"clip": 64, "visual": 8}


@pytest.mark.parametrize("coverage", [0.8, 0.5])
def test_intervals_cover_nominal_rate_on_fresh_data(fitted, fresh, coverage):
    blocks, y, _ = fresh
    lo, hi = fitted.predict_interval(blocks, coverage=None if coverage == 0.8 else coverage)
    assert np.all(lo < hi)
    inside = np.mean((y >= lo) & (y <= hi))
    assert coverage - 0.05 <= inside <= coverage + 0.05, inside


def test_predictive_distribution(fitted, fresh):
    blocks = {k: v[:50] for k, v in fresh[0].items()}
    pred = fitted.predict(blocks)
    quantiles = fitted.predictive_quantiles(blocks)  # (50, 101)
    np.testing.assert_allclose(quantiles[:, 50], pred + fitted.residual_quantiles_[50])
    samples = fitted.predictive_samples(blocks, 4000, seed=3)
    assert samples.shape == (50, 4000)
    lo, hi = fitted.predict_interval(blocks)
    assert np.mean((samples >= lo[:, None]) & (samples <= hi[:, None])) == pytest.approx(
        0.8, abs=0.02
    )
    np.testing.assert_array_equal(samples, fitted.predictive_samples(blocks, 4000, seed=3))


def test_blocks_are_balanced_whatever_their_width(fitted, fresh):
    """Each block contributes total variance 1 to the design, so 64 columns do not drown 8."""
    design = fitted._design(fitted._check_blocks(fresh[0], 4000))
    assert design.shape == (4000, 72)
    assert design[:, :64].var(axis=0).sum() == pytest.approx(1.0, rel=0.05)
    assert design[:, 64:].var(axis=0).sum() == pytest.approx(1.0, rel=0.05)


def test_calibration_folds_are_channel_disjoint(monkeypatch):
    seen, original = [], model_mod.group_kfold

    def spy(groups, k, seed, n=None):
        folds = original(groups, k, seed, n=n)
        seen.append((groups, folds))
        return folds

    monkeypatch.setattr(model_mod, "group_kfold", spy)
    blocks, y, groups = make_blocks(300, seed=2)
    ViewPredictor(PredictorConfig(("clip", "visual"), cv_folds=3)).fit(blocks, y, groups)
    ((g, folds),) = seen
    assert len(folds) == 3
    for train, test in folds:
        assert not set(g[train]) & set(g[test])


def test_bad_inputs_give_clear_errors(fitted, fresh):
    blocks = fresh[0]
    with pytest.raises(PredictorError, match="missing feature block 'visual'"):
        fitted.predict({"clip": blocks["clip"]})
    with pytest.raises(
        PredictorError, match="'clip' has 60 columns but the model was trained on 64"
    ):
        fitted.predict({**blocks, "clip": blocks["clip"][:, :60]})
    with pytest.raises(PredictorError, match="shape"):
        fitted.predict({**blocks, "visual": blocks["visual"][:10]})
    bad = blocks["visual"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(PredictorError, match="NaN"):
        fitted.predict({**blocks, "visual": bad})
    with pytest.raises(PredictorError, match="not fitted"):
        ViewPredictor(PredictorConfig(("clip",))).predict(blocks)
    with pytest.raises(PredictorError, match="coverage"):
        fitted.predict_interval(blocks, coverage=1.2)
    fitted.predict({**blocks, "title": np.zeros((4000, 3))})  # extra blocks are ignored


def test_uncalibrated_model_has_no_intervals(fresh):
    blocks, y, _ = make_blocks(200, seed=3)
    model = ViewPredictor(PredictorConfig(("visual",))).fit(blocks, y, calibrate=False)
    assert model.predict(fresh[0]).shape == (4000,)
    with pytest.raises(PredictorError, match="not calibrated"):
        model.predict_interval(fresh[0])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"encoders": ()}, "non-empty"),
        ({"encoders": ("a", "a")}, "distinct"),
        ({"encoders": ("a",), "head": "forest"}, "unknown head"),
        ({"encoders": ("a",), "target": "raw"}, "unknown target"),
        ({"encoders": ("a",), "coverage": 1.0}, "coverage"),
        ({"encoders": ("a",), "cv_folds": 1}, "cv_folds"),
        ({"encoders": ("a",), "mlp": {"hiden": 3}}, "unknown mlp options: hiden"),
        ({"encoders": ("a",), "mlp": {"lr": -1.0}}, "bad mlp options: mlp lr must be > 0"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(PredictorError, match=match):
        PredictorConfig(**kwargs)


@pytest.mark.parametrize("head", ["ridge", "mlp"])
def test_save_load_round_trip_is_exact(head, fresh, tmp_path):
    blocks, y, groups = make_blocks(400, seed=4)
    config = PredictorConfig(("clip", "visual"), head=head, cv_folds=3, mlp=FAST_MLP)
    model = ViewPredictor(config).fit(blocks, y, groups)
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["block_dims"] == {"clip": 64, "visual": 8} and meta["n_train"] == 400
    assert meta["target"] == "log10" and meta["y_median"] == pytest.approx(np.median(y))
    assert meta["thumbview_version"] and meta["head"]["kind"] == head
    again = ViewPredictor.load(tmp_path / "m")
    assert again.config == config
    np.testing.assert_array_equal(again.predict(fresh[0]), model.predict(fresh[0]))
    for a, b in zip(
        again.predict_interval(fresh[0]), model.predict_interval(fresh[0]), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert again.cv_metrics_ == model.cv_metrics_


@pytest.fixture(scope="module")
def saved(tmp_path_factory, fitted):
    return fitted.save(tmp_path_factory.mktemp("saved") / "model")


def _copy(saved, tmp_path):
    out = tmp_path / "copy"
    out.mkdir(parents=True)
    for p in saved.iterdir():
        (out / p.name).write_bytes(p.read_bytes())
    return out


def test_load_rejects_missing_and_corrupt_files(saved, tmp_path):
    with pytest.raises(ArtifactError, match="no such model folder"):
        ViewPredictor.load(tmp_path / "nope")
    d = _copy(saved, tmp_path)
    (d / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes()[:100])
    with pytest.raises(ArtifactError, match="corrupt .*truncated"):
        ViewPredictor.load(d)
    (d / "model.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing model.safetensors"):
        ViewPredictor.load(d)
    d = _copy(saved, tmp_path / "b")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        ViewPredictor.load(d)


def test_load_rejects_inconsistent_config(saved, tmp_path):
    d = _copy(saved, tmp_path)
    meta = json.loads((saved / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ArtifactError, match="newer thumbview"):
        ViewPredictor.load(d)
    (d / "config.json").write_text(json.dumps({**meta, "block_dims": {"clip": 64, "visual": 9}}))
    with pytest.raises(ArtifactError, match="'visual' scaler has shape"):
        ViewPredictor.load(d)
    (d / "config.json").write_text(
        json.dumps({**meta, "config": {**meta["config"], "encoders": ["x"]}})
    )
    with pytest.raises(ArtifactError, match=r"config.json: block_dims must give .* each of x"):
        ViewPredictor.load(d)
