"""The context encoder (age, timing, channel size) and the title descriptors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from thumbview.data.dataset import load_dataset
from thumbview.data.synth import SynthConfig, make_synthetic
from thumbview.embed.cache import embed
from thumbview.embed.context import ContextEncoder, context_from_options, context_rows
from thumbview.embed.registry import get_encoder
from thumbview.embed.title_desc import FEATURES, describe_title
from thumbview.predict.model import PredictorConfig
from thumbview.predict.workflow import cross_validate_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("ctx") / "data"
    make_synthetic(root, SynthConfig(n=300, seed=4, n_channels=40, width=64, height=36))
    return load_dataset(root)


def test_context_rows_follow_the_table(synth):
    table = synth.table
    rows = context_rows(table)
    X = ContextEncoder().encode(rows)
    when = pd.to_datetime(table["published_at"], utc=True)
    newest = when.max()
    expected_age = np.log10(1 + (newest - when).dt.total_seconds().to_numpy() / 86400)
    assert np.allclose(X[:, 0], expected_age, atol=1e-4)
    assert np.allclose(X[:, 6], np.log10(1 + table["subscribers"].to_numpy()), atol=1e-5)
    counts = table["channel_id"].map(table["channel_id"].value_counts()).to_numpy()
    assert np.allclose(X[:, 7], np.log10(counts), atol=1e-6)
    assert X.shape == (len(table), 8) and np.isfinite(X).all()


def test_missing_columns_are_skipped_with_a_note(synth, caplog):
    table = synth.table.drop(columns=["subscribers", "published_at"])
    with caplog.at_level("INFO", logger="thumbview.embed.context"):
        X = ContextEncoder().encode(context_rows(table))
    assert "no subscribers column" in caplog.text and "no published_at column" in caplog.text
    assert np.ptp(X[:, :7], axis=0).max() == 0  # constant: the model gives them no weight
    assert np.ptp(X[:, 7]) > 0  # channel size is still known


def test_context_is_cached_by_content(synth, tmp_path):
    enc = get_encoder("context")
    first, stats = embed(synth, enc, tmp_path)
    again, stats2 = embed(synth, enc, tmp_path)
    assert stats.n_computed > 0 and stats2.n_computed == 0 and np.array_equal(first, again)
    other = ContextEncoder(as_of="2030-01-01")  # a different snapshot is a different cache
    shifted, _ = embed(synth, other, tmp_path)
    assert (shifted[:, 0] > first[:, 0]).all()


def test_context_predicts_planted_age_and_channel_effects(synth):
    """Synthetic views carry an age effect and a channel effect that subscribers track."""
    config = PredictorConfig(encoders=("context",))
    result, _ = cross_validate_dataset(synth, config, 5)
    assert result.model.spearman > 0.4


def test_context_from_options():
    ctx = context_from_options("2024-01-01", 5000, as_of="2024-01-11")
    assert ctx["age_days"] == 10 and ctx["subscribers"] == 5000.0
    assert context_from_options() == {}
    with pytest.raises(ValueError, match="not a date"):
        context_from_options("yesterday-ish")


def test_title_descriptors_count_what_they_name():
    d = dict(
        zip(
            FEATURES,
            describe_title("You WON'T believe my 7 SECRET hacks?! 🔥🔥 [2024]"),
            strict=True,
        )
    )
    assert d["length (words)"] == 8
    assert d["numbers"] == 2 and d["digits"] == 5
    assert d["question marks"] == 1 and d["exclamation marks"] == 1
    assert d["emoji"] == 2 and d["brackets"] == 2
    assert d["first-person words"] == 1 and d["second-person words"] == 1
    assert d["clickbait words"] == 4  # won't, believe, secret, hacks
    assert d["words in ALL CAPS"] == 2
    plain = describe_title("a quiet walk")
    assert plain[2] == 0 and plain[8] == 0


def test_title_desc_encoder_is_registered():
    enc = get_encoder("title-desc")
    X = enc.encode(["Hello!", ""])
    assert X.shape == (2, len(FEATURES)) and X.dtype == np.float32
    assert enc.feature_names()[0] == "length (characters)"
