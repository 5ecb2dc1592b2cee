"""Train / evaluate / predict over dataset folders, on synthetic data and on the real dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from thumbview.data.dataset import load_dataset
from thumbview.data.synth import SynthConfig, make_synthetic
from thumbview.evaluate import evaluate
from thumbview.inference.predictor import predict_files
from thumbview.predict.crossval import group_train_test_split
from thumbview.predict.model import PredictorConfig, PredictorError
from thumbview.predict.workflow import build_encoders, cross_validate_dataset, train


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf") / "data"
    make_synthetic(root, SynthConfig(n=160, seed=3, n_channels=20))
    return load_dataset(root)


def test_holdout_is_channel_disjoint_and_recorded(synth, tmp_path):
    result = train(synth, PredictorConfig(encoders=("title",)), tmp_path / "m", holdout_frac=0.3)
    record = json.loads((tmp_path / "m" / "training.json").read_text())
    train_ids = set(record["video_ids"])
    held_out = [i for i, k in enumerate(synth.keys) if k not in train_ids]
    assert len(held_out) == result.n_holdout > 0
    assert not set(synth.channels[held_out]) & set(record["channels"])


def test_evaluate_refuses_a_dataset_it_was_trained_on(synth, tmp_path):
    train(synth, PredictorConfig(encoders=("title",)), tmp_path / "m", holdout_frac=0)
    with pytest.raises(PredictorError, match="unseen rows"):
        evaluate(tmp_path / "m", synth)


def test_saved_model_predicts_like_a_plain_reference(synth, tmp_path):
    """predict_files (image-major, the model's coverage) equals encoding by hand."""
    from thumbview.data.images import load_image
    from thumbview.predict.model import ViewPredictor

    train(synth, PredictorConfig(encoders=("title", "visual")), tmp_path / "m", holdout_frac=0.2)
    images, titles = synth.paths[:3], ["a title", "another 🔥"]
    got = predict_files(tmp_path / "m", images, titles)
    model, encs = ViewPredictor.load(tmp_path / "m"), build_encoders(("title", "visual"))
    pics = [load_image(p) for p in images]
    want = model.predict(
        {
            "title": encs["title"].encode([t for _ in pics for t in titles]),
            "visual": encs["visual"].encode([p for p in pics for _ in titles]),
        }
    )
    assert [(p.image, p.title) for p in got] == [(str(i), t) for i in images for t in titles]
    np.testing.assert_allclose([p.log10 for p in got], want, atol=1e-9)
    assert all(p.low <= p.views <= p.high and p.coverage == 0.8 for p in got)


def test_channel_relative_target_predicts_multipliers(synth, tmp_path):
    config = PredictorConfig(encoders=("visual",), target="channel-relative")
    result = train(synth, config, tmp_path / "m", holdout_frac=0.25)
    assert result.n_train > 0
    (pred,) = predict_files(tmp_path / "m", synth.paths[:1])
    assert pred.target == "channel-relative"
    assert 0.05 < pred.views < 20  # a multiplier of the channel's median, not a view count


def test_cross_validation_beats_the_median_on_planted_data(synth):
    result, cv = cross_validate_dataset(synth, PredictorConfig(encoders=("visual",)), k=4)
    assert len(cv.folds) == 4
    assert result.model.spearman > 0.3
    assert result.model.mae_log10 < result.baselines["global-median"].mae_log10


def test_real_data_channel_disjoint_evaluation(shared_data, tmp_path):
    """The honest number on real thumbnails: weak but positive, from unseen channels only."""
    ds = load_dataset(shared_data, verify_images=False)
    train_idx, test_idx = group_train_test_split(ds.channels, 0.25, seed=0)
    assert not set(ds.channels[train_idx]) & set(ds.channels[test_idx])
    result = train(
        ds.subset(train_idx),
        PredictorConfig(encoders=("title",)),
        tmp_path / "m",
        holdout_frac=0,
        cache_dir=tmp_path / "cache",
    )
    ev = evaluate(tmp_path / "m", ds.subset(test_idx), cache_dir=tmp_path / "cache")
    assert result.n_train == len(train_idx) and ev.n_shared_channels == 0
    assert ev.result.model.n == len(test_idx)
    # Views span only ~1k-11k here: expect a small positive rank correlation, not a miracle.
    assert 0.03 < ev.result.model.spearman < 0.4
    assert ev.result.model.mae_log10 <= ev.result.baselines["global-median"].mae_log10 + 0.01
    assert np.isfinite(ev.result.model.r2)
    # Conformal intervals from channel-grouped out-of-fold residuals hold on new channels.
    assert 0.72 < ev.result.interval_coverage < 0.88


def test_mlp_training_writes_its_learning_curve(synth, tmp_path):
    config = PredictorConfig(encoders=("visual",), head="mlp", mlp={"max_epochs": 30})
    result = train(synth, config, tmp_path / "m", holdout_frac=0.25)
    names = {p.name for p in result.plots}
    assert {"training_curve.png", "pred_vs_actual.png", "residuals.png"} <= names
    assert (tmp_path / "m" / "training_curve.png").stat().st_size > 1000
