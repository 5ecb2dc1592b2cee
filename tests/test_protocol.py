"""Few-channel datasets: the split protocol is chosen from channel ids before any feature."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from thumbview.cli import app
from thumbview.data.dataset import load_dataset
from thumbview.data.synth import SynthConfig, make_synthetic
from thumbview.data.times import upload_times
from thumbview.predict import workflow
from thumbview.predict.model import PredictorConfig
from thumbview.predict.protocol import (
    CHANNEL_DISJOINT,
    RANDOM_WITHIN_CHANNEL,
    TIME_WITHIN_CHANNEL,
    ProtocolError,
    plan_split,
    time_rank,
    time_split,
)


def _dataset(tmp_path_factory, n_channels: int, n: int = 60):
    root = tmp_path_factory.mktemp(f"ch{n_channels}") / "data"
    make_synthetic(root, SynthConfig(n=n, seed=1, n_channels=n_channels, width=64, height=36))
    return load_dataset(root)


def test_time_split_tests_each_channels_newest_videos():
    rng = np.random.default_rng(0)
    channels = np.array(["a"] * 10 + ["b"] * 5 + ["c"], dtype=object)  # c has one video
    times = rng.permutation(16).astype(float)
    train, test = time_split(time_rank(channels, times), channels, 0.2)
    assert sorted(np.concatenate([train, test])) == list(range(16))
    for ch, n_test in (("a", 2), ("b", 1), ("c", 0)):
        rows = np.flatnonzero(channels == ch)
        tested = np.intersect1d(rows, test)
        assert len(tested) == n_test
        if n_test:  # every tested video is newer than every training video of its channel
            assert times[tested].min() > times[np.setdiff1d(rows, tested)].max()


def test_many_channels_stay_channel_disjoint():
    channels = np.repeat([f"c{i}" for i in range(20)], 5).astype(object)
    plan = plan_split(channels, None, np.arange(100), k=5, holdout_frac=0.2)
    assert plan.protocol.name == CHANNEL_DISJOINT
    assert not set(channels[plan.train_idx]) & set(channels[plan.test_idx])


def test_no_dates_means_random_within_channel_and_says_so():
    channels = np.repeat(["a", "b"], 30).astype(object)
    plan = plan_split(channels, None, np.arange(60), k=5, holdout_frac=0.2)
    assert plan.protocol.name == RANDOM_WITHIN_CHANNEL
    assert "no published_at" in plan.protocol.reason
    assert "channel-relative" in plan.protocol.suggestion
    assert set(np.unique(plan.fold_groups)) == set(range(5))  # five time/random slices


def test_too_few_videos_are_refused_before_features_with_the_fix(tmp_path_factory, monkeypatch):
    ds = _dataset(tmp_path_factory, 1, n=8)

    def no_features(*args, **kwargs):
        raise AssertionError("features were computed before the split was checked")

    monkeypatch.setattr(workflow, "dataset_blocks", no_features)
    with pytest.raises(ProtocolError, match="--holdout 0"):
        workflow.train(ds, PredictorConfig(encoders=("title",)), tmp_path_factory.mktemp("m"))


@pytest.mark.parametrize("n_channels", [1, 2, 6])
def test_train_with_few_channels_splits_by_time(tmp_path_factory, n_channels):
    ds = _dataset(tmp_path_factory, n_channels)
    out = tmp_path_factory.mktemp("model")
    result = workflow.train(ds, PredictorConfig(encoders=("title",)), out)
    assert result.protocol.name == TIME_WITHIN_CHANNEL
    assert result.protocol.n_channels == n_channels
    assert (result.protocol.suggestion is not None) == (n_channels >= 2)
    saved = json.loads((out / "eval.json").read_text())
    assert saved["protocol"]["name"] == TIME_WITHIN_CHANNEL
    assert "channel" in saved["protocol"]["reason"]
    trained = set(json.loads((out / "training.json").read_text())["video_ids"])
    times = upload_times(ds.table)
    for ch in set(ds.channels):  # within each channel, the hold-out is newer than training
        rows = np.flatnonzero(ds.channels == ch)
        seen = np.array([ds.keys[i] in trained for i in rows])
        if seen.all() or not seen.any():
            continue
        assert times[rows[~seen]].min() >= times[rows[seen]].max()


def test_train_holdout_zero_with_one_channel(tmp_path_factory):
    ds = _dataset(tmp_path_factory, 1)
    result = workflow.train(
        ds, PredictorConfig(encoders=("title",)), tmp_path_factory.mktemp("m"), holdout_frac=0
    )
    assert result.n_holdout == 0 and result.n_train == len(ds) and result.cv is not None


def test_cli_train_names_the_protocol_and_cv_runs(tmp_path_factory):
    ds = _dataset(tmp_path_factory, 2)
    out = tmp_path_factory.mktemp("m")
    res = CliRunner().invoke(app, ["train", str(ds.root), "--out", str(out), "--encoders", "title"])
    assert res.exit_code == 0, res.output
    assert "time-within-channel" in res.output and "--target channel-relative" in res.output
    res = CliRunner().invoke(app, ["cv", str(ds.root), "--encoders", "title", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["protocol"]["name"] == TIME_WITHIN_CHANNEL


def test_upload_times_reads_published_at():
    table = pd.DataFrame({"published_at": ["2020-01-01T00:00:00Z", "nope"]})
    t = upload_times(table)
    assert t[0] == pytest.approx(1577836800.0) and np.isnan(t[1])


def test_channel_relative_without_repeat_channels_says_which_target_to_use():
    channels = np.array([f"c{i}" for i in range(40)], dtype=object)  # every channel once
    with pytest.raises(ProtocolError, match="--target log10"):
        plan_split(channels, None, np.arange(0), k=5, target="channel-relative")
